//! `kubectl logs` and `logs -f` from real containers: a follow stream that stays quiet for 90 s keeps both
//! its lines (no idle timeout anywhere on the path cuts it) and ends when the container does; and 100 open
//! follow streams through one tunnel do not hold up a plain `kubectl get`.
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::env::Env;
use crate::pods::{both, direct_command, hub_command, node_spoke, text, wait_running, Follow, BUSYBOX};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("logs::logs_equal_direct", logs),
        // Opens the quiet follow streams; the cases after it run during the silence.
        ("logs::follow_a_quiet_container_begins", follow_begins),
        ("logs::a_hundred_follow_streams_leave_get_prompt", hundred_streams),
    ]
}

/// Runs last among the node cases, when the quiet container's silence is over.
pub fn closing_cases() -> Vec<(&'static str, Case)> {
    vec![("logs::follow_a_quiet_container_ends_with_both_lines", follow_ends)]
}

const QUIET_SECS: u64 = 90;

fn logs(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "ticker")?;
    let (hub, direct) = both(env, spoke, &["logs", "ticker", "--limit-bytes", "7"], b"")?;
    if !hub.status.success() || hub.stdout != direct.stdout || !text(&hub.stdout).starts_with("tick 0") {
        bail!(
            "logs: through the hub {:?} {:?}, direct {:?}",
            text(&hub.stdout),
            text(&hub.stderr),
            text(&direct.stdout)
        );
    }
    let (hub, direct) = both(env, spoke, &["logs", "nope"], b"")?;
    if hub.status.success() || hub.stderr != direct.stderr {
        bail!("logs of a missing pod: through the hub {:?}, direct {:?}", text(&hub.stderr), text(&direct.stderr));
    }
    Ok(())
}

fn follow_begins(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    let _ = spoke.cluster.kubectl(&["delete", "pod", "quiet", "--wait=true"]);
    spoke.cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: quiet, namespace: default}}\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: quiet\n    image: {BUSYBOX}\n    \
         imagePullPolicy: Never\n    command: [sh, -c, 'echo first; sleep {QUIET_SECS}; echo second']\n"
    ))?;
    wait_running(spoke, "quiet")?;
    let args = ["logs", "-f", "quiet"];
    let follows = vec![
        ("through the hub", Follow::start(hub_command(env, &args))?),
        ("direct", Follow::start(direct_command(spoke, &args))?),
    ];
    for (path, follow) in &follows {
        wait_for(&format!("the first line {path}"), Duration::from_secs(20), || {
            Ok(follow.lines.lock().unwrap().iter().any(|(_, l)| l == "first").then_some(()))
        })?;
    }
    *env.follows.lock().unwrap() = follows;
    Ok(())
}

fn follow_ends(env: &Env) -> Result<()> {
    if node_spoke(env)?.is_none() {
        return Ok(());
    }
    let mut follows = std::mem::take(&mut *env.follows.lock().unwrap());
    if follows.is_empty() {
        bail!("no follow stream is open: logs::follow_a_quiet_container_begins did not run or failed");
    }
    for (path, follow) in &mut follows {
        let status = wait_for(&format!("logs -f {path} to end"), Duration::from_secs(QUIET_SECS + 60), || {
            Ok(follow.child.try_wait()?)
        })?;
        let lines = follow.lines.lock().unwrap().clone();
        let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        if !status.success() || texts != ["first", "second"] {
            bail!("logs -f {path} ended {status:?} with {texts:?}, want first and second");
        }
        let quiet = lines[1].0 - lines[0].0;
        // The stream itself carried the silence: it was open, and quiet, for (nearly) all of it.
        if quiet < Duration::from_secs(QUIET_SECS - 10) {
            bail!("logs -f {path}: only {quiet:?} between the lines, want about {QUIET_SECS} s");
        }
        eprintln!("logs -f {path}: both lines, {:.0} s apart, ended with the container", quiet.as_secs_f64());
    }
    Ok(())
}

const STREAMS: usize = 100;

fn hundred_streams(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "ticker")?;
    let path = "/clusters/spoke-a/api/v1/namespaces/default/pods/ticker/log?follow=true&tailLines=1";
    let rss = |pid: Option<u32>| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let pids = (env.server_pid(), env.client_pid(crate::pods::NODE_SPOKE));
    let before = (rss(pids.0), rss(pids.1));
    let mut streams = env.rt.block_on(async {
        let mut opened = Vec::new();
        for _ in 0..STREAMS {
            let tls = env.http.connect().await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", env.admin_token))
                .body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            if response.status() != http::StatusCode::OK {
                bail!("a follow stream got {}", response.status());
            }
            let mut body = response.into_body();
            // The first line proves the stream reaches the container; the body stays open afterwards.
            let frame = tokio::time::timeout(Duration::from_secs(20), body.frame()).await?;
            if frame.is_none() {
                bail!("a follow stream ended at once");
            }
            opened.push((sender, body));
        }
        anyhow::Ok(opened)
    })?;
    let during = (rss(pids.0), rss(pids.1));
    let started = Instant::now();
    let get = hub_command(env, &["get", "pods", "-o", "name", "--request-timeout", "10s"]).output()?;
    let took = started.elapsed();
    // Every stream is still flowing: each delivers another tick.
    let alive = env.rt.block_on(async {
        let mut alive = 0;
        for (_, body) in streams.iter_mut() {
            if let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
                alive += 1;
            }
        }
        alive
    });
    drop(streams);
    if alive != STREAMS {
        bail!("only {alive} of {STREAMS} follow streams still delivered lines");
    }
    if !get.status.success() || !text(&get.stdout).contains("pod/ticker") {
        bail!("kubectl get beside {STREAMS} follow streams: {:?} {}", get.status, text(&get.stderr));
    }
    if let ((Some(s0), Some(c0)), (Some(s1), Some(c1))) = (before, during) {
        eprintln!(
            "{STREAMS} logs -f streams open: kubectl get answered in {:.0} ms; RSS per stream: hub {:.1} KiB, client {:.1} KiB",
            took.as_secs_f64() * 1e3,
            (s1.saturating_sub(s0)) as f64 / STREAMS as f64,
            (c1.saturating_sub(c0)) as f64 / STREAMS as f64
        );
    }
    Ok(())
}
