use clap::Parser;

// The same allocator as tunnel-server and tunnel-client: the hub and spoke roles run in this binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tether_runtime::report(loadtest::run(loadtest::Cli::parse()))
}
