//! Writes tether's CRDs, a file each: `cargo run -p controller --bin crdgen [DIR]` (default
//! `deploy/hub/crds`, run from the repository's root).
fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "deploy/hub/crds".into()));
    for (file, yaml) in controller::crds()? {
        let path = dir.join(&file);
        std::fs::write(&path, yaml).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
