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
        let rate = f64::from(self.rate);
        let period = self.period.as_secs_f64();
        let refill = |(tokens, at): (f64, Instant)| {
            (rate.min(tokens + now.saturating_duration_since(at).as_secs_f64() * rate / period), now)
        };
        if self.buckets.len() > Self::PRUNE_ABOVE {
            self.buckets.retain(|_, bucket| refill(*bucket).0 < rate);
        }
        let bucket = self.buckets.entry(key).or_insert((rate, now));
        *bucket = refill(*bucket);
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
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
