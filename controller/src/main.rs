use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use controller::Command;

// The same allocator as tunnel-server and tunnel-client (and the loadtest, whose controller role is what
// the push benchmark measures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match controller::Cli::parse().command() {
        Command::Run(config) => {
            tether_runtime::telemetry::init_tracing();
            let runtime = tether_runtime::build_runtime(config.worker_threads).context("starting the runtime")?;
            runtime.block_on(async {
                let shutdown = tether_runtime::shutdown::on_signals();
                controller::run(config, shutdown).await
            })?;
        }
        Command::Join(config) => {
            tether_runtime::tls::install_crypto_provider();
            let runtime = tether_runtime::build_runtime(1).context("starting the runtime")?;
            // A person runs this: one line that names the flag, never a backtrace.
            if let Err(e) = runtime.block_on(controller::join::join(config)) {
                eprintln!("error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
