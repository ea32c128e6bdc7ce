use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = controller::Config::parse();
    tether_runtime::telemetry::init_tracing();
    let runtime = tether_runtime::build_runtime(config.worker_threads).context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = tether_runtime::shutdown::on_signals();
        controller::run(config, shutdown).await
    })?;
    Ok(())
}
