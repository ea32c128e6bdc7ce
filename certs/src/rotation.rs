//! Rotation decisions as pure functions of (certificate, `now`).

use std::time::{Duration, SystemTime};

use crate::{parse, Error, Result, BACKDATE};

/// A certificate is due for renewal once this share (in percent) of its validity has elapsed.
pub const RENEW_AT_PERCENT: u32 = 80;

/// The validity window of a certificate (DER): `(not_before, not_after)`.
pub fn validity(cert_der: &[u8]) -> Result<(SystemTime, SystemTime)> {
    let cert = parse::certificate(cert_der)?;
    let window = cert.validity();
    Ok((parse::system_time(window.not_before), parse::system_time(window.not_after)))
}

/// When a certificate (DER) was issued: its not-before plus the [`BACKDATE`] this crate applies when
/// signing (never past its not-after). A certificate made elsewhere comes out slightly later, which is
/// harmless for both uses: revocation by issue time, and renewal.
pub fn issued_at(cert_der: &[u8]) -> Result<SystemTime> {
    let (not_before, not_after) = validity(cert_der)?;
    Ok((not_before + BACKDATE).min(not_after.max(not_before)))
}

/// When a certificate (DER) becomes due for renewal: `RENEW_AT_PERCENT` of the way from its issue time
/// ([`issued_at`]) to its not-after. Counting from not-before instead would make the backdate part of the
/// life: a 30-second certificate would be due before it was issued.
pub fn renewal_time(cert_der: &[u8]) -> Result<SystemTime> {
    let (_, not_after) = validity(cert_der)?;
    let issued = issued_at(cert_der)?;
    let lifetime =
        not_after.duration_since(issued).map_err(|_| Error::CertificateShape("not-after precedes not-before"))?;
    Ok(issued + share(lifetime, RENEW_AT_PERCENT))
}

/// Whether a certificate (DER) should be renewed at `now`.
pub fn renewal_due(cert_der: &[u8], now: SystemTime) -> Result<bool> {
    Ok(now >= renewal_time(cert_der)?)
}

/// The certificate's serial number as lowercase hex without separators or leading zero bytes
/// (the form revocation lists will use).
pub fn serial_hex(cert_der: &[u8]) -> Result<String> {
    let cert = parse::certificate(cert_der)?;
    let raw = cert.raw_serial();
    let significant = match raw.iter().position(|&b| b != 0) {
        Some(first) => &raw[first..],
        None => &[0u8][..],
    };
    Ok(significant.iter().map(|b| format!("{b:02x}")).collect())
}

/// `percent`% of `d`, exact to the nanosecond (rounded down).
fn share(d: Duration, percent: u32) -> Duration {
    let nanos = d.as_nanos() * u128::from(percent) / 100;
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder of a division by 10^9 always fits in u32.
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pem, spoke_key_and_csr, CertificateAuthority};
    use std::time::UNIX_EPOCH;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    /// A spoke certificate issued at `t0()` for `lifetime`.
    fn spoke_cert(lifetime: Duration) -> Vec<u8> {
        let ca = CertificateAuthority::generate("ca", t0(), 3650 * DAY).unwrap();
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        let pem = ca.sign_spoke_csr(&csr, "cluster-a", t0(), lifetime).unwrap();
        pem::single_cert_der(&pem).unwrap()
    }

    #[test]
    fn validity_reads_the_window() {
        let der = spoke_cert(90 * DAY);
        assert_eq!(validity(&der).unwrap(), (t0() - BACKDATE, t0() + 90 * DAY));
    }

    #[test]
    fn due_at_80_percent_not_at_79() {
        let der = spoke_cert(100 * DAY);
        let (not_before, not_after) = validity(&der).unwrap();
        let issued = issued_at(&der).unwrap();
        let lifetime = not_after.duration_since(issued).unwrap();
        let at = |percent| issued + share(lifetime, percent);

        assert!(!renewal_due(&der, not_before).unwrap());
        assert!(!renewal_due(&der, at(79)).unwrap());
        assert!(!renewal_due(&der, at(80) - Duration::from_secs(1)).unwrap());
        assert!(renewal_due(&der, at(80)).unwrap());
        assert!(renewal_due(&der, at(99)).unwrap());
        assert!(renewal_due(&der, not_after + DAY).unwrap());
        assert_eq!(renewal_time(&der).unwrap(), at(80));
    }

    #[test]
    fn renewal_time_of_a_known_window() {
        // Issued at t0 for 100 days: due 80 days later, whatever the backdate.
        let der = spoke_cert(100 * DAY);
        assert_eq!(issued_at(&der).unwrap(), t0());
        assert_eq!(renewal_time(&der).unwrap(), t0() + 80 * DAY);
    }

    #[test]
    fn short_certificates_are_due_after_their_issue() {
        // The backdate (5 min) is ten times this life: counted in, renewal would be due at once.
        let der = spoke_cert(Duration::from_secs(30));
        assert_eq!(renewal_time(&der).unwrap(), t0() + Duration::from_secs(24));
        assert!(!renewal_due(&der, t0() + Duration::from_secs(23)).unwrap());
    }

    #[test]
    fn before_not_before_is_not_due() {
        let der = spoke_cert(DAY);
        assert!(!renewal_due(&der, t0() - DAY).unwrap());
    }

    #[test]
    fn serial_hex_matches_the_certificate() {
        let der = spoke_cert(DAY);
        let hex = serial_hex(&der).unwrap();
        let cert = crate::parse::certificate(&der).unwrap();
        assert_eq!(hex, cert.raw_serial_as_string().replace(':', ""));
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(validity(b"nope"), Err(Error::Certificate(_))));
        let error = validity(b"nope").unwrap_err();
        let source = std::error::Error::source(&error);
        assert!(source.is_some_and(|e| e.is::<x509_parser::error::X509Error>()), "{error:?}");
        assert!(matches!(renewal_time(b"nope"), Err(Error::Certificate(_))));
        assert!(matches!(renewal_due(b"nope", t0()), Err(Error::Certificate(_))));
        assert!(matches!(serial_hex(b"nope"), Err(Error::Certificate(_))));
    }

    #[test]
    fn share_is_exact() {
        assert_eq!(share(Duration::from_secs(100), 80), Duration::from_secs(80));
        assert_eq!(share(Duration::from_secs(1), 80), Duration::from_millis(800));
        assert_eq!(share(Duration::from_nanos(3), 50), Duration::from_nanos(1));
    }
}
