//! The certificates of a run, written to its working directory: the hub CA with the hub's serving
//! certificate and spoke client certificates, and a separate CA for the backend (a spoke apiserver has its own).
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use tether_certs::CertificateAuthority;

const VALIDITY: Duration = Duration::from_secs(7 * 86_400);

pub struct Pki {
    dir: PathBuf,
    hub_ca: CertificateAuthority,
    pub backend_ca_pem: String,
}

impl Pki {
    /// The certificates in `dir`, created there first unless a previous step of the same run (the peer
    /// script, which starts the backend itself) already did.
    pub fn open_or_create(dir: &Path) -> Result<Self> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        if let (Ok(cert), Ok(key), Ok(backend_ca_pem)) =
            (read("hub-ca.crt"), read("hub-ca.key"), read("backend-ca.crt"))
        {
            let hub_ca = CertificateAuthority::from_pem(&cert, &key)?;
            return Ok(Self { dir: dir.to_path_buf(), hub_ca, backend_ca_pem });
        }
        Self::create(dir)
    }

    fn create(dir: &Path) -> Result<Self> {
        let now = SystemTime::now();
        let hub_ca = CertificateAuthority::generate("loadtest-hub-ca", now, VALIDITY)?;
        let hub = hub_ca.issue_serving(&["localhost".into()], &["127.0.0.1".parse()?], now, VALIDITY)?;
        let backend_ca = CertificateAuthority::generate("loadtest-backend-ca", now, VALIDITY)?;
        let backend = backend_ca.issue_serving(&["localhost".into()], &["127.0.0.1".parse()?], now, VALIDITY)?;
        for (name, text) in [
            ("hub-ca.crt", hub_ca.cert_pem()),
            ("hub-ca.key", hub_ca.key_pem()),
            ("hub.crt", &hub.cert_pem),
            ("hub.key", &hub.key_pem),
            ("backend-ca.crt", backend_ca.cert_pem()),
            ("backend.crt", &backend.cert_pem),
            ("backend.key", &backend.key_pem),
        ] {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(Self { dir: dir.to_path_buf(), hub_ca, backend_ca_pem: backend_ca.cert_pem().to_string() })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn hub_ca_pem(&self) -> &str {
        self.hub_ca.cert_pem()
    }

    /// A spoke identity for `cluster`, in memory: (certificate PEM, key PEM).
    pub fn spoke_identity(&self, cluster: &str) -> Result<(String, String)> {
        let (key, csr) = tether_certs::spoke_key_and_csr(cluster)?;
        let cert = self.hub_ca.sign_spoke_csr(&csr, cluster, SystemTime::now(), VALIDITY)?;
        Ok((cert, key))
    }

    /// A spoke identity for `cluster` written as `spoke-<cluster>.crt` and `.key`; returns their paths.
    pub fn write_spoke(&self, cluster: &str) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.spoke_identity(cluster)?;
        let paths = (self.path(&format!("spoke-{cluster}.crt")), self.path(&format!("spoke-{cluster}.key")));
        std::fs::write(&paths.0, cert)?;
        std::fs::write(&paths.1, key)?;
        Ok(paths)
    }
}
