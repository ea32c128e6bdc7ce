//! The cases, grouped by what they exercise.
mod auth;
mod auto;
mod controller;
mod daemonset;
mod deploy;
mod exec;
mod kubectl;
mod leases;
mod logs;
mod node;
mod ops;
mod policy;
mod portforward;
mod push;
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
    // Real containers on spoke-a's node; the quiet `logs -f` opened first is checked after the others.
    all.extend(logs::cases());
    all.extend(node::cases());
    all.extend(exec::cases());
    all.extend(portforward::cases());
    all.extend(daemonset::cases());
    all.extend(logs::closing_cases());
    all.extend(ops::cases());
    all.extend(leases::cases());
    all.extend(controller::cases());
    all.extend(push::cases());
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
