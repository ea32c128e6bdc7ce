//! The components of a run as child processes: this binary re-executed with a hidden role, or a peer
//! tunnel. Each is killed when its handle drops, so no process outlives a failed run; its memory and CPU
//! time are read from /proc.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `loadtest role <args>`, its output in `<dir>/<name>.log` (appended, so a restart keeps both).
    pub fn role(name: &str, dir: &Path, args: &[String]) -> Result<Self> {
        Self::role_in(name, dir, args, None)
    }

    /// The same inside network namespace `netns` when given (a spoke behind its firewall).
    pub fn role_in(name: &str, dir: &Path, args: &[String], netns: Option<&str>) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut command = Command::new(exe);
        command.arg("role").args(args);
        if let Some(netns) = netns {
            enter_netns(&mut command, netns)?;
        }
        Self::spawn(name, dir, command)
    }

    /// Starts any `command` as a component (kubectl, for one): output in `<dir>/<name>.log`, stdin empty,
    /// killed with this process and when the handle drops.
    pub fn spawn(name: &str, dir: &Path, mut command: Command) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        // Components log as in production (info) unless LOADTEST_LOG says otherwise.
        if let Ok(filter) = std::env::var("LOADTEST_LOG") {
            command.env("TETHER_LOG", filter);
        }
        die_with_parent(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name: name.to_string(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `ready` holds JSON (the ready files of hub, client and backend), failing early with the
    /// end of the log if the process exits first.
    pub fn wait_ready(&mut self, ready: &Path, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(json) = std::fs::read_to_string(ready).ok().and_then(|t| serde_json::from_str(&t).ok()) {
                return Ok(json);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready: {}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within {timeout:?}: {}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> Result<u64> {
        rss_of(self.pid())
    }

    /// User plus system CPU time so far, all threads.
    pub fn cpu(&self) -> Result<Duration> {
        cpu_of(self.pid())
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Result<()> {
        // SAFETY: kill(2) with a pid we own and have not reaped yet.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill()
    }

    /// SIGKILL and reap: a crash, as far as the peers can tell.
    pub fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
            self.child.wait()?;
        }
        Ok(())
    }

    /// The log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running (an exit is reaped here).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_none())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

pub fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

pub fn cpu_of(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// The CPU time of several processes, read together.
pub fn cpu_total(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|&p| cpu_of(p)).sum()
}

/// Makes the child die with this process even when it is killed without running destructors (SIGKILL, a
/// harness's timeout): Linux sends the child SIGKILL when the thread that started it exits, and every
/// component is started from the main thread.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Makes `command` start inside network namespace `netns` (a name under /run/netns), as `ip netns exec` does
/// but without a process in front of it: the pid is the command's own (its CPU time and memory are read), and
/// a timed kubectl run pays for no extra exec.
pub fn enter_netns(command: &mut Command, netns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let path = Path::new("/run/netns").join(netns);
    let namespace = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: between fork and exec the closure calls only setns, which is async-signal-safe; the closure owns
    // the file, so the descriptor is open for as long as the command can be spawned (and closed on exec).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
