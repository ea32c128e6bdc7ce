//! A deleted push's deliveries, deleted by the controller itself. Left to the hub's garbage collector they
//! go at its pace, shared with everything else on the hub (kube-controller-manager's client sends 20
//! requests a second by default: 100 s for a push to 1,000 clusters); one collection delete marks them all,
//! and each delivery's own finalizer then cleans its spoke. The push's finalizer holds it until that
//! delete is sent. A push deleted with `--cascade=orphan` keeps its deliveries, as Kubernetes promises.
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tether_api::push::{ManifestDelivery, ManifestPush, PUSH_LABEL};

use super::context::PushContext;
use crate::Error;

/// The finalizer a push carries while the controller is to delete its deliveries.
pub const PUSH_FINALIZER: &str = "tether.io/push-deliveries";
/// The finalizer the apiserver sets when an owner is deleted with `propagationPolicy: Orphan`.
const ORPHAN_FINALIZER: &str = "orphan";

/// What deleting a push asks of its deliveries.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Delete them (each cleans its spoke per its `deletePolicy`).
    Delete,
    /// Keep them: the garbage collector takes the push off their owners.
    Orphan,
}

pub fn removal_of(push: &ManifestPush) -> Removal {
    match push.finalizers().iter().any(|f| f == ORPHAN_FINALIZER) {
        true => Removal::Orphan,
        false => Removal::Delete,
    }
}

/// Whether `push` carries the finalizer.
pub fn held(push: &ManifestPush) -> bool {
    push.finalizers().iter().any(|f| f == PUSH_FINALIZER)
}

/// Adds the finalizer (the resourceVersion guards the list against a concurrent change).
pub async fn hold(push: &ManifestPush, ctx: &PushContext) -> Result<(), Error> {
    let mut finalizers = push.finalizers().to_vec();
    finalizers.push(PUSH_FINALIZER.to_string());
    patch_finalizers(push, ctx, finalizers).await
}

/// The push is being deleted: its deliveries go (unless orphaned), then its finalizer.
pub async fn remove(push: &ManifestPush, ctx: &PushContext) -> Result<Action, Error> {
    if !held(push) {
        return Ok(Action::await_change());
    }
    let namespace = push.namespace().unwrap_or_default();
    if removal_of(push) == Removal::Delete {
        let api: Api<ManifestDelivery> = Api::namespaced(ctx.hub.clone(), &namespace);
        let selector = ListParams::default().labels(&format!("{PUSH_LABEL}={}", push.name_any()));
        api.delete_collection(&DeleteParams::background(), &selector).await?;
        tracing::info!(push = %push.name_any(), %namespace, "push deleted: its deliveries are being removed");
    }
    let finalizers = push.finalizers().iter().filter(|f| *f != PUSH_FINALIZER).cloned().collect();
    patch_finalizers(push, ctx, finalizers).await?;
    Ok(Action::await_change())
}

async fn patch_finalizers(push: &ManifestPush, ctx: &PushContext, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<ManifestPush> = Api::namespaced(ctx.hub.clone(), &push.namespace().unwrap_or_default());
    crate::finalizers::patch(&api, push, finalizers).await
}

#[cfg(test)]
mod tests {
    use tether_api::push::ManifestPushSpec;

    use super::*;

    fn push(finalizers: &[&str]) -> ManifestPush {
        let mut push = ManifestPush::new("app", ManifestPushSpec::default());
        push.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        push
    }

    #[test]
    fn a_deleted_push_takes_its_deliveries_unless_orphaned() {
        assert_eq!(removal_of(&push(&[PUSH_FINALIZER])), Removal::Delete);
        assert_eq!(removal_of(&push(&[PUSH_FINALIZER, "foregroundDeletion"])), Removal::Delete);
        assert_eq!(removal_of(&push(&["orphan", PUSH_FINALIZER])), Removal::Orphan);
        assert!(held(&push(&["orphan", PUSH_FINALIZER])) && !held(&push(&["orphan"])));
    }
}
