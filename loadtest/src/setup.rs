//! Bringing up the components of a run: backend, hub and spoke, each a child process found through its
//! ready file; and restarting them on the same addresses.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;

use crate::client::Target;
use crate::pki::Pki;
use crate::process::Process;
use crate::roles::TOKEN;
use crate::Common;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The run's working directory: temporary unless `--workdir` names one to keep (logs, certificates).
pub enum WorkDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl WorkDir {
    pub fn new(common: &Common) -> Result<Self> {
        match &common.workdir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating --workdir {}", dir.display()))?;
                Ok(Self::Kept(dir.clone()))
            }
            None => Ok(Self::Temporary(tempfile::Builder::new().prefix("tether-loadtest-").tempdir()?)),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Temporary(t) => t.path(),
            Self::Kept(p) => p,
        }
    }
}

fn ready_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&path);
    path
}

fn parse_addr(json: &serde_json::Value, key: &str) -> Result<SocketAddr> {
    json[key].as_str().with_context(|| format!("{key} in the ready file"))?.parse().context(key.to_string())
}

pub struct Backend {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Backend {
    pub fn start(dir: &Path, pki: &Pki) -> Result<Self> {
        let ready = ready_file(dir, "backend");
        let args: Vec<String> = vec![
            "backend".into(),
            "--cert".into(),
            pki.path("backend.crt").display().to_string(),
            "--key".into(),
            pki.path("backend.key").display().to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        let mut process = Process::role("backend", dir, &args)?;
        let json = process.wait_ready(&ready, READY_TIMEOUT)?;
        Ok(Self { process, addr: parse_addr(&json, "addr")? })
    }
}

pub struct Hub {
    pub process: Process,
    pub proxy: SocketAddr,
    pub quic: SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
}

/// What the hub of a run knows and how it listens.
pub struct HubOptions {
    pub clusters: Vec<String>,
    pub simulated: usize,
    /// Extra `tunnel-server serve` arguments.
    pub extra: Vec<String>,
}

impl Hub {
    pub fn start(dir: &Path, pki: &Pki, options: HubOptions) -> Result<Self> {
        Self::start_on(dir, pki, options, "127.0.0.1:0".parse()?)
    }

    /// The same with QUIC listening on `quic`: the host end of a spoke namespace's veth, for a client inside it.
    pub fn start_on(dir: &Path, pki: &Pki, options: HubOptions, quic: SocketAddr) -> Result<Self> {
        let mut args: Vec<String> = vec![
            "hub".into(),
            "--clusters".into(),
            options.clusters.join(","),
            "--simulated".into(),
            options.simulated.to_string(),
            "--".into(),
        ];
        args.extend(serve_args(dir, pki));
        args.extend(options.extra);
        Self::launch(dir, args, quic, "127.0.0.1:0".parse()?)
    }

    /// A hub as tunnel-server runs in production, against the hub apiserver of `kubeconfig`: token and
    /// access reviews, ManagedClusters, revocations and Leases are real. `extra` are more `serve` arguments.
    pub fn start_with_apiserver(dir: &Path, pki: &Pki, kubeconfig: &Path, extra: &[String]) -> Result<Self> {
        let mut args: Vec<String> = vec!["hub".into(), "--apiserver".into(), "--".into()];
        args.extend(serve_args(dir, pki));
        args.extend(["--hub-kubeconfig".into(), kubeconfig.display().to_string()]);
        args.extend(extra.iter().cloned());
        Self::launch(dir, args, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?)
    }

    fn launch(dir: &Path, args: Vec<String>, quic: SocketAddr, proxy: SocketAddr) -> Result<Self> {
        let ready = ready_file(dir, "hub");
        let mut full = args.clone();
        full.extend(["--quic-addr".into(), quic.to_string(), "--proxy-addr".into(), proxy.to_string()]);
        let mut process = Process::role("hub", dir, &full)?;
        let json = process.wait_ready(&ready, READY_TIMEOUT)?;
        Ok(Self {
            process,
            proxy: parse_addr(&json, "proxy")?,
            quic: parse_addr(&json, "quic")?,
            dir: dir.to_path_buf(),
            args,
        })
    }

    /// Starts the hub again on the same addresses after its process was stopped or killed; returns once the
    /// new one is listening.
    pub fn restart_stopped(&mut self) -> Result<()> {
        *self = Self::launch(&self.dir, self.args.clone(), self.quic, self.proxy)?;
        Ok(())
    }
}

/// The `serve` arguments of every hub: its certificates and where it says it is ready.
fn serve_args(dir: &Path, pki: &Pki) -> Vec<String> {
    let path = |name: &str| pki.path(name).display().to_string();
    vec![
        "--ops-addr".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        path("hub.crt"),
        "--tls-key".into(),
        path("hub.key"),
        "--tunnel-ca".into(),
        path("hub-ca.crt"),
        "--ready-file".into(),
        dir.join("hub.ready").display().to_string(),
    ]
}

pub struct Spoke {
    pub process: Process,
    dir: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
}

impl Spoke {
    /// A tunnel-client for `cluster` against the hub at `hub`, its apiserver given by `kubeconfig`. Returns
    /// once its first tunnel is up.
    pub fn start(dir: &Path, pki: &Pki, cluster: &str, hub: SocketAddr, kubeconfig: &Path) -> Result<Self> {
        Self::start_in(dir, pki, cluster, hub, kubeconfig, None)
    }

    /// The same inside network namespace `netns` when given: a spoke behind its firewall, whose apiserver
    /// (`kubeconfig`) is reachable only from there and which reaches `hub` through the namespace's veth.
    pub fn start_in(
        dir: &Path,
        pki: &Pki,
        cluster: &str,
        hub: SocketAddr,
        kubeconfig: &Path,
        netns: Option<&str>,
    ) -> Result<Self> {
        let (cert, key) = pki.write_spoke(cluster)?;
        let args: Vec<String> = [
            "spoke",
            "--",
            "--hub",
            &hub.to_string(),
            "--hub-server-name",
            "localhost",
            "--hub-ca",
            &pki.path("hub-ca.crt").display().to_string(),
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--ops-addr",
            "127.0.0.1:0",
            // A DaemonSet Pod keeps its name across container restarts; the hub routes to its newest tunnel.
            "--instance",
            "loadtest-spoke",
            // The hub's loadtest user is in system:masters so that a real apiserver serves it without RBAC
            // set-up, exactly as the direct path's impersonation does: this spoke passes every group.
            "--identity-drop-groups=",
            "--ready-file",
            &dir.join("spoke.ready").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut spoke = Self::launch(dir, args, netns.map(String::from))?;
        spoke.wait_up()?;
        Ok(spoke)
    }

    fn launch(dir: &Path, args: Vec<String>, netns: Option<String>) -> Result<Self> {
        ready_file(dir, "spoke");
        let process = Process::role_in("spoke", dir, &args, netns.as_deref())?;
        Ok(Self { process, dir: dir.to_path_buf(), args, netns })
    }

    pub fn wait_up(&mut self) -> Result<()> {
        self.process.wait_ready(&self.dir.join("spoke.ready"), READY_TIMEOUT).map(drop)
    }

    /// Replaces the client process: SIGTERM (it says GoAway) when `graceful`, else SIGKILL (a crash). Returns
    /// once the new process is started, not once it is connected.
    pub fn restart(&mut self, graceful: bool) -> Result<()> {
        match graceful {
            true => self.process.terminate(Duration::from_secs(15))?,
            false => self.process.kill()?,
        }
        *self = Self::launch(&self.dir, self.args.clone(), self.netns.clone())?;
        Ok(())
    }
}

/// The backend of `proxy` and `bulk`, and the peer tunnels in front of it (which the peer script starts).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Measure against this running backend (`loadtest role backend` with the certificates of --workdir)
    /// instead of starting one: the peer script starts it first so that its peer tunnels can point at it.
    #[arg(long, requires = "workdir")]
    pub backend: Option<SocketAddr>,
    /// A peer tunnel to compare with, NAME=HOST:PORT: a TCP port the peer forwards to the backend.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(String, SocketAddr)>,
    /// The processes of a peer, NAME=PID[,PID...]: their CPU time is counted per request.
    #[arg(long = "peer-pids", value_parser = parse_peer_pids)]
    pub peer_pids: Vec<(String, Vec<u32>)>,
}

impl PeerArgs {
    pub fn pids_of(&self, name: &str) -> Vec<u32> {
        self.peer_pids.iter().filter(|(n, _)| n == name).flat_map(|(_, p)| p.clone()).collect()
    }
}

fn parse_peer(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s.split_once('=').ok_or("--peer: expected NAME=HOST:PORT")?;
    let addr = addr.parse().map_err(|e| format!("--peer {name}: {e}"))?;
    Ok((name.to_string(), addr))
}

fn parse_peer_pids(s: &str) -> Result<(String, Vec<u32>), String> {
    let (name, pids) = s.split_once('=').ok_or("--peer-pids: expected NAME=PID[,PID...]")?;
    let pids =
        pids.split(',').map(|p| p.parse().map_err(|e| format!("--peer-pids {name}: {e}"))).collect::<Result<_, _>>()?;
    Ok((name.to_string(), pids))
}

/// The backend of a run: started here, or the one `--backend` names.
pub struct BackendAt {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    _owned: Option<Backend>,
}

impl BackendAt {
    pub fn new(dir: &Path, pki: &Pki, peers: &PeerArgs) -> Result<Self> {
        match peers.backend {
            Some(addr) => Ok(Self { addr, pid: None, _owned: None }),
            None => {
                let backend = Backend::start(dir, pki)?;
                Ok(Self { addr: backend.addr, pid: Some(backend.process.pid()), _owned: Some(backend) })
            }
        }
    }

    pub fn kubeconfig(&self, dir: &Path, pki: &Pki) -> Result<PathBuf> {
        let path = dir.join("backend.kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(&pki.backend_ca_pem);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: https://{}\n    \
                 certificate-authority-data: {ca}\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\n\
                 current-context: b\nusers:\n- name: b\n  user:\n    token: backend-token\n",
                self.addr
            ),
        )?;
        Ok(path)
    }
}

/// A backend with tether in front of it: hub and one spoke (cluster `bench`), as `proxy`, `bulk` and
/// `reconnect` run them.
pub struct Rig {
    pub backend: BackendAt,
    pub hub: Hub,
    pub spoke: Spoke,
}

impl Rig {
    pub fn start(dir: &Path, pki: &Pki, common: &Common, peers: &PeerArgs) -> Result<Self> {
        let backend = BackendAt::new(dir, pki, peers)?;
        let options = HubOptions { clusters: vec!["bench".into()], simulated: 0, extra: common.hub_args.clone() };
        let hub = Hub::start(dir, pki, options)?;
        let spoke = Spoke::start(dir, pki, "bench", hub.quic, &backend.kubeconfig(dir, pki)?)?;
        Ok(Self { backend, hub, spoke })
    }

    pub fn direct(&self, pki: &Pki) -> Result<Target> {
        Target::new("direct", self.backend.addr, &pki.backend_ca_pem, "", TOKEN)
    }

    pub fn tether(&self, pki: &Pki) -> Result<Target> {
        Target::new("tether", self.hub.proxy, pki.hub_ca_pem(), "/clusters/bench", TOKEN)
    }

    /// The paths to compare, direct first, each with the processes whose CPU time is its cost.
    pub fn paths(&self, pki: &Pki, peers: &PeerArgs) -> Result<Vec<(Target, Vec<u32>)>> {
        let mut paths = vec![
            (self.direct(pki)?, vec![]),
            (self.tether(pki)?, vec![self.hub.process.pid(), self.spoke.process.pid()]),
        ];
        for (name, addr) in &peers.peers {
            paths.push((Target::new(name, *addr, &pki.backend_ca_pem, "", TOKEN)?, peers.pids_of(name)));
        }
        Ok(paths)
    }
}

/// What `proxy` and `bulk` measure on: the paths to compare, and what keeps them up. Fields drop in order:
/// the processes stop before the work directory goes.
pub struct Bench {
    pub paths: Vec<(Target, Vec<u32>)>,
    _rig: Rig,
    _workdir: WorkDir,
}

impl Bench {
    pub fn start(common: &Common, peers: &PeerArgs) -> Result<Self> {
        let workdir = WorkDir::new(common)?;
        let pki = Pki::open_or_create(workdir.path())?;
        let rig = Rig::start(workdir.path(), &pki, common, peers)?;
        let paths = rig.paths(&pki, peers)?;
        Ok(Self { paths, _rig: rig, _workdir: workdir })
    }
}
