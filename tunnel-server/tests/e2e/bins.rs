//! Where the suite finds the binaries it runs, and the check that they are not older than their sources.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn cache() -> PathBuf {
    std::env::var("TETHER_CACHE").unwrap_or_else(|_| "/var/cache/tether".into()).into()
}

fn kube_bin(name: &str) -> PathBuf {
    cache().join("kube-1.20.2").join(name)
}

/// The OCI archive `deploy/dev/images.sh` writes for image `name` (tunnel-client, busybox, ...).
pub fn image_archive(name: &str) -> PathBuf {
    cache().join("images").join(format!("{name}.oci.tar"))
}

/// The static release binary the tunnel-client image is built from (see `deploy/dev/test.sh`).
pub fn release_client_bin() -> PathBuf {
    repo_root().join(format!("target/{IMAGE_TARGET}/release/tunnel-client"))
}

const IMAGE_TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn kubectl_bin() -> PathBuf {
    kube_bin("kubectl")
}

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tunnel-server"))
}

pub fn client_bin() -> PathBuf {
    server_bin().with_file_name("tunnel-client")
}

pub fn controller_bin() -> PathBuf {
    server_bin().with_file_name("controller")
}

/// Fails when a binary the suite runs is older than a source it is built from: cargo builds only this
/// package's own binary (tunnel-server) before an integration test, so an edit to tunnel-client or the
/// controller would otherwise be tested against a stale binary. (Building them from here would build with
/// another feature selection than the one running, and each would keep invalidating the other's build.)
pub fn check_binaries_fresh() -> Result<()> {
    // Each binary with the workspace crates it is built from.
    let built_from = [
        (server_bin(), &["api", "proto", "certs", "runtime", "stream", "tunnel-server"][..]),
        (client_bin(), &CLIENT_CRATES[..]),
        (controller_bin(), &["api", "certs", "runtime", "controller"][..]),
    ];
    for (bin, crates) in built_from {
        check_fresh(&bin, crates, "cargo build --workspace --bins")?;
    }
    Ok(())
}

const CLIENT_CRATES: [&str; 5] = ["proto", "certs", "runtime", "stream", "tunnel-client"];

/// The node runs the tunnel-client image, built from the release binary: both must be newer than the sources.
pub fn check_release_client_fresh() -> Result<()> {
    let build = format!(
        "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target {IMAGE_TARGET} --bins && \
         deploy/dev/images.sh build tether target/{IMAGE_TARGET}/release"
    );
    let build = build.as_str();
    check_fresh(&release_client_bin(), &CLIENT_CRATES, build)?;
    let archive = image_archive("tunnel-client");
    let image = std::fs::metadata(&archive)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing: run `{build}`", archive.display()))?;
    if image < std::fs::metadata(release_client_bin())?.modified()? {
        bail!("{} is older than {}: run `{build}`", archive.display(), release_client_bin().display());
    }
    Ok(())
}

fn check_fresh(bin: &Path, crates: &[&str], build: &str) -> Result<()> {
    {
        let built = std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .with_context(|| format!("{} is missing: run `{build}`", bin.display()))?;
        let mut visit: Vec<PathBuf> = crates
            .iter()
            .flat_map(|c| [repo_root().join(c).join("Cargo.toml"), repo_root().join(c).join("src")])
            .collect();
        while let Some(path) = visit.pop() {
            let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    visit.push(entry?.path());
                }
            } else if meta.modified()? > built {
                bail!("{} is older than {}: run `{build}` before the e2e suite", bin.display(), path.display());
            }
        }
    }
    Ok(())
}
