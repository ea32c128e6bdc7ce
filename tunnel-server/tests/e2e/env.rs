//! The end-to-end environment, started once for all cases: a hub apiserver, two spoke apiservers (each in
//! its own network namespace behind a firewall that drops every new connection from the hub side, when
//! running as root), the tunnel-server, one tunnel-client per spoke, and an upgrade-speaking echo backend
//! behind a third client; and a third spoke apiserver on loopback, reachable from the hub side, that the
//! controller (started with --hub-address and --hub-ca) registers in auto mode. As root, both firewalled
//! spokes also have a real node (kube-scheduler, containerd, kubelet) with the locally built images. Everything is torn down on
//! drop, whatever the cases did.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::echo::EchoBackend;
use crate::http::HubClient;
use crate::procs::{wait_for, Proc};

pub const SPOKES: [&str; 2] = ["spoke-a", "spoke-b"];
/// A spoke the hub side can reach (no namespace, no firewall), for auto-mode registration: the controller
/// applies the spoke manifest to it. Nothing else is set up on it.
pub const AUTO_SPOKE: &str = "spoke-c";
/// The tunnel-server's `--replica-id`: its Leases are `tether-<cluster>-e2e-hub` in `tether-system`.
pub const HUB_REPLICA: &str = "e2e-hub";
/// The hub's admins as the cases use them: the client certificate (CN=admin) and the static token
/// (`admin-token`), both in `system:masters` on the hub. The spokes' identity policy never passes
/// `system:masters`, so every spoke grants these users cluster-admin explicitly, as `up.sh` does.
pub const HUB_ADMINS: [&str; 2] = ["admin", "admin-token"];
/// The controller's user on the hub (a static token), named in the tunnel-server's --push-controllers.
pub const PUSH_CONTROLLER: &str = "tether-controller";
/// More hub token users, for the identity-policy cases: (user, groups).
pub const POLICY_USERS: [(&str, &str); 3] = [
    ("carol", "system:masters"),
    ("system:serviceaccount:deploy:ci", "system:serviceaccounts,system:serviceaccounts:deploy"),
    ("bob", "devs,ops"),
];

pub use crate::bins::{
    check_binaries_fresh, client_bin, controller_bin, image_archive, kubectl_bin, repo_root, server_bin,
};

pub use crate::procs::{in_netns, run_ok};

pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub netns: Option<String>,
    _proc: Proc,
}

impl Cluster {
    fn spawn(
        name: &str,
        dir: &Path,
        netns: Option<&str>,
        extra_tokens: Option<&Path>,
        node: bool,
        logs: &Path,
    ) -> Result<Proc> {
        std::fs::create_dir_all(dir)?;
        let mut command = in_netns(netns, "bash");
        command.arg(repo_root().join("deploy/dev/cluster.sh")).args(["run", name]).arg(dir);
        if let Some(file) = extra_tokens {
            command.arg("--extra-tokens").arg(file);
        }
        if node {
            command.arg("--node").env("TETHER_NODE_IMAGES", crate::pods::CLIENT_IMAGE);
            if name != crate::pods::NODE_SPOKE {
                // The registration cases apply join manifests here and run their clients as processes: the
                // DaemonSets must not start a Pod that would spend the same single-use token.
                command.env("TETHER_NODE_TAINTS", crate::pods::PROCESSES_ONLY_TAINT);
            }
        }
        Proc::spawn(&format!("cluster-{name}"), command, logs)
    }

    fn ready(name: &str, dir: &Path, netns: Option<&str>, mut proc: Proc) -> Result<Self> {
        let ready = dir.join("ready");
        wait_for(&format!("cluster {name}"), Duration::from_secs(240), || {
            if let Some(status) = proc.exited() {
                bail!("cluster {name} exited ({status}):\n{}", proc.log_tail());
            }
            Ok(ready.exists().then_some(()))
        })?;
        Ok(Self { name: name.into(), dir: dir.into(), netns: netns.map(String::from), _proc: proc })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// kubectl straight at this cluster's apiserver (from inside its namespace), as its admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        let mut command = in_netns(self.netns.as_deref(), kubectl_bin());
        command.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        Ok(command.output()?)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.kubectl(args)?;
        if !output.status.success() {
            bail!("kubectl {args:?} on {} failed: {}", self.name, String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn apply(&self, yaml: &str) -> Result<()> {
        let path = self.dir.join(format!("apply-{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml)?;
        self.kubectl_ok(&["apply", "-f", path.to_str().context("path")?])?;
        Ok(())
    }

    pub fn port(&self) -> Result<u16> {
        Ok(std::fs::read_to_string(self.dir.join("port"))?.trim().parse()?)
    }
}

pub struct Spoke {
    pub cluster: Cluster,
    /// The address the spoke dials to reach the hub (the host end of its veth, or loopback).
    pub hub_ip: String,
    /// The spoke's own address as the hub side sees it, when it lives behind the firewall.
    pub spoke_ip: Option<String>,
    /// The name of the spoke's node, when it has one (every firewalled spoke, so as root).
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct ServerAddrs {
    pub quic_port: u16,
    pub proxy: SocketAddr,
}

pub struct Env {
    pub rt: tokio::runtime::Runtime,
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub hub: Cluster,
    pub spokes: Vec<Spoke>,
    /// [`AUTO_SPOKE`], on loopback.
    pub auto_spoke: Cluster,
    pub echo: EchoBackend,
    pub hub_ca_pem: String,
    pub admin_token: String,
    pub alice_token: String,
    /// Bearer tokens of [`POLICY_USERS`], by user.
    pub policy_tokens: HashMap<&'static str, String>,
    /// Contexts `spoke-a`, `spoke-b`, `echo` through the hub, as the hub's admin (client certificate).
    pub kubeconfig: PathBuf,
    /// The same contexts as alice (bearer token): allowed on spoke-a only.
    pub alice_kubeconfig: PathBuf,
    pub http: HubClient,
    pub addrs: ServerAddrs,
    server: Mutex<Option<Proc>>,
    controller: Mutex<Option<Proc>>,
    server_ops: Mutex<Option<SocketAddr>>,
    clients: Mutex<HashMap<String, Proc>>,
    pub firewalled: bool,
    /// Every credential the run handed out or minted (bootstrap tokens of `join` and auto mode, spoke
    /// ServiceAccount tokens), which the log check looks for in every log at the end.
    secrets: Mutex<Vec<String>>,
    /// `logs -f` streams a node case opened for a later one to finish.
    pub follows: Mutex<Vec<(&'static str, crate::pods::Follow)>>,
}

impl Env {
    pub fn start() -> Result<Self> {
        check_binaries_fresh()?;
        for bin in [server_bin(), client_bin(), controller_bin(), kubectl_bin()] {
            if !bin.exists() {
                bail!("{} is missing: run deploy/dev/build-kube.sh first", bin.display());
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let dir = std::env::temp_dir().join(format!("tether-e2e-{}", std::process::id()));
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        eprintln!("e2e: working directory {}", dir.display());
        let firewalled = unsafe { libc::geteuid() } == 0 && Command::new("ip").arg("-V").output().is_ok();
        if !firewalled {
            eprintln!(
                "e2e: NOT ROOT: spokes run on loopback without the firewall, and the firewall cases are SKIPPED \
                 (they fail under CI=true)"
            );
        }

        let alice_token = format!("alice-{}", rand_suffix());
        let tokens = dir.join("hub-extra-tokens.csv");
        let mut lines = format!("{alice_token},alice,alice-uid,\"devs\"\n");
        let mut policy_tokens = HashMap::new();
        for (i, (user, groups)) in POLICY_USERS.iter().enumerate() {
            let token = format!("policy{i}-{}", rand_suffix());
            lines.push_str(&format!("{token},{user},policy{i}-uid,\"{groups}\"\n"));
            policy_tokens.insert(*user, token);
        }
        // The controller's own hub user, which the tunnel-server lets act only as push identities.
        let controller_token = format!("controller-{}", rand_suffix());
        lines.push_str(&format!("{controller_token},{PUSH_CONTROLLER},controller-uid,\"tether:controllers\"\n"));
        std::fs::write(dir.join("controller.token"), &controller_token)?;
        std::fs::write(&tokens, lines)?;

        // Network namespaces first, then all four clusters start side by side.
        let base = 20 + (std::process::id() % 100) * 2;
        let mut netns = Vec::new();
        for (i, name) in SPOKES.iter().enumerate() {
            if firewalled {
                let ns = format!("tether-e2e-{}-{}", std::process::id(), &name[6..]);
                let index = base + i as u32;
                run_ok({
                    let mut c = Command::new("bash");
                    c.arg(repo_root().join("deploy/dev/netns.sh")).args(["create", &ns, &index.to_string()]);
                    c
                })?;
                netns.push(Some((ns, index)));
            } else {
                netns.push(None);
            }
        }
        let guard = NetnsGuard(netns.iter().flatten().map(|(ns, _)| ns.clone()).collect());
        let hub_proc = Cluster::spawn("hub", &dir.join("hub"), None, Some(&tokens), false, &logs)?;
        let mut spoke_procs = Vec::new();
        for (name, ns) in SPOKES.iter().zip(&netns) {
            let node = ns.is_some();
            if node {
                crate::bins::check_release_client_fresh()?;
            }
            let ns = ns.as_ref().map(|(n, _)| n.as_str());
            spoke_procs.push(Cluster::spawn(name, &dir.join(name), ns, None, node, &logs)?);
        }
        let auto_proc = Cluster::spawn(AUTO_SPOKE, &dir.join(AUTO_SPOKE), None, None, false, &logs)?;
        let hub = Cluster::ready("hub", &dir.join("hub"), None, hub_proc)?;
        let mut spokes = Vec::new();
        for ((name, ns), proc) in SPOKES.iter().zip(&netns).zip(spoke_procs) {
            let cluster = Cluster::ready(name, &dir.join(name), ns.as_ref().map(|(n, _)| n.as_str()), proc)?;
            let node = ns.is_some().then(|| format!("{name}-node"));
            spokes.push(Spoke {
                cluster,
                hub_ip: ns.as_ref().map_or("127.0.0.1".into(), |(_, i)| format!("10.251.{i}.1")),
                spoke_ip: ns.as_ref().map(|(_, i)| format!("10.251.{i}.2")),
                node,
            });
        }
        let auto_spoke = Cluster::ready(AUTO_SPOKE, &dir.join(AUTO_SPOKE), None, auto_proc)?;
        let admin_token = std::fs::read_to_string(hub.dir.join("admin.token"))?.trim().to_string();

        setup_hub(&hub)?;
        for spoke in &spokes {
            setup_spoke(spoke)?;
            if spoke.cluster.name == crate::pods::NODE_SPOKE && spoke.node.is_some() {
                // Started now so they are running by the time the node cases come.
                spoke.cluster.apply(&crate::pods::manifest())?;
            }
        }
        // spoke-c gets its client's RBAC from the controller's manifest; only the hub admins' grant is set up.
        grant_hub_admins(&auto_spoke)?;

        // The hub CA, the hub's serving certificate (loopback and every veth host address), spoke identities.
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let ca = tether_certs::CertificateAuthority::generate("tether-e2e-hub-ca", now, day)?;
        let mut ips: Vec<std::net::IpAddr> = vec!["127.0.0.1".parse()?];
        for spoke in &spokes {
            ips.push(spoke.hub_ip.parse()?);
        }
        ips.dedup();
        let serving = ca.issue_serving(&["localhost".to_string()], &ips, now, day)?;
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        std::fs::write(pki.join("ca.crt"), ca.cert_pem())?;
        std::fs::write(pki.join("ca.key"), ca.key_pem())?;
        std::fs::write(pki.join("tls.crt"), &serving.cert_pem)?;
        std::fs::write(pki.join("tls.key"), &serving.key_pem)?;
        for name in SPOKES.iter().chain(["echo"].iter()) {
            let (key, csr) = tether_certs::spoke_key_and_csr(name)?;
            let cert = ca.sign_spoke_csr(&csr, name, now, day)?;
            std::fs::write(pki.join(format!("{name}.crt")), cert)?;
            std::fs::write(pki.join(format!("{name}.key")), key)?;
        }

        let echo = rt.block_on(EchoBackend::start())?;
        std::fs::write(dir.join("echo.kubeconfig"), echo.kubeconfig())?;

        let mut env = Self {
            http: HubClient::new("127.0.0.1:1".parse()?, ca.cert_pem())?,
            rt,
            kubeconfig: dir.join("hub-admin.kubeconfig"),
            alice_kubeconfig: dir.join("hub-alice.kubeconfig"),
            dir,
            logs,
            hub,
            spokes,
            auto_spoke,
            echo,
            hub_ca_pem: ca.cert_pem().to_string(),
            admin_token,
            alice_token,
            policy_tokens,
            addrs: ServerAddrs { quic_port: 0, proxy: "127.0.0.1:0".parse()? },
            server: Mutex::new(None),
            controller: Mutex::new(None),
            server_ops: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            firewalled,
            secrets: Mutex::new(Vec::new()),
            follows: Mutex::new(Vec::new()),
        };
        env.remember_secret(&std::fs::read_to_string(env.dir.join("controller.token"))?);
        for spoke in &env.spokes {
            let kubeconfig = std::fs::read_to_string(spoke.cluster.dir.join("tether-client.kubeconfig"))?;
            let token = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token:")).context("client token")?;
            env.remember_secret(token.trim());
        }
        env.addrs = env.start_server()?;
        env.http = HubClient::new(env.addrs.proxy, &env.hub_ca_pem)?;
        for name in SPOKES.iter().chain(["echo"].iter()) {
            env.start_client(name)?;
        }
        env.write_kubeconfigs()?;
        env.start_controller()?;
        std::mem::forget(guard); // Env's own Drop deletes the namespaces from here on.
        Ok(env)
    }

    /// Records a credential that must never appear in any log.
    pub fn remember_secret(&self, secret: &str) {
        if !secret.is_empty() {
            self.secrets.lock().unwrap().push(secret.to_string());
        }
    }

    pub fn secrets(&self) -> Vec<String> {
        self.secrets.lock().unwrap().clone()
    }

    pub fn spoke(&self, name: &str) -> &Spoke {
        self.spokes.iter().find(|s| s.cluster.name == name).expect("known spoke")
    }

    fn server_command(&self, addrs: &ServerAddrs) -> Command {
        let pki = self.dir.join("pki");
        let mut c = Command::new(server_bin());
        c.arg("serve")
            .args(["--quic-addr", &format!("0.0.0.0:{}", addrs.quic_port)])
            .args(["--proxy-addr", &addrs.proxy.to_string()])
            .args(["--ops-addr", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(pki.join("tls.crt"))
            .arg("--tls-key")
            .arg(pki.join("tls.key"))
            .arg("--tunnel-ca")
            .arg(pki.join("ca.crt"))
            .arg("--client-ca")
            .arg(self.hub.dir.join("ca.crt"))
            .arg("--hub-kubeconfig")
            .arg(self.hub.kubeconfig())
            .args(["--auth-cache-ttl", "1s", "--heartbeat-interval", "1s", "--drain-grace", "2s"])
            .args(["--replica-id", HUB_REPLICA, "--lease-renew-interval", "1s", "--lease-duration", "5s"])
            // A small stream window makes the slow-reader case fill it quickly.
            .args(["--stream-window", "1048576"])
            .args(["--push-controllers", PUSH_CONTROLLER])
            .arg("--ready-file")
            .arg(self.dir.join("server.ready"))
            .env("TETHER_LOG", "info,tunnel_server=debug");
        c
    }

    /// Starts the server (port 0 the first time, the same ports on a restart) and waits until it is ready.
    fn start_server(&self) -> Result<ServerAddrs> {
        let ready = self.dir.join("server.ready");
        let _ = std::fs::remove_file(&ready);
        let mut proc = Proc::spawn("tunnel-server", self.server_command(&self.addrs), &self.logs)?;
        let json: serde_json::Value = wait_for("tunnel-server ready file", Duration::from_secs(30), || {
            if let Some(status) = proc.exited() {
                bail!("tunnel-server exited ({status}):\n{}", proc.log_tail());
            }
            Ok(std::fs::read_to_string(&ready).ok().and_then(|t| serde_json::from_str(&t).ok()))
        })?;
        let quic: SocketAddr = json["quic"].as_str().context("quic")?.parse()?;
        let proxy: SocketAddr = json["proxy"].as_str().context("proxy")?.parse()?;
        *self.server_ops.lock().unwrap() = Some(json["ops"].as_str().context("ops")?.parse()?);
        *self.server.lock().unwrap() = Some(proc);
        Ok(ServerAddrs { quic_port: quic.port(), proxy })
    }

    pub fn restart_server(&self) -> Result<()> {
        if let Some(mut old) = self.server.lock().unwrap().take() {
            old.stop();
        }
        let addrs = self.start_server()?;
        if addrs.proxy != self.addrs.proxy || addrs.quic_port != self.addrs.quic_port {
            bail!("restarted server moved: {addrs:?} vs {:?}", self.addrs);
        }
        Ok(())
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.lock().unwrap().as_ref().map(Proc::pid)
    }

    /// The pid of the client process known by `key` (not of `ip netns exec` in front of it).
    pub fn client_pid(&self, key: &str) -> Option<u32> {
        let pid = self.clients.lock().unwrap().get(key).map(Proc::pid)?;
        // `ip netns exec` execs the client, so the pid is the client's own.
        Some(pid)
    }

    pub fn kill_server(&self) {
        if let Some(mut old) = self.server.lock().unwrap().take() {
            old.kill();
        }
    }

    pub fn start_server_again(&self) -> Result<()> {
        self.start_server().map(|_| ())
    }

    fn client_command(&self, name: &str, key: &str) -> Command {
        let pki = self.dir.join("pki");
        let (netns, hub_ip, kubeconfig) = match self.spokes.iter().find(|s| s.cluster.name == name) {
            Some(s) => (s.cluster.netns.clone(), s.hub_ip.clone(), s.cluster.dir.join("tether-client.kubeconfig")),
            None => (None, "127.0.0.1".to_string(), self.dir.join("echo.kubeconfig")),
        };
        let mut c = in_netns(netns.as_deref(), client_bin());
        c.args(["--hub", &format!("{hub_ip}:{}", self.addrs.quic_port)])
            .arg("--hub-ca")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join(format!("{name}.crt")))
            .arg("--key")
            .arg(pki.join(format!("{name}.key")))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--ops-addr", "127.0.0.1:0", "--backoff-base", "50ms", "--backoff-cap", "1s"])
            .args(["--heartbeat-interval", "1s", "--stream-window", "1048576"])
            .args(["--instance", key])
            .arg("--ready-file")
            .arg(self.dir.join(format!("client-{key}.ready")))
            .env("TETHER_LOG", "info,tunnel_client=debug");
        c
    }

    pub fn start_client(&self, name: &str) -> Result<()> {
        self.start_client_instance(name, name)
    }

    /// Another client process for cluster `name`, known by `key` (several replicas of one cluster may run).
    pub fn start_client_instance(&self, name: &str, key: &str) -> Result<()> {
        let ready = self.dir.join(format!("client-{key}.ready"));
        let _ = std::fs::remove_file(&ready);
        let mut proc = Proc::spawn(&format!("tunnel-client-{key}"), self.client_command(name, key), &self.logs)?;
        wait_for(&format!("tunnel-client {name} connected"), Duration::from_secs(30), || {
            if let Some(status) = proc.exited() {
                bail!("tunnel-client {name} exited ({status}):\n{}", proc.log_tail());
            }
            Ok(ready.exists().then_some(()))
        })?;
        self.clients.lock().unwrap().insert(key.to_string(), proc);
        Ok(())
    }

    /// The `/metrics` page of the server, or of the client known by `key` (read from inside its namespace).
    pub fn metrics(&self, client_key: Option<&str>) -> Result<String> {
        let (netns, addr) = match client_key {
            None => (None, self.server_ops.lock().unwrap().context("server not running")?),
            Some(key) => {
                let ready: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(self.dir.join(format!("client-{key}.ready")))?)?;
                let cluster = ready["cluster"].as_str().context("cluster")?;
                let netns =
                    self.spokes.iter().find(|s| s.cluster.name == cluster).and_then(|s| s.cluster.netns.clone());
                (netns, ready["ops"].as_str().context("ops")?.parse()?)
            }
        };
        // The ops endpoints are TLS with self-signed certificates, as Prometheus with insecure_skip_verify sees them.
        let mut curl = in_netns(netns.as_deref(), "curl");
        curl.args(["-sfk", "--max-time", "5", &format!("https://{addr}/metrics")]);
        run_ok(curl)
    }

    pub fn ops_get(&self, path: &str) -> Result<String> {
        let addr = self.server_ops.lock().unwrap().context("server not running")?;
        let mut curl = Command::new("curl");
        curl.args(["-sfk", "--max-time", "5", &format!("https://{addr}{path}")]);
        run_ok(curl)
    }

    fn start_controller(&self) -> Result<()> {
        let mut c = Command::new(controller_bin());
        c.arg("--hub-kubeconfig")
            .arg(self.hub.kubeconfig())
            .args(["--lease-renew-interval", "1s", "--missed-renewals", "3", "--ops-addr", "127.0.0.1:0"])
            .args(["--instance", "e2e-controller"])
            // The e2e tunnel-server talks to the hub as its admin, so CSRs it creates are requested by `admin`.
            .args(["--bootstrap-requester", "admin"])
            .arg("--ca-cert")
            .arg(self.dir.join("pki/ca.crt"))
            .arg("--ca-key")
            .arg(self.dir.join("pki/ca.key"))
            // Auto mode: spokes the controller can reach dial the hub on loopback.
            .args(["--hub-address", &format!("127.0.0.1:{}", self.addrs.quic_port)])
            .arg("--hub-ca")
            .arg(self.dir.join("pki/ca.crt"))
            // Pushes go through the proxy as the controller's own hub user.
            .args(["--proxy-url", &format!("https://localhost:{}", self.addrs.proxy.port())])
            .arg("--proxy-ca")
            .arg(self.dir.join("pki/ca.crt"))
            .arg("--proxy-token-file")
            .arg(self.dir.join("controller.token"))
            .args(["--push-resync", "30s"])
            .env("TETHER_LOG", "info,controller=debug");
        *self.controller.lock().unwrap() = Some(Proc::spawn("controller", c, &self.logs)?);
        Ok(())
    }

    /// A client identity for another cluster, signed by the hub CA, as `tether-certs issue-spoke` makes it.
    pub fn issue_identity(&self, cluster: &str) -> Result<()> {
        let pki = self.dir.join("pki");
        let ca = tether_certs::CertificateAuthority::from_pem(
            &std::fs::read_to_string(pki.join("ca.crt"))?,
            &std::fs::read_to_string(pki.join("ca.key"))?,
        )?;
        let (key, csr) = tether_certs::spoke_key_and_csr(cluster)?;
        let cert = ca.sign_spoke_csr(&csr, cluster, SystemTime::now(), Duration::from_secs(86_400))?;
        std::fs::write(pki.join(format!("{cluster}.crt")), cert)?;
        std::fs::write(pki.join(format!("{cluster}.key")), key)?;
        Ok(())
    }

    /// A client that holds only a bootstrap token for `cluster` (no certificate yet), running beside spoke-b's
    /// apiserver behind its firewall, keeping its identity in files. The caller owns the process.
    pub fn bootstrap_client(&self, cluster: &str, token: &str) -> Result<Proc> {
        let pki = self.dir.join("pki");
        for stale in ["crt", "key", "key.pending", "key.pending.csr", "key.pending.csr-name", "key.pending.crt"] {
            let _ = std::fs::remove_file(pki.join(format!("{cluster}.{stale}")));
        }
        self.restart_bootstrap_client(cluster, token)
    }

    /// A bootstrap client for `cluster` that keeps what an earlier one left in its files (key, CSR, ...).
    pub fn restart_bootstrap_client(&self, cluster: &str, token: &str) -> Result<Proc> {
        let pki = self.dir.join("pki");
        let mut c = self.spoke_b_client(cluster, Some(token))?;
        c.arg("--cert").arg(pki.join(format!("{cluster}.crt"))).arg("--key").arg(pki.join(format!("{cluster}.key")));
        Proc::spawn(&format!("tunnel-client-{cluster}-{}", rand_suffix()), c, &self.logs)
    }

    /// A client beside spoke-b's apiserver keeping its identity in the spoke's Secret
    /// `tether-system/tether-identity`, as the DaemonSet does; with a bootstrap token or without (then the
    /// Secret must hold an identity). The caller owns the process.
    pub fn in_cluster_client(&self, cluster: &str, token: Option<&str>) -> Result<Proc> {
        let mut c = self.spoke_b_client(cluster, token)?;
        c.args(["--identity-secret", "tether-system/tether-identity"]);
        Proc::spawn(&format!("tunnel-client-{cluster}-{}", rand_suffix()), c, &self.logs)
    }

    /// A client command for `cluster` beside spoke-b's apiserver, with spoke-b's impersonate-only
    /// ServiceAccount; the caller adds where the identity lives.
    pub fn spoke_b_client(&self, cluster: &str, token: Option<&str>) -> Result<Command> {
        let spoke = self.spoke("spoke-b");
        let mut c = in_netns(spoke.cluster.netns.as_deref(), client_bin());
        c.args(["--hub", &format!("{}:{}", spoke.hub_ip, self.addrs.quic_port)])
            .arg("--hub-ca")
            .arg(self.dir.join("pki/ca.crt"))
            .args(["--cluster", cluster])
            .arg("--kubeconfig")
            .arg(spoke.cluster.dir.join("tether-client.kubeconfig"))
            .args(["--ops-addr", "127.0.0.1:0", "--backoff-base", "50ms", "--backoff-cap", "1s"])
            .args(["--heartbeat-interval", "1s", "--instance", cluster])
            .env("TETHER_LOG", "info,tunnel_client=debug");
        if let Some(token) = token {
            let token_file = self.dir.join(format!("{cluster}-{}.token", rand_suffix()));
            std::fs::write(&token_file, token)?;
            c.arg("--bootstrap-token-file").arg(&token_file);
        }
        Ok(c)
    }

    /// SIGKILL: a crash, with no go-away.
    pub fn kill_client(&self, name: &str) {
        if let Some(mut proc) = self.clients.lock().unwrap().remove(name) {
            proc.kill();
        }
    }

    pub fn stop_client(&self, name: &str) {
        if let Some(mut proc) = self.clients.lock().unwrap().remove(name) {
            proc.stop();
        }
    }

    /// Waits until the client known by `key` exits by itself (it stops when redialling cannot help); its
    /// exit status and log.
    pub fn wait_client_exit(&self, key: &str, timeout: Duration) -> Result<(std::process::ExitStatus, String)> {
        wait_for(&format!("tunnel-client {key} to exit"), timeout, || {
            let mut clients = self.clients.lock().unwrap();
            let proc = clients.get_mut(key).context("no such client")?;
            Ok(proc.exited().map(|status| (status, proc.log_text())))
        })
    }

    /// A client for `name`, known by `key`, started without waiting for its tunnel (as the kubelet restarts
    /// a Pod); the caller owns the process.
    pub fn spawn_client(&self, name: &str, key: &str) -> Result<Proc> {
        Proc::spawn(&format!("tunnel-client-{key}"), self.client_command(name, key), &self.logs)
    }

    fn write_kubeconfigs(&self) -> Result<()> {
        let hub_port = self.hub.port()?;
        let alice_hub = self.dir.join("alice-hub.kubeconfig");
        std::fs::write(
            &alice_hub,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: hub\n  cluster:\n    server: https://127.0.0.1:{hub_port}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: hub\n  context: {{cluster: hub, user: alice}}\ncurrent-context: hub\nusers:\n- name: alice\n  user:\n    token: {}\n",
                self.alice_token
            ),
        )?;
        for (source, out, list) in
            [(self.hub.kubeconfig(), &self.kubeconfig, false), (alice_hub, &self.alice_kubeconfig, true)]
        {
            let mut c = Command::new(server_bin());
            c.arg("kubeconfig")
                .args(["--server", &format!("https://localhost:{}", self.addrs.proxy.port())])
                .arg("--ca-file")
                .arg(self.dir.join("pki/ca.crt"))
                .arg("--hub-kubeconfig")
                .arg(source)
                .arg("--out")
                .arg(out);
            // The admin's kubeconfig lists the ManagedClusters from the hub; alice may not list them.
            if list {
                c.args(["--cluster", "spoke-a", "--cluster", "spoke-b", "--cluster", "echo"]);
            }
            run_ok(c)?;
        }
        Ok(())
    }

    /// kubectl through the hub proxy with the given kubeconfig and context.
    pub fn hub_kubectl(&self, kubeconfig: &Path, context: &str, args: &[&str]) -> Result<Output> {
        let mut c = Command::new(kubectl_bin());
        c.arg("--kubeconfig").arg(kubeconfig).args(["--context", context, "--request-timeout", "20s"]).args(args);
        Ok(c.output()?)
    }

    /// The Events of a ManagedCluster (they live in `default`), as `kubectl get events -o json` prints them.
    pub fn cluster_events(&self, cluster: &str) -> Result<String> {
        let selector = format!("involvedObject.name={cluster}");
        self.hub.kubectl_ok(&["get", "events", "-n", "default", "--field-selector", &selector, "-o", "json"])
    }

    /// The hub's revocation record (ConfigMap `tether-revocations` data, as JSON text; empty when there is
    /// none yet).
    pub fn revocations(&self) -> Result<String> {
        let out = self.hub.kubectl(&[
            "get",
            "configmap",
            "tether-revocations",
            "-n",
            "tether-system",
            "-o",
            "jsonpath={.data}",
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn hub_kubectl_ok(&self, context: &str, args: &[&str]) -> Result<String> {
        let output = self.hub_kubectl(&self.kubeconfig, context, args)?;
        if !output.status.success() {
            bail!("kubectl --context {context} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.follows.lock().unwrap().clear();
        self.clients.lock().unwrap().clear();
        self.controller.lock().unwrap().take();
        self.server.lock().unwrap().take();
        // Clusters stop as their fields drop; the namespaces go after them.
        let names: Vec<String> = self.spokes.iter().filter_map(|s| s.cluster.netns.clone()).collect();
        self.spokes.clear();
        drop(NetnsGuard(names));
    }
}

struct NetnsGuard(Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("bash").arg(repo_root().join("deploy/dev/netns.sh")).args(["delete", ns]).output();
        }
    }
}

fn setup_hub(hub: &Cluster) -> Result<()> {
    // Where the tunnel-server writes its Leases.
    hub.kubectl_ok(&["create", "namespace", "tether-system"])?;
    // Every CRD, so the hub's apiserver (1.20) checks each generated schema.
    let crds = repo_root().join("deploy/hub/crds");
    hub.kubectl_ok(&["apply", "-f", crds.to_str().context("path")?])?;
    hub.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/managedclusters.tether.io",
        "crd/manifestpushes.tether.io",
        "crd/manifestdeliveries.tether.io",
    ])?;
    let mut yaml = String::new();
    for name in ["spoke-a", "spoke-b", "echo", "ghost"] {
        yaml.push_str(&format!(
            "---\napiVersion: tether.io/v1alpha1\nkind: ManagedCluster\nmetadata:\n  name: {name}\nspec: {{hubAcceptsClient: true}}\n"
        ));
    }
    // alice may use the proxy of spoke-a (any verb) and nothing else.
    yaml.push_str(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: proxy-spoke-a\nrules:\n- apiGroups: [tether.io]\n  resources: [managedclusters/proxy]\n  resourceNames: [spoke-a]\n  verbs: ['*']\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: alice-proxy-spoke-a\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: proxy-spoke-a}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}\n",
    );
    hub.apply(&yaml)
}

fn setup_spoke(spoke: &Spoke) -> Result<()> {
    let c = &spoke.cluster;
    let mut command = in_netns(c.netns.as_deref(), "bash");
    command
        .arg(repo_root().join("deploy/dev/spoke-credentials.sh"))
        .arg(c.kubeconfig())
        .arg(c.dir.join("tether-client.kubeconfig"))
        .args(HUB_ADMINS);
    let granted = run_ok(command)?;
    eprintln!("e2e: {}", granted.trim());
    // Objects that exist on exactly one spoke, to tell the spokes apart through the hub.
    c.kubectl_ok(&["create", "namespace", &format!("only-on-{}", &c.name[6..])])?;
    c.kubectl_ok(&["create", "configmap", "marker", "-n", "default", &format!("--from-literal=cluster={}", c.name)])?;
    Ok(())
}

/// Binds [`HUB_ADMINS`] to cluster-admin on `cluster` (ClusterRoleBinding `tether:hub-admins`), as
/// `deploy/dev/spoke-credentials.sh` does: their only rights there.
pub fn grant_hub_admins(cluster: &Cluster) -> Result<()> {
    let mut yaml = String::from(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: \"tether:hub-admins\"}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects:\n",
    );
    for user in HUB_ADMINS {
        yaml.push_str(&format!("- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}\n"));
    }
    cluster.apply(&yaml)?;
    eprintln!(
        "e2e: spoke {}: granted cluster-admin to hub user(s) {} (ClusterRoleBinding tether:hub-admins)",
        cluster.name,
        HUB_ADMINS.join(" ")
    );
    Ok(())
}

pub fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}
