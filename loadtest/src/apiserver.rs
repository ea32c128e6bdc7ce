//! A real kube-apiserver (with its etcd and controller-manager) for `watches` and `kubectl`: a backend that
//! answers 200 to everything says nothing about watches, and kubectl's latency is the apiserver's plus ours.
//! It is the project's own `deploy/dev/cluster.sh`, so the loadtest runs the same cluster as the end-to-end
//! tests, and it is stopped when its handle drops so that no process outlives a failed run.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::client::Target;

/// cluster.sh waits up to 60 s for each of its components; a first start also creates its certificates.
const READY_TIMEOUT: Duration = Duration::from_secs(150);
/// A node's kubelet gets another 90 s to be Ready (cluster.sh's own `start` waits 180 s in all).
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Args)]
pub struct ApiserverArgs {
    /// Where `build-kube.sh` and `cluster.sh` are.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/dev"))]
    pub deploy_dir: PathBuf,
    /// Streams the apiserver allows per HTTP/2 connection (`--http2-max-streams-per-connection`); it allows
    /// 250 by default, as a production apiserver does.
    #[arg(long)]
    pub apiserver_http2_streams: Option<u32>,
}

/// A running cluster. Holds a bearer token: deliberately not `Debug`.
pub struct Apiserver {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub ca_pem: String,
    /// The admin's bearer token (`system:masters`).
    pub token: String,
    /// The admin's kubeconfig (client certificate), what the spoke's tunnel-client uses.
    pub kubeconfig: PathBuf,
    /// The kube-apiserver process, whose memory is measured.
    pub pid: u32,
    _cluster: Cluster,
}

impl Apiserver {
    /// Builds the kube binaries unless cached (minutes, once per machine), then starts a cluster in `dir`
    /// and returns once it serves.
    pub fn start(dir: &Path, args: &ApiserverArgs) -> Result<Self> {
        Self::launch(dir, args, None, &[])
    }

    /// The same, also accepting the static bearer tokens `tokens`: (token, user, groups).
    pub fn start_with_tokens(dir: &Path, args: &ApiserverArgs, tokens: &[(&str, &str, &str)]) -> Result<Self> {
        Self::launch(dir, args, None, tokens)
    }

    /// The same with a real node (`cluster.sh --node`: scheduler, containerd, kubelet) inside network namespace
    /// `netns`, where its `addr` and `kubeconfig` are valid; returns once the node is Ready. Needs root.
    ///
    /// Unlike [`Apiserver::start`]'s cluster, this one is neither killed with this process nor reached by a
    /// Ctrl-C at the terminal: a killed `cluster.sh` cannot stop its containers, which would outlive the run.
    /// The caller stops it however the run ends (`loadtest node` does so from a process of its own).
    pub fn start_node(dir: &Path, args: &ApiserverArgs, netns: &str) -> Result<Self> {
        Self::launch(dir, args, Some(netns), &[])
    }

    fn launch(dir: &Path, args: &ApiserverArgs, netns: Option<&str>, tokens: &[(&str, &str, &str)]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let tokens_file = dir.join("extra-tokens.csv");
        let lines: String =
            tokens.iter().map(|(token, user, groups)| format!("{token},{user},{user},\"{groups}\"\n")).collect();
        write_private(&tokens_file, &lines)?;
        let deploy = &args.deploy_dir;
        let build_log = dir.join("build-kube.log");
        let out = std::fs::File::create(&build_log)?;
        let status = Command::new(deploy.join("build-kube.sh"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("running {}", deploy.join("build-kube.sh").display()))?;
        ensure!(status.success(), "build-kube.sh failed ({status}): {}", tail(&build_log));

        let script = deploy.join("cluster.sh");
        let log = dir.join("cluster.log");
        let out = std::fs::File::create(&log)?;
        let mut command = match netns {
            // `run` rather than `start`: as our child in our process group, a Ctrl-C reaches it too.
            None => {
                let mut command = Command::new(&script);
                // cluster.sh's own children die with it; this makes it die with us.
                crate::process::die_with_parent(&mut command);
                command
            }
            // `ip netns exec`, as node.sh expects: it gives the cluster a /sys of the namespace's own (node.sh
            // mounts the cgroup hierarchies back into it).
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "bash"]).arg(&script);
                std::os::unix::process::CommandExt::process_group(&mut command, 0);
                command
            }
        };
        if let Some(streams) = args.apiserver_http2_streams {
            command.env("APISERVER_ARGS", format!("--http2-max-streams-per-connection={streams}"));
        }
        command.args(["run", "loadtest"]).arg(&dir).arg("--extra-tokens").arg(&tokens_file);
        if netns.is_some() {
            command.arg("--node");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let mut cluster = Cluster { dir: dir.clone(), script, child };
        // A node adds containerd, its image imports and the kubelet's registration to the control plane.
        cluster.wait_ready(&log, if netns.is_some() { NODE_READY_TIMEOUT } else { READY_TIMEOUT })?;

        let read =
            |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("{name} of the cluster"));
        let port: u16 = read("port")?.trim().parse().context("the cluster's port")?;
        let pid = component_pid(&dir, "apiserver")?;
        Ok(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ca_pem: read("ca.crt")?,
            token: read("admin.token")?.trim().to_string(),
            kubeconfig: dir.join("kubeconfig"),
            dir,
            pid,
            _cluster: cluster,
        })
    }

    /// The pid of one of the cluster's processes (`etcd`, `apiserver`, and with a node `containerd`,
    /// `kubelet`, ...), from the pids file cluster.sh writes.
    pub fn component_pid(&self, component: &str) -> Result<u32> {
        component_pid(&self.dir, component)
    }

    /// Requests straight to the apiserver as its admin.
    pub fn target(&self, name: &str) -> Result<Target> {
        Target::new(name, self.addr, &self.ca_pem, "", &self.token)
    }

    /// A keep-alive connection for writes, as the admin.
    pub async fn writer(&self) -> Result<Writer> {
        let target = self.target("apiserver")?;
        let io = TokioIo::new(target.tls(b"http/1.1").await?);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Writer { sender, token: self.token.clone() })
    }
}

/// Writes ConfigMaps: what makes watch events, and what the GETs read.
pub struct Writer {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    token: String,
}

impl Writer {
    /// Creates ConfigMap `name` with `data`, or sets `data` on it if it exists (a kept --workdir keeps etcd).
    pub async fn apply_configmap(&mut self, namespace: &str, name: &str, data: &serde_json::Value) -> Result<()> {
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": namespace },
            "data": data,
        });
        let collection = format!("/api/v1/namespaces/{namespace}/configmaps");
        let status = self.send(Method::POST, &collection, "application/json", &object).await?;
        if status == StatusCode::CONFLICT {
            return self.patch_configmap(namespace, name, data).await;
        }
        Ok(())
    }

    /// Merges `data` into ConfigMap `name`: one MODIFIED event, if anything changed.
    pub async fn patch_configmap(&mut self, namespace: &str, name: &str, data: &serde_json::Value) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/configmaps/{name}");
        let patch = serde_json::json!({ "data": data });
        let status = self.send(Method::PATCH, &path, "application/merge-patch+json", &patch).await?;
        ensure!(status.is_success(), "PATCH {path}: {status}");
        Ok(())
    }

    /// Sends a JSON body; returns the status if it is a success or a conflict, else fails with the body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> Result<StatusCode> {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() && status != StatusCode::CONFLICT {
            bail!("{method} {path}: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        }
        Ok(status)
    }
}

/// The supervising `cluster.sh run`, stopped with `cluster.sh stop` (which waits for etcd and the apiserver).
struct Cluster {
    dir: PathBuf,
    script: PathBuf,
    child: Child,
}

impl Cluster {
    fn wait_ready(&mut self, log: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.dir.join("ready").exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("cluster.sh exited ({status}) before the cluster was ready: {}", tail(log));
            }
            if Instant::now() > deadline {
                bail!("the cluster was not ready within {timeout:?}; logs in {}", self.dir.join("logs").display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stopped = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            // Its children die with it (cluster.sh starts them with a parent-death signal).
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn component_pid(dir: &Path, component: &str) -> Result<u32> {
    let pids = std::fs::read_to_string(dir.join("pids")).context("the cluster's pids file")?;
    pids.lines()
        .find_map(|l| l.strip_prefix(component)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("the {component}'s pid in the cluster's pids file"))
}

/// Writes a file only its owner may read: it holds tokens.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
