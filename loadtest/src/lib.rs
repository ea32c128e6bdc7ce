//! tether's numbers, each measured against a baseline in the same run: the direct path to the same backend,
//! a peer tunnel, or tether at rest. The machines that run this are noisy, so ratios are what carry over.
//!
//! Every measured component runs as its own process, as it would in production: the hub (`tunnel-server`'s
//! library behind a fixed allow-all reviewer, as if every answer came from its cache), the spoke
//! (`tunnel-client`'s library, exactly as its binary runs it) and a TLS backend standing in for a spoke
//! apiserver. They are this binary, re-executed with a hidden role, so that one `cargo run -p loadtest`
//! builds everything. `watches` and `kubectl` start a real kube-apiserver with `deploy/dev/cluster.sh`,
//! `node` one with a real node (kubelet, containerd) in a network namespace of its own, and `push` one for the
//! hub and one per spoke, with the real tunnel-server and controller between them.
pub mod apiserver;
pub mod bulk;
pub mod client;
pub mod fake_api;
pub mod kubectl;
pub mod memory;
pub mod node;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod push;
pub mod reconnect;
pub mod report;
pub mod roles;
pub mod setup;
pub mod simulated;
pub mod stats;
pub mod tunnels;
pub mod watches;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "tether's scale and speed against the direct path")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N simulated spokes, each with its own QUIC connection and certificate, on one hub: connect rate,
    /// hub memory per tunnel, and requests to random clusters while all are connected.
    Tunnels(tunnels::Options),
    /// Small GETs through hub → tunnel → spoke → backend against the same GETs straight to the backend.
    Proxy(proxy::Options),
    /// Many idle watches through one tunnel against a real apiserver: memory per watch, event latency.
    Watches(watches::Options),
    /// One large response through the tunnel against straight from the backend.
    Bulk(bulk::Options),
    /// Time from restarting the client, or the hub, to the first successful request.
    Reconnect(reconnect::Options),
    /// Sequential kubectl-style GETs against a real spoke apiserver, through the hub and directly.
    Kubectl(kubectl::Options),
    /// kubectl port-forward, exec and logs -f against a real node behind a firewall, through the hub and
    /// directly (needs root).
    Node(node::Options),
    /// A push of many manifests to a real spoke against applying them directly, drift correction, and one
    /// push to many simulated spokes: time, memory per cluster, status size.
    Push(push::Options),
    /// A component of a run (internal).
    #[command(hide = true)]
    Role(roles::Role),
}

/// What every measuring subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print the results as one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Working directory for certificates, ready files and component logs; a temporary one, removed at the
    /// end, when absent.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// An extra `tunnel-server serve` argument for the hub, e.g. `--hub-arg=--stream-window=65536` (for
    /// tuning runs); repeatable.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    pub hub_args: Vec<String>,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Role(role) => roles::run(role),
        Command::Tunnels(o) => report::finish(&o.common.clone(), tunnels::run(o)),
        Command::Proxy(o) => report::finish(&o.common.clone(), proxy::run(o)),
        Command::Watches(o) => report::finish(&o.common.clone(), watches::run(o)),
        Command::Bulk(o) => report::finish(&o.common.clone(), bulk::run(o)),
        Command::Reconnect(o) => report::finish(&o.common.clone(), reconnect::run(o)),
        Command::Kubectl(o) => report::finish(&o.common.clone(), kubectl::run(o)),
        Command::Node(o) => report::finish(&o.common.clone(), node::run(o)),
        Command::Push(o) => report::finish(&o.common.clone(), push::run(o)),
    }
}
