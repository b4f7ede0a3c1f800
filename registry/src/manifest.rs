//! A declarative file of services, policies and routes (`autoscaler apply
//! -f shoal.yaml`), each section a map keyed by name:
//!
//! ```yaml
//! services:
//!   web:                                  # a spec::Service; `name` comes from the key
//!     process: {argv: [node, server.js], port_env: PORT}
//!     readiness: {path: /}
//! policies:
//!   web: {min: 1, max: 6, metric: inflight, target: 4}   # `service` from the key
//! routes:
//!   web: {path_prefix: /node/, service: web, strip_prefix: true}
//! ```
//!
//! [`Manifest::from_value`] checks everything before anything is written and
//! reports every problem at once, each with its path in the file
//! (`services.web.process.argv`), so a front end can point at the line. The
//! store turns a manifest into a [`crate::store::ApplyPlan`] (the diff) and
//! applies it in one transaction.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::keys::validate_segment;
use crate::model::{Route, ScalingPolicy, ValidationError};
use crate::spec::Service;

/// The three sections, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    pub services: BTreeMap<String, Service>,
    pub policies: BTreeMap<String, ScalingPolicy>,
    pub routes: BTreeMap<String, Route>,
}

/// One thing wrong with a manifest, where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ManifestError {
    /// Dotted path of the offending entry or field, e.g. `services.web.process.argv`.
    pub path: String,
    pub problem: String,
}

impl ManifestError {
    fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ManifestError {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// A model validation error of the entry at `entry`: the model names
    /// fields `kind.field.sub`; in the file they live under the entry.
    fn validation(entry: &str, e: ValidationError) -> Self {
        let field = e.field.split_once('.').map_or("", |(_, rest)| rest);
        let path = if field.is_empty() {
            entry.to_owned()
        } else {
            format!("{entry}.{field}")
        };
        ManifestError::new(path, e.problem)
    }
}

const SECTIONS: [&str; 3] = ["services", "policies", "routes"];

impl Manifest {
    /// Read a parsed file (YAML or JSON, as a JSON value). Every problem is
    /// reported; an empty list of errors means the whole file is valid.
    pub fn from_value(value: Value) -> Result<Manifest, Vec<ManifestError>> {
        let mut errors = Vec::new();
        let mut manifest = Manifest::default();
        let Value::Object(top) = value else {
            return Err(vec![ManifestError::new(
                "(top level)",
                "expected a map with `services`, `policies` and/or `routes`",
            )]);
        };
        for (section, body) in top {
            if !SECTIONS.contains(&section.as_str()) {
                errors.push(ManifestError::new(
                    section.as_str(),
                    format!("unknown section; use {}", SECTIONS.join(", ")),
                ));
                continue;
            }
            let Value::Object(entries) = body else {
                if !body.is_null() {
                    errors.push(ManifestError::new(
                        section.as_str(),
                        "expected a map of entries keyed by name",
                    ));
                }
                continue;
            };
            for (name, entry) in entries {
                let path = format!("{section}.{name}");
                if let Err(e) = validate_segment("name", &name) {
                    errors.push(ManifestError::new(path, e.problem));
                    continue;
                }
                match section.as_str() {
                    "services" => {
                        if let Some(spec) =
                            typed::<Service>(&path, entry, "name", &name, &mut errors)
                        {
                            match spec.validate() {
                                Ok(()) => {
                                    manifest.services.insert(name, spec);
                                }
                                Err(e) => errors.push(ManifestError::validation(&path, e)),
                            }
                        }
                    }
                    "policies" => {
                        if let Some(policy) =
                            typed::<ScalingPolicy>(&path, entry, "service", &name, &mut errors)
                        {
                            match policy.validate() {
                                Ok(()) => {
                                    manifest.policies.insert(name, policy);
                                }
                                Err(e) => errors.push(ManifestError::validation(&path, e)),
                            }
                        }
                    }
                    _ => {
                        if let Some(route) = typed::<Route>(&path, entry, "", &name, &mut errors) {
                            match route.validate() {
                                Ok(()) => {
                                    manifest.routes.insert(name, route);
                                }
                                Err(e) => errors.push(ManifestError::validation(&path, e)),
                            }
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(manifest)
        } else {
            Err(errors)
        }
    }

    /// How many objects the file declares.
    pub fn len(&self) -> usize {
        self.services.len() + self.policies.len() + self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decode one entry as `T`, with `name_field` (if any) taken from the key
/// when left out and refused when it disagrees.
fn typed<T: DeserializeOwned + serde::Serialize>(
    path: &str,
    entry: Value,
    name_field: &str,
    name: &str,
    errors: &mut Vec<ManifestError>,
) -> Option<T> {
    let mut entry = entry;
    if !name_field.is_empty() {
        let Value::Object(fields) = &mut entry else {
            errors.push(ManifestError::new(path, "expected a map of fields"));
            return None;
        };
        match fields.get(name_field) {
            None => {
                fields.insert(name_field.to_owned(), Value::String(name.to_owned()));
            }
            Some(Value::String(s)) if s == name => {}
            Some(other) => {
                errors.push(ManifestError::new(
                    format!("{path}.{name_field}"),
                    format!("says {other} but the entry is `{name}`; make them agree or leave `{name_field}` out"),
                ));
                return None;
            }
        }
    }
    let given: Vec<String> = match &entry {
        Value::Object(fields) => fields.keys().cloned().collect(),
        _ => Vec::new(),
    };
    // The path inside the entry, so a typo deep in it is named where it is.
    let value: T = match serde_path_to_error::deserialize(entry) {
        Ok(value) => value,
        Err(e) => {
            let inner = e.path().to_string();
            let at = if inner == "." {
                path.to_owned()
            } else {
                format!("{path}.{inner}")
            };
            errors.push(ManifestError::new(at, e.into_inner().to_string()));
            return None;
        }
    };
    // Registry values accept fields they do not know (a newer writer's), but
    // in a file written by hand an unknown field is a typo that would be
    // silently ignored: what the value does not write back, it did not read.
    let known = match serde_json::to_value(&value) {
        Ok(Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let unknown: Vec<&String> = given.iter().filter(|f| !known.contains_key(*f)).collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = known.keys().map(String::as_str).collect();
        for field in unknown {
            errors.push(ManifestError::new(
                format!("{path}.{field}"),
                format!("unknown field; the fields are {}", names.join(", ")),
            ));
        }
        return None;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn file() -> Value {
        json!({
            "services": {
                "web": {"process": {"argv": ["node", "server.js"], "port_env": "PORT"}}
            },
            "policies": {
                "web": {"min": 1, "max": 6, "metric": "inflight", "target": 4.0}
            },
            "routes": {
                "web": {"path_prefix": "/node/", "service": "web", "strip_prefix": true}
            }
        })
    }

    #[test]
    fn names_come_from_the_keys() {
        let m = Manifest::from_value(file()).unwrap();
        assert_eq!(m.services["web"].name, "web");
        assert_eq!(m.policies["web"].service, "web");
        assert_eq!(m.routes["web"].path_prefix, "/node/");
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut bad = file();
        bad["services"]["web"]["process"]["argv"] = json!([]);
        bad["policies"]["web"]["max"] = json!(0);
        bad["policies"]["other"] =
            json!({"service": "web", "min": 1, "max": 2, "metric": "inflight", "target": 1});
        bad["routes"]["web"]["polcy"] = json!("sticky");
        bad["extras"] = json!({});
        bad["services"]["typo"] =
            json!({"process": {"argv": ["node", "server.js"], "prot_env": "PORT"}});
        let errors = Manifest::from_value(bad).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"services.web.process.argv"), "{errors:?}");
        assert!(
            paths.iter().any(|p| p.starts_with("policies.web")),
            "{errors:?}"
        );
        assert!(paths.contains(&"policies.other.service"), "{errors:?}");
        assert!(paths.contains(&"routes.web.polcy"), "{errors:?}");
        assert!(paths.contains(&"extras"), "{errors:?}");
        assert!(
            paths.contains(&"services.typo.process.prot_env"),
            "a typo inside a section is named where it is: {errors:?}"
        );
        assert_eq!(errors.len(), 6, "{errors:?}");
    }

    #[test]
    fn an_empty_or_partial_file_is_fine() {
        assert!(Manifest::from_value(json!({})).unwrap().is_empty());
        let only_routes =
            Manifest::from_value(json!({"routes": {"a": {"service": "app"}}})).unwrap();
        assert_eq!(only_routes.routes.len(), 1);
        assert!(Manifest::from_value(json!([1])).is_err());
    }
}
