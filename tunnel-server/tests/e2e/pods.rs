//! What the node cases share: the pods they run against on spoke-a's real node (from the locally built
//! busybox image), kubectl the same way through the hub and straight at the spoke, and a thread inside the
//! spoke's network namespace for the direct side of port-forwards (kubectl listens inside it there).
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::{kubectl_bin, Env, Spoke};
use crate::procs::{in_netns, wait_for};

pub const NODE_SPOKE: &str = "spoke-a";
pub const BUSYBOX: &str = "localhost/tether/busybox:1.35.0";
/// The tunnel-client image, from the release binary (`deploy/dev/images.sh build tether`).
pub const CLIENT_IMAGE: &str = concat!("ghcr.io/tether-io/tunnel-client:", env!("CARGO_PKG_VERSION"));
/// Taints spoke-b's node: only Pods that tolerate it run there (see `Cluster::spawn`).
pub const PROCESSES_ONLY_TAINT: &str = "e2e.tether.io/processes-only=true:NoSchedule";
/// The echo port of the tools pod (the busybox image's `echo-server`: a process per connection).
pub const ECHO_PORT: u16 = 7000;

/// `tools` sleeps and echoes on [`ECHO_PORT`]; `ticker` prints a numbered line every second.
pub fn manifest() -> String {
    let pod = |name: &str, script: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: {name}\n    image: {BUSYBOX}\n    \
             imagePullPolicy: Never\n    command: [sh, -c, '{script}']\n"
        )
    };
    pod("tools", &format!("echo-server {ECHO_PORT} & exec sleep 1000000"))
        + &pod("ticker", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done")
}

/// The spoke with a node, or why there is none: not root means no node, which fails under CI=true.
pub fn node_spoke(env: &Env) -> Result<Option<&Spoke>> {
    let spoke = env.spoke(NODE_SPOKE);
    if spoke.node.is_some() {
        return Ok(Some(spoke));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("not root: {NODE_SPOKE} has no node (containerd and kubelet need root), so this cannot run (CI=true)");
    }
    eprintln!("SKIPPED: not root, so {NODE_SPOKE} has no node");
    Ok(None)
}

pub fn wait_running(spoke: &Spoke, pod: &str) -> Result<()> {
    wait_for(&format!("pod {pod} Running"), Duration::from_secs(90), || {
        let phase = spoke.cluster.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])?;
        match phase.trim() {
            "Running" => Ok(Some(())),
            "Failed" | "Succeeded" => bail!("pod {pod} is {phase} instead of Running"),
            _ => Ok(None),
        }
    })
}

/// kubectl through the hub as its admin, with no client-side timeout (streams may last minutes).
pub fn hub_command(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(kubectl_bin());
    c.arg("--kubeconfig").arg(&env.kubeconfig).args(["--context", NODE_SPOKE]).args(args);
    c
}

/// kubectl straight at the spoke's apiserver, from inside its network namespace, as its admin.
pub fn direct_command(spoke: &Spoke, args: &[&str]) -> Command {
    let mut c = in_netns(spoke.cluster.netns.as_deref(), kubectl_bin());
    c.arg("--kubeconfig").arg(spoke.cluster.kubeconfig()).args(args);
    c
}

/// Runs `command` with `stdin` written to it, collecting its output.
pub fn run_with_stdin(mut command: Command, stdin: &[u8]) -> Result<Output> {
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("kubectl")?;
    let mut pipe = child.stdin.take().context("stdin")?;
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    Ok(output)
}

/// The same kubectl command through the hub and direct: (hub, direct).
pub fn both(env: &Env, spoke: &Spoke, args: &[&str], stdin: &[u8]) -> Result<(Output, Output)> {
    Ok((run_with_stdin(hub_command(env, args), stdin)?, run_with_stdin(direct_command(spoke, args), stdin)?))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `f` on a thread that has joined network namespace `netns` (sockets it opens live there).
pub fn in_netns_thread<T: Send + 'static>(
    netns: Option<&str>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = netns.map(|ns| Path::new("/run/netns").join(ns));
    std::thread::spawn(move || {
        if let Some(path) = path {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: setns on this thread only; the fd is valid for the call.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {}: {}", path.display(), std::io::Error::last_os_error());
            }
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// A deterministic byte stream (xorshift), so a receiver checks every byte without keeping a copy.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

const BLOCK: usize = 64 * 1024;

/// Sends `total` pattern bytes to the echo server at `addr` and checks every byte that comes back; the time
/// from connect to the last byte back.
pub fn echo_check(addr: std::net::SocketAddr, total: usize, seed: u64) -> Result<Duration> {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut pattern, mut block, mut sent) = (Pattern::new(seed), vec![0u8; BLOCK], 0);
        while sent < total {
            pattern.fill(&mut block);
            let n = BLOCK.min(total - sent);
            out.write_all(&block[..n])?;
            sent += n;
        }
        Ok(())
    });
    let (mut pattern, mut expected, mut buf) = (Pattern::new(seed), vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut received = 0;
    while received < total {
        let n = stream.read(&mut buf).with_context(|| format!("reading the echo at byte {received} of {total}"))?;
        if n == 0 {
            bail!("the echo ended after {received} of {total} bytes");
        }
        for (i, byte) in buf[..n].iter().enumerate() {
            let at = received + i;
            if at % BLOCK == 0 {
                pattern.fill(&mut expected);
            }
            if *byte != expected[at % BLOCK] {
                bail!("the echo differs at byte {at}");
            }
        }
        received += n;
    }
    let elapsed = started.elapsed();
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(elapsed)
}

/// A `logs -f` in progress: every line with the time it arrived.
pub struct Follow {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Follow {
    pub fn start(mut command: std::process::Command) -> Result<Self> {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.lock().unwrap().push((Instant::now(), line));
            }
        });
        Ok(Self { child, lines })
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
