//! The tunnel itself: the firewall it crosses, recovery after restarts, isolation between streams.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::StatusCode;
use tokio::io::AsyncReadExt;

use crate::cases::ops::sample_sum;
use crate::env::{Env, SPOKES};
use crate::http::{read_head, write_all};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("tunnel::hub_cannot_open_connections_to_the_spokes", firewall_holds),
        ("tunnel::slow_watch_reader_does_not_delay_other_requests", slow_reader),
        ("tunnel::requests_spread_over_client_replicas", replicas),
        ("tunnel::recovers_after_client_restart", client_restart),
        ("tunnel::recovers_after_server_restart_and_crash", server_restart),
    ]
}

fn firewall_holds(env: &Env) -> Result<()> {
    if !env.firewalled {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("not root: the spokes run without network namespaces, so the firewall cannot be checked (CI=true)");
        }
        eprintln!("SKIPPED: not root, so there is no firewall to check");
        return Ok(());
    }
    for spoke in &env.spokes {
        let ip = spoke.spoke_ip.as_ref().context("spoke address")?;
        let port = spoke.cluster.port()?;
        let addr: SocketAddr = format!("{ip}:{port}").parse()?;
        // Inside its namespace the apiserver answers on that very address: what stops the hub side below is
        // the firewall, not a port that is closed.
        let mut inside = crate::env::in_netns(spoke.cluster.netns.as_deref(), "curl");
        inside.args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{addr}/version"),
        ]);
        let code =
            crate::env::run_ok(inside).with_context(|| format!("{} from inside its namespace", spoke.cluster.name))?;
        if code.trim() == "000" {
            bail!("{}'s apiserver does not answer at {addr} even from inside its namespace", spoke.cluster.name);
        }
        let connected = env.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        });
        match connected {
            // Dropped without an answer: the firewall's `ct state new drop`.
            Err(_elapsed) => {}
            Ok(Ok(_)) => bail!("the hub side opened a connection to {} at {addr}", spoke.cluster.name),
            Ok(Err(e)) => bail!("a connection to {} at {addr} was refused, not dropped: {e}", spoke.cluster.name),
        }
    }
    // And yet the hub reaches both apiservers, through the tunnels they dialed.
    for spoke in SPOKES {
        env.hub_kubectl_ok(spoke, &["get", "namespaces"])?;
    }
    Ok(())
}

async fn version_ok(env: &Env, cluster: &str) -> Result<Option<()>> {
    let answer = env.http.get(&format!("/clusters/{cluster}/version"), Some(&env.admin_token), &[]).await?;
    Ok((answer.status == StatusCode::OK).then_some(()))
}

fn slow_reader(env: &Env) -> Result<()> {
    let spoke = &env.spoke("spoke-a").cluster;
    let ns = format!("slow-{}", crate::env::rand_suffix());
    spoke.kubectl_ok(&["create", "namespace", &ns])?;
    let result = env.rt.block_on(async {
        // A watch whose reader never reads, with a tiny receive buffer so the backlog piles up in the tunnel.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(16 * 1024)?;
        let tcp = socket.connect(env.http.addr).await?;
        let mut stalled = env.http.tls_over(tcp).await?;
        let request = format!(
            "GET /clusters/spoke-a/api/v1/namespaces/{ns}/configmaps?watch=1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            env.admin_token
        );
        write_all(&mut stalled, &request).await?;
        let (status, _, _) = read_head(&mut stalled).await?;
        if status != 200 {
            bail!("watch answered {status}");
        }
        // ~14 MiB of events: far beyond the 1 MiB stream window plus socket buffers.
        let payload = "x".repeat(900 * 1024);
        let file = env.dir.join("big-value.txt");
        std::fs::write(&file, &payload)?;
        for i in 0..16 {
            spoke.kubectl_ok(&["create", "configmap", &format!("big-{i}"), "-n", &ns, &format!("--from-file=v={}", file.display())])?;
        }
        // Every other request on the same tunnel still answers promptly.
        for _ in 0..20 {
            tokio::time::timeout(Duration::from_secs(5), version_ok(env, "spoke-a"))
                .await
                .context("a request behind the stalled watch took over 5 s")??
                .context("request behind the stalled watch failed")?;
        }
        // The watch really was backed up: its events are all still there to read.
        let mut drained = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while drained < 8 * 1024 * 1024 {
            let n = tokio::time::timeout(Duration::from_secs(20), stalled.read(&mut buf)).await.context("draining the watch")??;
            if n == 0 {
                bail!("the watch closed after {drained} bytes");
            }
            drained += n;
        }
        Ok(())
    });
    spoke.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"])?;
    result
}

fn client_restart(env: &Env) -> Result<()> {
    env.stop_client("spoke-a");
    // The client said go-away on its way out: the hub answers 503 at once rather than timing out.
    env.rt.block_on(async {
        let answer = env.http.get("/clusters/spoke-a/version", Some(&env.admin_token), &[]).await?;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            bail!("with the client stopped: {} {}", answer.status, answer.text());
        }
        Ok(())
    })?;
    env.start_client("spoke-a")?;
    wait_for("spoke-a through the hub after a client restart", Duration::from_secs(10), || {
        env.rt.block_on(version_ok(env, "spoke-a"))
    })?;
    env.hub_kubectl_ok("spoke-a", &["get", "namespaces"])?;
    Ok(())
}

fn server_restart(env: &Env) -> Result<()> {
    // A graceful restart: spokes are told to go away and come back by themselves.
    env.restart_server()?;
    for cluster in SPOKES.iter().chain(["echo"].iter()) {
        wait_for(&format!("{cluster} after a server restart"), Duration::from_secs(20), || {
            env.rt.block_on(version_ok(env, cluster))
        })?;
    }
    // A crash: no go-away; the clients notice through lost heartbeats and redial with backoff.
    env.kill_server();
    env.start_server_again()?;
    for cluster in SPOKES {
        wait_for(&format!("{cluster} after a server crash"), Duration::from_secs(30), || {
            env.rt.block_on(version_ok(env, cluster))
        })?;
        env.hub_kubectl_ok(cluster, &["get", "namespaces"])?;
    }
    Ok(())
}

fn replicas(env: &Env) -> Result<()> {
    env.start_client_instance("spoke-b", "spoke-b-2")?;
    let result = (|| {
        wait_for("two tunnels for spoke-b", Duration::from_secs(10), || {
            Ok(env.metrics(None)?.contains("tether_server_tunnels{cluster=\"spoke-b\"} 2").then_some(()))
        })?;
        let served = |key: &str| -> Result<f64> {
            Ok(sample_sum(&env.metrics(Some(key))?, "tether_client_request_duration_seconds_count"))
        };
        let before = (served("spoke-b")?, served("spoke-b-2")?);
        for _ in 0..20 {
            env.rt.block_on(version_ok(env, "spoke-b"))?.context("request to spoke-b failed")?;
        }
        let after = (served("spoke-b")?, served("spoke-b-2")?);
        if after.0 <= before.0 || after.1 <= before.1 || (after.0 - before.0) + (after.1 - before.1) < 20.0 {
            bail!("20 requests were not spread over both replicas: {before:?} -> {after:?}");
        }
        Ok(())
    })();
    env.stop_client("spoke-b-2");
    result
}
