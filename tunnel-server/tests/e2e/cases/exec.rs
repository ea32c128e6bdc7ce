//! exec, attach and cp against real containers on spoke-a's node, each through the hub and straight at the
//! spoke with the same kubectl 1.20, the two compared.
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::env::{rand_suffix, Env};
use crate::pods::{both, direct_command, hub_command, node_spoke, text, wait_running, Pattern};
use crate::procs::wait_for;
use crate::Case;

pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("exec::output_and_exit_codes_equal_direct", exec_plain),
        ("exec::stdin_is_piped_through", exec_stdin),
        ("exec::an_interactive_shell_under_a_terminal", exec_tty),
        ("exec::attach_follows_a_running_container", attach),
        ("exec::cp_into_and_out_of_a_container", cp),
        ("exec::refusals_equal_direct", refusals),
    ]
}

fn exec_plain(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    for script in ["echo out; echo err >&2; hostname", "echo partial; exit 3", "exec false"] {
        let (hub, direct) = both(env, spoke, &["exec", "tools", "--", "sh", "-c", script], b"")?;
        if (hub.status.code(), &hub.stdout) != (direct.status.code(), &direct.stdout) {
            bail!(
                "exec {script:?}: through the hub {:?} {:?} (stderr {:?}), direct {:?} {:?} (stderr {:?})",
                hub.status.code(),
                text(&hub.stdout),
                text(&hub.stderr),
                direct.status.code(),
                text(&direct.stdout),
                text(&direct.stderr)
            );
        }
    }
    // The failing command's code is the command's, not kubectl's own 1.
    let (hub, _) = both(env, spoke, &["exec", "tools", "--", "sh", "-c", "exit 3"], b"")?;
    if hub.status.code() != Some(3) {
        bail!("exit 3 came back as {:?}", hub.status.code());
    }
    let (hub, _) = both(env, spoke, &["exec", "tools", "--", "sh", "-c", "echo out; echo err >&2"], b"")?;
    if text(&hub.stdout) != "out\n" || !text(&hub.stderr).contains("err") {
        bail!("stdout {:?} and stderr {:?} mixed up", text(&hub.stdout), text(&hub.stderr));
    }
    Ok(())
}

fn exec_stdin(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    let mut input = vec![0u8; 1 << 20];
    Pattern::new(7).fill(&mut input);
    let sum = {
        let path = env.dir.join("stdin.bin");
        std::fs::write(&path, &input)?;
        let out = std::process::Command::new("sha256sum").arg(&path).output()?;
        text(&out.stdout).split_whitespace().next().context("sha256sum")?.to_string()
    };
    let (hub, direct) = both(
        env,
        spoke,
        &["exec", "-i", "tools", "--", "sh", "-c", "cat >/tmp/stdin; sha256sum </tmp/stdin; wc -c </tmp/stdin"],
        &input,
    )?;
    for (path, out) in [("through the hub", &hub), ("direct", &direct)] {
        let printed = text(&out.stdout);
        if !out.status.success() || !printed.starts_with(&sum) || !printed.contains(&(1 << 20).to_string()) {
            bail!("1 MiB on stdin {path}: {:?} {printed:?} {:?}, want {sum}", out.status, text(&out.stderr));
        }
    }
    Ok(())
}

fn exec_tty(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    let args = ["exec", "-it", "tools", "--", "sh"];
    for (path, command) in [("through the hub", hub_command(env, &args)), ("direct", direct_command(spoke, &args))] {
        // A prompt, a command typed and its answer, then `exit` ends the session and kubectl with it.
        let steps = [("# ", "echo $((6*7))-answer\r"), ("42-answer", "tty; exit\r")];
        let (status, screen) = crate::pty::converse(command, &steps, Duration::from_secs(30))
            .with_context(|| format!("exec -it {path}"))?;
        if !status.success() || !screen.contains("/dev/pts/") {
            bail!("exec -it {path} ended {status:?} with {screen:?}");
        }
    }
    Ok(())
}

fn attach(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "ticker")?;
    for (path, mut command) in [
        ("through the hub", hub_command(env, &["attach", "ticker"])),
        ("direct", direct_command(spoke, &["attach", "ticker"])),
    ] {
        let log = env.dir.join(format!("attach-{}.out", rand_suffix()));
        let mut child = command.stdout(std::fs::File::create(&log)?).stderr(std::process::Stdio::null()).spawn()?;
        // Lines printed after attaching, so they can only have come over the attach stream.
        let seen = wait_for(&format!("two ticks attached {path}"), Duration::from_secs(20), || {
            let out = std::fs::read_to_string(&log)?;
            Ok((out.matches("tick ").count() >= 2).then_some(out))
        });
        let _ = child.kill();
        let _ = child.wait();
        seen?;
    }
    Ok(())
}

fn cp(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    let mut data = vec![0u8; 3 << 20];
    Pattern::new(11).fill(&mut data);
    let local = env.dir.join("cp-in.bin");
    std::fs::write(&local, &data)?;
    let local = local.to_str().context("path")?;
    for (path, hub) in [("through the hub", true), ("direct", false)] {
        let remote = format!("tools:/tmp/cp-{}", rand_suffix());
        let back = env.dir.join(format!("cp-out-{}", rand_suffix()));
        let back_str = back.to_str().context("path")?;
        for args in [["cp", local, &remote], ["cp", &remote, back_str]] {
            let mut command = if hub { hub_command(env, &args) } else { direct_command(spoke, &args) };
            let out = command.output()?;
            if !out.status.success() {
                bail!("kubectl {args:?} {path}: {}", text(&out.stderr));
            }
        }
        if std::fs::read(&back)? != data {
            bail!("kubectl cp {path}: the file came back different");
        }
    }
    Ok(())
}

fn refusals(env: &Env) -> Result<()> {
    let Some(spoke) = node_spoke(env)? else { return Ok(()) };
    wait_running(spoke, "tools")?;
    for args in [&["exec", "nope", "--", "true"][..], &["exec", "tools", "-c", "nope", "--", "true"]] {
        let (hub, direct) = both(env, spoke, args, b"")?;
        if hub.status.success() || (hub.status.code(), &hub.stderr) != (direct.status.code(), &direct.stderr) {
            bail!(
                "kubectl {args:?}: through the hub {:?} {:?}, direct {:?} {:?}",
                hub.status.code(),
                text(&hub.stderr),
                direct.status.code(),
                text(&direct.stderr)
            );
        }
    }
    // alice may reach spoke-a through the hub, and the spoke lets her read pods but not exec into them.
    spoke.cluster.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: default}\n\
         rules:\n- {apiGroups: [''], resources: [pods], verbs: [get, list]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: alice-pod-reader, namespace: default}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\n\
         subjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}\n",
    )?;
    let args = ["exec", "tools", "--", "true"];
    let hub = env.hub_kubectl(&env.alice_kubeconfig, "spoke-a", &args)?;
    let direct = direct_command(spoke, &["--as", "alice", "exec", "tools", "--", "true"]).output()?;
    let refused = text(&hub.stderr);
    if hub.status.success()
        || !refused.contains("Forbidden")
        || !refused.contains("pods/exec")
        || hub.stderr != direct.stderr
    {
        bail!("alice's exec: through the hub {refused:?}, direct {:?}", text(&direct.stderr));
    }
    Ok(())
}
