//! Failed authentication per source address: each source may make the hub review at most `rate` tokens
//! it rejects per minute (a bucket of `rate`, refilled over a minute); past that its uncached tokens get
//! 429 without a TokenReview. Tokens the hub accepts give their place back, so a busy NAT of good users is
//! limited only in how many unknown tokens it presents at the same instant.
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// A token bucket's state; the decisions are pure functions of it and `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub const PERIOD: Duration = Duration::from_secs(60);

    pub fn full(rate: u32, now: Instant) -> Self {
        Self { tokens: f64::from(rate), at: now }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let rate = f64::from(rate);
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate / Self::PERIOD.as_secs_f64();
        self.tokens = rate.min(self.tokens + earned);
        self.at = self.at.max(now);
    }

    /// Takes one token at `now`, or says how long until one is there.
    pub fn take(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(missing * Self::PERIOD.as_secs_f64() / f64::from(rate)))
    }

    /// Returns a token taken for a look-up that did not fail.
    pub fn give_back(&mut self, rate: u32) {
        self.tokens = f64::from(rate).min(self.tokens + 1.0);
    }
}

/// The unit of limiting, as the bootstrap rate limit counts it: an IPv4 address, or an IPv6 /64.
pub use crate::bootstrap::client_key as source_key;

/// The buckets of every source, bounded: a bucket untouched for a [`Bucket::PERIOD`] is full again, so
/// forgetting it loses nothing; past `MAX_SOURCES` the least recently used go first.
pub struct FailureLimiter {
    rate: u32,
    buckets: Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

impl FailureLimiter {
    /// About 100 bytes each: at most ~10 MB however many addresses an attacker holds.
    const MAX_SOURCES: u64 = 100_000;

    /// `rate` failed authentications per minute and source; 0 for no limit.
    pub fn new(rate: u32) -> Self {
        let buckets = Cache::builder().max_capacity(Self::MAX_SOURCES).time_to_idle(Bucket::PERIOD).build();
        Self { rate, buckets }
    }

    /// Reserves a failure for a TokenReview from `ip` (given back by [`Self::succeeded`]); `Err` is how
    /// long until the source may try again.
    pub fn reserve(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let bucket = self.buckets.get_with(source_key(ip), || Arc::new(Mutex::new(Bucket::full(self.rate, now))));
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(self.rate, now)
    }

    /// The reviewed token was good: the reservation was no failure.
    pub fn succeeded(&self, ip: IpAddr) {
        if let Some(bucket) = self.buckets.get(&source_key(ip)) {
            bucket.lock().unwrap_or_else(|e| e.into_inner()).give_back(self.rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_refills_over_a_minute() {
        let start = Instant::now();
        let mut bucket = Bucket::full(3, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(3, start), Ok(()));
        }
        assert_eq!(bucket.take(3, start), Err(Duration::from_secs(20)));
        assert_eq!(bucket.take(3, start + Duration::from_secs(10)), Err(Duration::from_secs(10)));
        assert_eq!(bucket.take(3, start + Duration::from_secs(20)), Ok(()));
        // Never more than `rate` saved up, however long it was quiet.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(bucket.take(3, later), Ok(()));
        }
        assert!(bucket.take(3, later).is_err());
    }

    #[test]
    fn given_back_tokens_are_capped() {
        let now = Instant::now();
        let mut bucket = Bucket::full(2, now);
        bucket.take(2, now).unwrap();
        bucket.give_back(2);
        bucket.give_back(2);
        assert_eq!(bucket, Bucket::full(2, now));
    }

    #[test]
    fn sources_are_addresses_or_ipv6_slash_64s() {
        let key = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(key("10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
    }

    #[test]
    fn the_limiter_counts_failures_per_source_and_forgives_successes() {
        let limiter = FailureLimiter::new(2);
        let now = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        limiter.reserve(a, now).unwrap();
        limiter.succeeded(a);
        limiter.reserve(a, now).unwrap();
        limiter.reserve(a, now).unwrap();
        assert!(limiter.reserve(a, now).is_err());
        assert!(limiter.reserve(b, now).is_ok());
        assert!(FailureLimiter::new(0).reserve(a, now).is_ok());
    }
}
