//! The processes of one runtime's measurement: the hub (tunnel-server against the hub apiserver), the
//! controller, a tunnel-client per real spoke, and the simulated spokes, which run in this process. Dropped,
//! they stop; the apiservers outlive them, so that each runtime measures on the same clusters.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::apiserver::Apiserver;
use crate::client::Target;
use crate::fake_api::FakeApi;
use crate::memory::Meter;
use crate::pki::Pki;
use crate::process::Process;
use crate::report::Progress;
use crate::setup::{Hub, Spoke};
use crate::simulated::{self, Responder};

/// The controller's user on the hub apiserver (a static token there), named to the hub as a push controller.
pub const CONTROLLER_USER: &str = "tether-controller";
pub const CONTROLLER_TOKEN: &str = "loadtest-controller-token";
/// Simulated spokes per UDP socket, and handshakes at a time while they connect.
const PER_SOCKET: usize = 1000;
const CONNECT_CONCURRENCY: usize = 64;

pub struct Rig {
    pub hub: Hub,
    pub controller: Process,
    _spokes: Vec<Spoke>,
    apis: Vec<Arc<FakeApi>>,
    stop: CancellationToken,
    _endpoints: Vec<quinn::Endpoint>,
    /// Busy GETs through the hub while memory is read (see [`Meter`]).
    through: Target,
}

impl Rig {
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        dir: &std::path::Path,
        pki: &Pki,
        hub_apiserver: &Apiserver,
        spokes: &[Apiserver],
        real: &[String],
        identities: &[quinn::ClientConfig],
        threads: usize,
        progress: &Progress,
    ) -> Result<Self> {
        progress.update(format!("starting hub and controller ({threads} worker threads)"));
        let threads_arg = threads.to_string();
        let hub_args: Vec<String> = [
            "--replica-id",
            "loadtest-hub",
            "--lease-renew-interval",
            "30s",
            "--lease-duration",
            "120s",
            "--push-controllers",
            CONTROLLER_USER,
            "--worker-threads",
            &threads_arg,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let hub = Hub::start_with_apiserver(dir, pki, &hub_apiserver.kubeconfig, &hub_args)?;
        let token_file = dir.join("controller.token");
        crate::apiserver::write_private(&token_file, CONTROLLER_TOKEN)?;
        let controller_args: Vec<String> = vec![
            "controller".into(),
            "--".into(),
            "--hub-kubeconfig".into(),
            hub_apiserver.kubeconfig.display().to_string(),
            "--ops-addr".into(),
            "127.0.0.1:0".into(),
            "--instance".into(),
            "loadtest".into(),
            "--lease-renew-interval".into(),
            "30s".into(),
            "--proxy-url".into(),
            format!("https://localhost:{}", hub.proxy.port()),
            "--proxy-ca".into(),
            pki.path("hub-ca.crt").display().to_string(),
            "--proxy-token-file".into(),
            token_file.display().to_string(),
            "--worker-threads".into(),
            threads_arg.clone(),
        ];
        let controller = Process::role("controller", dir, &controller_args)?;
        let mut started = Vec::new();
        for (name, apiserver) in real.iter().zip(spokes) {
            let spoke_dir = dir.join(format!("spoke-{name}"));
            std::fs::create_dir_all(&spoke_dir)?;
            started.push(Spoke::start(&spoke_dir, pki, name, hub.quic, &apiserver.kubeconfig)?);
        }
        let stop = CancellationToken::new();
        let endpoints = (0..identities.len().div_ceil(PER_SOCKET))
            .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")))
            .collect::<std::io::Result<Vec<_>>>()?;
        let apis: Vec<Arc<FakeApi>> = (0..identities.len()).map(|_| Arc::default()).collect();
        let connected = AtomicUsize::new(0);
        let n = identities.len();
        let failures: Vec<String> =
            futures::stream::iter(identities.iter().cloned().zip(apis.iter().cloned()).enumerate())
                .map(|(i, (config, api))| {
                    let (endpoint, connected, stop, quic) =
                        (&endpoints[i / PER_SOCKET], &connected, stop.clone(), hub.quic);
                    async move {
                        let responder = Responder::Api(api);
                        let result =
                            simulated::connect(endpoint, config, quic, format!("sim-{i}"), responder, stop).await;
                        let done = connected.fetch_add(result.is_ok() as usize, Ordering::Relaxed) + 1;
                        progress.update(format!("simulated spokes: {done} of {n} connected"));
                        result.err().map(|e| format!("sim-{i}: {e:#}"))
                    }
                })
                .buffer_unordered(CONNECT_CONCURRENCY)
                .filter_map(|failure| async move { failure })
                .collect()
                .await;
        if let Some(first) = failures.first() {
            stop.cancel();
            anyhow::bail!("{} simulated spokes failed to connect; the first: {first}", failures.len());
        }
        let token = &hub_apiserver.token;
        let cluster = real.first().context("a real spoke")?;
        let through = Target::new("tether", hub.proxy, pki.hub_ca_pem(), &format!("/clusters/{cluster}"), token)?;
        Ok(Self { hub, controller, _spokes: started, apis, stop, _endpoints: endpoints, through })
    }

    /// Reads the settled memory of the hub and the controller, in this order.
    pub async fn meter(&self, limit: Duration) -> Result<Meter<2>> {
        Meter::new([self.hub.process.pid(), self.controller.pid()], ["hub", "controller"], &self.through, limit).await
    }

    /// Requests the simulated spokes answered so far.
    pub fn simulated_requests(&self) -> u64 {
        self.apis.iter().map(|a| a.requests.load(Ordering::Relaxed)).sum()
    }

    /// Objects the simulated spokes hold.
    pub fn simulated_objects(&self) -> usize {
        self.apis.iter().map(|a| a.len()).sum()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
