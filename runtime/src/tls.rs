//! PEM files to rustls types, and the one crypto provider (ring) both binaries use.
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::{Error, Result};

/// ring builds in a third of aws-lc-rs's time and performs the same here. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&read(path)?).map_err(|source| Error::Pem { path: path.into(), source })
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_key(&read(path)?).map_err(|source| Error::Pem { path: path.into(), source })
}

/// What is wrong with PEM input; never echoes a private key.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("bad PEM certificate: {0}")]
    BadCertificate(#[source] rustls::pki_types::pem::Error),
    #[error("no PEM certificate found")]
    NoCertificate,
    /// Without the parser's error: its text may quote the input, and the input is a private key.
    #[error("no PEM private key found")]
    NoPrivateKey,
    #[error("not a usable CA certificate: {0}")]
    NotCa(#[source] rustls::Error),
}

/// A private key from PEM; the error never echoes the input.
pub fn parse_key(pem: &[u8]) -> std::result::Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| PemError::NoPrivateKey)
}

/// Every certificate in `pem`, at least one.
pub fn parse_certs(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(PemError::BadCertificate)?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// [`parse_key`] with the reason as text, for a flag's message.
pub fn key_from_pem(pem: &[u8]) -> std::result::Result<PrivateKeyDer<'static>, String> {
    parse_key(pem).map_err(|e| e.to_string())
}

/// [`parse_certs`] with the reason as text, for a flag's message.
pub fn certs_from_pem(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    parse_certs(pem).map_err(|e| e.to_string())
}

pub fn root_store(path: &Path) -> Result<RootCertStore> {
    root_store_from_certs(load_certs(path)?).map_err(|source| Error::Pem { path: path.into(), source })
}

pub fn root_store_from_certs(certs: Vec<CertificateDer<'static>>) -> std::result::Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(PemError::NotCa)?;
    }
    Ok(roots)
}

/// A server config for listeners that have no issued certificate (the ops endpoint when none is given):
/// still TLS, with a throwaway self-signed certificate, as kubelet probes and Prometheus with
/// `insecure_skip_verify` accept.
pub fn self_signed_server_config(names: &[&str]) -> Result<Arc<rustls::ServerConfig>> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).map_err(Error::GeneratedKey)?;
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert.cert.der().clone()], key)?;
    Ok(Arc::new(config))
}

/// Server config from a certificate chain and key file, without client authentication.
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_pem_error_names_the_file_and_keeps_the_parser_error_as_its_source() {
        let dir = std::env::temp_dir().join(format!("tether-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let error = root_store(&file).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.to_string().starts_with(&format!("{}: bad PEM certificate: ", file.display())), "{error}");
        let pem = error.source().and_then(|e| e.downcast_ref::<PemError>());
        assert!(matches!(pem, Some(PemError::BadCertificate(_))), "{pem:?}");
        assert!(pem.and_then(|e| e.source()).is_some_and(|e| e.is::<rustls::pki_types::pem::Error>()));
    }

    #[test]
    fn a_key_error_never_quotes_the_input() {
        let error = parse_key(b"-----BEGIN PRIVATE KEY-----\nsecret").unwrap_err();
        assert_eq!(error.to_string(), "no PEM private key found");
        assert!(error.source().is_none());
    }
}
