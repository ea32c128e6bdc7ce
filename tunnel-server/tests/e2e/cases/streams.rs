//! What travels on a request's stream, and for how long: an upgrade that declares a body, a stream the hub
//! gives up on, and redirects from a spoke.
use std::time::Duration;

use super::ops::sample_sum;
use crate::env::{rand_suffix, Env};
use crate::http::{read_body, read_head, write_all};
use crate::procs::wait_for;
use crate::Case;
use anyhow::{bail, Context, Result};

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("streams::an_upgrade_declaring_a_body_is_refused_at_once", upgrade_with_a_body),
        ("streams::the_spoke_drops_a_request_the_hub_gave_up_on", abandoned_request),
        ("streams::redirects_stay_in_their_cluster", redirects_stay_in_their_cluster),
        ("streams::kubectl_follows_a_redirect_only_within_the_cluster", kubectl_follows_redirects),
    ]
}

/// How long an answer the hub gives itself may take; far below its 60 s `--response-timeout`.
const PROMPT: Duration = Duration::from_secs(10);

fn streams_open(env: &Env, client: &str) -> Result<f64> {
    Ok(sample_sum(&env.metrics(Some(client))?, "tether_client_streams_open"))
}

/// One raw request on a fresh connection to the hub; the status and head of its answer, within [`PROMPT`].
async fn raw(env: &Env, request: &str) -> Result<(u16, String, Vec<u8>)> {
    let mut tls = env.http.connect().await?;
    write_all(&mut tls, request).await?;
    let (status, head, rest) =
        tokio::time::timeout(PROMPT, read_head(&mut tls)).await.context("no answer in time")??;
    let body = match head.to_ascii_lowercase().contains("content-length:") {
        true => tokio::time::timeout(PROMPT, read_body(&mut tls, &head, rest)).await.context("no body in time")??,
        false => rest,
    };
    Ok((status, head, body))
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn upgrade_with_a_body(env: &Env) -> Result<()> {
    // A real spoke apiserver: Go's net/http reads a declared body before it answers, so a forwarded head
    // would wait there until the hub gave up, with the spoke's stream pinned meanwhile.
    let baseline = streams_open(env, "spoke-a")?;
    for declared in ["Content-Length: 100", "Transfer-Encoding: chunked"] {
        let request = format!(
            "GET /clusters/spoke-a/version HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: x\r\n{declared}\r\n\r\n",
            env.admin_token
        );
        let (status, head, body) = env.rt.block_on(raw(env, &request)).with_context(|| declared.to_string())?;
        let status_object: serde_json::Value = serde_json::from_slice(&body).with_context(|| head.clone())?;
        if status != 400 || status_object["kind"] != "Status" || status_object["code"] != 400 {
            bail!("{declared}: expected a 400 Status, got {head}\n{status_object}");
        }
    }
    wait_for("spoke-a's open streams back at their baseline", PROMPT, || {
        Ok((streams_open(env, "spoke-a")? <= baseline).then_some(()))
    })?;
    // An empty body is no body: the upgrade goes on.
    let request = format!(
        "GET /clusters/echo/exec HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n",
        env.admin_token
    );
    let (status, head, _) = env.rt.block_on(raw(env, &request))?;
    if status != 101 {
        bail!("an upgrade with Content-Length: 0 was not switched: {head}");
    }
    Ok(())
}

fn abandoned_request(env: &Env) -> Result<()> {
    let baseline = streams_open(env, "echo")?;
    let abandoned = |env: &Env| -> Result<f64> {
        Ok(sample_sum(&env.metrics(Some("echo"))?, "tether_client_streams_abandoned_total"))
    };
    let abandoned_before = abandoned(env)?;
    let path = format!("/hang/{}", rand_suffix());
    let request = format!(
        "GET /clusters/echo{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        env.admin_token
    );
    let tls = env.rt.block_on(async {
        let mut tls = env.http.connect().await?;
        write_all(&mut tls, &request).await?;
        Ok::<_, anyhow::Error>(tls)
    })?;
    wait_for("the request to reach the spoke's apiserver", PROMPT, || {
        Ok(env.echo.seen().iter().any(|s| s.path == path).then_some(()))
    })?;
    if streams_open(env, "echo")? <= baseline {
        bail!("the request's stream is not counted as open on the spoke");
    }
    // The caller goes away while the spoke's apiserver has not answered.
    drop(tls);
    wait_for("the spoke to drop the request the hub gave up on", PROMPT, || {
        Ok(env.echo.dropped().contains(&path).then_some(()))
    })?;
    wait_for("echo's open streams back at their baseline", PROMPT, || {
        Ok((streams_open(env, "echo")? <= baseline).then_some(()))
    })?;
    if abandoned(env)? <= abandoned_before {
        bail!("tether_client_streams_abandoned_total did not count the stream");
    }
    Ok(())
}

/// `/clusters/echo/redirect` answering `status` with `location` (percent-encoded into the query).
fn redirect_path(status: u16, location: &str) -> String {
    let location = percent_encoding::utf8_percent_encode(location, percent_encoding::NON_ALPHANUMERIC);
    format!("/clusters/echo/redirect?status={status}&location={location}")
}

fn redirects_stay_in_their_cluster(env: &Env) -> Result<()> {
    let hub = format!("https://localhost:{}", env.addrs.proxy.port());
    let get = |path: &str, upgrade: bool| {
        let connection = if upgrade { "Connection: Upgrade\r\nUpgrade: SPDY/3.1" } else { "Connection: close" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n{connection}\r\n\r\n",
            env.admin_token
        );
        env.rt.block_on(raw(env, &request))
    };
    let rewritten = [
        (307, "/api/v1/namespaces", "/clusters/echo/api/v1/namespaces"),
        (302, "../../clusters/spoke-a/api/v1/secrets", "/clusters/echo/clusters/spoke-a/api/v1/secrets"),
        (301, "/%2e%2e/clusters/spoke-a/api", "/clusters/echo/clusters/spoke-a/api"),
        (308, "proxy/?a=1", "/clusters/echo/proxy/?a=1"),
    ];
    for (status, location, want) in rewritten {
        let (got, head, _) = get(&redirect_path(status, location), false)?;
        if got != status || header(&head, "location") != Some(want) {
            bail!("{status} to {location}: expected {status} to {want}, got {head}");
        }
    }
    let refused = [
        format!("{hub}/clusters/spoke-a/api/v1/secrets"),
        "https://evil.example/steal".into(),
        "//evil.example/steal".into(),
        "/\\evil.example/steal".into(),
        "/api%2f..%2f..%2fclusters%2fspoke-a".into(),
    ];
    for location in &refused {
        let (got, head, body) = get(&redirect_path(307, location), false)?;
        if got != 502 || header(&head, "location").is_some() || !String::from_utf8_lossy(&body).contains("Status") {
            bail!("a 307 to {location} was not refused with a 502 Status: {head}");
        }
    }
    // An upgrade is never redirected, not even within the cluster.
    let (got, head, _) = get(&redirect_path(307, "/exec"), true)?;
    if got != 502 || header(&head, "location").is_some() {
        bail!("an upgrade's redirect was not refused with a 502: {head}");
    }
    // Other answers pass, without a Location leading out of the cluster.
    let (got, head, _) = get(&redirect_path(201, "https://evil.example/x"), false)?;
    if got != 201 || header(&head, "location").is_some() {
        bail!("a 201 kept its foreign Location or was refused: {head}");
    }
    Ok(())
}

fn kubectl_follows_redirects(env: &Env) -> Result<()> {
    // A real Go client follows a redirect the hub rewrote, back through the hub, to the same cluster.
    let path = format!("/after-redirect/{}", rand_suffix());
    let out = env.hub_kubectl_ok("echo", &["get", "--raw", &redirect_path(307, &path)])?;
    let answer: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let followed = env.echo.seen().into_iter().find(|s| s.path == path);
    if answer["path"] != path.as_str() || !followed.is_some_and(|s| s.method == "GET" && s.impersonate_user.is_some()) {
        bail!("kubectl did not follow the redirect to {path} as the caller: {out}");
    }
    // A redirect elsewhere is refused at the hub: nothing ever connects there.
    let evil = std::net::TcpListener::bind("127.0.0.1:0")?;
    evil.set_nonblocking(true)?;
    let location = format!("https://127.0.0.1:{}/steal", evil.local_addr()?.port());
    let output = env.hub_kubectl(&env.kubeconfig, "echo", &["get", "--raw", &redirect_path(307, &location)])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || !stderr.contains("not permitted") {
        bail!("kubectl was not refused the redirect to {location}: {stderr}");
    }
    if evil.accept().is_ok() {
        bail!("kubectl connected to {location}");
    }
    Ok(())
}
