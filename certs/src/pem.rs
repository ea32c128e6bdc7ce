//! PEM in, DER out. Sections of other kinds and text between sections are ignored.

use rustls_pemfile::Item;

use crate::{parse, Error, Result};

/// The DER of every `CERTIFICATE` section in `pem`, in order; each must parse as X.509.
///
/// Errors if the PEM is malformed or holds no certificate.
pub fn pem_to_der_certs(pem: &str) -> Result<Vec<Vec<u8>>> {
    let certs: Vec<Vec<u8>> = items(pem)?
        .into_iter()
        .filter_map(|item| match item {
            Item::X509Certificate(der) => Some(der.to_vec()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Error::MissingPem("certificate"));
    }
    for der in &certs {
        parse::certificate(der)?;
    }
    Ok(certs)
}

/// The DER of the one certificate in `pem`.
pub(crate) fn single_cert_der(pem: &str) -> Result<Vec<u8>> {
    let mut certs = pem_to_der_certs(pem)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        found => Err(Error::TooManyPem { what: "certificate", found }),
    }
}

/// The DER of the one `CERTIFICATE REQUEST` in `pem`.
pub(crate) fn single_csr_der(pem: &str) -> Result<Vec<u8>> {
    let mut csrs: Vec<Vec<u8>> = items(pem)?
        .into_iter()
        .filter_map(|item| match item {
            Item::Csr(der) => Some(der.to_vec()),
            _ => None,
        })
        .collect();
    match csrs.len() {
        0 => Err(Error::MissingPem("certificate request")),
        1 => Ok(csrs.remove(0)),
        found => Err(Error::TooManyPem { what: "certificate request", found }),
    }
}

/// The PKCS#8 DER of the one private key in `pem`. Other encodings (SEC1 `EC PRIVATE KEY`,
/// PKCS#1 `RSA PRIVATE KEY`) are refused with a hint, since the ring backend reads only PKCS#8.
pub(crate) fn single_pkcs8_key_der(pem: &str) -> Result<Vec<u8>> {
    let mut keys = Vec::new();
    for item in items(pem)? {
        match item {
            Item::Pkcs8Key(der) => keys.push(der.secret_pkcs8_der().to_vec()),
            Item::Sec1Key(_) | Item::Pkcs1Key(_) => return Err(Error::PrivateKeyEncoding),
            _ => {}
        }
    }
    match keys.len() {
        0 => Err(Error::MissingPem("private key")),
        1 => Ok(keys.remove(0)),
        found => Err(Error::TooManyPem { what: "private key", found }),
    }
}

/// How many sections of a kind rustls-pemfile knows `pem` holds.
pub(crate) fn section_count(pem: &str) -> Result<usize> {
    Ok(items(pem)?.len())
}

fn items(pem: &str) -> Result<Vec<Item>> {
    rustls_pemfile::read_all(&mut pem.as_bytes()).collect::<std::result::Result<Vec<_>, _>>().map_err(Error::Pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use std::time::{Duration, SystemTime};

    fn ca_pem() -> String {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        CertificateAuthority::generate("pem-test-ca", now, Duration::from_secs(3600)).unwrap().cert_pem().to_owned()
    }

    #[test]
    fn certs_in_order_and_other_sections_ignored() {
        let (a, b) = (ca_pem(), ca_pem());
        let (key, _csr) = crate::spoke_key_and_csr("ignored").unwrap();
        let bundle = format!("leading text\n{a}{key}{b}");
        let ders = pem_to_der_certs(&bundle).unwrap();
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0], pem_to_der_certs(&a).unwrap()[0]);
        assert_eq!(ders[1], pem_to_der_certs(&b).unwrap()[0]);
        assert!(matches!(single_cert_der(&bundle), Err(Error::TooManyPem { found: 2, .. })));
    }

    #[test]
    fn malformed_pem_is_an_error() {
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(pem_to_der_certs(bad_base64), Err(Error::Pem(_))));
        let unterminated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(pem_to_der_certs(unterminated), Err(Error::Pem(_))));
        // The parser's own error is the source, not only its text.
        let error = pem_to_der_certs(unterminated).unwrap_err();
        assert!(std::error::Error::source(&error).is_some_and(|e| e.is::<std::io::Error>()), "{error:?}");
    }

    #[test]
    fn no_certificate_is_an_error() {
        assert!(matches!(pem_to_der_certs("not pem at all"), Err(Error::MissingPem("certificate"))));
        assert!(matches!(pem_to_der_certs(""), Err(Error::MissingPem("certificate"))));
    }

    #[test]
    fn garbage_der_in_a_certificate_section_is_an_error() {
        let pem = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(matches!(pem_to_der_certs(pem), Err(Error::Certificate(_))));
    }

    #[test]
    fn csr_and_key_extraction() {
        let (key, csr) = crate::spoke_key_and_csr("a").unwrap();
        assert!(!single_csr_der(&csr).unwrap().is_empty());
        assert!(!single_pkcs8_key_der(&key).unwrap().is_empty());
        assert!(matches!(single_csr_der(&key), Err(Error::MissingPem("certificate request"))));
        assert!(matches!(single_pkcs8_key_der(&csr), Err(Error::MissingPem("private key"))));
        assert!(matches!(single_pkcs8_key_der(&format!("{key}{key}")), Err(Error::TooManyPem { found: 2, .. })));
    }

    #[test]
    fn sec1_keys_are_refused_with_a_hint() {
        // A SEC1 section; the content is never parsed, only its label matters.
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\naGVsbG8=\n-----END EC PRIVATE KEY-----\n";
        let err = single_pkcs8_key_der(sec1).unwrap_err();
        assert!(err.to_string().contains("pkcs8 -topk8"), "{err}");
    }
}
