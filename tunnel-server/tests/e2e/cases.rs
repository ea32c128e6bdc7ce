//! The cases, grouped by what they exercise.
mod auth;
mod auto;
mod controller;
mod deploy;
mod kubectl;
mod leases;
mod ops;
mod policy;
mod register;
mod revocation;
mod rotation;
mod streams;
mod tunnel;
mod unregister;
mod upgrade;

use crate::Case;

pub fn all() -> Vec<(&'static str, Case)> {
    let mut all: Vec<(&'static str, Case)> = Vec::new();
    all.extend(kubectl::cases());
    all.extend(auth::cases());
    all.extend(upgrade::cases());
    all.extend(streams::cases());
    all.extend(ops::cases());
    all.extend(leases::cases());
    all.extend(controller::cases());
    all.extend(deploy::cases());
    all.extend(unregister::cases());
    all.extend(register::cases());
    all.extend(rotation::cases());
    all.extend(auto::cases());
    all.extend(policy::cases());
    // Restarts last: every other case has run against the first processes.
    all.extend(revocation::cases());
    all.extend(tunnel::cases());
    all.extend(ops::last_cases());
    all
}
