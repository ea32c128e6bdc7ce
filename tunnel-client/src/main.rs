use anyhow::Context;
use clap::Parser;

// Per-request allocations dominated the hub's profile with glibc malloc (≈30% of its CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tether_runtime::report(run())
}

fn run() -> anyhow::Result<()> {
    let config = tunnel_client::Config::parse();
    tether_runtime::telemetry::init_tracing();
    let runtime = tether_runtime::build_runtime(config.worker_threads).context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = tether_runtime::shutdown::on_signals();
        tunnel_client::run(config, shutdown).await
    })?;
    Ok(())
}
