//! The `tether-certs` command line (a module of the binary, not of the library).
//!
//! Every flag can also come from a `TETHER_CERTS_*` environment variable. Keys are written
//! with mode 0600 and certificates with 0644, each through a temporary file renamed into
//! place; existing files are never overwritten without `--force`. Errors are one line that
//! names the flag they concern.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgGroup, Args, Parser, Subcommand};
use tether_certs::{spoke_key_and_csr, validate_cluster_name, validate_dns_name, CertificateAuthority};

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug, Parser)]
#[command(
    name = "tether-certs",
    version,
    about = "Create tether's hub CA and issue its serving and spoke certificates"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the hub CA: DIR/ca.crt and DIR/ca.key.
    InitCa(InitCa),
    /// Issue the hub's serving certificate: DIR/tls.crt, DIR/tls.key and DIR/ca.crt.
    Serving(Serving),
    /// Run on a spoke: make its private key and a CSR: DIR/tls.key and DIR/tls.csr.
    SpokeCsr(SpokeCsr),
    /// Sign a spoke's CSR into its client certificate.
    SignSpoke(SignSpoke),
    /// Make a complete spoke identity for a cluster: DIR/tls.crt, DIR/tls.key and DIR/ca.crt.
    IssueSpoke(IssueSpoke),
}

#[derive(Debug, Args)]
pub struct InitCa {
    /// Directory to write ca.crt and ca.key into (created if missing).
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_OUT")]
    pub out: PathBuf,
    /// Common name of the CA certificate.
    #[arg(long, value_name = "NAME", default_value = "tether-hub-ca", env = "TETHER_CERTS_COMMON_NAME")]
    pub common_name: String,
    /// Validity of the CA certificate, in days.
    #[arg(long, default_value_t = 3650, value_parser = days(), env = "TETHER_CERTS_CA_DAYS")]
    pub days: u32,
    /// Overwrite an existing CA.
    #[arg(long, env = "TETHER_CERTS_FORCE")]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("names").args(["dns", "ip"]).required(true).multiple(true)))]
pub struct Serving {
    /// Directory holding the CA's ca.crt and ca.key.
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_CA_DIR")]
    pub ca_dir: PathBuf,
    /// DNS names the hub is reached at (repeatable; comma-separated in the variable).
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',',
          value_parser = dns_name, env = "TETHER_CERTS_DNS")]
    pub dns: Vec<String>,
    /// IP addresses the hub is reached at (repeatable; comma-separated in the variable).
    #[arg(long, value_name = "IP", num_args = 1.., value_delimiter = ',', env = "TETHER_CERTS_IP")]
    pub ip: Vec<IpAddr>,
    /// Directory to write tls.crt, tls.key and ca.crt into (created if missing).
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_OUT")]
    pub out: PathBuf,
    /// Validity of the serving certificate, in days (cut at the CA's expiry).
    #[arg(long, default_value_t = 365, value_parser = days(), env = "TETHER_CERTS_SERVING_DAYS")]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long, env = "TETHER_CERTS_FORCE")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SpokeCsr {
    /// Name of this spoke's cluster (a DNS-1123 label).
    #[arg(long, value_name = "NAME", value_parser = cluster_name, env = "TETHER_CERTS_CLUSTER")]
    pub cluster: String,
    /// Directory to write tls.key and tls.csr into (created if missing).
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_OUT")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long, env = "TETHER_CERTS_FORCE")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SignSpoke {
    /// Directory holding the CA's ca.crt and ca.key.
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_CA_DIR")]
    pub ca_dir: PathBuf,
    /// Cluster the certificate is for; the CSR must name no other.
    #[arg(long, value_name = "NAME", value_parser = cluster_name, env = "TETHER_CERTS_CLUSTER")]
    pub cluster: String,
    /// The spoke's CSR (PEM).
    #[arg(long, value_name = "FILE", env = "TETHER_CERTS_CSR")]
    pub csr: PathBuf,
    /// File to write the certificate (PEM) to.
    #[arg(long, value_name = "FILE", env = "TETHER_CERTS_OUT")]
    pub out: PathBuf,
    /// Validity of the certificate, in days (cut at the CA's expiry).
    #[arg(long, default_value_t = 90, value_parser = days(), env = "TETHER_CERTS_SPOKE_DAYS")]
    pub days: u32,
    /// Overwrite an existing file.
    #[arg(long, env = "TETHER_CERTS_FORCE")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct IssueSpoke {
    /// Directory holding the CA's ca.crt and ca.key.
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_CA_DIR")]
    pub ca_dir: PathBuf,
    /// Cluster the identity is for (a DNS-1123 label).
    #[arg(long, value_name = "NAME", value_parser = cluster_name, env = "TETHER_CERTS_CLUSTER")]
    pub cluster: String,
    /// Directory to write tls.crt, tls.key and ca.crt into (created if missing).
    #[arg(long, value_name = "DIR", env = "TETHER_CERTS_OUT")]
    pub out: PathBuf,
    /// Validity of the certificate, in days (cut at the CA's expiry).
    #[arg(long, default_value_t = 90, value_parser = days(), env = "TETHER_CERTS_SPOKE_DAYS")]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long, env = "TETHER_CERTS_FORCE")]
    pub force: bool,
}

/// Parse the command line, run it with the system clock, report in one line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli.command, SystemTime::now()) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run one command as of `now`; the files written, in order.
pub fn run(command: Command, now: SystemTime) -> Result<Vec<PathBuf>> {
    match command {
        Command::InitCa(cmd) => {
            let validity = DAY * cmd.days;
            let ca = CertificateAuthority::generate(&cmd.common_name, now, validity).context("--common-name")?;
            write_outputs(
                "--out",
                &[
                    Output::cert(cmd.out.join("ca.crt"), ca.cert_pem()),
                    Output::key(cmd.out.join("ca.key"), ca.key_pem()),
                ],
                cmd.force,
            )
        }
        Command::Serving(cmd) => {
            let ca = load_ca(&cmd.ca_dir)?;
            let issued = ca
                .issue_serving(&cmd.dns, &cmd.ip, now, DAY * cmd.days)
                .map_err(|e| blame(e, &cmd.ca_dir, "--dns/--ip"))?;
            write_outputs(
                "--out",
                &[
                    Output::cert(cmd.out.join("tls.crt"), &issued.cert_pem),
                    Output::key(cmd.out.join("tls.key"), &issued.key_pem),
                    Output::cert(cmd.out.join("ca.crt"), ca.cert_pem()),
                ],
                cmd.force,
            )
        }
        Command::SpokeCsr(cmd) => {
            let (key_pem, csr_pem) = spoke_key_and_csr(&cmd.cluster).context("--cluster")?;
            write_outputs(
                "--out",
                &[Output::key(cmd.out.join("tls.key"), &key_pem), Output::cert(cmd.out.join("tls.csr"), &csr_pem)],
                cmd.force,
            )
        }
        Command::SignSpoke(cmd) => {
            let ca = load_ca(&cmd.ca_dir)?;
            let csr_pem = read(&cmd.csr, "--csr")?;
            let cert_pem = ca
                .sign_spoke_csr(&csr_pem, &cmd.cluster, now, DAY * cmd.days)
                .map_err(|e| blame(e, &cmd.ca_dir, &format!("--csr {}", cmd.csr.display())))?;
            write_outputs("--out", &[Output::cert(cmd.out, &cert_pem)], cmd.force)
        }
        Command::IssueSpoke(cmd) => {
            let ca = load_ca(&cmd.ca_dir)?;
            let (key_pem, csr_pem) = spoke_key_and_csr(&cmd.cluster).context("--cluster")?;
            let cert_pem = ca
                .sign_spoke_csr(&csr_pem, &cmd.cluster, now, DAY * cmd.days)
                .map_err(|e| blame(e, &cmd.ca_dir, "--cluster"))?;
            write_outputs(
                "--out",
                &[
                    Output::cert(cmd.out.join("tls.crt"), &cert_pem),
                    Output::key(cmd.out.join("tls.key"), &key_pem),
                    Output::cert(cmd.out.join("ca.crt"), ca.cert_pem()),
                ],
                cmd.force,
            )
        }
    }
}

/// Name the flag a library error is about: the CA's state belongs to `--ca-dir`, a validity
/// that cannot be encoded to `--days`, anything else to `flag`.
fn blame(e: tether_certs::Error, ca_dir: &Path, flag: &str) -> anyhow::Error {
    let flag = match e {
        tether_certs::Error::CaNotValid(_) => format!("--ca-dir {}", ca_dir.display()),
        tether_certs::Error::Validity(_) => "--days".to_owned(),
        _ => flag.to_owned(),
    };
    anyhow::Error::new(e).context(flag)
}

/// Print a usage error as one line naming the flag; help and version print as clap does.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        _ => {
            eprintln!("{}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn one_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(flags)) = e.get(ContextKind::InvalidArg) {
            return format!("error: missing required flag {} (see --help)", flags.join(", "));
        }
    }
    // clap's first line names the flag and the problem; the rest is usage and hints.
    let rendered = e.render().to_string();
    rendered.lines().next().unwrap_or("error: invalid arguments").trim_end().to_owned()
}

fn days() -> impl clap::builder::TypedValueParser<Value = u32> {
    clap::value_parser!(u32).range(1..=36_500)
}

fn cluster_name(name: &str) -> tether_certs::Result<String> {
    validate_cluster_name(name)?;
    Ok(name.to_owned())
}

fn dns_name(name: &str) -> tether_certs::Result<String> {
    validate_dns_name(name)?;
    Ok(name.to_owned())
}

fn read(path: &Path, flag: &str) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

fn load_ca(dir: &Path) -> Result<CertificateAuthority> {
    let cert = read(&dir.join("ca.crt"), "--ca-dir")?;
    let key = read(&dir.join("ca.key"), "--ca-dir")?;
    CertificateAuthority::from_pem(&cert, &key).with_context(|| format!("--ca-dir {}", dir.display()))
}

/// A file to write: its path, contents and mode.
struct Output<'a> {
    path: PathBuf,
    contents: &'a str,
    mode: u32,
}

impl<'a> Output<'a> {
    fn cert(path: PathBuf, contents: &'a str) -> Self {
        Self { path, contents, mode: CERT_MODE }
    }

    fn key(path: PathBuf, contents: &'a str) -> Self {
        Self { path, contents, mode: KEY_MODE }
    }
}

/// Write all `outputs`, or none if one exists and `force` is not set. Errors name `flag`.
fn write_outputs(flag: &str, outputs: &[Output<'_>], force: bool) -> Result<Vec<PathBuf>> {
    if !force {
        if let Some(existing) = outputs.iter().find(|o| o.path.symlink_metadata().is_ok()) {
            bail!("{flag}: {} already exists (pass --force to overwrite)", existing.path.display());
        }
    }
    let mut written = Vec::with_capacity(outputs.len());
    for output in outputs {
        write_file(&output.path, output.contents, output.mode)
            .with_context(|| format!("{flag}: writing {}", output.path.display()))?;
        written.push(output.path.clone());
    }
    Ok(written)
}

/// Write `contents` to `path` with exactly `mode`: into a new temporary file beside it, then
/// renamed over it, so that a reader never sees a partial file nor a key with loose modes.
fn write_file(path: &Path, contents: &str, mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode; certificates must stay world-readable.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if matches!(arg.get_id().as_str(), "help" | "version") {
                    continue;
                }
                let env = arg.get_env().unwrap_or_else(|| panic!("{} --{} has no env", sub.get_name(), arg.get_id()));
                assert!(env.to_string_lossy().starts_with("TETHER_CERTS_"));
            }
        }
    }

    #[test]
    fn missing_flags_are_reported_in_one_line() {
        let e = Cli::try_parse_from(["tether-certs", "issue-spoke", "--ca-dir", "x", "--out", "y"]).unwrap_err();
        let line = one_line(&e);
        assert!(line.contains("--cluster"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn invalid_values_are_reported_in_one_line() {
        let e = Cli::try_parse_from(["tether-certs", "spoke-csr", "--cluster", "Bad_Name", "--out", "y"]).unwrap_err();
        let line = one_line(&e);
        assert!(line.contains("--cluster") && line.contains("Bad_Name"), "{line}");
        assert!(!line.contains('\n'), "{line}");

        let e = Cli::try_parse_from(["tether-certs", "init-ca", "--out", "y", "--days", "0"]).unwrap_err();
        assert!(one_line(&e).contains("--days"), "{}", one_line(&e));
    }

    #[test]
    fn serving_needs_a_dns_name_or_an_ip() {
        let e = Cli::try_parse_from(["tether-certs", "serving", "--ca-dir", "c", "--out", "o"]).unwrap_err();
        let line = one_line(&e);
        assert!(line.contains("--dns") && line.contains("--ip"), "{line}");
        let ok = Cli::try_parse_from([
            "tether-certs",
            "serving",
            "--ca-dir",
            "c",
            "--out",
            "o",
            "--dns",
            "a.example",
            "b.example",
            "--ip",
            "127.0.0.1",
        ])
        .unwrap();
        let Command::Serving(serving) = ok.command else { panic!("not serving") };
        assert_eq!(serving.dns, ["a.example", "b.example"]);
        assert_eq!(serving.ip, [IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn run_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let ca_dir = dir.path().join("ca");
        let written = run(
            Command::InitCa(InitCa {
                out: ca_dir.clone(),
                common_name: "tether-hub-ca".into(),
                days: 10,
                force: false,
            }),
            now,
        )
        .unwrap();
        assert_eq!(written, [ca_dir.join("ca.crt"), ca_dir.join("ca.key")]);
        let out = dir.path().join("spoke");
        run(
            Command::IssueSpoke(IssueSpoke {
                ca_dir: ca_dir.clone(),
                cluster: "cluster-a".into(),
                out: out.clone(),
                days: 90,
                force: false,
            }),
            now,
        )
        .unwrap();
        let der = tether_certs::pem_to_der_certs(&fs::read_to_string(out.join("tls.crt")).unwrap()).unwrap();
        assert_eq!(tether_certs::cluster_of(&der[0]).unwrap(), "cluster-a");
        // Cut at the CA's expiry: 10 days, not 90.
        let (_, not_after) = tether_certs::validity(&der[0]).unwrap();
        assert_eq!(not_after, now + 10 * DAY);
    }

    #[test]
    fn write_file_sets_exact_modes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("tls.key");
        write_file(&path, "one", KEY_MODE).unwrap();
        write_file(&path, "two", CERT_MODE).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, CERT_MODE);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["tls.key"]);
    }
}
