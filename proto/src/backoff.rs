//! Reconnect delays: exponential backoff with "full jitter".
//!
//! The n-th delay (counting from 0) is uniform in `[0, min(cap, base * 2^n)]`. Full jitter
//! spreads the reconnects of thousands of spokes that lost the same hub replica, instead of
//! bringing them back in waves. The caller supplies the random number, so tests are exact.

use std::time::Duration;

/// Exponential backoff state for one reconnecting client.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// Delay before the next attempt: `unit` (a random number in `[0, 1)`) times
    /// `min(cap, base * 2^attempt)`, then counts the attempt.
    ///
    /// `unit` is clamped into `[0, 1]` (NaN counts as 0); nothing here overflows or panics.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_nan() { 0.0 } else { unit.clamp(0.0, 1.0) };
        // ceiling * unit <= ceiling, but the f64 round trip may round up past it (or past
        // Duration::MAX, which try_from reports): keep the ceiling as the bound either way.
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit).map_or(ceiling, |delay| delay.min(ceiling))
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since creation or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `min(cap, base * 2^attempt)`, saturating.
    fn ceiling(&self) -> Duration {
        1u32.checked_shl(self.attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |grown| grown.min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 5000 * MS);
        let maxima: Vec<Duration> = (0..10).map(|_| b.next_delay(1.0)).collect();
        let expected: Vec<Duration> =
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000].into_iter().map(|ms| ms * MS).collect();
        assert_eq!(maxima, expected);
        assert_eq!(b.attempt(), 10);
    }

    #[test]
    fn jitter_scales_the_ceiling() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(60));
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        assert_eq!(b.next_delay(0.5), 100 * MS);
        assert_eq!(b.next_delay(0.25), 100 * MS);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..1000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
            let ceiling = b.ceiling();
            let delay = b.next_delay(unit);
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
        }
    }

    #[test]
    fn out_of_range_units_are_clamped() {
        let mut b = Backoff::new(MS, MS);
        assert_eq!(b.next_delay(-3.0), Duration::ZERO);
        assert_eq!(b.next_delay(f64::NAN), Duration::ZERO);
        assert_eq!(b.next_delay(7.0), MS);
        assert_eq!(b.next_delay(f64::INFINITY), MS);
    }

    #[test]
    fn huge_values_saturate() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.next_delay(1.0), Duration::MAX);
        assert!(b.next_delay(0.999_999) <= Duration::MAX);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        b.attempt = u32::MAX - 1;
        assert_eq!(b.next_delay(1.0), Duration::from_secs(30));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(30));
        assert_eq!(b.attempt(), u32::MAX);
    }

    #[test]
    fn a_cap_below_base_wins() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(1));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(60));
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(1.0), 100 * MS);
    }
}
