use clap::Parser;

// The same allocator as tunnel-server, tunnel-client and controller: their roles run in this binary. A heap
// profiler (heaptrack) sees only the system allocator, hence the feature.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tether_runtime::report(loadtest::run(loadtest::Cli::parse()))
}
