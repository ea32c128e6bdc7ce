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
    let pem = read(path)?;
    certs_from_pem(&pem).map_err(|what| Error::Pem { path: path.into(), what })
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    // Never echo the file's content: it is a private key.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| Error::Pem { path: path.into(), what: "no PEM private key found".into() })
}

/// A private key from PEM; the error never echoes the input.
pub fn key_from_pem(pem: &[u8]) -> std::result::Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| "no PEM private key found".to_string())
}

pub fn certs_from_pem(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

pub fn root_store(path: &Path) -> Result<RootCertStore> {
    root_store_from_certs(load_certs(path)?).map_err(|what| Error::Pem { path: path.into(), what })
}

pub fn root_store_from_certs(certs: Vec<CertificateDer<'static>>) -> std::result::Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// A server config for listeners that have no issued certificate (the ops endpoint when none is given):
/// still TLS, with a throwaway self-signed certificate, as kubelet probes and Prometheus with
/// `insecure_skip_verify` accept.
pub fn self_signed_server_config(names: &[&str]) -> Result<Arc<rustls::ServerConfig>> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| Error::Pem { path: "<self-signed>".into(), what: e.to_string() })?;
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
