//! Writing one object to a spoke by its strategy, and what the spoke's answer means for the delivery's
//! status.
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use tether_api::push::{ApplyResult, DeliveredManifest, EmbeddedObject, Strategy, FIELD_MANAGER, PUSHED_BY_LABEL};

/// What writing (or reading) one object came to.
#[derive(Debug)]
pub enum Outcome {
    /// Applied, created, or found present (create-only); the object as the spoke holds it now.
    Written(Box<DynamicObject>),
    /// Read, never written (read-only).
    Observed(Box<DynamicObject>),
    /// Not done: the spoke refused it, or could not be reached.
    Refused(Refusal),
}

/// A refusal as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub result: ApplyResult,
    pub message: String,
    /// The cluster could not be reached (no tunnel, a timeout): retried soon, not an object's fault.
    pub unreachable: bool,
}

impl Refusal {
    pub fn pending(message: impl Into<String>) -> Self {
        Self { result: ApplyResult::Pending, message: message.into(), unreachable: false }
    }
}

/// What a failed request means: a refusal of the object (`Forbidden`, `Conflict`, `Failed` with the
/// apiserver's message) or an unreachable cluster (`Pending`).
pub fn classify(error: &kube::Error) -> Refusal {
    let refused = |result, message: String| Refusal { result, message, unreachable: false };
    match error {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() { status.reason.clone() } else { status.message.clone() };
            match status.code {
                403 => refused(ApplyResult::Forbidden, message),
                409 if status.reason == "Conflict" => refused(ApplyResult::Conflict, message),
                // The proxy answers 503 for a cluster without a tunnel, 502/504 when the spoke does not answer.
                502..=504 => Refusal { result: ApplyResult::Pending, message, unreachable: true },
                _ => refused(ApplyResult::Failed, message),
            }
        }
        other => Refusal { result: ApplyResult::Pending, message: other.to_string(), unreachable: true },
    }
}

/// Writes `manifest` through `api` by its strategy.
pub async fn write(api: &Api<DynamicObject>, name: &str, manifest: &DeliveredManifest) -> Outcome {
    let result = match manifest.strategy {
        Strategy::ServerSideApply => apply(api, name, manifest).await,
        Strategy::CreateOnly => create_only(api, name, &manifest.object).await,
        Strategy::ReadOnly => match api.get_opt(name).await {
            Ok(Some(object)) => Ok(Outcome::Observed(Box::new(object))),
            Ok(None) => Ok(Outcome::Refused(Refusal::pending("not found on the cluster (read-only: never created)"))),
            Err(e) => Err(e),
        },
    };
    result.unwrap_or_else(|e| Outcome::Refused(classify(&e)))
}

/// Server-side apply. A conflict with fields someone edited by hand (an `Update`: `kubectl edit`, `patch`,
/// `scale`) is drift, and the push's value is put back; a conflict with another *applier* (a second
/// declarative owner) is reported, unless the manifest says `force`.
async fn apply(api: &Api<DynamicObject>, name: &str, manifest: &DeliveredManifest) -> kube::Result<Outcome> {
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = manifest.force;
    match api.patch(name, &params, &Patch::Apply(&manifest.object)).await {
        Err(kube::Error::Api(status)) if status.code == 409 && !manifest.force => {
            let existing = api.get_opt(name).await?;
            if existing.as_ref().is_some_and(|o| other_appliers(o).is_empty()) {
                params.force = true;
                let object = api.patch(name, &params, &Patch::Apply(&manifest.object)).await?;
                return Ok(Outcome::Written(Box::new(object)));
            }
            Err(kube::Error::Api(status))
        }
        result => result.map(|o| Outcome::Written(Box::new(o))),
    }
}

/// Field managers other than the push's that own fields by server-side apply.
pub fn other_appliers(object: &DynamicObject) -> Vec<String> {
    let entries = object.metadata.managed_fields.iter().flatten();
    entries
        .filter(|e| e.operation.as_deref() == Some("Apply"))
        .filter_map(|e| e.manager.clone())
        .filter(|m| m != FIELD_MANAGER)
        .collect()
}

async fn create_only(api: &Api<DynamicObject>, name: &str, object: &EmbeddedObject) -> kube::Result<Outcome> {
    if let Some(existing) = api.get_opt(name).await? {
        return Ok(Outcome::Written(Box::new(existing)));
    }
    let object: DynamicObject = serde_json::from_str(object.text()).map_err(kube::Error::SerdeError)?;
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&params, &object).await {
        Ok(created) => Ok(Outcome::Written(Box::new(created))),
        // Created meanwhile by someone else: it exists, which is all create-only asks.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(api.get_opt(name).await?.map_or_else(
            || Outcome::Refused(Refusal::pending("created and deleted meanwhile")),
            |o| Outcome::Written(Box::new(o)),
        )),
        Err(e) => Err(e),
    }
}

/// What deleting an object the delivery applied came to.
#[derive(Debug)]
pub enum Pruned {
    /// Deleted, already gone, or no longer the push's (its label was changed): nothing left to do.
    Done,
    Refused(Refusal),
}

/// Deletes `name` if it still carries `owner` as its [`PUSHED_BY_LABEL`]: an object someone took over
/// (relabelled) or replaced is never deleted (the uid precondition covers a replacement between the read
/// and the delete).
pub async fn prune(api: &Api<DynamicObject>, name: &str, owner: &str) -> Pruned {
    let object = match api.get_opt(name).await {
        Ok(Some(object)) => object,
        Ok(None) => return Pruned::Done,
        Err(e) => return Pruned::Refused(classify(&e)),
    };
    let ours = object.metadata.labels.as_ref().and_then(|l| l.get(PUSHED_BY_LABEL)).map(String::as_str) == Some(owner);
    if !ours || object.metadata.deletion_timestamp.is_some() {
        return Pruned::Done;
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: object.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Pruned::Done,
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Pruned::Done,
        Err(e) => Pruned::Refused(classify(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": reason, "message": message,
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn only_other_appliers_make_a_conflict_stick() {
        let object = |entries: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "x", "managedFields": entries}
            }))
            .unwrap()
        };
        let hand_edited = object(serde_json::json!([
            {"manager": FIELD_MANAGER, "operation": "Apply"},
            {"manager": "kubectl-patch", "operation": "Update"},
        ]));
        assert!(other_appliers(&hand_edited).is_empty());
        let shared = object(serde_json::json!([
            {"manager": FIELD_MANAGER, "operation": "Apply"},
            {"manager": "argocd", "operation": "Apply"},
        ]));
        assert_eq!(other_appliers(&shared), ["argocd"]);
    }

    #[test]
    fn refusals_name_the_object_s_fault_and_unreachable_clusters_are_pending() {
        let forbidden = classify(&api_error(403, "Forbidden", "configmaps is forbidden: User \"tether:push:a\""));
        assert_eq!(forbidden.result, ApplyResult::Forbidden);
        assert!(forbidden.message.contains("tether:push:a") && !forbidden.unreachable);
        assert_eq!(classify(&api_error(409, "Conflict", "Apply failed with 1 conflict")).result, ApplyResult::Conflict);
        let invalid = classify(&api_error(422, "Invalid", "ConfigMap \"x\" is invalid: data: Too long"));
        assert_eq!(
            (invalid.result, invalid.message.as_str()),
            (ApplyResult::Failed, "ConfigMap \"x\" is invalid: data: Too long")
        );
        let down = classify(&api_error(503, "ServiceUnavailable", "no tunnel to cluster spoke-a"));
        assert_eq!(down.result, ApplyResult::Pending);
        assert!(down.unreachable);
        assert_eq!(classify(&api_error(404, "NotFound", "")).message, "NotFound");
    }
}
