//! The gateway admin API's own request and response bodies (`/api/v1/...`
//! writes and the service-spec endpoints). The registry objects they carry
//! (`Route`, `ScalingPolicy`, `Rollout`, `Service`, ...) are the model types
//! themselves; these are the envelopes around them.
//!
//! Bounds a body's fields must keep are declared on the schema (the
//! `openapi` feature) with the same numbers the handlers and the model's
//! `validate()` enforce, so the document says exactly what is accepted.

use serde::{Deserialize, Serialize};

use crate::model::Route;
use crate::spec::Service;

/// The longest `reason` a retire request through the API may carry, in
/// characters (at most 4 bytes each, within the registry's 1024 bytes).
pub const MAX_RETIRE_REASON_CHARS: usize = 256;

/// Body of `PUT /api/v1/services/{service}/pin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// The replica count to hold; replaces the metric's answer.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub replicas: u32,
}

/// Optional body of `POST /api/v1/services/{service}/instances/{id}/retire`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    /// Why, for the logs (default "retired through the admin API"); no
    /// control characters.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 256, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")
    )]
    pub reason: Option<String>,
}

/// Optional body of `POST /api/v1/services/{service}/rollout`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// New instances started beyond the desired count at a time (default 1).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub max_surge: Option<u32>,
    /// Old instances retired before their replacement is ready (default 0).
    /// Not both 0: no step could be taken.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub max_unavailable: Option<u32>,
}

/// What a delete answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    /// The registry key removed.
    pub deleted: String,
}

/// What a retire answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Retiring {
    pub service: String,
    pub id: String,
    /// The retire key written.
    pub key: String,
    pub reason: String,
}

/// A route with its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteView {
    pub name: String,
    #[serde(flatten)]
    pub route: Route,
}

/// `GET /api/v1/services/{service}/spec`: the stored spec and its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpecView {
    /// `Service::version()`: 16 hex digits derived from the spec's content.
    pub version: String,
    pub spec: Service,
}

/// What a spec write (put or undo) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SpecWritten {
    /// A new service spec.
    Created,
    /// The spec changed; the previous one is in the history.
    Replaced,
    /// The same spec was already stored; nothing was written.
    Unchanged,
}

/// The answer to a spec put or undo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpecChange {
    pub service: String,
    pub written: SpecWritten,
    /// The version replaced (`null`: there was no spec).
    #[serde(deserialize_with = "super::nullable")]
    pub previous: Option<String>,
    /// The version now stored.
    pub version: String,
}

/// One earlier spec of a service, newest first in
/// `GET /api/v1/services/{service}/spec/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpecHistoryEntry {
    /// The history entry's sequence number (higher is newer).
    pub seq: u64,
    pub version: String,
    pub spec: Service,
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::json;

    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), value, "{text}");
    }

    #[test]
    fn bodies_round_trip_and_refuse_what_they_do_not_know() {
        round_trip(PinBody { replicas: 3 });
        round_trip(RetireBody {
            reason: Some("why".into()),
        });
        round_trip(RolloutBody {
            max_surge: Some(2),
            max_unavailable: None,
        });
        round_trip(SpecChange {
            service: "app".into(),
            written: SpecWritten::Unchanged,
            previous: None,
            version: "00000000000000ff".into(),
        });
        // The literal document of v1.
        assert_eq!(
            serde_json::to_value(SpecChange {
                service: "web".into(),
                written: SpecWritten::Replaced,
                previous: Some("0000000000000001".into()),
                version: "0000000000000002".into(),
            })
            .unwrap(),
            json!({"service":"web","written":"replaced","previous":"0000000000000001","version":"0000000000000002"})
        );
        assert_eq!(
            serde_json::to_value(Deleted {
                deleted: "/shoal/routes/api".into()
            })
            .unwrap(),
            json!({"deleted":"/shoal/routes/api"})
        );
        assert!(serde_json::from_value::<PinBody>(json!({"replica": 3})).is_err());
        assert!(serde_json::from_value::<RolloutBody>(json!({"max_surge": "2"})).is_err());
        assert!(
            serde_json::from_value::<SpecChange>(
                json!({"service":"a","written":"created","version":"v"})
            )
            .is_err(),
            "`previous` must be present (null when there was none)"
        );
    }
}
