//! `node`: kubectl's streaming commands against a real node, through the hub and straight to the spoke's
//! apiserver with the same kubectl, the paths alternating in rounds so that drift hits both: `port-forward`
//! bulk to an echo port, one-byte round trips through a kept-open `exec -i ... cat` and whole `exec -- true`
//! runs; and the memory each open `logs -f` stream holds in hub, client and apiserver. Only hub and client
//! differ between the paths: apiserver, kubelet, containerd's stream server and the container are on both.
//!
//! The spoke is firewalled as in production: its cluster (`cluster.sh --node`) runs in a network namespace
//! made for the run, which no connection from outside enters. The hub listens outside on the host end of
//! the namespace's veth, the client runs inside and dials it, and the direct kubectl runs inside as well.
//! Namespaces, containerd and a kubelet need root.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::apiserver::{Apiserver, ApiserverArgs};
use crate::bulk::parse_size;
use crate::client::{fetch, Target, H1};
use crate::kubectl::{direct_kubeconfig, kubectl_binary, tether_kubeconfig};
use crate::memory::Meter;
use crate::pki::Pki;
use crate::process::{cpu_total, die_with_parent, enter_netns, Process};
use crate::report::{Progress, Report, Row};
use crate::roles::TOKEN;
use crate::setup::{Hub, HubOptions, Spoke, WorkDir};
use crate::stats::{median, Latencies};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Bytes sent through `kubectl port-forward` to the echo port, and read back, per transfer.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,
    /// Port-forward transfers per path; the median counts.
    #[arg(long, default_value_t = 3)]
    pub transfers: usize,
    /// One-byte round trips per path through one `kubectl exec -i echo -- cat`.
    #[arg(long, default_value_t = 500)]
    pub round_trips: usize,
    /// Whole `kubectl exec echo -- true` runs per path; 0 skips them.
    #[arg(long, default_value_t = 20)]
    pub exec_runs: usize,
    /// `logs -f` streams open at once through the hub.
    #[arg(long, default_value_t = 200)]
    pub streams: usize,
    /// Longest wait for the processes' memory to stop moving before it is read.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The kubectl to run; by default the one build-kube.sh caches, else the first on PATH.
    #[arg(long)]
    pub kubectl: Option<PathBuf>,
    #[command(flatten)]
    pub apiserver: ApiserverArgs,
}

/// `echo` answers every connection to ECHO_PORT with what it sent (the busybox image's `echo-server`: a
/// process per connection, half-closing at its EOF) and has `cat` for exec; `ticker` prints a line a second.
const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/tether/busybox:1.35.0
    imagePullPolicy: Never
    command: [sh, -c, 'echo-server 7000 & exec sleep 1000000']
---
apiVersion: v1
kind: Pod
metadata: {name: ticker, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ticker
    image: localhost/tether/busybox:1.35.0
    imagePullPolicy: Never
    command: [sh, -c, 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done']
";
const ECHO_PORT: u16 = 7000;
/// The last line at once (proof that the stream reaches the container), then every new one.
const LOG_PATH: &str = "/api/v1/namespaces/default/pods/ticker/log?follow=true&tailLines=1";
/// An unmeasured transfer per path first: the port-forward's first stream and the windows on the way.
const TRANSFER_WARMUP: u64 = 1 << 20;
/// Unmeasured round trips per path first: the first bytes of an exec session are slower.
const ROUND_TRIP_WARMUP: usize = 20;
/// A byte that has not come back by then will not: the session is stuck.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(30);
/// The first runs also fill kubectl's discovery cache, as a regular user's is filled.
const EXEC_WARMUP: usize = 2;
/// Streams opened and closed before memory is read: what the first ones cost once (connections the client,
/// the apiserver and the kubelet keep) is not a stream's.
const STREAMS_WARMUP: usize = 10;
/// GETs through the tunnel before the first reading. An allocator returns freed memory to the system a little
/// at a time, and only while the process allocates: the client held some 5 MiB of what it freed after
/// starting, and gave it back while the streams opened, so that they seemed to cost less than nothing.
const CHURN: usize = 2000;
/// Memory is read as hub, client, apiserver, kubelet, in this order.
const MEASURED: [&str; 4] = ["hub", "client", "apiserver", "kubelet"];
const MIB: f64 = (1 << 20) as f64;

pub fn run(options: Options) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "loadtest node needs root: it makes a network namespace and runs containerd and a kubelet"
    );
    ensure!(
        options.size > 0 && options.transfers > 0 && options.round_trips > 0 && options.streams > 0,
        "--size, --transfers, --round-trips and --streams must be at least 1"
    );
    let kubectl = kubectl_binary(options.kubectl.as_deref())
        .context("no kubectl binary (build-kube.sh caches one, or use --kubectl)")?;
    let workdir = WorkDir::new(&options.common)?;
    let dir = workdir.path();
    let pki = Pki::open_or_create(dir)?;
    let cluster_dir = dir.join("apiserver");
    let temporary = matches!(workdir, WorkDir::Temporary(_)).then_some(dir);
    // Declared before the cluster, so dropped after it: the namespace goes once the cluster in it stopped.
    let machine = Machine::prepare(&options, &cluster_dir, temporary, dir)?;
    let progress = Progress::new();
    progress.update("starting: a cluster with a node (about a minute)");
    let apiserver = Apiserver::start_node(&cluster_dir, &options.apiserver, &machine.netns)?;
    let hub_options =
        HubOptions { clusters: vec!["bench".into()], simulated: 0, extra: options.common.hub_args.clone() };
    let hub = Hub::start_on(dir, &pki, hub_options, SocketAddr::new(machine.host_ip(), 0))?;
    let spoke = Spoke::start_in(dir, &pki, "bench", hub.quic, &apiserver.kubeconfig, Some(&machine.netns))?;
    let kubelet = apiserver.component_pid("kubelet")?;
    let node_pids = vec![apiserver.pid, kubelet, apiserver.component_pid("containerd")?];

    // Direct first everywhere: rows are compared against it.
    let routes = [
        Route {
            name: "direct",
            kubeconfig: direct_kubeconfig(dir, &apiserver)?,
            netns: Some(machine.netns.clone()),
            pids: vec![],
        },
        Route {
            name: "tether",
            kubeconfig: tether_kubeconfig(dir, &pki, &hub)?,
            netns: None,
            pids: vec![hub.process.pid(), spoke.process.pid()],
        },
    ];
    let kubectl = Kubectl { bin: kubectl, cache: dir.join("kubectl-cache"), dir: dir.to_path_buf() };
    progress.update("starting: pods echo and ticker");
    kubectl.pods(&routes[0])?;

    let mut report = Report::new("node");
    // Memory first: the bulk transfers after it leave hub and client holding memory that an allocator gives
    // back only some time later, which would fall into a later phase's readings.
    let tether = Target::new("tether", hub.proxy, pki.hub_ca_pem(), "/clusters/bench", TOKEN)?;
    let pids = [hub.process.pid(), spoke.process.pid(), apiserver.pid, kubelet];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let memory = runtime.block_on(logs_memory(&tether, pids, &options, &progress, &mut report))?;
    let transfers = port_forward(&kubectl, &routes, &node_pids, &options, &progress)?;
    let round_trips = round_trips(&kubectl, &routes, options.round_trips, &progress)?;
    let runs = match options.exec_runs {
        0 => None,
        runs => Some(exec_runs(&kubectl, &routes, runs, &progress)?),
    };
    port_forward_rows(&mut report, &routes, &transfers, options.size);
    report.new_table();
    round_trip_rows(&mut report, &routes, &round_trips);
    if let Some(runs) = &runs {
        report.new_table();
        exec_rows(&mut report, &routes, runs);
    }
    report.new_table();
    memory_rows(&mut report, &memory, options.streams);
    progress.done();

    report.note(format!(
        "a real node (kubelet 1.20.2, containerd, runc) in network namespace {} behind its firewall; {} on both \
         paths: direct is kubectl inside the namespace straight to the apiserver, tether is kubectl outside, \
         through hub, tunnel and client; apiserver, kubelet, containerd's stream server and the pod are on both",
        machine.netns,
        kubectl.bin.display()
    ));
    if let Some((before, raised)) = machine.inotify {
        report.note(format!(
            "{INOTIFY_INSTANCES} raised from {before} to {raised} for the run (the kubelet takes one per follow \
             stream and ends a stream it cannot watch), restored at the end"
        ));
    }
    report.note(format!(
        "port-forward echo: {:.0} MiB per transfer to `echo-server` in the pod while reading it back, every \
         byte compared; MB/s each way = MB sent / time from connect to the last byte back; median of {} \
         transfers per path, alternating, after a 1 MiB warm-up; cpu per MiB echoed (each crosses both ways): \
         kubectl, hub + client, and apiserver + kubelet + containerd",
        options.size as f64 / MIB,
        options.transfers
    ));
    report.note(format!(
        "exec 1-byte round trip: one `kubectl exec -i echo -- cat` per path kept open, a byte written to its \
         stdin until it is back on its stdout, {} per path alternating after {ROUND_TRIP_WARMUP}; cpu per round \
         trip of that path's kubectl, and of hub + client",
        options.round_trips
    ));
    if options.exec_runs > 0 {
        report.note(format!(
            "kubectl exec -- true: {} whole runs per path (process start, exec session set-up, exit), wall time, \
             alternating after {EXEC_WARMUP} that fill kubectl's discovery cache",
            options.exec_runs
        ));
    }
    report.note(format!(
        "logs -f memory: {} follow streams of a pod printing a line a second (GET ...{LOG_PATH}), each on its \
         own HTTP/1.1 TLS connection to the hub as each `kubectl logs -f` has, open once each had its first \
         line; KiB/stream = growth of settled RSS / streams (the apiserver's Go heap grows in steps, so its share \
         varies from run to run); after close: settled once all were closed; measured first, before the bulk \
         transfers, after {CHURN} GETs through the tunnel that make the client give back what it freed starting",
        options.streams
    ));
    Ok(report)
}

/// One way from kubectl to the spoke's apiserver.
struct Route {
    name: &'static str,
    kubeconfig: PathBuf,
    /// Where kubectl runs: inside the spoke's namespace for the direct route.
    netns: Option<String>,
    /// The processes only this route crosses (hub and client), whose CPU time is its own cost.
    pids: Vec<u32>,
}

/// The kubectl of the run, with its discovery cache and where its logs go.
struct Kubectl {
    bin: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn command(&self, route: &Route, args: &[&str]) -> Result<Command> {
        let mut command = Command::new(&self.bin);
        command.arg("--kubeconfig").arg(&route.kubeconfig).arg("--cache-dir").arg(&self.cache).args(args);
        if let Some(netns) = &route.netns {
            enter_netns(&mut command, netns)?;
        }
        Ok(command)
    }

    /// Creates the pods (a kept --workdir's cluster has them already) and waits until they run.
    fn pods(&self, route: &Route) -> Result<()> {
        let mut apply = self.command(route, &["apply", "-f", "-"])?;
        let mut child = apply.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().context("kubectl's stdin")?.write_all(PODS.as_bytes())?;
        let applied = child.wait_with_output()?;
        ensure!(
            applied.status.success(),
            "kubectl apply of the pods: {}",
            String::from_utf8_lossy(&applied.stderr).trim()
        );
        let ready = self
            .command(route, &["wait", "--for=condition=Ready", "pod/echo", "pod/ticker", "--timeout=120s"])?
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            ready.status.success(),
            "pods echo and ticker not Ready within 120 s: {}",
            String::from_utf8_lossy(&ready.stderr).trim()
        );
        Ok(())
    }
}

/// What the run changes on the machine, undone when it ends however it ends: the spoke's network namespace
/// (`deploy/dev/netns.sh`), removed with the cluster in it, and the inotify instance limit, raised when it is
/// too low for `--streams`. A teardown process (`loadtest role teardown`) undoes both once its stdin, our
/// pipe, closes; the kernel closes it when this process exits, also after a Ctrl-C or a SIGKILL that runs no
/// destructor, and in a process group of its own the teardown is not stopped by a Ctrl-C at the terminal.
struct Machine {
    netns: String,
    index: u8,
    /// The inotify instance limit before the run and as the run set it, when it raised it.
    inotify: Option<(u64, u64)>,
    teardown: Child,
}

/// Per user, shared by every process of the machine's root; a kubelet takes one per `logs -f` stream it
/// follows, and past the limit it ends a stream after its first lines.
const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

impl Machine {
    /// `cluster` is stopped before the namespace goes, and `remove` (the temporary work directory) after.
    fn prepare(options: &Options, cluster: &Path, remove: Option<&Path>, dir: &Path) -> Result<Self> {
        let deploy = &options.apiserver.deploy_dir;
        let index = free_index()?;
        let netns = format!("tether-loadtest-{}", std::process::id());
        let limit: u64 = std::fs::read_to_string(INOTIFY_INSTANCES)
            .with_context(|| format!("reading {INOTIFY_INSTANCES}"))?
            .trim()
            .parse()
            .context(INOTIFY_INSTANCES)?;
        // The room the default limit (128) leaves everything else on the machine, plus one per stream.
        let needed = options.streams as u64 + 128;
        let inotify = (limit < needed).then_some((limit, needed));

        let mut command = Command::new(std::env::current_exe().context("locating this binary")?);
        command.args(["role", "teardown", "--netns", &netns, "--deploy-dir"]).arg(deploy).arg("--cluster").arg(cluster);
        if let Some(remove) = remove {
            command.arg("--remove").arg(remove);
        }
        if let Some((before, raised)) = inotify {
            command.args([
                "--inotify-instances",
                &before.to_string(),
                "--raised-inotify-instances",
                &raised.to_string(),
            ]);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("teardown.log"))?;
        let teardown = command
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the teardown process")?;
        // From here on a failure undoes whatever was done, as dropping this closes the pipe.
        let machine = Self { netns, index, inotify, teardown };
        if let Some((before, raised)) = inotify {
            std::fs::write(INOTIFY_INSTANCES, raised.to_string()).with_context(|| {
                format!(
                    "--streams {} needs {INOTIFY_INSTANCES} at {raised} or more (the kubelet takes one per                      stream), it is {before} and could not be raised",
                    options.streams
                )
            })?;
        }
        let created = Command::new("bash")
            .arg(deploy.join("netns.sh"))
            .args(["create", &machine.netns, &index.to_string()])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            created.status.success(),
            "netns.sh create {} {index}: {}",
            machine.netns,
            String::from_utf8_lossy(&created.stderr).trim()
        );
        Ok(machine)
    }

    /// The host end of the veth: the hub's address as the spoke sees it.
    fn host_ip(&self) -> IpAddr {
        Ipv4Addr::new(10, 251, self.index, 1).into()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The teardown starts at the EOF; waiting for it means nothing is left once the run returns.
        drop(self.teardown.stdin.take());
        if !self.teardown.wait().is_ok_and(|s| s.success()) {
            eprintln!(
                "loadtest node: the teardown failed; `bash deploy/dev/netns.sh delete {}` removes the namespace",
                self.netns
            );
        }
    }
}

/// An index (veth `tth<INDEX>h`, 10.251.INDEX.0/30) no namespace uses: from 220 to 254, which neither the
/// e2e suite (20–219) nor up.sh (11, 12) takes, starting at one picked by our pid so that parallel runs
/// rarely probe the same one first.
fn free_index() -> Result<u8> {
    let pid = std::process::id();
    (0..35)
        .map(|k| 220 + (pid + k) % 35)
        .find(|i| !Path::new(&format!("/sys/class/net/tth{i}h")).exists())
        .map(|i| i as u8)
        .context("no free network namespace index: veths tth220h to tth254h all exist")
}

#[derive(Debug, Args)]
pub struct TeardownArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub deploy_dir: PathBuf,
    /// The cluster.sh directory of the cluster inside the namespace.
    #[arg(long)]
    pub cluster: PathBuf,
    /// A directory to remove last (the run's temporary one).
    #[arg(long)]
    pub remove: Option<PathBuf>,
    /// The inotify instance limit to restore, if it is still what the run raised it to.
    #[arg(long, requires = "raised_inotify_instances")]
    pub inotify_instances: Option<u64>,
    #[arg(long)]
    pub raised_inotify_instances: Option<u64>,
}

/// `loadtest role teardown`: waits until stdin closes, then stops the cluster (whose supervisor stops the
/// containers: killed, it could not), deletes the namespace, restores the inotify limit and removes the
/// temporary directory.
pub fn teardown(args: TeardownArgs) -> Result<()> {
    // EOF comes when the run drops its end or dies; an error reading means the same.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    let script = |name: &str| {
        let mut command = Command::new("bash");
        command.arg(args.deploy_dir.join(name)).stdin(Stdio::null());
        command
    };
    let stopped = script("cluster.sh").arg("stop").arg(&args.cluster).status();
    // netns.sh deletes every veth it lists, and fails on one that went meanwhile: the kernel removes a pod's
    // veth only some time after the pod's namespace went with the cluster. A second pass lists fewer.
    let mut deleted = false;
    for _ in 0..10 {
        deleted = script("netns.sh").args(["delete", &args.netns]).status().is_ok_and(|s| s.success());
        if deleted {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if let (Some(before), Some(raised)) = (args.inotify_instances, args.raised_inotify_instances) {
        // Someone else's later change stays.
        let now = std::fs::read_to_string(INOTIFY_INSTANCES).unwrap_or_default();
        if now.trim() == raised.to_string() {
            let _ = std::fs::write(INOTIFY_INSTANCES, before.to_string());
        }
    }
    if let Some(dir) = &args.remove {
        let _ = std::fs::remove_dir_all(dir);
    }
    ensure!(stopped.is_ok_and(|s| s.success()), "cluster.sh stop {} failed", args.cluster.display());
    ensure!(deleted, "netns.sh delete {} failed", args.netns);
    Ok(())
}

/// Runs `f` on a thread of its own, inside network namespace `netns` when given: the direct port-forward
/// listens inside the spoke's namespace, and only a thread that entered it can connect there.
fn on_thread_in<T: Send + 'static>(netns: Option<&str>, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let namespace = match netns {
        Some(netns) => {
            let path = Path::new("/run/netns").join(netns);
            Some(std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?)
        }
        None => None,
    };
    std::thread::spawn(move || {
        if let Some(namespace) = namespace {
            // SAFETY: setns moves this thread only; the descriptor is open for the call.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("entering the spoke's network namespace");
            }
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("a measuring thread panicked"))?
}

/// Random bytes, sent over and over: every byte that comes back is compared with the one sent at its
/// offset. With the count, and the end after the half-close, a byte lost, doubled or changed fails.
struct Pattern(Vec<u8>);

impl Pattern {
    const LEN: usize = 1 << 20;

    fn new() -> Self {
        let mut block = vec![0u8; Self::LEN];
        rand::fill(&mut block[..]);
        Self(block)
    }

    /// Whether `data` is what was sent from stream offset `at` on.
    fn matches(&self, at: u64, mut data: &[u8]) -> bool {
        let mut at = (at % Self::LEN as u64) as usize;
        while !data.is_empty() {
            let n = data.len().min(Self::LEN - at);
            if data[..n] != self.0[at..at + n] {
                return false;
            }
            data = &data[n..];
            at = 0;
        }
        true
    }

    fn send(&self, out: &mut impl Write, total: u64) -> std::io::Result<()> {
        let mut left = total;
        while left > 0 {
            let n = left.min(Self::LEN as u64) as usize;
            out.write_all(&self.0[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// A running `kubectl port-forward pod/echo :7000` and the address it listens on (inside the spoke's
/// namespace for the direct route).
struct Forward {
    process: Process,
    addr: SocketAddr,
}

impl Forward {
    fn start(kubectl: &Kubectl, route: &Route) -> Result<Self> {
        let name = format!("port-forward-{}", route.name);
        // Its log is appended to; an address from an earlier run in a kept --workdir must not be read.
        let _ = std::fs::remove_file(kubectl.dir.join(format!("{name}.log")));
        let target = format!(":{ECHO_PORT}");
        let command = kubectl.command(route, &["port-forward", "pod/echo", &target, "--address", "127.0.0.1"])?;
        let mut process = Process::spawn(&name, &kubectl.dir, command)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // "Forwarding from 127.0.0.1:PORT -> 7000" once it listens.
            let log = process.log();
            let addr = log.lines().find_map(|l| l.strip_prefix("Forwarding from ")?.split(" -> ").next()?.parse().ok());
            if let Some(addr) = addr {
                return Ok(Self { process, addr });
            }
            ensure!(process.running(), "kubectl port-forward ({}) exited: {}", route.name, log.trim());
            ensure!(
                Instant::now() < deadline,
                "kubectl port-forward ({}) listened nowhere within 30 s: {}",
                route.name,
                log.trim()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One transfer: its time, and the CPU of each process group, from the connect to the last byte back.
struct Echoed {
    elapsed: Duration,
    cpu: Vec<Duration>,
}

/// Sends `total` pattern bytes to the echo behind `addr` while reading them back, checks every byte, then
/// half-closes and waits for the echo's end: a byte more than was sent fails too.
fn echo(addr: SocketAddr, total: u64, pattern: Arc<Pattern>, groups: Vec<Vec<u32>>) -> Result<Echoed> {
    let before = groups.iter().map(|pids| cpu_total(pids)).collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let sender = {
        let pattern = pattern.clone();
        std::thread::spawn(move || pattern.send(&mut out, total))
    };
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0u64;
    while received < total {
        // Never past `total`: what comes after it is the half-close's business.
        let want = buf.len().min((total - received) as usize);
        let n =
            stream.read(&mut buf[..want]).with_context(|| format!("reading the echo at byte {received} of {total}"))?;
        ensure!(n > 0, "the echo ended after {received} of {total} bytes");
        ensure!(
            pattern.matches(received, &buf[..n]),
            "the echo differs from what was sent within bytes {received}..{}",
            received + n as u64
        );
        received += n as u64;
    }
    let elapsed = started.elapsed();
    let cpu = groups.iter().zip(before).map(|(pids, before)| Ok(cpu_total(pids)? - before)).collect::<Result<_>>()?;
    sender.join().map_err(|_| anyhow!("the sending thread panicked"))?.context("sending to the echo")?;
    stream.shutdown(Shutdown::Write)?;
    let extra = stream.read(&mut buf).context("waiting for the echo to end after the half-close")?;
    ensure!(extra == 0, "the echo sent more bytes than it was sent");
    Ok(Echoed { elapsed, cpu })
}

/// Transfers through one port-forward per route, alternating; per route its transfers.
fn port_forward(
    kubectl: &Kubectl,
    routes: &[Route; 2],
    node_pids: &[u32],
    options: &Options,
    progress: &Progress,
) -> Result<[Vec<Echoed>; 2]> {
    let forwards = routes.iter().map(|route| Forward::start(kubectl, route)).collect::<Result<Vec<_>>>()?;
    let pattern = Arc::new(Pattern::new());
    let mut transfers: [Vec<Echoed>; 2] = Default::default();
    for round in 0..=options.transfers {
        for ((route, forward), transfers) in routes.iter().zip(&forwards).zip(&mut transfers) {
            let size = if round == 0 { TRANSFER_WARMUP.min(options.size) } else { options.size };
            progress.update(format!("port-forward: {} transfer {round} of {}", route.name, options.transfers));
            let groups = vec![vec![forward.process.pid()], route.pids.clone(), node_pids.to_vec()];
            let (addr, pattern) = (forward.addr, pattern.clone());
            let echoed = on_thread_in(route.netns.as_deref(), move || echo(addr, size, pattern, groups))
                .with_context(|| format!("port-forward ({}): {}", route.name, forward.process.log().trim()))?;
            if round > 0 {
                transfers.push(echoed);
            }
        }
    }
    Ok(transfers)
}

fn port_forward_rows(report: &mut Report, routes: &[Route; 2], transfers: &[Vec<Echoed>; 2], size: u64) {
    let mib = size as f64 / MIB;
    let rate = |t: &[Echoed]| median(t.iter().map(|e| size as f64 / 1e6 / e.elapsed.as_secs_f64()).collect());
    let cpu = |t: &[Echoed], group: usize| median(t.iter().map(|e| e.cpu[group].as_secs_f64() * 1e3 / mib).collect());
    let direct = rate(&transfers[0]);
    for (route, transfers) in routes.iter().zip(transfers) {
        let own = if route.pids.is_empty() { f64::NAN } else { cpu(transfers, 1) };
        report.rows.push(
            Row::new()
                .text("measure", "port-forward echo")
                .text("path", route.name)
                .num("MB/s each way", rate(transfers), 1)
                .num("ratio to direct", rate(transfers) / direct, 2)
                .num("kubectl cpu ms/MiB", cpu(transfers, 0), 2)
                .num("hub+client cpu ms/MiB", own, 2)
                .num("apiserver+node cpu ms/MiB", cpu(transfers, 2), 2),
        );
    }
}

/// `kubectl exec -i echo -- cat`, kept open: each byte written to it comes back.
struct Cat {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: PathBuf,
}

impl Cat {
    fn start(kubectl: &Kubectl, route: &Route) -> Result<Self> {
        let mut command = kubectl.command(route, &["exec", "-i", "echo", "--", "cat"])?;
        die_with_parent(&mut command);
        let stderr = kubectl.dir.join(format!("exec-cat-{}.log", route.name));
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("starting kubectl exec")?;
        let stdin = child.stdin.take().context("kubectl's stdin")?;
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        Ok(Self { child, stdin, stdout, stderr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `byte` and waits for it to come back; the time between.
    fn round_trip(&mut self, byte: u8) -> Result<Duration> {
        let sent = Instant::now();
        self.stdin.write_all(&[byte]).context("writing to kubectl exec")?;
        let mut poll = libc::pollfd { fd: self.stdout.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&mut poll, 1, ROUND_TRIP_TIMEOUT.as_millis() as libc::c_int) };
        ensure!(ready > 0, "the byte did not come back within {ROUND_TRIP_TIMEOUT:?}");
        let mut got = [0u8];
        ensure!(self.stdout.read(&mut got)? == 1, "kubectl exec ended");
        let took = sent.elapsed();
        ensure!(got[0] == byte, "sent byte {byte}, got {} back", got[0]);
        Ok(took)
    }
}

impl Drop for Cat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one route's round trips measured.
struct RoundTrips {
    latencies: Latencies,
    /// CPU of its kubectl, and of the processes only it crosses, per measured round trip.
    kubectl_cpu: Duration,
    own_cpu: Duration,
}

/// One-byte round trips through one exec session per route, alternating after a warm-up.
fn round_trips(kubectl: &Kubectl, routes: &[Route; 2], count: usize, progress: &Progress) -> Result<[RoundTrips; 2]> {
    let mut cats = routes.iter().map(|route| Cat::start(kubectl, route)).collect::<Result<Vec<_>>>()?;
    let mut times: [Vec<Duration>; 2] = Default::default();
    let mut cpu: [(Duration, Duration); 2] = Default::default();
    for i in 0..ROUND_TRIP_WARMUP + count {
        if i == ROUND_TRIP_WARMUP {
            for ((route, cat), cpu) in routes.iter().zip(&cats).zip(&mut cpu) {
                *cpu = (cpu_total(&[cat.pid()])?, cpu_total(&route.pids)?);
            }
        }
        for ((route, cat), times) in routes.iter().zip(&mut cats).zip(&mut times) {
            let took = cat.round_trip(i as u8).with_context(|| {
                let stderr = std::fs::read_to_string(&cat.stderr).unwrap_or_default();
                format!("exec round trip {i} ({}): {}", route.name, stderr.trim())
            })?;
            if i >= ROUND_TRIP_WARMUP {
                times.push(took);
            }
        }
        progress.update(format!("exec round trips: {} of {count}", i.saturating_sub(ROUND_TRIP_WARMUP)));
    }
    let mut results = Vec::new();
    for (((route, cat), times), (kubectl_before, own_before)) in routes.iter().zip(&cats).zip(times).zip(cpu) {
        let per = |d: Duration| d / count as u32;
        results.push(RoundTrips {
            latencies: Latencies::new(times),
            kubectl_cpu: per(cpu_total(&[cat.pid()])? - kubectl_before),
            own_cpu: per(cpu_total(&route.pids)? - own_before),
        });
    }
    results.try_into().map_err(|_| anyhow!("two routes"))
}

fn round_trip_rows(report: &mut Report, routes: &[Route; 2], results: &[RoundTrips; 2]) {
    let direct = results[0].latencies.p50_us();
    for (route, result) in routes.iter().zip(results) {
        let latencies = &result.latencies;
        let own = if route.pids.is_empty() { f64::NAN } else { result.own_cpu.as_secs_f64() * 1e6 };
        report.rows.push(
            Row::new()
                .text("measure", "exec 1-byte round trip")
                .text("path", route.name)
                .num("count", latencies.count() as f64, 0)
                .num("p50 ms", latencies.p50_us() / 1e3, 3)
                .num("p99 ms", latencies.p99_us() / 1e3, 3)
                .num("p999 ms", latencies.p999_us() / 1e3, 3)
                .num("p50 / direct", latencies.p50_us() / direct, 2)
                .num("kubectl cpu µs/rt", result.kubectl_cpu.as_secs_f64() * 1e6, 0)
                .num("hub+client cpu µs/rt", own, 0),
        );
    }
}

/// Whole `kubectl exec echo -- true` runs per route, alternating after a warm-up.
fn exec_runs(kubectl: &Kubectl, routes: &[Route; 2], runs: usize, progress: &Progress) -> Result<[Latencies; 2]> {
    let mut times: [Vec<Duration>; 2] = Default::default();
    for i in 0..EXEC_WARMUP + runs {
        for (route, times) in routes.iter().zip(&mut times) {
            let mut command = kubectl.command(route, &["exec", "echo", "--", "true"])?;
            let started = Instant::now();
            let output = command.stdin(Stdio::null()).output().context("running kubectl exec")?;
            let took = started.elapsed();
            ensure!(
                output.status.success(),
                "kubectl exec echo -- true ({}) failed ({}): {}",
                route.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            if i >= EXEC_WARMUP {
                times.push(took);
            }
        }
        progress.update(format!("kubectl exec runs: {} of {runs}", i.saturating_sub(EXEC_WARMUP)));
    }
    Ok(times.map(Latencies::new))
}

fn exec_rows(report: &mut Report, routes: &[Route; 2], runs: &[Latencies; 2]) {
    let direct = runs[0].p50_us();
    for (route, latencies) in routes.iter().zip(runs) {
        report.rows.push(
            Row::new()
                .text("measure", "kubectl exec -- true")
                .text("path", route.name)
                .num("count", latencies.count() as f64, 0)
                .num("p50 ms", latencies.p50_us() / 1e3, 1)
                .num("p99 ms", latencies.p99_us() / 1e3, 1)
                .num("mean ms", latencies.mean_us() / 1e3, 1)
                .num("p50 / direct", latencies.p50_us() / direct, 2),
        );
    }
}

/// An open follow stream: the connection and the body still being sent.
struct Follow {
    _sender: H1,
    body: Incoming,
}

/// Opens follow streams `numbers` (of `total`) through the hub, one connection each, and returns once every
/// one has had its first line.
async fn follow(tether: &Target, numbers: Range<usize>, total: usize, progress: &Progress) -> Result<Vec<Follow>> {
    let mut streams = Vec::with_capacity(numbers.len());
    for i in numbers {
        let mut sender = tether.h1().await?;
        sender.ready().await?;
        let response = sender.send_request(tether.get(LOG_PATH)).await?;
        let status = response.status();
        ensure!(status == http::StatusCode::OK, "follow stream {i}: status {status}");
        let mut body = response.into_body();
        next_line(&mut body).await.with_context(|| format!("follow stream {i}"))?;
        streams.push(Follow { _sender: sender, body });
        progress.update(format!("logs -f: {} of {total} streams open", i + 1));
    }
    Ok(streams)
}

/// Waits for the next piece of the log (a line a second comes; a stream ended or stuck fails).
async fn next_line(body: &mut Incoming) -> Result<Bytes> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .context("no line within 20 s")?
            .context("the stream ended")??;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return Ok(data);
            }
        }
    }
}

/// Settled RSS in [`MEASURED`] order before, with every stream open, and after all were closed.
struct Memory {
    rss: [[u64; 4]; 3],
}

async fn logs_memory(
    tether: &Target,
    pids: [u32; 4],
    options: &Options,
    progress: &Progress,
    report: &mut Report,
) -> Result<Memory> {
    let total = options.streams;
    drop(follow(tether, 0..STREAMS_WARMUP.min(total), total, progress).await?);
    let mut sender = tether.h1().await?;
    for i in 0..CHURN {
        fetch(&mut sender, tether.get("/version")).await?;
        progress.update(format!("logs -f: {i} of {CHURN} GETs before the first reading"));
    }
    drop(sender);
    let mut meter = Meter::new(pids, MEASURED, tether, options.settle).await?;
    let before = meter.settle("logs -f: memory before", progress, report).await?;
    let mut streams = follow(tether, 0..total, total, progress).await?;
    let open = meter.settle("logs -f: memory with every stream open", progress, report).await?;
    // Each is still following, not just open: another line arrives on every one.
    for (i, stream) in streams.iter_mut().enumerate() {
        next_line(&mut stream.body).await.with_context(|| {
            let limit = std::fs::read_to_string(INOTIFY_INSTANCES).unwrap_or_default();
            format!(
                "follow stream {i} of {total} after its first line (a kubelet out of inotify instances ends streams \
                 so; {INOTIFY_INSTANCES} is {})",
                limit.trim()
            )
        })?;
    }
    drop(streams);
    let after = meter.settle("logs -f: memory after closing", progress, report).await?;
    Ok(Memory { rss: [before, open, after] })
}

fn memory_rows(report: &mut Report, memory: &Memory, streams: usize) {
    let rss = memory.rss.map(|r| r.map(|b| b as f64));
    let mut rows: Vec<(&str, [f64; 3])> =
        MEASURED.iter().enumerate().map(|(i, name)| (*name, rss.map(|r| r[i]))).collect();
    rows.insert(2, ("hub + client", rss.map(|r| r[0] + r[1])));
    for (process, [before, open, after]) in rows {
        report.rows.push(
            Row::new()
                .text("measure", "logs -f memory")
                .text("process", process)
                .num("before MiB", before / MIB, 1)
                .num("open MiB", open / MIB, 1)
                .num("KiB/stream", (open - before) / streams as f64 / 1024.0, 1)
                .num("after close MiB", after / MIB, 1)
                .num("given back %", given_back(before, open, after), 0),
        );
    }
}

/// The share of the growth that closing gave back; none when there was too little growth to tell (RSS moves in
/// allocator segments of a few hundred KiB).
fn given_back(before: f64, open: f64, after: f64) -> f64 {
    match open - before {
        growth if growth >= MIB => (open - after) / growth * 100.0,
        _ => f64::NAN,
    }
}
