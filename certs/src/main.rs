//! `tether-certs`: the admin tool for tether's hub CA. The work is in `cli.rs`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
