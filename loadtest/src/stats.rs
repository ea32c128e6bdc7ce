//! Latency distributions and the arithmetic of comparing two paths.
use std::time::Duration;

/// Latencies of one measurement, sorted.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut all: Vec<Duration>) -> Self {
        all.sort_unstable();
        Self(all)
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The `p` quantile (0..=1) in microseconds; NaN when empty.
    pub fn quantile_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i].as_nanos() as f64 / 1e3
    }

    pub fn p50_us(&self) -> f64 {
        self.quantile_us(0.50)
    }
    pub fn p99_us(&self) -> f64 {
        self.quantile_us(0.99)
    }
    pub fn p999_us(&self) -> f64 {
        self.quantile_us(0.999)
    }
    pub fn max_us(&self) -> f64 {
        self.quantile_us(1.0)
    }
    pub fn mean_us(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.iter().sum::<Duration>().as_secs_f64() * 1e6 / self.0.len() as f64
    }
}

/// The median of a few repeated measurements: one noisy repetition moves it least.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let l = Latencies::new((1..=1000).rev().map(Duration::from_micros).collect());
        assert_eq!(l.p50_us(), 500.0);
        assert_eq!(l.p99_us(), 990.0);
        assert_eq!(l.p999_us(), 999.0);
        assert_eq!(l.max_us(), 1000.0);
        assert_eq!(Latencies::new(vec![Duration::from_micros(7)]).p999_us(), 7.0);
        assert!(Latencies::default().p50_us().is_nan());
    }

    #[test]
    fn median_ignores_missing_values() {
        assert_eq!(median(vec![3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
    }
}
