//! A command under a real pseudo-terminal, driven like a person at a keyboard: wait for some output, type a
//! line, and so on; `kubectl exec -it` refuses a stdin that is not a terminal.
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::wait_for;

/// Runs `command` on a new terminal; for each `(expect, send)` waits until the output holds `expect`, then
/// types `send`. Returns the exit status and everything the terminal showed.
pub fn converse(mut command: Command, steps: &[(&str, &str)], timeout: Duration) -> Result<(ExitStatus, String)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the pointers it is given; the rest may be null.
    if unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) } != 0
    {
        bail!("openpty: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    command.stdin(Stdio::from(slave.try_clone()?)).stdout(Stdio::from(slave.try_clone()?)).stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe; the terminal becomes the child's controlling one.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the command on a terminal")?;
    let screen = Arc::new(Mutex::new(String::new()));
    let mut reader = std::fs::File::from(master.try_clone()?);
    let shown = screen.clone();
    // Ends when the last holder of the terminal's other side (the child) exits: read then fails with EIO.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut keyboard = std::fs::File::from(master);
    let result = (|| {
        for (expect, send) in steps {
            // Only what came after the last line typed counts, not the echo of earlier ones.
            let mark = screen.lock().unwrap().len();
            wait_for(&format!("{expect:?} on the terminal"), timeout, || {
                let text = screen.lock().unwrap();
                Ok(text[mark..].contains(expect).then_some(()))
            })
            .with_context(|| format!("the terminal showed {:?}", screen.lock().unwrap()))?;
            keyboard.write_all(send.as_bytes())?;
        }
        wait_for("the command to end", timeout, || Ok(child.try_wait()?))
            .with_context(|| format!("the terminal showed {:?}", screen.lock().unwrap()))
    })();
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(keyboard);
    let status = result?;
    let text = screen.lock().unwrap().clone();
    Ok((status, text))
}
