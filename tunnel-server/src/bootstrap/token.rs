//! Bootstrap tokens: their format, the check against their Secret, the name of the certificate request a
//! token pays for, and what a request with a token leads to given what the hub holds.
use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;

pub use tether_api::token::hash as token_hash;
use tether_api::token::{DATA_CLUSTER, DATA_EXPIRATION, DATA_HASH};

use super::{
    check_csr, check_resume, Refusal, REQUESTED_VIA_ANNOTATION, REQUESTED_VIA_TOKEN, TOKEN_SECRET_TYPE, UNKNOWN_TOKEN,
};

/// Domain separation of [`token_csr_name`]'s digest from the Secret's `token-hash`.
const CSR_NAME_CONTEXT: &[u8] = b"tether.io/bootstrap-csr\0";

/// A well-formed bootstrap token. `Debug` shows the id only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub id: &'a str,
    full: &'a str,
}

impl std::fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<'a> Token<'a> {
    /// Parses `<id>.<secret>`, 6 and 16 characters of `[a-z0-9]` ([`tether_api::token::split`]).
    pub fn parse(token: &'a str) -> Result<Self, Refusal> {
        let (id, _) =
            tether_api::token::split(token).ok_or_else(|| Refusal::new("malformed", "malformed bootstrap token"))?;
        Ok(Self { id, full: token })
    }

    /// Name of the Secret that holds this token's hash.
    pub fn secret_name(&self) -> String {
        tether_api::token::secret_name(self.id)
    }
}

/// Whether `a == b`, in time that depends only on the lengths.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks a token against its Secret, in this order: the Secret is a live bootstrap token whose hash
/// matches (otherwise the same answer as a missing Secret), not expired at `now`, and for `cluster`.
pub fn check_token(secret: &Secret, token: &Token<'_>, cluster: &str, now: SystemTime) -> Result<(), Refusal> {
    let unknown = || Refusal::new("unknown_token", UNKNOWN_TOKEN);
    if secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE) || secret.metadata.deletion_timestamp.is_some() {
        return Err(unknown());
    }
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let field = |key: &str| data.get(key).and_then(|v| std::str::from_utf8(&v.0).ok()).map(str::trim);
    let stored = field(DATA_HASH).ok_or_else(unknown)?.to_ascii_lowercase();
    if !constant_time_eq(stored.as_bytes(), token_hash(token.full).as_bytes()) {
        return Err(unknown());
    }
    let expiration = field(DATA_EXPIRATION)
        .and_then(|e| e.parse::<Timestamp>().ok())
        .ok_or_else(|| Refusal::new("expired", "bootstrap token has no valid expiration"))?;
    if now >= SystemTime::from(expiration) {
        return Err(Refusal::new("expired", "bootstrap token expired"));
    }
    if field(DATA_CLUSTER) != Some(cluster) {
        return Err(Refusal::new("wrong_cluster", "token is for another cluster"));
    }
    Ok(())
}

/// The name of the certificate request `token` pays for: `tether-<cluster>-<16 hex>`, the hex from a
/// SHA-256 of the whole token (domain-separated from `token-hash`). Only a holder of the token can name
/// it, one token can have only one request (a second create of the name fails), and a client that lost
/// the hub's answer finds its request again with one GET instead of a LIST of every CSR. Renewals keep
/// random names of 8 hex digits ([`super::csr_name`]).
pub fn token_csr_name(cluster: &str, token: &Token<'_>) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(CSR_NAME_CONTEXT);
    context.update(token.full.as_bytes());
    let digest = context.finish();
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("tether-{cluster}-{hex}")
}

/// What a request with a token leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenDecision {
    /// Every check passed: spend the token and create the request [`token_csr_name`] names.
    Spend,
    /// The token already paid for this client's request (byte-identical CSR): resume it.
    Resume,
    Refuse(Refusal),
    /// A look-up failed (the hub apiserver is unreachable, slow, failing): no answer, the client tries again.
    /// Never a refusal: the token may be perfectly good.
    Retry(String),
}

/// Decides a token request from the two look-ups the hub made for it, whatever the token: its Secret
/// (`Ok(None)`: missing) and the request [`token_csr_name`] names (`Ok(None)`: none yet). Because both
/// are always looked up, an unknown token id, a wrong secret and a spent token cost the hub the same
/// two GETs, and the answers for them are the same. A failed look-up is [`TokenDecision::Retry`] unless
/// the other one already shows this client's request.
pub fn token_decision(
    secret: Result<Option<&Secret>, &kube::Error>,
    paid: Result<Option<&CertificateSigningRequest>, &kube::Error>,
    token: &Token<'_>,
    cluster: &str,
    csr_pem: &str,
    now: SystemTime,
) -> TokenDecision {
    if let Ok(Some(csr)) = paid {
        // A CSR is not a secret, but the certificate is useless without the key, which never left the client.
        let via = csr.metadata.annotations.as_ref().and_then(|a| a.get(REQUESTED_VIA_ANNOTATION));
        if via.map(String::as_str) == Some(REQUESTED_VIA_TOKEN) && check_resume(csr, cluster, csr_pem).is_ok() {
            return TokenDecision::Resume;
        }
    }
    let (secret, paid) = match (secret, paid) {
        (Ok(secret), Ok(paid)) => (secret, paid),
        (Err(e), _) => return TokenDecision::Retry(format!("reading the bootstrap token failed: {e}")),
        (_, Err(e)) => return TokenDecision::Retry(format!("looking up the token's certificate request failed: {e}")),
    };
    let Some(secret) = secret else {
        return TokenDecision::Refuse(Refusal::new("unknown_token", UNKNOWN_TOKEN));
    };
    if let Err(refusal) = check_token(secret, token, cluster, now).and_then(|()| check_csr(csr_pem, cluster)) {
        return TokenDecision::Refuse(refusal);
    }
    if paid.is_some() {
        // The name is taken by another request (a copy of this token used with another key).
        return TokenDecision::Refuse(Refusal::new("spent", UNKNOWN_TOKEN));
    }
    TokenDecision::Spend
}
