//! `kubectl`: what a person at a terminal feels. Sequential GETs of one ConfigMap from a real spoke apiserver,
//! through the hub and directly, paths alternating so that drift hits both: on one keep-alive connection, on
//! a fresh connection each (what every new kubectl process pays), and real `kubectl get` runs when a kubectl
//! binary is at hand.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;

use crate::apiserver::{Apiserver, ApiserverArgs};
use crate::client::{fetch, fresh_get, read, Target, H1, H2};
use crate::pki::Pki;
use crate::report::{Progress, Report, Row};
use crate::roles::TOKEN;
use crate::setup::{Hub, HubOptions, Spoke, WorkDir};
use crate::stats::Latencies;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// GETs per path on one keep-alive connection; a fifth as many on fresh connections.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// `kubectl get` runs per path; 0 skips them.
    #[arg(long, default_value_t = 20)]
    pub kubectl_runs: usize,
    /// The kubectl to run; by default the one build-kube.sh caches, else the first on PATH.
    #[arg(long)]
    pub kubectl: Option<PathBuf>,
    #[command(flatten)]
    pub apiserver: ApiserverArgs,
}

const PATH: &str = "/api/v1/namespaces/default/configmaps/x";
/// Unmeasured requests per path first: connections, caches and the hub's review cache warm up.
const WARMUP: usize = 20;
const FRESH_WARMUP: usize = 3;
/// The first runs also fill kubectl's discovery cache, as a regular user's is filled.
const KUBECTL_WARMUP: usize = 2;

pub fn run(options: Options) -> Result<Report> {
    ensure!(options.requests >= 5, "--requests must be at least 5");
    let workdir = WorkDir::new(&options.common)?;
    let dir = workdir.path();
    let pki = Pki::open_or_create(dir)?;
    let apiserver = Apiserver::start(&dir.join("apiserver"), &options.apiserver)?;
    let hub = Hub::start(dir, &pki, HubOptions { clusters: vec!["bench".into()], simulated: 0, extra: vec![] })?;
    let _spoke = Spoke::start(dir, &pki, "bench", hub.quic, &apiserver.kubeconfig)?;
    // Direct first everywhere: rows are compared against it.
    let paths =
        [apiserver.target("direct")?, Target::new("tether", hub.proxy, pki.hub_ca_pem(), "/clusters/bench", TOKEN)?];

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let progress = Progress::new();
    let mut report = Report::new("kubectl");
    // The request the spoke's client makes: HTTP/2, impersonating the caller. The apiserver's share of what
    // tether adds shows as this row against plain direct.
    let mut as_spoke = apiserver.target("direct, HTTP/2, impersonating")?;
    as_spoke.headers.insert("impersonate-user", http::HeaderValue::from_static("loadtest"));
    for group in ["system:masters", "system:authenticated"] {
        as_spoke.headers.append("impersonate-group", http::HeaderValue::from_static(group));
    }
    let keep_alive_paths = [paths[0].clone(), paths[1].clone(), as_spoke];
    let (keep_alive, fresh) = runtime.block_on(async {
        let x = serde_json::json!({ "k": "v" });
        apiserver.writer().await?.apply_configmap("default", "x", &x).await?;
        let keep_alive = keep_alive(&keep_alive_paths, options.requests, &progress).await?;
        let fresh = fresh(&paths, options.requests / 5, &progress).await?;
        Ok::<_, anyhow::Error>((keep_alive, fresh))
    })?;
    report.note(format!(
        "GET {PATH} of a real kube-apiserver 1.20: {} per path on one HTTP/1.1 keep-alive connection, {} on new \
         TLS connections, alternating between paths after {WARMUP} and {FRESH_WARMUP} unmeasured ones",
        options.requests,
        options.requests / 5
    ));
    rows(&mut report, "keep-alive GET", &keep_alive_paths, &keep_alive);
    report.note(
        "direct, HTTP/2, impersonating: the request as the spoke's client sends it (HTTP/2, Impersonate-User and \
         -Group of the caller): the apiserver's own share of what the path through tether costs",
    );
    rows(&mut report, "GET on a new connection", &paths, &fresh);
    match kubectl_binary(options.kubectl.as_deref()) {
        Some(kubectl) if options.kubectl_runs > 0 => {
            let configs = [direct_kubeconfig(dir, &apiserver)?, tether_kubeconfig(dir, &pki, &hub)?];
            let runs = kubectl_runs(&kubectl, &configs, &dir.join("kubectl-cache"), options.kubectl_runs, &progress)?;
            rows(&mut report, "kubectl get", &paths, &runs);
            report.note(format!(
                "kubectl get: {} runs of `{} get configmap x -o name` per path, wall time, after {KUBECTL_WARMUP} \
                 that fill its discovery cache",
                options.kubectl_runs,
                kubectl.display()
            ));
        }
        Some(_) => report.note("kubectl get: skipped (--kubectl-runs 0)"),
        None => report.note("kubectl get: skipped, no kubectl binary (build-kube.sh caches one, or use --kubectl)"),
    }
    progress.done();
    let ratio = report
        .rows
        .iter()
        .find(|r| r.get_text("request") == Some("keep-alive GET") && r.get_text("path") == Some("tether"));
    if let Some(ratio) = ratio.and_then(|r| r.get("p50 / direct")) {
        report.goal("keep-alive GET p50 through tether, as a ratio to direct", ratio, true, 1.1, "");
    }
    Ok(report)
}

/// Keep-alive GETs, alternating between the paths: HTTP/1.1, or HTTP/2 for a path that impersonates (as the
/// spoke's client asks).
async fn keep_alive<const N: usize>(
    paths: &[Target; N],
    requests: usize,
    progress: &Progress,
) -> Result<[Latencies; N]> {
    let mut senders = Vec::with_capacity(N);
    for target in paths {
        senders.push(match target.headers.is_empty() {
            true => Sender::H1(target.h1().await?),
            false => Sender::H2(target.h2().await?),
        });
    }
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(requests));
    for i in 0..WARMUP + requests {
        for ((target, sender), times) in paths.iter().zip(&mut senders).zip(&mut times) {
            let sent = Instant::now();
            sender.fetch(target.get(PATH)).await.with_context(|| format!("GET via {}", target.name))?;
            if i >= WARMUP {
                times.push(sent.elapsed());
            }
        }
        progress.update(format!("keep-alive GETs: {} of {requests}", i.saturating_sub(WARMUP)));
    }
    Ok(times.map(Latencies::new))
}

enum Sender {
    H1(H1),
    H2(H2),
}

impl Sender {
    async fn fetch(&mut self, request: http::Request<http_body_util::Empty<bytes::Bytes>>) -> Result<u64> {
        match self {
            Self::H1(sender) => fetch(sender, request).await,
            Self::H2(sender) => {
                sender.ready().await?;
                read(sender.send_request(request).await?).await
            }
        }
    }
}

/// GETs on a new connection each, alternating between the paths.
async fn fresh(paths: &[Target; 2], requests: usize, progress: &Progress) -> Result<[Latencies; 2]> {
    let mut times = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    for i in 0..FRESH_WARMUP + requests {
        for (target, times) in paths.iter().zip(&mut times) {
            let took = fresh_get(target, PATH).await.with_context(|| format!("GET via {}", target.name))?;
            if i >= FRESH_WARMUP {
                times.push(took);
            }
        }
        progress.update(format!("GETs on new connections: {} of {requests}", i.saturating_sub(FRESH_WARMUP)));
    }
    Ok(times.map(Latencies::new))
}

fn rows(report: &mut Report, request: &str, paths: &[Target], latencies: &[Latencies]) {
    let direct = latencies[0].p50_us();
    for (target, latencies) in paths.iter().zip(latencies) {
        report.rows.push(
            Row::new()
                .text("request", request)
                .text("path", &target.name)
                .num("count", latencies.count() as f64, 0)
                .num("p50 ms", latencies.p50_us() / 1e3, 2)
                .num("p99 ms", latencies.p99_us() / 1e3, 2)
                .num("mean ms", latencies.mean_us() / 1e3, 2)
                .num("p50 / direct", latencies.p50_us() / direct, 2),
        );
    }
}

/// `--kubectl`, else the one build-kube.sh caches (the apiserver's version), else the first on PATH.
pub(crate) fn kubectl_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let cache = std::env::var_os("TETHER_CACHE").map_or_else(|| PathBuf::from("/var/cache/tether"), PathBuf::from);
    let cached = cache.join("kube-1.20.2/kubectl");
    if cached.is_file() {
        return Some(cached);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("kubectl")).find(|p| p.is_file())
}

/// `runs` invocations per path, alternating, after a warm-up.
fn kubectl_runs(
    kubectl: &Path,
    kubeconfigs: &[PathBuf; 2],
    cache: &Path,
    runs: usize,
    progress: &Progress,
) -> Result<[Latencies; 2]> {
    let mut times = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    for i in 0..KUBECTL_WARMUP + runs {
        for (kubeconfig, times) in kubeconfigs.iter().zip(&mut times) {
            let started = Instant::now();
            let output = Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--cache-dir")
                .arg(cache)
                .args(["get", "configmap", "x", "--namespace", "default", "-o", "name"])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", kubectl.display()))?;
            let took = started.elapsed();
            ensure!(
                output.status.success() && output.stdout.starts_with(b"configmap/x"),
                "kubectl with {} failed ({}): {}",
                kubeconfig.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            if i >= KUBECTL_WARMUP {
                times.push(took);
            }
        }
        progress.update(format!("kubectl runs: {} of {runs}", i.saturating_sub(KUBECTL_WARMUP)));
    }
    Ok(times.map(Latencies::new))
}

pub(crate) fn direct_kubeconfig(dir: &Path, apiserver: &Apiserver) -> Result<PathBuf> {
    let server = format!("https://{}", apiserver.addr);
    write_kubeconfig(&dir.join("direct.kubeconfig"), &server, &apiserver.dir.join("ca.crt"), &apiserver.token)
}

pub(crate) fn tether_kubeconfig(dir: &Path, pki: &Pki, hub: &Hub) -> Result<PathBuf> {
    let server = format!("https://{}/clusters/bench", hub.proxy);
    write_kubeconfig(&dir.join("tether.kubeconfig"), &server, &pki.path("hub-ca.crt"), TOKEN)
}

/// A kubeconfig with a bearer token, readable by its owner only.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> Result<PathBuf> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n\
         users:\n- name: u\n  user:\n    token: {token}\n",
        ca.display()
    );
    crate::apiserver::write_private(path, &text)?;
    Ok(path.to_path_buf())
}
