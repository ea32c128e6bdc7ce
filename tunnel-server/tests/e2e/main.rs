//! End-to-end tests: real apiservers (etcd + kube-apiserver + kube-controller-manager), the real
//! tunnel-server and tunnel-client processes, real kubectl, and as root a real node running containers. One
//! environment serves every case; it is started before the first and torn down after the last, also when
//! cases fail.
mod bins;
mod cases;
mod echo;
mod env;
mod http;
mod pods;
mod procs;
mod pty;

use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let mut args = Arguments::from_args();
    // Cases share one environment and some restart its processes: run them one at a time.
    args.test_threads = Some(1);
    if args.list {
        libtest_mimic::run(&args, trials(None)).exit();
    }
    tether_runtime::tls::install_crypto_provider();
    let env = match env::Env::start() {
        Ok(env) => Arc::new(env),
        Err(e) => {
            eprintln!("e2e environment failed to start: {e:#}");
            std::process::exit(1);
        }
    };
    let conclusion = libtest_mimic::run(&args, trials(Some(env.clone())));
    let logs = env.logs.clone();
    drop(env);
    if conclusion.has_failed() {
        eprintln!("e2e: process logs kept in {}", logs.display());
    } else if let Some(dir) = logs.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    conclusion.exit();
}

type Case = fn(&env::Env) -> anyhow::Result<()>;

fn trials(env: Option<Arc<env::Env>>) -> Vec<Trial> {
    cases::all()
        .into_iter()
        .map(|(name, case): (&'static str, Case)| {
            let env = env.clone();
            Trial::test(name, move || {
                let env = env.as_ref().ok_or_else(|| Failed::from("no environment"))?;
                case(env).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect()
}
