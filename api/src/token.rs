//! Bootstrap tokens `<id>.<secret>`: minted by the controller (`join`, auto mode), proved by a spoke to the
//! tunnel-server, which spends them. The hub keeps only a hash, in a Secret per token:
//!
//! - name [`SECRET_PREFIX`]`<id>`, in the hub namespace, type [`SECRET_TYPE`], label
//!   [`crate::CLUSTER_LABEL`];
//! - data [`DATA_CLUSTER`] (the cluster it registers), [`DATA_HASH`] ([`hash`] of the whole token) and
//!   [`DATA_EXPIRATION`] (RFC 3339, UTC).
//!
//! Spending deletes the Secret (with preconditions), so a token works once.

/// Type of the hub Secrets holding a bootstrap token's hash.
pub const SECRET_TYPE: &str = "tether.io/bootstrap-token";
/// Hub Secret of token `<id>.<secret>`: this prefix and the id.
pub const SECRET_PREFIX: &str = "tether-bootstrap-";
/// Data key of the cluster the token registers.
pub const DATA_CLUSTER: &str = "cluster";
/// Data key of the token's hash.
pub const DATA_HASH: &str = "token-hash";
/// Data key of the token's expiration.
pub const DATA_EXPIRATION: &str = "expiration";
/// Characters of the id.
pub const ID_LEN: usize = 6;
/// Characters of the secret part.
pub const SECRET_LEN: usize = 16;
/// What both parts are drawn from.
pub const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The hub Secret of the token with id `id`.
pub fn secret_name(id: &str) -> String {
    format!("{SECRET_PREFIX}{id}")
}

/// Lowercase hex SHA-256 of `token` (the whole `<id>.<secret>` string), as stored in [`DATA_HASH`].
pub fn hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `(id, secret)` of a well-formed token: [`ID_LEN`] and [`SECRET_LEN`] characters of [`ALPHABET`].
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
    (valid(id, ID_LEN) && valid(secret, SECRET_LEN)).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_split_only_when_well_formed() {
        assert_eq!(split("abc123.0123456789abcdef"), Some(("abc123", "0123456789abcdef")));
        for bad in ["abc123", "abc12.0123456789abcdef", "ABC123.0123456789abcdef", "abc123.0123456789abcde!", ""] {
            assert_eq!(split(bad), None, "{bad}");
        }
        assert_eq!(secret_name("abc123"), "tether-bootstrap-abc123");
        assert_eq!(hash("a").len(), 64);
    }
}
