//! One certificate request to the hub, shared by the bootstrap (on a `tether-bootstrap/1` connection, with
//! a token) and renewal (on a stream of the tunnel, proved by the current certificate): the key and CSR
//! made locally and kept in the [`Store`] until the certificate arrives, the exchange of
//! [`BootstrapRequest`] and [`BootstrapResponse`]s, and the check of what the hub issued.
use bytes::BytesMut;
use tether_proto::{BootstrapRequest, BootstrapResponse, ResponseDecoder, BOOTSTRAP_VERSION};
use tether_runtime::tls;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::{Identity, Pending, Store};
use crate::reaction::{self, Closed};
use crate::{Error, Result};

/// How one exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Issued(String),
    /// A final answer: this request will not be signed.
    Refused(String),
    /// No answer: try again; `closed` is what the hub said by ending the connection or stream (for
    /// [`reaction::reaction`]: the usual backoff, a longer one, or stop).
    Lost {
        reason: String,
        closed: Closed,
    },
    Shutdown,
}

impl Answer {
    fn lost(reason: impl Into<String>) -> Self {
        Answer::Lost { reason: reason.into(), closed: Closed::Lost }
    }
}

/// The request in progress if it is still good for `cluster`, otherwise a new key and CSR, stored before
/// anything is sent.
pub async fn pending_or_new(store: &Store, cluster: &str) -> Result<Pending> {
    if let Some(pending) = store.pending().await? {
        if matches!(tether_certs::check_spoke_csr(&pending.csr_pem, cluster), Ok(Some(_))) {
            return Ok(pending);
        }
    }
    let (key_pem, csr_pem) =
        tether_certs::spoke_key_and_csr(cluster).map_err(|source| Error::FlagCerts { flag: "--cluster", source })?;
    let pending = Pending { key_pem, csr_pem, csr_name: None };
    store.save_pending(&pending).await?;
    info!(store = %store.describe(), "generated a new key and certificate request");
    Ok(pending)
}

/// The request to send for `pending`: resuming the hub's request when it has a name, otherwise a new one
/// (with `token` for a bootstrap, without for a renewal).
pub fn request(cluster: &str, pending: &Pending, token: Option<String>) -> BootstrapRequest {
    BootstrapRequest {
        version: BOOTSTRAP_VERSION,
        cluster: cluster.to_string(),
        token: if pending.csr_name.is_some() { None } else { token },
        csr_pem: pending.csr_pem.clone(),
        resume: pending.csr_name.clone(),
    }
}

/// Sends `request` on a new stream of `connection` and reads answers until a final one, the stream's end or
/// `shutdown`. `Pending` answers are recorded in the store, so a later exchange resumes the request.
pub async fn exchange(
    connection: &quinn::Connection,
    request: &BootstrapRequest,
    store: &Store,
    pending: &mut Pending,
    shutdown: &CancellationToken,
) -> Answer {
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(streams) => streams,
        Err(e) => {
            let closed = reaction::closed(&e);
            return Answer::Lost { reason: format!("opening the request stream: {e}"), closed };
        }
    };
    let mut out = BytesMut::new();
    request.encode(&mut out);
    if let Err(e) = send.write_all(&out).await {
        let closed = match &e {
            quinn::WriteError::ConnectionLost(e) => reaction::closed(e),
            _ => Closed::Lost,
        };
        return Answer::Lost { reason: format!("sending the certificate request: {e}"), closed };
    }
    let _ = send.finish();
    let mut decoder = ResponseDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match decoder.next_response() {
            Ok(Some(BootstrapResponse::Pending { csr_name })) => {
                info!(csr = %csr_name, "waiting for approval of CSR {csr_name}");
                if pending.csr_name.as_deref() != Some(csr_name.as_str()) {
                    pending.csr_name = Some(csr_name);
                    if let Err(e) = store.save_pending(pending).await {
                        warn!(error = %e, "cannot store the certificate request's name; a reconnect will not resume it");
                    }
                }
                continue;
            }
            Ok(Some(BootstrapResponse::Issued { certificate_pem })) => return Answer::Issued(certificate_pem),
            Ok(Some(BootstrapResponse::Refused { reason })) => return Answer::Refused(reason),
            Ok(None) => {}
            Err(e) => return Answer::lost(format!("bad answer from the hub: {e}")),
        }
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => decoder.push(&buf[..n]),
                Ok(None) => return Answer::lost("the hub ended the stream without an answer"),
                Err(e) => {
                    let reason = connection.close_reason().map_or_else(|| e.to_string(), |r| r.to_string());
                    return Answer::Lost { reason, closed: reaction::reset(&e) };
                }
            },
            _ = shutdown.cancelled() => return Answer::Shutdown,
        }
    }
}

/// Checks an issued certificate (it must name the cluster and belong to the pending key) and makes it the
/// identity.
pub async fn commit(store: &Store, pending: &Pending, certificate_pem: &str, cluster: &str) -> Result<Identity> {
    check_issued(certificate_pem, &pending.key_pem, cluster)?;
    store.commit(pending, certificate_pem).await
}

/// A refused request will not be signed: forget its name, so the next attempt starts a new one.
pub async fn forget_refused(store: &Store, pending: &mut Pending) -> Result<()> {
    if pending.csr_name.take().is_some() {
        store.save_pending(pending).await?;
    }
    Ok(())
}

/// The issued certificate must name the cluster and belong to the key.
pub fn check_issued(certificate_pem: &str, key_pem: &str, cluster: &str) -> Result<()> {
    let chain = tls::parse_certs(certificate_pem.as_bytes()).map_err(Error::IssuedPem)?;
    let leaf = chain.first().ok_or(Error::IssuedPem(tls::PemError::NoCertificate))?;
    let named = tether_certs::cluster_of(leaf.as_ref()).map_err(Error::IssuedCerts)?;
    if named != cluster {
        return Err(Error::IssuedForCluster(named));
    }
    let key = tls::parse_key(key_pem.as_bytes()).map_err(Error::PendingKey)?;
    // Building a client identity checks that the key belongs to the certificate.
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map_err(Error::IssuedKey)?;
    Ok(())
}

/// The cluster an identity's certificate names.
pub fn cluster_of(identity: &Identity) -> Result<String> {
    let chain =
        tls::parse_certs(identity.cert_pem.as_bytes()).map_err(|source| Error::FlagPem { flag: "--cert", source })?;
    let leaf = chain.first().ok_or_else(|| Error::Config { flag: "--cert", reason: "empty chain".into() })?;
    tether_certs::cluster_of(leaf.as_ref()).map_err(|source| Error::FlagCerts { flag: "--cert", source })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::identity::FileStore;

    fn store(dir: &Path) -> Store {
        Store::Files(FileStore::new(&dir.join("tls.key"), &dir.join("tls.crt")))
    }

    #[tokio::test]
    async fn a_pending_request_is_reused_for_its_cluster_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let first = pending_or_new(&s, "spoke-a").await.unwrap();
        let mut named = first.clone();
        named.csr_name = Some("tether-spoke-a-0a1b2c3d".into());
        s.save_pending(&named).await.unwrap();
        assert_eq!(pending_or_new(&s, "spoke-a").await.unwrap(), named);
        let other = pending_or_new(&s, "spoke-b").await.unwrap();
        assert_ne!(other.key_pem, first.key_pem);
        assert_eq!(other.csr_name, None);
    }

    #[test]
    fn a_named_request_is_resumed_without_the_token() {
        let pending = Pending { key_pem: "k".into(), csr_pem: "csr".into(), csr_name: None };
        let fresh = request("spoke-a", &pending, Some("t".into()));
        assert_eq!((fresh.token.as_deref(), fresh.resume.as_deref()), (Some("t"), None));
        let named = Pending { csr_name: Some("n".into()), ..pending };
        let resumed = request("spoke-a", &named, Some("t".into()));
        assert_eq!((resumed.token.as_deref(), resumed.resume.as_deref()), (None, Some("n")));
    }

    #[tokio::test]
    async fn issued_certificates_must_fit_the_key_and_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let pending = pending_or_new(&s, "spoke-a").await.unwrap();
        let now = SystemTime::now();
        let ca = tether_certs::CertificateAuthority::generate("test-ca", now, Duration::from_secs(3600)).unwrap();
        let cert = ca.sign_spoke_csr(&pending.csr_pem, "spoke-a", now, Duration::from_secs(600)).unwrap();
        assert!(
            matches!(check_issued(&cert, &pending.key_pem, "spoke-b"), Err(Error::IssuedForCluster(c)) if c == "spoke-a")
        );
        let (_, other_csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
        let other = ca.sign_spoke_csr(&other_csr, "spoke-a", now, Duration::from_secs(600)).unwrap();
        assert!(matches!(check_issued(&other, &pending.key_pem, "spoke-a"), Err(Error::IssuedKey(_))));
        assert!(matches!(
            check_issued("not pem", &pending.key_pem, "spoke-a"),
            Err(Error::IssuedPem(tls::PemError::NoCertificate))
        ));
        let identity = commit(&s, &pending, &cert, "spoke-a").await.unwrap();
        assert_eq!(cluster_of(&identity).unwrap(), "spoke-a");
        assert_eq!(s.load().await.unwrap(), Some(identity));
    }
}
