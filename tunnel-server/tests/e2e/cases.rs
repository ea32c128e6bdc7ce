//! The cases, grouped by what they exercise.
mod auth;
mod kubectl;
mod ops;
mod tunnel;
mod upgrade;

use crate::Case;

pub fn all() -> Vec<(&'static str, Case)> {
    let mut all: Vec<(&'static str, Case)> = Vec::new();
    all.extend(kubectl::cases());
    all.extend(auth::cases());
    all.extend(upgrade::cases());
    all.extend(ops::cases());
    // Restarts last: every other case has run against the first processes.
    all.extend(tunnel::cases());
    all
}
