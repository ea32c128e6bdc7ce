//! Writing an object's finalizers, for every controller here (registration cleanup, pushes, deliveries).
use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::Error;

/// Sets `object`'s finalizers to `finalizers` through `api`, guarded by its resourceVersion: a finalizer
/// another actor adds or removes meanwhile is never lost (the write fails with 409 and is retried).
pub async fn patch<K>(api: &Api<K>, object: &K, finalizers: Vec<String>) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": object.resource_version(), "finalizers": finalizers }
    });
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
