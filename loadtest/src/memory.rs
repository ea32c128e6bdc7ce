//! Settled memory of a few processes, for the subcommands that measure what something open (a watch, a
//! follow stream) costs: RSS moves for a while after a burst, so it is read once it stopped moving.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{read, Target, H2};
use crate::process::rss_of;
use crate::report::{Progress, Report};

/// Reads the memory of N processes (hub and client among them) once it settled. A GET through the hub on
/// every reading keeps both busy: an allocator takes back memory freed on another thread, and returns it to
/// the system, only when the owning thread next allocates, so an idle process can hold what closed streams
/// freed.
pub struct Meter<const N: usize> {
    pids: [u32; N],
    names: [&'static str; N],
    busy: H2,
    through: Target,
    limit: Duration,
}

impl<const N: usize> Meter<N> {
    /// `pids` named by `names` (for notes and errors); `through` is the hub's path to the spoke.
    pub async fn new(pids: [u32; N], names: [&'static str; N], through: &Target, limit: Duration) -> Result<Self> {
        Ok(Self { pids, names, busy: through.h2().await?, through: through.clone(), limit })
    }

    /// The RSS of each process once it stopped moving: every reading of the last two seconds within 0.5 %
    /// (or 256 KiB) of each other. Past the limit the last reading counts, with a note that it had not.
    pub async fn settle(&mut self, what: &str, progress: &Progress, report: &mut Report) -> Result<[u64; N]> {
        const EVERY: Duration = Duration::from_millis(250);
        const WINDOW: usize = 8;
        let deadline = Instant::now() + self.limit;
        let mut window: VecDeque<[u64; N]> = VecDeque::with_capacity(WINDOW + 1);
        loop {
            // Its answer does not matter, and it may never come when the tunnel's streams to the apiserver are
            // all taken.
            let mut busy = self.busy.clone();
            let get = async { read(busy.send_request(self.through.get("/version")).await?).await };
            let _ = tokio::time::timeout(EVERY, get).await;
            let mut reading = [0; N];
            for (slot, (&pid, name)) in reading.iter_mut().zip(self.pids.iter().zip(self.names)) {
                *slot = rss_of(pid).with_context(|| format!("the {name}'s memory (did it exit?)"))?;
            }
            window.push_back(reading);
            if window.len() > WINDOW {
                window.pop_front();
            }
            let moving: Vec<&str> = (0..N)
                .filter(|&i| {
                    let (low, high) = window.iter().fold((u64::MAX, 0), |(l, h), r| (l.min(r[i]), h.max(r[i])));
                    high - low > (reading[i] / 200).max(256 << 10)
                })
                .map(|i| self.names[i])
                .collect();
            if window.len() == WINDOW && moving.is_empty() {
                return Ok(reading);
            }
            if Instant::now() > deadline {
                report.note(format!("{what}: {} had not settled after {:?}", moving.join(", "), self.limit));
                return Ok(reading);
            }
            progress.update(format!("{what}: waiting for memory to settle"));
            tokio::time::sleep(EVERY).await;
        }
    }
}
