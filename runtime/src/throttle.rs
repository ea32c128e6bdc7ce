//! Log lines that a flood (of failed accepts, refused connections, hub errors) cannot multiply.
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per `every`; says how many it held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(held back since the last line)` when a line may be logged at `now`.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit(start), Some(0));
        for i in 1..=5 {
            assert_eq!(throttle.admit(start + Duration::from_secs(i)), None);
        }
        assert_eq!(throttle.admit(start + Duration::from_secs(10)), Some(5));
        assert_eq!(throttle.admit(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit(start + Duration::from_secs(30)), Some(1));
    }
}
