//! The built `tether-certs` binary, run as an admin would run it, in a temporary directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tether_certs::{cluster_of, pem_to_der_certs, validity, CertificateAuthority, BACKDATE};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const DAY: Duration = Duration::from_secs(86_400);

/// Run the binary in `dir` with `args` and no `TETHER_*` variables but those in `env`.
fn tether_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether-certs"));
    cmd.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TETHER_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn tether(dir: &Path, args: &[&str]) -> Output {
    tether_env(dir, args, &[])
}

/// Run and require success.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tether(dir, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Run, require failure with `code`, and return the error, which must be a single line.
fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = tether(dir, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    stderr
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

fn cert_der(path: &Path) -> Vec<u8> {
    pem_to_der_certs(&read(path)).unwrap().remove(0)
}

fn lifetime(der: &[u8]) -> Duration {
    let (not_before, not_after) = validity(der).unwrap();
    not_after.duration_since(not_before).unwrap()
}

fn init_ca(dir: &Path) -> CertificateAuthority {
    ok(dir, &["init-ca", "--out", "ca"]);
    CertificateAuthority::from_pem(&read(&dir.join("ca/ca.crt")), &read(&dir.join("ca/ca.key"))).unwrap()
}

#[test]
fn init_ca_writes_a_ca_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let stdout = ok(dir, &["init-ca", "--out", "ca", "--common-name", "my-hub-ca", "--days", "30"]);
    assert!(stdout.contains("ca/ca.crt") && stdout.contains("ca/ca.key"), "{stdout}");
    assert_eq!(mode(&dir.join("ca/ca.crt")), 0o644);
    assert_eq!(mode(&dir.join("ca/ca.key")), 0o600);
    let ca = CertificateAuthority::from_pem(&read(&dir.join("ca/ca.crt")), &read(&dir.join("ca/ca.key"))).unwrap();
    assert!(format!("{ca:?}").contains("my-hub-ca"));
    assert_eq!(lifetime(ca.cert_der()), 30 * DAY + BACKDATE);

    let err = fails(dir, &["init-ca", "--out", "ca"], 1);
    assert!(err.contains("--out") && err.contains("--force"), "{err}");
    assert_eq!(read(&dir.join("ca/ca.crt")), ca.cert_pem(), "overwritten");

    ok(dir, &["init-ca", "--out", "ca", "--force"]);
    assert_ne!(read(&dir.join("ca/ca.crt")), ca.cert_pem(), "not replaced");
    assert_eq!(mode(&dir.join("ca/ca.key")), 0o600);
}

#[test]
fn serving_writes_a_server_certificate_for_the_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = init_ca(dir);
    ok(
        dir,
        &[
            "serving",
            "--ca-dir",
            "ca",
            "--dns",
            "hub.example",
            "tether.example",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1",
            "--out",
            "hub",
        ],
    );
    assert_eq!(mode(&dir.join("hub/tls.crt")), 0o644);
    assert_eq!(mode(&dir.join("hub/tls.key")), 0o600);
    assert_eq!(read(&dir.join("hub/ca.crt")), ca.cert_pem());

    let der = cert_der(&dir.join("hub/tls.crt"));
    assert_eq!(lifetime(&der), 365 * DAY + BACKDATE);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert!(cert.extended_key_usage().unwrap().unwrap().value.server_auth);
    let sans = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
    let dns: Vec<_> = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(*name),
            _ => None,
        })
        .collect();
    assert_eq!(dns, ["hub.example", "tether.example"]);
    assert_eq!(sans.iter().filter(|n| matches!(n, GeneralName::IPAddress(_))).count(), 2);
}

#[test]
fn issue_spoke_writes_a_spoke_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = init_ca(dir);
    ok(dir, &["issue-spoke", "--ca-dir", "ca", "--cluster", "cluster-a", "--out", "spoke-a"]);
    assert_eq!(mode(&dir.join("spoke-a/tls.crt")), 0o644);
    assert_eq!(mode(&dir.join("spoke-a/tls.key")), 0o600);
    assert_eq!(read(&dir.join("spoke-a/ca.crt")), ca.cert_pem());
    let der = cert_der(&dir.join("spoke-a/tls.crt"));
    assert_eq!(cluster_of(&der).unwrap(), "cluster-a");
    assert_eq!(lifetime(&der), 90 * DAY + BACKDATE);

    // The key written is the certificate's.
    let key = rcgen::KeyPair::from_pem(&read(&dir.join("spoke-a/tls.key"))).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
}

#[test]
fn spoke_csr_then_sign_spoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    ok(dir, &["spoke-csr", "--cluster", "cluster-b", "--out", "spoke-b"]);
    assert_eq!(mode(&dir.join("spoke-b/tls.key")), 0o600);
    assert_eq!(mode(&dir.join("spoke-b/tls.csr")), 0o644);
    assert!(read(&dir.join("spoke-b/tls.csr")).contains("BEGIN CERTIFICATE REQUEST"));

    ok(
        dir,
        &[
            "sign-spoke",
            "--ca-dir",
            "ca",
            "--cluster",
            "cluster-b",
            "--csr",
            "spoke-b/tls.csr",
            "--out",
            "signed/cluster-b.crt",
            "--days",
            "30",
        ],
    );
    let der = cert_der(&dir.join("signed/cluster-b.crt"));
    assert_eq!(mode(&dir.join("signed/cluster-b.crt")), 0o644);
    assert_eq!(cluster_of(&der).unwrap(), "cluster-b");
    assert_eq!(lifetime(&der), 30 * DAY + BACKDATE);

    // The CSR is cluster-b's; it cannot become cluster-c's certificate.
    let err = fails(
        dir,
        &[
            "sign-spoke",
            "--ca-dir",
            "ca",
            "--cluster",
            "cluster-c",
            "--csr",
            "spoke-b/tls.csr",
            "--out",
            "signed/cluster-c.crt",
        ],
        1,
    );
    assert!(err.contains("--csr") && err.contains("cluster-b"), "{err}");
    assert!(!dir.join("signed/cluster-c.crt").exists());
}

#[test]
fn flags_come_from_the_environment_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    let out = tether_env(
        dir,
        &["issue-spoke"],
        &[
            ("TETHER_CERTS_CA_DIR", "ca"),
            ("TETHER_CERTS_CLUSTER", "cluster-env"),
            ("TETHER_CERTS_OUT", "spoke-env"),
            ("TETHER_CERTS_SPOKE_DAYS", "7"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let der = cert_der(&dir.join("spoke-env/tls.crt"));
    assert_eq!(cluster_of(&der).unwrap(), "cluster-env");
    assert_eq!(lifetime(&der), 7 * DAY + BACKDATE);
}

#[test]
fn usage_errors_are_one_line_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);

    let err = fails(dir, &["issue-spoke", "--ca-dir", "ca", "--out", "x"], 2);
    assert!(err.contains("--cluster"), "{err}");

    let err = fails(dir, &["issue-spoke", "--ca-dir", "ca", "--cluster", "Bad_Name", "--out", "x"], 2);
    assert!(err.contains("--cluster") && err.contains("Bad_Name"), "{err}");

    let err = fails(dir, &["spoke-csr", "--cluster", "a.b", "--out", "x"], 2);
    assert!(err.contains("--cluster"), "{err}");

    let err = fails(dir, &["serving", "--ca-dir", "ca", "--out", "x"], 2);
    assert!(err.contains("--dns") && err.contains("--ip"), "{err}");

    let err = fails(dir, &["serving", "--ca-dir", "ca", "--dns", "bad_name", "--out", "x"], 2);
    assert!(err.contains("--dns") && err.contains("bad_name"), "{err}");

    let err = fails(dir, &["init-ca", "--out", "c2", "--days", "0"], 2);
    assert!(err.contains("--days"), "{err}");
    assert!(!dir.join("x").exists() && !dir.join("c2").exists());
}

#[test]
fn runtime_errors_are_one_line_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);

    let err = fails(dir, &["issue-spoke", "--ca-dir", "nowhere", "--cluster", "a", "--out", "x"], 1);
    assert!(err.contains("--ca-dir"), "{err}");

    // A CA directory holding someone else's key.
    fs::create_dir(dir.join("mixed")).unwrap();
    fs::copy(dir.join("ca/ca.crt"), dir.join("mixed/ca.crt")).unwrap();
    let other = CertificateAuthority::generate("other", std::time::SystemTime::now(), DAY).unwrap();
    fs::write(dir.join("mixed/ca.key"), other.key_pem()).unwrap();
    let err = fails(dir, &["issue-spoke", "--ca-dir", "mixed", "--cluster", "a", "--out", "x"], 1);
    assert!(err.contains("--ca-dir") && err.contains("does not match"), "{err}");

    let err =
        fails(dir, &["sign-spoke", "--ca-dir", "ca", "--cluster", "a", "--csr", "missing.csr", "--out", "a.crt"], 1);
    assert!(err.contains("--csr"), "{err}");

    fs::write(dir.join("garbage.csr"), "not a csr").unwrap();
    let err =
        fails(dir, &["sign-spoke", "--ca-dir", "ca", "--cluster", "a", "--csr", "garbage.csr", "--out", "a.crt"], 1);
    assert!(err.contains("--csr") && err.contains("certificate request"), "{err}");
    assert!(!dir.join("a.crt").exists());
}
