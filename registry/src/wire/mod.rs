//! What crosses a process boundary over HTTP, defined once for both sides:
//! the gateway's service statistics (its admin API, read by the autoscaler),
//! an instance's `/load` (read by the autoscaler for `cpu` policies), and the
//! admin API's request and response bodies.
//!
//! **The contract is versioned by its URL** (`/api/v1/...`, `/load`), not by
//! lenient decoding: a reader decodes strictly, so a field that is missing
//! or renamed is an error it reports (the autoscaler lists such a gateway as
//! silent), never a zero it acts on. Fields may be added within a version;
//! a reader that must work with writers that predate a field declares it
//! `Option` and treats `null` as "not known". Renaming or removing a field,
//! or changing its meaning, is a new version. Each type's round trip and a
//! literal document of each version are unit-tested here.
//!
//! With the `openapi` feature the types derive `utoipa::ToSchema`, so the
//! gateway's OpenAPI document describes exactly these.

pub mod admin;
pub mod gateway;
pub mod load;

use serde::{Deserialize, Deserializer};

/// For an `Option` field that must be present (`null` when not known):
/// serde would otherwise read a missing `Option` as `None`, the silent
/// default this contract refuses. Use as
/// `#[serde(deserialize_with = "crate::wire::nullable")]`.
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}
