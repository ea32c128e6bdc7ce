//! Getting a certificate with a bootstrap token (manual registration), before the first tunnel.
//!
//! When the identity store holds no certificate and `--bootstrap-token-file` is given, the client:
//! 1. makes its key and CSR locally and keeps them in the store as the request in progress (or reuses
//!    the one an earlier run left);
//! 2. dials the hub with ALPN `tether-bootstrap/1` and no client certificate (the hub is verified as usual) and
//!    sends its cluster, the token and the CSR;
//! 3. on `Pending` stores the certificate request's name: should the connection drop, the next attempt
//!    resumes that request instead of spending a token that is already spent;
//! 4. on `Issued` checks the certificate (it must name the cluster and hold the key) and commits key and
//!    certificate as its identity.
//!
//! `Refused` ends the process with the hub's reason: a refused token or request does not get better by
//! retrying (after a refused resume the request's name is forgotten, so a new token starts a new request).
//! Anything else is no answer and is retried: a failed dial or a connection lost without an answer,
//! including a wait for approval that the hub ends and any error of the hub's apiserver (the hub closes
//! with `Abandoned`), after the usual backoff; a connection the hub closed as rate-limited or busy after
//! [`crate::reaction::limited_delay`] (as long as the hub's hint says, when it gives one). A hub that refuses the bootstrap protocol's ALPN ends the process
//! as a version mismatch.
use std::path::Path;

use tether_proto::Backoff;
use tether_runtime::tls;
use tether_runtime::transport::TransportSettings;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::{Identity, Store};
use crate::reaction::{self, Closed, Reaction, Stop};
use crate::request::{self, Answer};
use crate::{Config, Error, Result};

/// Obtains an identity with the bootstrap token. `Ok(None)` if `shutdown` came first.
pub async fn obtain_certificate(
    config: &Config,
    store: &Store,
    token_file: &Path,
    transport: &TransportSettings,
    server_name: &str,
    endpoint: &mut Option<quinn::Endpoint>,
    shutdown: &CancellationToken,
) -> Result<Option<Identity>> {
    let cluster = config
        .cluster
        .as_deref()
        .ok_or_else(|| Error::Config { flag: "--cluster", reason: "required with --bootstrap-token-file".into() })?;
    tether_certs::validate_cluster_name(cluster).map_err(|source| Error::FlagCerts { flag: "--cluster", source })?;
    let mut pending = request::pending_or_new(store, cluster).await?;
    let client_config = client_config(config, transport)?;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    // None: at once (the first attempt, or one resuming another client's request).
    let mut last: Option<Closed> = None;
    loop {
        if let Some(closed) = last.take() {
            let delay = match reaction::reaction(&closed) {
                Reaction::Retry => backoff.next_delay(rand::random::<f64>()),
                Reaction::BackOff(hint) => {
                    let delay = reaction::limited_delay(hint, rand::random::<f64>());
                    warn!(?closed, retry_in_ms = delay.as_millis() as u64, "the hub is at a limit: backing off longer");
                    delay
                }
                Reaction::Stop(Stop::VersionMismatch { .. }) => {
                    return Err(Error::VersionMismatch {
                        hub: "another protocol (it refused ALPN tether-bootstrap/1)".into(),
                        ours: String::from_utf8_lossy(tether_proto::BOOTSTRAP_ALPN).into_owned(),
                    })
                }
                // Nothing a bootstrap connection, which has no certificate, can be told.
                Reaction::Stop(Stop::Revoked | Stop::Expired) => backoff.next_delay(rand::random::<f64>()),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // The token is read only when it is needed: a resumed request was paid for already.
        let token = match &pending.csr_name {
            Some(_) => None,
            None => Some(read_token(token_file)?),
        };
        let request = request::request(cluster, &pending, token);
        let connection = match crate::dial(config, server_name, endpoint, client_config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(hub = %config.hub, reason = %e, "bootstrap dial failed");
                last = Some(e.closed());
                continue;
            }
        };
        let named_before = pending.csr_name.clone();
        let answer = request::exchange(&connection, &request, store, &mut pending, shutdown).await;
        connection.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"bye");
        if pending.csr_name != named_before {
            backoff.reset();
        }
        match answer {
            Answer::Issued(certificate_pem) => {
                let identity = request::commit(store, &pending, &certificate_pem, cluster).await?;
                info!(store = %store.describe(), "certificate issued");
                return Ok(Some(identity));
            }
            Answer::Refused(reason) => {
                if request.resume.is_some() {
                    // This request will not be signed: a new token must start a new one.
                    request::forget_refused(store, &mut pending).await?;
                } else if let Some(shared) = store.pending().await?.filter(|p| p.csr_name.is_some()) {
                    // Another client of this cluster, sharing the store, spent the token first and named its
                    // request: resume that one.
                    info!("the token was spent by another client of this cluster: resuming its request");
                    pending = shared;
                    continue;
                }
                return Err(Error::Refused(reason));
            }
            Answer::Lost { reason, closed } => {
                warn!(%reason, resume = pending.csr_name.is_some(), "bootstrap attempt ended without an answer");
                last = Some(closed);
            }
            Answer::Shutdown => return Ok(None),
        }
    }
}

/// TLS to the hub without a client certificate, for ALPN `tether-bootstrap/1`.
fn client_config(config: &Config, transport: &TransportSettings) -> Result<quinn::ClientConfig> {
    let roots = tls::root_store(&config.hub_ca).map_err(|source| Error::FlagTls { flag: "--hub-ca", source })?;
    let mut crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    crypto.alpn_protocols = vec![tether_proto::BOOTSTRAP_ALPN.to_vec()];
    crate::quinn_client_config(crypto, transport)
}

fn read_token(path: &Path) -> Result<String> {
    let flag = "--bootstrap-token-file";
    // Never echo the content: it is a secret.
    let token =
        std::fs::read_to_string(path).map_err(|source| Error::FlagFile { flag, path: path.to_path_buf(), source })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Config { flag, reason: format!("{} is empty", path.display()) });
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_trimmed_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123.0123456789abcdef\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "abc123.0123456789abcdef");
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token(&path).is_err());
        let missing = read_token(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("--bootstrap-token-file"), "{missing}");
    }
}
