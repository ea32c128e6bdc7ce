use anyhow::Context;
use clap::Parser;
use tunnel_server::{Cli, Command};

// Per-request allocations dominated the hub's profile with glibc malloc (≈30% of its CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tether_runtime::report(run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tether_runtime::telemetry::init_tracing();
    match cli.command {
        Command::Serve(config) => {
            let runtime = tether_runtime::build_runtime(config.worker_threads).context("starting the runtime")?;
            runtime.block_on(async {
                let shutdown = tether_runtime::shutdown::on_signals();
                tunnel_server::run(config, shutdown).await
            })?;
        }
        Command::Kubeconfig(args) => {
            let runtime = tether_runtime::build_runtime(1).context("starting the runtime")?;
            runtime.block_on(tunnel_server::kubeconfig::write(args))?;
        }
    }
    Ok(())
}
