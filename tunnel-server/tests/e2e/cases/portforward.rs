//! `kubectl port-forward` to a real container's port, through the hub and direct: bulk both ways with every
//! byte checked, many connections over one port-forward, and a closed port refused the same way.
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::env::Env;
use crate::pods::{direct_command, echo_check, hub_command, in_netns_thread, node_spoke, wait_running, ECHO_PORT};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("portforward::bulk_both_ways_and_many_connections", bulk),
        ("portforward::a_closed_port_is_refused_like_direct", closed_port),
    ]
}

/// A running `kubectl port-forward` and the local address it listens on.
struct Forward {
    child: Child,
    addr: SocketAddr,
    stderr: std::path::PathBuf,
}

impl Forward {
    fn start(mut command: Command, stderr: std::path::PathBuf) -> Result<Self> {
        let mut child =
            command.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr)?).stdin(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        // "Forwarding from 127.0.0.1:PORT -> 7000" once it listens; the reader thread keeps draining after.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).context("port-forward printed no address")?;
        let addr = line
            .strip_prefix("Forwarding from ")
            .and_then(|rest| rest.split(" -> ").next())
            .with_context(|| format!("unexpected port-forward line {line:?}"))?
            .parse()?;
        Ok(Self { child, addr, stderr })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_forward(env: &Env, hub: bool, port: u16) -> Result<Forward> {
    let spoke = env.spoke(crate::pods::NODE_SPOKE);
    let target = format!(":{port}");
    let args = ["port-forward", "pod/tools", target.as_str(), "--address", "127.0.0.1"];
    let command = if hub { hub_command(env, &args) } else { direct_command(spoke, &args) };
    Forward::start(command, env.dir.join(format!("port-forward-{}.err", crate::env::rand_suffix())))
}

const BULK: usize = 64 << 20;
const MANY: usize = 20;

fn bulk(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    let mut rates = Vec::new();
    for (path, hub) in [("through the hub", true), ("direct", false)] {
        let forward = port_forward(env, hub, ECHO_PORT)?;
        // The direct port-forward listens inside the spoke's namespace; the hub's on this machine.
        let netns = if hub { None } else { spoke.cluster.netns.clone() };
        let addr = forward.addr;
        let elapsed = in_netns_thread(netns.as_deref(), move || echo_check(addr, BULK, 1))
            .with_context(|| format!("64 MiB each way {path} ({})", forward.stderr()))?;
        rates.push((path, 2.0 * BULK as f64 / elapsed.as_secs_f64() / 1e6));
        let results = in_netns_thread(netns.as_deref(), move || {
            let workers: Vec<_> =
                (0..MANY).map(|i| std::thread::spawn(move || echo_check(addr, 1 << 20, 100 + i as u64))).collect();
            Ok(workers.into_iter().map(|w| w.join().map_err(|_| anyhow::anyhow!("panicked"))?).collect::<Vec<_>>())
        })?;
        for (i, result) in results.into_iter().enumerate() {
            result.with_context(|| {
                format!(
                    "connection {i} of {MANY} concurrent {path} ({}; in the pod: {}; its log: {})",
                    forward.stderr(),
                    pod_tcp_counters(spoke),
                    spoke.cluster.kubectl_ok(&["logs", "tools"]).unwrap_or_else(|e| e.to_string()),
                )
            })?;
        }
    }
    eprintln!(
        "port-forward echo, 64 MiB each way: {:.1} MB/s through the hub, {:.1} MB/s direct (ratio {:.2})",
        rates[0].1,
        rates[1].1,
        rates[0].1 / rates[1].1
    );
    Ok(())
}

/// The pod's TCP counters that tell a queue overflow or an abort from a reset elsewhere, for a failure's message.
fn pod_tcp_counters(spoke: &crate::env::Spoke) -> String {
    const WANTED: [&str; 7] = [
        "ListenOverflows",
        "ListenDrops",
        "TCPAbortOnData",
        "TCPAbortOnClose",
        "TCPAbortOnMemory",
        "OutRsts",
        "EstabResets",
    ];
    let out = match spoke.cluster.kubectl_ok(&["exec", "tools", "--", "cat", "/proc/net/netstat", "/proc/net/snmp"]) {
        Ok(out) => out,
        Err(e) => return format!("no counters ({e})"),
    };
    // Each protocol is a line of names followed by a line of values, both prefixed "Proto:".
    let lines: Vec<_> = out.lines().collect();
    let mut found = Vec::new();
    for pair in lines.windows(2) {
        let (names, values) = (pair[0].split_whitespace(), pair[1].split_whitespace());
        if pair[0].split(':').next() != pair[1].split(':').next() {
            continue;
        }
        for (name, value) in names.zip(values) {
            if WANTED.contains(&name) && value.parse::<u64>().is_ok() {
                found.push(format!("{name}={value}"));
            }
        }
    }
    found.join(" ")
}

fn closed_port(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    for (path, hub) in [("through the hub", true), ("direct", false)] {
        let forward = port_forward(env, hub, 7999)?;
        let netns = if hub { None } else { spoke.cluster.netns.clone() };
        let addr = forward.addr;
        // The local connection is accepted, then closed without a byte once the pod side is refused.
        let got = in_netns_thread(netns.as_deref(), move || {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
            Ok(buf.len())
        })?;
        wait_for(&format!("the refusal {path}"), Duration::from_secs(20), || {
            let err = forward.stderr();
            Ok(err.contains("connection refused").then_some(()))
        })?;
        if got != 0 {
            bail!("{got} bytes came from a closed port {path}");
        }
    }
    Ok(())
}
