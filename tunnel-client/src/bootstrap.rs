//! Getting a certificate with a bootstrap token (manual registration), before the first tunnel.
//!
//! When `--cert` does not exist and `--bootstrap-token-file` is given, the client:
//! 1. makes its key and CSR locally (`--key`, mode 0600, and `<key>.csr`), or reuses them from an earlier run;
//! 2. dials the hub with ALPN `tether-bootstrap/1` and no client certificate (the hub is verified as usual) and
//!    sends its cluster, the token and the CSR;
//! 3. on `Pending` stores the certificate request's name in `<key>.csr-name`: should the connection drop, the
//!    next attempt resumes that request instead of spending a token that is already spent;
//! 4. on `Issued` checks the certificate (it must name the cluster and hold the key), writes `--cert`
//!    atomically, mode 0644, and removes `<key>.csr` and `<key>.csr-name`.
//!
//! `Refused` ends the process with the hub's reason: a refused token or request does not get better by
//! retrying (after a refused resume `<key>.csr-name` is removed, so a new token starts a new request). A
//! failed dial or a connection lost without an answer, including a wait for approval that the hub ends, is
//! retried with the usual backoff.
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tether_proto::{Backoff, BootstrapRequest, BootstrapResponse, ResponseDecoder, BOOTSTRAP_VERSION};
use tether_runtime::tls;
use tether_runtime::transport::TransportSettings;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Config, Error, Result};

/// Where the bootstrap keeps its state, next to the key.
#[derive(Debug, Clone)]
pub struct Files {
    pub key: PathBuf,
    pub csr: PathBuf,
    pub csr_name: PathBuf,
    pub cert: PathBuf,
}

impl Files {
    pub fn new(key: &Path, cert: &Path) -> Self {
        Self { key: key.into(), csr: suffixed(key, ".csr"), csr_name: suffixed(key, ".csr-name"), cert: cert.into() }
    }

    /// The CSR to send: the one an earlier run left (with its key) if it is still good for `cluster`,
    /// otherwise a new key and CSR, written before anything is sent.
    pub fn key_and_csr(&self, cluster: &str) -> Result<String> {
        if self.key.exists() {
            if let Ok(csr) = std::fs::read_to_string(&self.csr) {
                if matches!(tether_certs::check_spoke_csr(&csr, cluster), Ok(Some(_))) {
                    return Ok(csr);
                }
            }
        }
        let (key, csr) = tether_certs::spoke_key_and_csr(cluster)
            .map_err(|e| Error::Config { flag: "--cluster", reason: e.to_string() })?;
        remove(&self.csr_name)?;
        write_atomically(&self.key, key.as_bytes(), 0o600)?;
        write_atomically(&self.csr, csr.as_bytes(), 0o644)?;
        info!(key = %self.key.display(), "generated a new key and certificate request");
        Ok(csr)
    }

    /// The certificate request an earlier attempt created, if any.
    pub fn pending_name(&self) -> Option<String> {
        let name = std::fs::read_to_string(&self.csr_name).ok()?;
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_string())
    }
}

/// `path` with `suffix` appended to its file name (`tls.key` → `tls.key.csr`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    name.into()
}

/// How one bootstrap attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    Issued(String),
    Refused(String),
    /// No answer: dial again after a backoff.
    Lost(String),
    Shutdown,
}

/// Obtains `--cert` with the bootstrap token. `Ok(false)` if `shutdown` came first.
pub async fn obtain_certificate(
    config: &Config,
    token_file: &Path,
    transport: &TransportSettings,
    server_name: &str,
    endpoint: &mut Option<quinn::Endpoint>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let cluster = config
        .cluster
        .as_deref()
        .ok_or_else(|| Error::Config { flag: "--cluster", reason: "required with --bootstrap-token-file".into() })?;
    tether_certs::validate_cluster_name(cluster)
        .map_err(|e| Error::Config { flag: "--cluster", reason: e.to_string() })?;
    let files = Files::new(&config.key, &config.cert);
    let csr_pem = files.key_and_csr(cluster)?;
    let client_config = client_config(config, transport)?;
    let mut resume = files.pending_name();
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut first = true;
    loop {
        if !first {
            let delay = backoff.next_delay(rand::random::<f64>());
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        first = false;
        // The token is read only when it is needed: a resumed request was paid for already.
        let token = match &resume {
            Some(_) => None,
            None => Some(read_token(token_file)?),
        };
        let request = BootstrapRequest {
            version: BOOTSTRAP_VERSION,
            cluster: cluster.to_string(),
            token,
            csr_pem: csr_pem.clone(),
            resume: resume.clone(),
        };
        let connection = match crate::dial(config, server_name, endpoint, client_config.clone()).await {
            Ok(c) => c,
            Err(reason) => {
                warn!(hub = %config.hub, %reason, "bootstrap dial failed");
                continue;
            }
        };
        let attempt = exchange(&connection, &request, shutdown, |name| {
            info!(csr = %name, "waiting for approval of CSR {name}");
            if let Err(e) = write_atomically(&files.csr_name, name.as_bytes(), 0o644) {
                warn!(error = %e, "cannot store the certificate request's name; a reconnect will not resume it");
            }
            resume = Some(name.to_string());
            backoff.reset();
        })
        .await;
        match attempt {
            Attempt::Issued(certificate_pem) => {
                check_issued(&certificate_pem, &config.key, cluster)?;
                write_atomically(&files.cert, certificate_pem.as_bytes(), 0o644)?;
                remove(&files.csr)?;
                remove(&files.csr_name)?;
                info!(cert = %files.cert.display(), "certificate issued");
                return Ok(true);
            }
            Attempt::Refused(reason) => {
                if resume.is_some() {
                    // This request will not be signed: a new token must start a new one.
                    remove(&files.csr_name)?;
                }
                return Err(Error::Refused(reason));
            }
            Attempt::Lost(reason) => {
                warn!(%reason, resume = resume.is_some(), "bootstrap attempt ended without an answer")
            }
            Attempt::Shutdown => return Ok(false),
        }
    }
}

/// One request on a new connection, read until a final answer, the connection's end or `shutdown`.
async fn exchange(
    connection: &quinn::Connection,
    request: &BootstrapRequest,
    shutdown: &CancellationToken,
    mut on_pending: impl FnMut(&str),
) -> Attempt {
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(streams) => streams,
        Err(e) => return Attempt::Lost(format!("opening the bootstrap stream: {e}")),
    };
    let mut out = BytesMut::new();
    request.encode(&mut out);
    if let Err(e) = send.write_all(&out).await {
        return Attempt::Lost(format!("sending the bootstrap request: {e}"));
    }
    let _ = send.finish();
    let mut decoder = ResponseDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let attempt = loop {
        match decoder.next_response() {
            Ok(Some(BootstrapResponse::Pending { csr_name })) => {
                on_pending(&csr_name);
                continue;
            }
            Ok(Some(BootstrapResponse::Issued { certificate_pem })) => break Attempt::Issued(certificate_pem),
            Ok(Some(BootstrapResponse::Refused { reason })) => break Attempt::Refused(reason),
            Ok(None) => {}
            Err(e) => break Attempt::Lost(format!("bad answer from the hub: {e}")),
        }
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => decoder.push(&buf[..n]),
                Ok(None) => break Attempt::Lost("the hub ended the stream without an answer".into()),
                Err(e) => break Attempt::Lost(connection.close_reason().map_or_else(|| e.to_string(), |r| r.to_string())),
            },
            _ = shutdown.cancelled() => break Attempt::Shutdown,
        }
    };
    connection.close(0u32.into(), b"bye");
    attempt
}

/// TLS to the hub without a client certificate, for ALPN `tether-bootstrap/1`.
fn client_config(config: &Config, transport: &TransportSettings) -> Result<quinn::ClientConfig> {
    let roots =
        tls::root_store(&config.hub_ca).map_err(|e| Error::Config { flag: "--hub-ca", reason: e.to_string() })?;
    let mut crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    crypto.alpn_protocols = vec![tether_proto::BOOTSTRAP_ALPN.to_vec()];
    crate::quinn_client_config(crypto, transport)
}

fn read_token(path: &Path) -> Result<String> {
    let flag = "--bootstrap-token-file";
    // Never echo the content: it is a secret.
    let token = std::fs::read_to_string(path)
        .map_err(|e| Error::Config { flag, reason: format!("{}: {e}", path.display()) })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Config { flag, reason: format!("{} is empty", path.display()) });
    }
    Ok(token.to_string())
}

/// The issued certificate must name the cluster and belong to the key.
fn check_issued(certificate_pem: &str, key: &Path, cluster: &str) -> Result<()> {
    let invalid = |reason: String| Error::Bootstrap(format!("the hub issued an unusable certificate: {reason}"));
    let chain = tls::certs_from_pem(certificate_pem.as_bytes()).map_err(invalid)?;
    let leaf = chain.first().ok_or_else(|| invalid("empty chain".into()))?;
    let named = tether_certs::cluster_of(leaf.as_ref()).map_err(|e| invalid(e.to_string()))?;
    if named != cluster {
        return Err(invalid(format!("it is for cluster {named}")));
    }
    let key = tls::load_key(key).map_err(|e| Error::Config { flag: "--key", reason: e.to_string() })?;
    // Building a client identity checks that the key belongs to the certificate.
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half of it.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = suffixed(path, ".tmp");
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // Exactly `mode`, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| Error::Write { path: path.into(), source })
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Write { path: path.into(), source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn files(dir: &Path) -> Files {
        Files::new(&dir.join("tls.key"), &dir.join("tls.crt"))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_files_sit_next_to_the_key() {
        let f = Files::new(Path::new("/var/lib/tether/tls.key"), Path::new("/x/tls.crt"));
        assert_eq!(f.csr, Path::new("/var/lib/tether/tls.key.csr"));
        assert_eq!(f.csr_name, Path::new("/var/lib/tether/tls.key.csr-name"));
    }

    #[test]
    fn a_new_key_is_private_and_reused_with_its_csr() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(&f.csr_name, "tether-old-00000000").unwrap();
        let csr = f.key_and_csr("spoke-a").unwrap();
        assert_eq!(mode(&f.key), 0o600);
        assert_eq!(std::fs::read_to_string(&f.csr).unwrap(), csr);
        assert_eq!(f.pending_name(), None, "a stale request name goes with the old key");
        // A second run reuses key and CSR, so a pending request can be resumed.
        let key = std::fs::read(&f.key).unwrap();
        std::fs::write(&f.csr_name, "tether-spoke-a-0a1b2c3d\n").unwrap();
        assert_eq!(f.key_and_csr("spoke-a").unwrap(), csr);
        assert_eq!(std::fs::read(&f.key).unwrap(), key);
        assert_eq!(f.pending_name().as_deref(), Some("tether-spoke-a-0a1b2c3d"));
        // For another cluster the old CSR does not do.
        assert_ne!(f.key_and_csr("spoke-b").unwrap(), csr);
        assert_ne!(std::fs::read(&f.key).unwrap(), key);
    }

    #[test]
    fn issued_certificates_must_fit_the_key_and_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let csr = f.key_and_csr("spoke-a").unwrap();
        let now = SystemTime::now();
        let ca = tether_certs::CertificateAuthority::generate("test-ca", now, Duration::from_secs(3600)).unwrap();
        let cert = ca.sign_spoke_csr(&csr, "spoke-a", now, Duration::from_secs(600)).unwrap();
        check_issued(&cert, &f.key, "spoke-a").unwrap();
        assert!(matches!(check_issued(&cert, &f.key, "spoke-b"), Err(Error::Bootstrap(_))));
        let (_, other_csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
        let other = ca.sign_spoke_csr(&other_csr, "spoke-a", now, Duration::from_secs(600)).unwrap();
        assert!(matches!(check_issued(&other, &f.key, "spoke-a"), Err(Error::Bootstrap(_))));
        assert!(matches!(check_issued("not pem", &f.key, "spoke-a"), Err(Error::Bootstrap(_))));
    }

    #[test]
    fn atomic_writes_set_the_mode_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.crt");
        write_atomically(&path, b"one", 0o644).unwrap();
        write_atomically(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o644);
        assert!(!suffixed(&path, ".tmp").exists());
        remove(&path).unwrap();
        remove(&path).unwrap();
    }

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
