//! Which clusters get a push's new generation now: a pure function of the rollout settings, each selected
//! cluster's state and the time.
//!
//! `All` writes the new generation to every cluster at once. `Progressive` keeps at most `maxConcurrency`
//! clusters in progress (applied, not yet available); a cluster that fails (a manifest refused, or not
//! available within the progress deadline) frees its place but counts against `maxFailures`, and once
//! more than `maxFailures` have failed, no further cluster is started and the rollout is `Paused` until
//! they recover or the push changes. Clusters are started in name order, so a rollout is reproducible.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use tether_api::push::{Rollout, RolloutStrategy};

/// Where a cluster stands with respect to the push's current generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClusterState {
    /// Still holds an older generation (or nothing yet).
    Outdated,
    /// Holds the current generation since `since`, neither available nor failed yet.
    InProgress { since: Timestamp },
    /// Holds the current generation, applied and available.
    Done,
    /// Holds the current generation and a manifest of it failed.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Progressing,
    Paused,
    Complete,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Complete => "Complete",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Clusters to write the current generation to now.
    pub start: Vec<String>,
    pub phase: Phase,
    /// Clusters holding the current generation, after `start`.
    pub updated: usize,
    /// Clusters counted as failed (refused, or past the deadline), sorted.
    pub failed: Vec<String>,
    pub message: String,
}

/// The default progress deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// `value` of `total`: a number, or a percentage (`"25%"`) rounded up (`round_up`) or down; a bad string is
/// named by `field`.
pub fn resolve(value: &IntOrString, total: usize, round_up: bool, field: &str) -> Result<usize, String> {
    match value {
        IntOrString::Int(n) => usize::try_from(*n).map_err(|_| format!("{field}: {n} is negative")),
        IntOrString::String(s) => {
            let percent: usize = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("{field}: {s:?} is neither a number nor a percentage from 0% to 100%"))?;
            let scaled = total * percent;
            Ok(if round_up { scaled.div_ceil(100) } else { scaled / 100 })
        }
    }
}

/// Plans the next step for `clusters` (name, state), sorted or not.
pub fn plan(rollout: &Rollout, clusters: &[(String, ClusterState)], now: Timestamp) -> Result<Plan, String> {
    let deadline = rollout.progress_deadline_seconds.map_or(DEFAULT_DEADLINE, |s| Duration::from_secs(s.into()));
    let mut clusters = clusters.to_vec();
    clusters.sort_by(|a, b| a.0.cmp(&b.0));
    // A cluster in progress past the deadline has failed.
    let late = |since: Timestamp| now.duration_since(since).unsigned_abs() > deadline;
    let failed: Vec<String> = clusters
        .iter()
        .filter(|(_, s)| {
            matches!(s, ClusterState::Failed) || matches!(s, ClusterState::InProgress { since } if late(*since))
        })
        .map(|(n, _)| n.clone())
        .collect();
    let in_progress =
        clusters.iter().filter(|(n, s)| matches!(s, ClusterState::InProgress { .. }) && !failed.contains(n)).count();
    let outdated: Vec<String> =
        clusters.iter().filter(|(_, s)| *s == ClusterState::Outdated).map(|(n, _)| n.clone()).collect();
    let (start, paused) = match rollout.strategy {
        RolloutStrategy::All => (outdated.clone(), false),
        RolloutStrategy::Progressive => {
            let total = clusters.len();
            let max_concurrency = match &rollout.max_concurrency {
                Some(v) => resolve(v, total, true, "rollout.maxConcurrency")?.max(1),
                None => 1,
            };
            let max_failures = match &rollout.max_failures {
                Some(v) => resolve(v, total, false, "rollout.maxFailures")?,
                None => 0,
            };
            if failed.len() > max_failures {
                (Vec::new(), true)
            } else {
                let slots = max_concurrency.saturating_sub(in_progress);
                (outdated.iter().take(slots).cloned().collect(), false)
            }
        }
    };
    let updated = clusters.len() - outdated.len() + start.len();
    let phase = if paused {
        Phase::Paused
    } else if outdated.is_empty() && in_progress == 0 && failed.is_empty() {
        Phase::Complete
    } else {
        Phase::Progressing
    };
    let message = match phase {
        Phase::Paused => format!(
            "paused: {} cluster(s) failed, more than rollout.maxFailures allows: {}",
            failed.len(),
            failed.join(", ")
        ),
        Phase::Progressing if !failed.is_empty() => {
            format!("{updated} of {} updated; failed: {}", clusters.len(), failed.join(", "))
        }
        Phase::Progressing => format!("{updated} of {} updated", clusters.len()),
        Phase::Complete => String::new(),
    };
    Ok(Plan { start, phase, updated, failed, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn progressive(concurrency: IntOrString, failures: IntOrString) -> Rollout {
        Rollout {
            strategy: RolloutStrategy::Progressive,
            max_concurrency: Some(concurrency),
            max_failures: Some(failures),
            progress_deadline_seconds: Some(60),
        }
    }

    fn states(list: &[(&str, ClusterState)]) -> Vec<(String, ClusterState)> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    use ClusterState::*;

    #[test]
    fn all_at_once_starts_every_outdated_cluster() {
        let clusters = states(&[("a", Outdated), ("b", Done), ("c", Outdated)]);
        let plan = plan(&Rollout::default(), &clusters, t(0)).unwrap();
        assert_eq!(plan.start, ["a", "c"]);
        assert_eq!((plan.phase, plan.updated), (Phase::Progressing, 3));
        let done = plan_of(&Rollout::default(), &[("a", Done), ("b", Done)]);
        assert_eq!(done.phase, Phase::Complete);
    }

    fn plan_of(rollout: &Rollout, list: &[(&str, ClusterState)]) -> Plan {
        plan(rollout, &states(list), t(100)).unwrap()
    }

    #[test]
    fn progressive_keeps_concurrency_and_a_percentage_rounds_up() {
        let rollout = progressive(IntOrString::String("25%".into()), IntOrString::Int(0));
        // 5 clusters: 25 % is 1.25, so 2 at a time.
        let list = [("e", Outdated), ("d", Outdated), ("c", Outdated), ("b", Outdated), ("a", Outdated)];
        assert_eq!(plan_of(&rollout, &list).start, ["a", "b"]);
        let list = [("a", InProgress { since: t(90) }), ("b", Done), ("c", Outdated), ("d", Outdated), ("e", Outdated)];
        let next = plan_of(&rollout, &list);
        assert_eq!((next.start.as_slice(), next.updated), (&["c".to_string()][..], 3));
    }

    #[test]
    fn failures_past_the_threshold_pause_and_say_which() {
        let rollout = progressive(IntOrString::Int(2), IntOrString::Int(1));
        // One failure is tolerated and frees its place.
        let one =
            plan_of(&rollout, &[("a", Failed), ("b", InProgress { since: t(90) }), ("c", Outdated), ("d", Outdated)]);
        assert_eq!((one.start.as_slice(), one.phase), (&["c".to_string()][..], Phase::Progressing));
        assert!(one.message.contains("failed: a"), "{}", one.message);
        // A cluster in progress past the 60 s deadline is a second failure: paused, nothing started.
        let two = plan_of(&rollout, &[("a", Failed), ("b", InProgress { since: t(10) }), ("c", Outdated)]);
        assert!(two.start.is_empty());
        assert_eq!(two.phase, Phase::Paused);
        assert_eq!(two.failed, ["a", "b"]);
        assert!(two.message.starts_with("paused: 2 cluster(s) failed"), "{}", two.message);
        // Recovered (the failing clusters became Done): it goes on.
        let back = plan_of(&rollout, &[("a", Done), ("b", Done), ("c", Outdated)]);
        assert_eq!((back.start.as_slice(), back.phase), (&["c".to_string()][..], Phase::Progressing));
    }

    #[test]
    fn bad_numbers_are_named() {
        let rollout = progressive(IntOrString::String("lots".into()), IntOrString::Int(0));
        let err = plan(&rollout, &states(&[("a", Outdated)]), t(0)).unwrap_err();
        assert!(err.starts_with("rollout.maxConcurrency: \"lots\""), "{err}");
        assert_eq!(resolve(&IntOrString::String("50%".into()), 5, false, "f"), Ok(2));
        assert!(resolve(&IntOrString::Int(-1), 5, false, "rollout.maxFailures").unwrap_err().contains("negative"));
    }
}
