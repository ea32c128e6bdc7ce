//! Certificate rotation over the tunnel. At [`tether_certs::RENEW_AT_PERCENT`] of its certificate's life
//! (a little earlier at random, so that clients sharing a store rarely ask at once) the client makes a new
//! key and CSR, sends them on a stream of its live tunnel (the hub files a CSR annotated as a renewal, which
//! the controller approves by policy for an accepted cluster), and commits the certificate it gets. The
//! caller then dials with the new identity and retires the old tunnel once the new one is up; requests in
//! flight on the old one finish there.
use std::time::{Duration, SystemTime};

use metrics::{counter, gauge};
use tether_proto::Backoff;
use tether_runtime::tls;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::{Identity, Store};
use crate::metrics as m;
use crate::reaction::{self, Reaction};
use crate::request::{self, Answer};
use crate::{Error, Result};

/// Share of the life (in percent) by which a renewal may start early, at random.
const JITTER_PERCENT: u32 = 5;
/// Waits after a refused renewal: the refusal may be lifted (the cluster accepted again) before expiry.
const AFTER_REFUSAL: Duration = Duration::from_secs(60);
/// How many times [`reaction::limited_delay`] a renewal waits when the hub says the cluster's budget of
/// renewal requests is used up (`--renewal-rate`, by default 10 an hour: one comes back every 6 minutes; a
/// stream reset carries no hint).
const LIMITED_FACTOR: u32 = 10;

/// When `identity` is due for renewal, with this client's jitter (`random` in [0, 1)).
pub fn due_time(identity: &Identity, random: f64) -> Result<SystemTime> {
    let der = leaf_der(identity)?;
    let due = tether_certs::renewal_time(&der).map_err(bad_cert)?;
    let (_, not_after) = tether_certs::validity(&der).map_err(bad_cert)?;
    let issued = tether_certs::issued_at(&der).map_err(bad_cert)?;
    let life = not_after.duration_since(issued).unwrap_or_default();
    let jitter = life.mul_f64(f64::from(JITTER_PERCENT) / 100.0 * random.clamp(0.0, 1.0));
    Ok(due.checked_sub(jitter).unwrap_or(due))
}

/// The certificate's not-after, also exported as `tether_client_certificate_expiry_seconds`.
pub fn expiry(identity: &Identity) -> Result<SystemTime> {
    let not_after = not_after(identity)?;
    let unix = not_after.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    gauge!(m::CERTIFICATE_EXPIRY).set(unix.as_secs_f64());
    Ok(not_after)
}

/// The certificate's not-after.
pub fn not_after(identity: &Identity) -> Result<SystemTime> {
    let der = leaf_der(identity)?;
    let (_, not_after) = tether_certs::validity(&der).map_err(bad_cert)?;
    Ok(not_after)
}

fn bad_cert(source: tether_certs::Error) -> Error {
    Error::FlagCerts { flag: "--cert", source }
}

fn leaf_der(identity: &Identity) -> Result<Vec<u8>> {
    let chain =
        tls::parse_certs(identity.cert_pem.as_bytes()).map_err(|source| Error::FlagPem { flag: "--cert", source })?;
    let leaf = chain.first().ok_or_else(|| Error::Config { flag: "--cert", reason: "empty chain".into() })?;
    Ok(leaf.as_ref().to_vec())
}

/// Renews `current` over `connection` once it is due, retrying until it succeeds; returns the new identity
/// (or the one another client sharing the store committed first). Runs as long as the tunnel does: the
/// caller drops it when the tunnel ends, and a pending request is resumed on the next tunnel.
pub async fn renew(
    connection: quinn::Connection,
    store: &Store,
    current: &Identity,
    cluster: &str,
    backoff: Backoff,
    shutdown: &CancellationToken,
) -> Identity {
    let mut backoff = backoff;
    let mut delay = match due_time(current, rand::random::<f64>()) {
        Ok(due) => due.duration_since(SystemTime::now()).unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, "cannot read the certificate's validity; not renewing");
            return std::future::pending().await;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return std::future::pending().await,
        }
        match attempt(&connection, store, current, cluster, shutdown).await {
            Ok(Attempt::Renewed(identity)) => return identity,
            Ok(Attempt::Again) => delay = backoff.next_delay(rand::random::<f64>()),
            Ok(Attempt::Limited) => {
                counter!(m::RENEWALS, "outcome" => "limited").increment(1);
                delay = reaction::limited_delay(None, rand::random::<f64>()) * LIMITED_FACTOR;
                warn!(retry_in_s = delay.as_secs(), "certificate renewal refused for now: the hub is at a limit");
            }
            Err(e @ Error::Refused(_)) => {
                counter!(m::RENEWALS, "outcome" => "refused").increment(1);
                warn!(error = %e, "certificate renewal refused; trying again later");
                delay = AFTER_REFUSAL;
            }
            Err(e) => {
                counter!(m::RENEWALS, "outcome" => "error").increment(1);
                warn!(error = %e, "certificate renewal failed; trying again");
                delay = backoff.next_delay(rand::random::<f64>());
            }
        }
    }
}

/// How one renewal attempt went, short of an error.
enum Attempt {
    Renewed(Identity),
    /// No answer: try again after the usual backoff.
    Again,
    /// The hub is at a limit (the cluster's renewal budget): try again much later.
    Limited,
}

/// One request.
async fn attempt(
    connection: &quinn::Connection,
    store: &Store,
    current: &Identity,
    cluster: &str,
    shutdown: &CancellationToken,
) -> Result<Attempt> {
    if let Some(stored) = store.load().await? {
        if &stored != current {
            info!("another client of this cluster renewed the shared identity: using it");
            counter!(m::RENEWALS, "outcome" => "shared").increment(1);
            return Ok(Attempt::Renewed(stored));
        }
    }
    let mut pending = request::pending_or_new(store, cluster).await?;
    info!(resume = pending.csr_name.is_some(), "renewing the client certificate over the tunnel");
    let request = request::request(cluster, &pending, None);
    match request::exchange(connection, &request, store, &mut pending, shutdown).await {
        Answer::Issued(certificate_pem) => {
            let identity = request::commit(store, &pending, &certificate_pem, cluster).await?;
            counter!(m::RENEWALS, "outcome" => "issued").increment(1);
            info!(store = %store.describe(), "certificate renewed");
            Ok(Attempt::Renewed(identity))
        }
        Answer::Refused(reason) => {
            request::forget_refused(store, &mut pending).await?;
            Err(Error::Refused(reason))
        }
        Answer::Lost { closed, .. } if matches!(reaction::reaction(&closed), Reaction::BackOff(_)) => {
            Ok(Attempt::Limited)
        }
        Answer::Lost { reason, .. } => {
            counter!(m::RENEWALS, "outcome" => "lost").increment(1);
            warn!(%reason, "certificate renewal ended without an answer; trying again");
            Ok(Attempt::Again)
        }
        Answer::Shutdown => Ok(Attempt::Again),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(life: Duration, issued: SystemTime) -> Identity {
        let ca = tether_certs::CertificateAuthority::generate("ca", issued, Duration::from_secs(86_400)).unwrap();
        let (key_pem, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
        let cert_pem = ca.sign_spoke_csr(&csr, "spoke-a", issued, life).unwrap();
        Identity { cert_pem, key_pem }
    }

    #[test]
    fn due_at_80_percent_of_the_life_minus_up_to_5_percent() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = identity(Duration::from_secs(100), issued);
        assert_eq!(due_time(&id, 0.0).unwrap(), issued + Duration::from_secs(80));
        assert_eq!(due_time(&id, 1.0).unwrap(), issued + Duration::from_secs(75));
        let jittered = due_time(&id, 0.5).unwrap();
        assert!(jittered > issued + Duration::from_secs(75) && jittered < issued + Duration::from_secs(80));
        assert_eq!(expiry(&id).unwrap(), issued + Duration::from_secs(100));
    }

    #[test]
    fn garbage_is_a_config_error_naming_the_flag() {
        let bad = Identity { cert_pem: "nope".into(), key_pem: String::new() };
        let error = due_time(&bad, 0.0).unwrap_err().to_string();
        assert!(error.contains("--cert"), "{error}");
    }
}
