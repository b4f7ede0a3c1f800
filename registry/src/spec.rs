//! A service's declared workload: how to run it (per driver), how to tell
//! that an instance is ready, who registers it, how long it drains, and its
//! labels. Stored at `services/{service}`; what the autoscaler starts for a
//! service with a spec and a policy. Its [`Service::version`] is derived from
//! its content, so an edit is a new version and instances still on the old
//! one are rolled onto the new one.
//!
//! Fields an operator leaves out take their defaults; fields it misspells are
//! refused (`deny_unknown_fields`), since a typo silently ignored would run
//! the wrong thing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::{Key, Keys, validate_segment};
use crate::model::{DecodeError, RegistryValue, ValidationError, decode_json, key_mismatch};
use crate::stable_hash::hash;

/// Placeholders replaced in a process's argv (and a container's command):
/// the port it must listen on, its instance id, its service, its version.
pub const PLACEHOLDERS: [&str; 4] = ["{port}", "{id}", "{service}", "{version}"];

/// How a service's instances are run and joined to the registry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service (the last segment of its key).
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
        )
    )]
    pub name: String,
    /// How the `process` driver runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRun>,
    /// How the `docker` driver runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerRun>,
    /// When an instance may receive requests.
    #[serde(default)]
    pub readiness: Readiness,
    /// Who registers an instance in the registry.
    #[serde(default)]
    pub registration: RegistrationMode,
    /// How long a managed instance keeps serving after it is marked
    /// draining, before it is sent SIGTERM (gateways move away meanwhile).
    #[serde(default = "default_drain_grace")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3600))]
    pub drain_grace_secs: u64,
    /// Labels every instance registers with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = labels_schema))]
    pub labels: BTreeMap<String, String>,
    /// Give every instance a data directory that outlives it, named in
    /// `SHOAL_DATA_DIR` (which `app-server` reads as `--data-dir`): the
    /// replacement of a crashed instance gets the crashed one's directory
    /// and what it held. The process driver keeps them under its
    /// `--data-root`, the docker driver in named volumes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_dir: bool,
}

/// `labels`: a string map of at most 64 entries.
#[cfg(feature = "openapi")]
fn labels_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .additional_properties(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .max_length(Some(1024)),
        ))
        .property_names(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .max_length(Some(128)),
        ))
        .max_properties(Some(64))
        .build()
}

fn default_drain_grace() -> u64 {
    1
}

/// A local program.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRun {
    /// The program and its arguments, with [`PLACEHOLDERS`] replaced.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub argv: Vec<String>,
    /// Extra environment variables (placeholders replaced in values too).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the autoscaler's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// An environment variable that also carries the port (e.g. `PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_env: Option<String>,
}

/// A container image.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerRun {
    pub image: String,
    /// The container's command (default: the image's), placeholders replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The port the program listens on inside the container.
    pub container_port: u16,
}

/// When an instance is routable.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// An HTTP path polled until it answers 2xx (or 3xx); without one, a
    /// TCP connection to the port is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Keep polling while the instance runs, and take it out of routing
    /// while the probe fails.
    #[serde(default)]
    pub while_running: bool,
}

impl Readiness {
    /// The `registry run` flags that carry this readiness rule.
    pub fn registry_run_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(path) = &self.path {
            flags.extend(["--health-path".to_owned(), path.clone()]);
        }
        if self.while_running {
            flags.push("--health-while-running".to_owned());
        }
        flags
    }
}

/// Who registers an instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// The platform registers it (readiness, draining on retire, SIGTERM),
    /// so any program works unchanged.
    #[default]
    Managed,
    /// The program registers itself, as `app-server` does, under the id in
    /// `SHOAL_INSTANCE_ID` (also `{id}` in its argv).
    #[serde(rename = "self")]
    SelfRegistered,
}

impl RegistrationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Managed => "managed",
            RegistrationMode::SelfRegistered => "self",
        }
    }
}

impl Service {
    /// A digest of everything that decides how instances run: equal specs
    /// have equal versions, and any edit changes it. 16 hex digits.
    pub fn version(&self) -> String {
        let json = serde_json::to_vec(self).expect("a Service always serializes");
        format!("{:016x}", hash(&json, b""))
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("service.name", &self.name)?;
        if self.process.is_none() && self.docker.is_none() {
            return Err(ValidationError::new(
                "service",
                "says neither how to run it as a process (`process: {argv: [...]}`) nor as a container (`docker: {image: ..., container_port: N}`); give at least one",
            ));
        }
        if let Some(process) = &self.process {
            process.validate()?;
        }
        if let Some(docker) = &self.docker {
            docker.validate()?;
        }
        if let Some(path) = &self.readiness.path
            && (!path.starts_with('/') || path.len() > 1024 || path.chars().any(char::is_control))
        {
            return Err(ValidationError::new(
                "service.readiness.path",
                format!("`{path}` must be a path starting with `/`, e.g. /healthz"),
            ));
        }
        if self.drain_grace_secs > 3600 {
            return Err(ValidationError::new(
                "service.drain_grace_secs",
                "at most 3600",
            ));
        }
        if self.labels.len() > 64 {
            return Err(ValidationError::new("service.labels", "at most 64 labels"));
        }
        for (k, v) in &self.labels {
            let field = format!("service.labels.{k}");
            text(&field, k, 128)?;
            text(&field, v, 1024)?;
            // Instances receive them as SHOAL_LABELS=k=v,k=v (and
            // `registry run --label k=v`).
            if k.is_empty() || k.contains(['=', ',']) || v.contains(',') {
                return Err(ValidationError::new(
                    field,
                    "a label key may not be empty or hold `=` or `,`, and a value may not hold `,` (instances receive labels as k=v,k=v); choose other characters",
                ));
            }
        }
        Ok(())
    }
}

impl ProcessRun {
    fn validate(&self) -> Result<(), ValidationError> {
        let Some(program) = self.argv.first() else {
            return Err(ValidationError::new(
                "service.process.argv",
                "is empty; give the program and its arguments, e.g. [node, server.js]",
            ));
        };
        if program.trim().is_empty() {
            return Err(ValidationError::new(
                "service.process.argv",
                "the program (the first element) is empty",
            ));
        }
        args("service.process.argv", &self.argv)?;
        env("service.process.env", &self.env)?;
        if let Some(var) = &self.port_env {
            env_name("service.process.port_env", var)?;
        }
        if self.port_env.is_none() && !self.argv.iter().any(|a| a.contains("{port}")) {
            return Err(ValidationError::new(
                "service.process",
                "does not tell the program its port: put {port} in argv (e.g. --port {port}) or set port_env (e.g. PORT)",
            ));
        }
        if let Some(cwd) = &self.cwd {
            text("service.process.cwd", cwd, 4096)?;
        }
        Ok(())
    }
}

impl DockerRun {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.image.is_empty()
            || self.image.len() > 256
            || self
                .image
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::new(
                "service.docker.image",
                format!(
                    "`{}` is not an image reference, e.g. shoal/app-server:dev",
                    self.image
                ),
            ));
        }
        args("service.docker.command", &self.command)?;
        env("service.docker.env", &self.env)?;
        if self.container_port == 0 {
            return Err(ValidationError::new(
                "service.docker.container_port",
                "must be the port the program listens on inside the container (1..=65535)",
            ));
        }
        Ok(())
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("{} bytes; at most {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "contains control characters"));
    }
    Ok(())
}

fn args(field: &str, args: &[String]) -> Result<(), ValidationError> {
    if args.len() > 256 {
        return Err(ValidationError::new(field, "at most 256 arguments"));
    }
    args.iter().try_for_each(|a| text(field, a, 4096))
}

fn env_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid || name.len() > 128 {
        return Err(ValidationError::new(
            field,
            format!("`{name}` is not an environment variable name (letters, digits, `_`)"),
        ));
    }
    Ok(())
}

fn env(field: &str, env: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if env.len() > 256 {
        return Err(ValidationError::new(field, "at most 256 variables"));
    }
    for (k, v) in env {
        env_name(field, k)?;
        text(&format!("{field}.{k}"), v, 32 * 1024)?;
    }
    Ok(())
}

/// Replace the [`PLACEHOLDERS`] in `text`.
pub fn fill(text: &str, port: u16, id: &str, service: &str, version: &str) -> String {
    text.replace("{port}", &port.to_string())
        .replace("{id}", id)
        .replace("{service}", service)
        .replace("{version}", version)
}

impl RegistryValue for Service {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let (Ok(Key::Service { service }) | Ok(Key::ServiceHistory { service, .. })) =
            keys.parse(key)
        else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{service}}", keys.services()),
            });
        };
        let spec: Service = decode_json(key, value, Service::validate)?;
        if spec.name != service {
            return Err(key_mismatch(key, "service.name", &service, &spec.name));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Service {
        serde_json::from_value(serde_json::json!({
            "name": "web",
            "process": {"argv": ["node", "server.js"], "port_env": "PORT"},
            "readiness": {"path": "/"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_what_is_left_out_and_typos_are_refused() {
        let spec = node();
        assert_eq!(spec.registration, RegistrationMode::Managed);
        assert_eq!(spec.drain_grace_secs, 1);
        spec.validate().unwrap();
        let typo = serde_json::from_value::<Service>(serde_json::json!({
            "name": "web", "process": {"argv": ["node"], "port_env": "PORT", "cmd": "x"}
        }))
        .unwrap_err();
        assert!(typo.to_string().contains("unknown field `cmd`"), "{typo}");
    }

    #[test]
    fn the_version_follows_the_content() {
        let a = node();
        let mut b = node();
        assert_eq!(a.version(), b.version());
        assert_eq!(a.version().len(), 16);
        b.process
            .as_mut()
            .unwrap()
            .env
            .insert("GREETING".into(), "hi".into());
        assert_ne!(a.version(), b.version());
        // Written out with the defaults, it is the same spec.
        let explicit: Service = serde_json::from_value(serde_json::json!({
            "name": "web",
            "process": {"argv": ["node", "server.js"], "port_env": "PORT"},
            "readiness": {"path": "/", "while_running": false},
            "registration": "managed",
            "drain_grace_secs": 1
        }))
        .unwrap();
        assert_eq!(explicit.version(), a.version());
        // A field added later and left at its default (`data_dir: false`)
        // is not serialized, so upgrading Shoal does not roll every service.
        let mut with_default = explicit.clone();
        with_default.data_dir = false;
        assert_eq!(with_default.version(), a.version());
        assert_eq!(
            a.version(),
            "130c664c3cf1630e",
            "the version of an unchanged spec changed"
        );
        with_default.data_dir = true;
        assert_ne!(with_default.version(), a.version());
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        let mut no_port = node();
        no_port.process.as_mut().unwrap().port_env = None;
        let e = no_port.validate().unwrap_err();
        assert_eq!(e.field, "service.process");
        assert!(e.problem.contains("{port}"), "{e}");

        let mut nothing = node();
        nothing.process = None;
        assert_eq!(nothing.validate().unwrap_err().field, "service");

        let mut bad_env = node();
        bad_env
            .process
            .as_mut()
            .unwrap()
            .env
            .insert("1X".into(), "v".into());
        assert_eq!(bad_env.validate().unwrap_err().field, "service.process.env");

        let mut path = node();
        path.readiness.path = Some("healthz".into());
        assert_eq!(path.validate().unwrap_err().field, "service.readiness.path");

        let docker: Service = serde_json::from_value(serde_json::json!({
            "name": "web", "docker": {"image": "", "container_port": 80}
        }))
        .unwrap();
        assert_eq!(docker.validate().unwrap_err().field, "service.docker.image");

        let mut comma = node();
        comma.labels.insert("tier".into(), "a,b".into());
        assert_eq!(comma.validate().unwrap_err().field, "service.labels.tier");
    }

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(
            fill(
                "--listen 127.0.0.1:{port} --id {id}",
                8081,
                "i1",
                "web",
                "v"
            ),
            "--listen 127.0.0.1:8081 --id i1"
        );
        assert_eq!(fill("{service}@{version}", 1, "i", "web", "abc"), "web@abc");
    }

    #[test]
    fn a_spec_decodes_under_its_key_only() {
        let keys = Keys::default();
        let json = serde_json::to_vec(&node()).unwrap();
        assert!(Service::decode(&keys, &keys.service("web"), &json).is_ok());
        assert!(Service::decode(&keys, &keys.service_history_entry("web", 3), &json).is_ok());
        let e = Service::decode(&keys, &keys.service("api"), &json).unwrap_err();
        assert!(e.to_string().contains("service.name"), "{e}");
    }
}
