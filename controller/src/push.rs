//! Pushing resources to spokes (`ManifestPush` → a `ManifestDelivery` per selected cluster). This part
//! holds the pure decisions: which clusters a placement selects and what each of them gets.
pub mod feedback;
pub mod order;
pub mod placement;
pub mod render;
pub mod rollout;
pub mod summary;
