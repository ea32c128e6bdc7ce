//! Where the spoke keeps its identity: the private key and certificate it dials the hub with, and the one
//! certificate request in progress (a bootstrap or a renewal) with the key it was made for.
//!
//! In a cluster the store is a Secret of the spoke ([`SecretStore`], `--identity-secret`), shared by every
//! Pod of the DaemonSet. Outside a cluster it is files ([`FileStore`]): `--key` and `--cert`, and next to the key
//! `<key>.pending` (the new key, mode 0600), `<key>.pending.csr`, `<key>.pending.csr-name` (the hub's name
//! for the request, once it answered `Pending`) and, for an instant during [`Store::commit`],
//! `<key>.pending.crt`. A commit writes the certificate there first, then renames the key, then the
//! certificate: a crash at any point leaves files [`Store::load`] completes, never a key that does not fit
//! its certificate.
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

mod secret;
pub use secret::SecretStore;

/// A key and the certificate chain issued for it, both PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A certificate request in progress and the key it was made for. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    pub key_pem: String,
    pub csr_pem: String,
    /// The hub's name for the request, once it answered `Pending`: a new connection resumes it.
    pub csr_name: Option<String>,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("csr_pem", &self.csr_pem)
            .field("csr_name", &self.csr_name)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The identity store the client was configured with.
#[derive(Debug)]
pub enum Store {
    Files(FileStore),
    Secret(SecretStore),
}

impl Store {
    /// The current identity, if there is one (completing a commit a crash interrupted).
    pub async fn load(&self) -> Result<Option<Identity>> {
        match self {
            Self::Files(files) => files.load(),
            Self::Secret(secret) => secret.load().await,
        }
    }

    /// The certificate request in progress, if any.
    pub async fn pending(&self) -> Result<Option<Pending>> {
        match self {
            Self::Files(files) => files.pending(),
            Self::Secret(secret) => secret.pending().await,
        }
    }

    /// Records the request in progress (replacing any other).
    pub async fn save_pending(&self, pending: &Pending) -> Result<()> {
        match self {
            Self::Files(files) => files.save_pending(pending),
            Self::Secret(secret) => secret.save_pending(pending).await,
        }
    }

    /// Makes the pending key with `cert_pem` the identity and forgets the request. The caller checked that
    /// the certificate fits the key.
    pub async fn commit(&self, pending: &Pending, cert_pem: &str) -> Result<Identity> {
        match self {
            Self::Files(files) => files.commit(pending, cert_pem),
            Self::Secret(secret) => secret.commit(pending, cert_pem).await,
        }
    }

    /// Where the identity lives, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Files(files) => files.cert.display().to_string(),
            Self::Secret(secret) => format!("Secret {}/{}", secret.namespace, secret.name),
        }
    }
}

/// The identity as files, for a client outside a cluster (or with a volume of its own).
#[derive(Debug, Clone)]
pub struct FileStore {
    pub key: PathBuf,
    pub cert: PathBuf,
    pending_key: PathBuf,
    pending_csr: PathBuf,
    pending_name: PathBuf,
    pending_cert: PathBuf,
}

impl FileStore {
    pub fn new(key: &Path, cert: &Path) -> Self {
        Self {
            key: key.into(),
            cert: cert.into(),
            pending_key: suffixed(key, ".pending"),
            pending_csr: suffixed(key, ".pending.csr"),
            pending_name: suffixed(key, ".pending.csr-name"),
            pending_cert: suffixed(key, ".pending.crt"),
        }
    }

    fn load(&self) -> Result<Option<Identity>> {
        self.finish_commit()?;
        let (Some(cert_pem), Some(key_pem)) = (read_opt(&self.cert, "--cert")?, read_opt(&self.key, "--key")?) else {
            return Ok(None);
        };
        Ok(Some(Identity { cert_pem, key_pem }))
    }

    fn pending(&self) -> Result<Option<Pending>> {
        let (Some(key_pem), Some(csr_pem)) =
            (read_opt(&self.pending_key, "--key")?, read_opt(&self.pending_csr, "--key")?)
        else {
            return Ok(None);
        };
        let csr_name = read_opt(&self.pending_name, "--key")?.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        Ok(Some(Pending { key_pem, csr_pem, csr_name }))
    }

    fn save_pending(&self, pending: &Pending) -> Result<()> {
        // The name goes first: a name next to a newer key would resume someone else's request.
        remove(&self.pending_name)?;
        write_atomically(&self.pending_key, pending.key_pem.as_bytes(), 0o600)?;
        write_atomically(&self.pending_csr, pending.csr_pem.as_bytes(), 0o644)?;
        if let Some(name) = &pending.csr_name {
            write_atomically(&self.pending_name, name.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    fn commit(&self, pending: &Pending, cert_pem: &str) -> Result<Identity> {
        if read_opt(&self.pending_key, "--key")?.as_deref() != Some(pending.key_pem.as_str()) {
            return Err(Error::Bootstrap("the pending key changed under this request".into()));
        }
        write_atomically(&self.pending_cert, cert_pem.as_bytes(), 0o644)?;
        self.finish_commit()?;
        Ok(Identity { cert_pem: cert_pem.to_string(), key_pem: pending.key_pem.clone() })
    }

    /// The renames of a commit whose certificate is written; nothing when no commit is under way.
    fn finish_commit(&self) -> Result<()> {
        if !self.pending_cert.exists() {
            return Ok(());
        }
        if self.pending_key.exists() {
            rename(&self.pending_key, &self.key)?;
        }
        rename(&self.pending_cert, &self.cert)?;
        remove(&self.pending_csr)?;
        remove(&self.pending_name)
    }
}

/// `path` with `suffix` appended to its file name (`tls.key` → `tls.key.pending`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    name.into()
}

/// The file's content, `None` if it does not exist. Errors name the flag the path came from, never the
/// content.
fn read_opt(path: &Path, flag: &'static str) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::FlagFile { flag, path: path.to_path_buf(), source }),
    }
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half of it.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
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

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::Write { path: to.into(), source })
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Write { path: path.into(), source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn store(dir: &Path) -> FileStore {
        FileStore::new(&dir.join("tls.key"), &dir.join("tls.crt"))
    }

    fn pending(key: &str, name: Option<&str>) -> Pending {
        Pending { key_pem: key.into(), csr_pem: format!("csr of {key}"), csr_name: name.map(String::from) }
    }

    #[test]
    fn pending_requests_sit_next_to_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.pending().unwrap(), None);
        s.save_pending(&pending("k1", None)).unwrap();
        assert_eq!(mode(&dir.path().join("tls.key.pending")), 0o600);
        assert_eq!(s.pending().unwrap(), Some(pending("k1", None)));
        s.save_pending(&pending("k1", Some("tether-a-00000001"))).unwrap();
        assert_eq!(s.pending().unwrap(), Some(pending("k1", Some("tether-a-00000001"))));
        // A new key drops the old request's name.
        s.save_pending(&pending("k2", None)).unwrap();
        assert_eq!(s.pending().unwrap(), Some(pending("k2", None)));
        assert_eq!(s.load().unwrap(), None, "no identity before a commit");
    }

    #[test]
    fn a_commit_replaces_key_and_certificate_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let p = pending("k1", Some("n"));
        s.save_pending(&p).unwrap();
        let identity = s.commit(&p, "cert1").unwrap();
        assert_eq!(identity, Identity { cert_pem: "cert1".into(), key_pem: "k1".into() });
        assert_eq!(s.load().unwrap(), Some(identity));
        assert_eq!(s.pending().unwrap(), None);
        assert_eq!(mode(&s.key), 0o600);
        // A renewal: the old identity stays in use until the commit.
        let next = pending("k2", None);
        s.save_pending(&next).unwrap();
        assert_eq!(s.load().unwrap().unwrap().key_pem, "k1");
        s.commit(&next, "cert2").unwrap();
        assert_eq!(s.load().unwrap(), Some(Identity { cert_pem: "cert2".into(), key_pem: "k2".into() }));
        // Committing a request whose key was replaced meanwhile is refused.
        s.save_pending(&pending("k3", None)).unwrap();
        assert!(s.commit(&pending("k4", None), "cert4").is_err());
    }

    #[test]
    fn a_commit_interrupted_anywhere_is_completed_by_load() {
        for step in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let s = store(dir.path());
            std::fs::write(&s.key, "old key").unwrap();
            std::fs::write(&s.cert, "old cert").unwrap();
            s.save_pending(&pending("new key", Some("n"))).unwrap();
            // What a crash leaves: the certificate written, and maybe the key renamed.
            std::fs::write(dir.path().join("tls.key.pending.crt"), "new cert").unwrap();
            if step == 1 {
                std::fs::rename(dir.path().join("tls.key.pending"), &s.key).unwrap();
            }
            let loaded = s.load().unwrap().unwrap();
            assert_eq!((loaded.key_pem.as_str(), loaded.cert_pem.as_str()), ("new key", "new cert"), "step {step}");
            assert_eq!(s.pending().unwrap(), None);
        }
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let shown = format!(
            "{:?} {:?}",
            Identity { cert_pem: "CERT".into(), key_pem: "SECRET".into() },
            Pending { key_pem: "SECRET".into(), csr_pem: "CSR".into(), csr_name: None }
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
