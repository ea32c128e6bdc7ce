//! Upgraded connections (what exec, attach and port-forward use) through the tunnel.
use anyhow::{bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::env::Env;
use crate::http::{read_body, read_head, write_all};
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("upgrade::upgraded_stream_carries_bytes_both_ways", upgraded_stream),
        ("upgrade::refused_upgrade_leaves_no_raw_pipe", refused_upgrade),
    ]
}

fn upgrade_request(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
}

fn upgraded_stream(env: &Env) -> Result<()> {
    env.rt.block_on(async {
        let mut tls = env.http.connect().await?;
        write_all(&mut tls, &upgrade_request("/clusters/echo/exec", &env.admin_token)).await?;
        let (status, head, rest) = read_head(&mut tls).await?;
        if status != 101 || !head.to_ascii_lowercase().contains("upgrade: spdy/3.1") {
            bail!("expected 101 Switching Protocols, got {head}");
        }
        if !rest.is_empty() {
            bail!("unexpected bytes after the 101: {rest:?}");
        }
        // Several round trips, and one large write, prove a pipe rather than a single exchange.
        for message in ["hello through the tunnel", "second message", &"x".repeat(200_000)] {
            tls.write_all(message.as_bytes()).await?;
            tls.flush().await?;
            let mut got = vec![0u8; message.len()];
            tls.read_exact(&mut got).await?;
            if got != message.to_ascii_uppercase().as_bytes() {
                bail!("echo mismatch for a {}-byte message", message.len());
            }
        }
        Ok(())
    })
}

fn refused_upgrade(env: &Env) -> Result<()> {
    let before = env.echo.seen().iter().filter(|s| s.path == "/after-refusal").count();
    env.rt.block_on(async {
        let mut tls = env.http.connect().await?;
        write_all(&mut tls, &upgrade_request("/clusters/echo/refuse", &env.admin_token)).await?;
        let (status, head, rest) = read_head(&mut tls).await?;
        if status != 403 {
            bail!("expected the spoke's 403, got {head}");
        }
        read_body(&mut tls, &head, rest).await?;
        // The same connection, no credentials: must be authenticated on its own, not piped to the spoke.
        write_all(&mut tls, "GET /clusters/echo/after-refusal HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
        match read_head(&mut tls).await {
            Ok((401, _, _)) => {}
            Ok((_, head, _)) => bail!("the follow-up request was not refused as unauthenticated: {head}"),
            // Closing the connection is safe too: nothing can travel on it.
            Err(_) => {}
        }
        Ok(())
    })?;
    let after = env.echo.seen().iter().filter(|s| s.path == "/after-refusal").count();
    if after != before {
        bail!("the unauthenticated follow-up reached the spoke side");
    }
    Ok(())
}
