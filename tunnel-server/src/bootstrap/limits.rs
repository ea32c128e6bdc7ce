//! The bounds on what bootstrap and renewal may cost the hub: token buckets per client address (bootstrap
//! attempts) and per cluster (renewal certificate requests). The cap on concurrent bootstrap connections is
//! a semaphore in [`super::Bootstrap`].
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// A token bucket per key: `rate` attempts, refilled at `rate` per `period`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: u32,
    period: Duration,
    pub(super) buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// Above this many keys, full buckets are dropped (they carry no state): the map stays bounded by the
    /// keys that used their budget within a period.
    pub const PRUNE_ABOVE: usize = 4096;

    /// `rate` 0 allows everything.
    pub fn new(rate: u32, period: Duration) -> Self {
        Self { rate, period, buckets: HashMap::new() }
    }

    /// Whether `key` may make an attempt at `now`; counts the attempt if so.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        if self.buckets.len() > Self::PRUNE_ABOVE {
            let full = f64::from(self.rate);
            self.buckets.retain(|_, bucket| Self::refill(self.rate, self.period, *bucket, now) < full);
        }
        let (rate, period) = (self.rate, self.period);
        let bucket = self.buckets.entry(key).or_insert((f64::from(rate), now));
        *bucket = (Self::refill(rate, period, *bucket, now), now);
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
    }

    /// How long until `key` may make an attempt, from `now` (zero if it may now): the hint a refusal
    /// gives, so that clients come back when they will be let in rather than after a guess.
    pub fn wait(&self, key: &K, now: Instant) -> Duration {
        let Some(&bucket) = self.buckets.get(key).filter(|_| self.rate > 0) else {
            return Duration::ZERO;
        };
        let missing = 1.0 - Self::refill(self.rate, self.period, bucket, now);
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(missing * self.period.as_secs_f64() / f64::from(self.rate)).unwrap_or(self.period)
    }

    /// The tokens of `(tokens, at)` at `now`: refilled at `rate` per `period`, never above `rate`.
    fn refill(rate: u32, period: Duration, (tokens, at): (f64, Instant), now: Instant) -> f64 {
        let rate = f64::from(rate);
        rate.min(tokens + now.saturating_duration_since(at).as_secs_f64() * rate / period.as_secs_f64())
    }
}

/// The unit of rate limiting by address: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
/// /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}
