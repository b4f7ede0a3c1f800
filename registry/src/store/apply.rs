//! Applying a [`Manifest`]: [`Store::plan_apply`] compares it with what is
//! stored and returns the diff ([`ApplyPlan`]: what would be created,
//! updated, deleted with `--prune`, or left alone); [`Store::apply`] makes
//! the whole plan in one transaction that also checks nothing it touches
//! changed since the plan was read ([`StoreError::Conflict`] otherwise), so
//! a file is applied entirely or not at all. Changed specs keep their
//! previous version in the history, as [`Store::put_service`] does.
//!
//! A policy's `pinned` (`autoscaler scale`) is an operator's override, not
//! part of the file: a file that leaves it out keeps the stored pin.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::backend::{Compare, Kv, Op, Range, Span, Txn};
use super::{Store, StoreError};
use crate::manifest::Manifest;
use crate::model::{RegistryValue, ValidationError};

/// etcd's default limit on the operations of one transaction (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// What kind of object a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Policy,
    Route,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "service",
            Kind::Policy => "policy",
            Kind::Route => "route",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
    Unchanged,
}

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
    /// What changes, in words: `version 1a2b… → 3c4d…`, `max 4 → 6`.
    pub detail: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.action {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::Unchanged => "=",
        };
        write!(f, "{sign} {} {}", self.kind, self.name)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// The diff, and the transaction that makes it.
#[derive(Debug, Clone)]
pub struct ApplyPlan {
    pub changes: Vec<Change>,
    txn: Txn,
}

impl ApplyPlan {
    /// Whether applying would write anything.
    pub fn changes_anything(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Unchanged)
    }
}

/// The fields of two JSON objects that differ, as `field old → new`.
fn field_diff(old: &Value, new: &Value) -> String {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return String::new();
    };
    let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter_map(|f| {
            let (a, b) = (
                old.get(f).unwrap_or(&Value::Null),
                new.get(f).unwrap_or(&Value::Null),
            );
            (a != b).then(|| format!("{f} {a} → {b}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(version: &str) -> &str {
    &version[..version.len().min(8)]
}

/// What is stored under one section, by name, with its raw entry.
struct Stored<T> {
    by_name: BTreeMap<String, (T, Kv)>,
}

impl Store {
    async fn stored<T: RegistryValue>(
        &self,
        prefix: &str,
        name: impl Fn(&T) -> String,
    ) -> Result<Stored<T>, StoreError> {
        let listing = self
            .read("read the registry", Range::prefix(prefix))
            .await?;
        let mut by_name = BTreeMap::new();
        for kv in listing.kvs {
            // A stored entry that does not decode is replaced (or pruned) like any other.
            if let Ok(value) = T::decode(&self.keys, &kv.key, &kv.value) {
                by_name.insert(name(&value), (value, kv));
            }
        }
        Ok(Stored { by_name })
    }

    /// Compare `manifest` with the registry; with `prune`, also delete the
    /// services, policies and routes it does not list.
    pub async fn plan_apply(
        &self,
        manifest: &Manifest,
        prune: bool,
    ) -> Result<ApplyPlan, StoreError> {
        let services = self
            .stored::<crate::spec::Service>(&self.keys.services(), |s| s.name.clone())
            .await?;
        let policies = self
            .stored::<crate::model::ScalingPolicy>(&self.keys.policies(), |p| p.service.clone())
            .await?;
        let routes = self
            .stored::<crate::model::NamedRoute>(&self.keys.routes(), |r| r.name.clone())
            .await?;
        let mut changes = Vec::new();
        let mut txn = Txn::default();
        let json = |spec: &crate::spec::Service| {
            serde_json::to_vec(spec).expect("a Service always serializes")
        };

        for (name, spec) in &manifest.services {
            let key = self.keys.service(name);
            match services.by_name.get(name) {
                Some((current, _)) if current.version() == spec.version() => {
                    changes.push(unchanged(
                        Kind::Service,
                        name,
                        format!("version {}", short(&spec.version())),
                    ));
                }
                Some((current, kv)) => {
                    let last = self.last_history_seq(name).await?;
                    txn.when
                        .push(Compare::unchanged_since(key.as_str(), kv.mod_revision));
                    txn.then.push(Op::put(key.as_str(), json(spec)));
                    txn.then.extend(self.history_ops(current, last));
                    changes.push(Change {
                        kind: Kind::Service,
                        name: name.clone(),
                        action: Action::Update,
                        detail: format!(
                            "version {} → {} ({})",
                            short(&current.version()),
                            short(&spec.version()),
                            field_diff(
                                &serde_json::to_value(current).unwrap_or_default(),
                                &serde_json::to_value(spec).unwrap_or_default()
                            )
                        ),
                    });
                }
                None => {
                    txn.when.push(Compare::absent(key.as_str()));
                    txn.then.push(Op::put(key.as_str(), json(spec)));
                    changes.push(created(
                        Kind::Service,
                        name,
                        format!("version {}", short(&spec.version())),
                    ));
                }
            }
        }
        for (name, policy) in &manifest.policies {
            let key = self.keys.policy(name);
            let mut policy = policy.clone();
            let stored = policies.by_name.get(name);
            if policy.pinned.is_none() {
                policy.pinned = stored.and_then(|(p, _)| p.pinned);
            }
            self.plan_one(
                &mut txn,
                &mut changes,
                Kind::Policy,
                name,
                &key,
                &policy,
                stored.map(|(p, kv)| (p, kv)),
            );
        }
        for (name, route) in &manifest.routes {
            let key = self.keys.route(name);
            let stored = routes.by_name.get(name).map(|(r, kv)| (&r.route, kv));
            self.plan_one(
                &mut txn,
                &mut changes,
                Kind::Route,
                name,
                &key,
                route,
                stored,
            );
        }
        if prune {
            for (name, (_, kv)) in &services.by_name {
                if !manifest.services.contains_key(name) {
                    txn.when
                        .push(Compare::unchanged_since(kv.key.as_str(), kv.mod_revision));
                    txn.then.push(Op::delete(kv.key.as_str()));
                    txn.then
                        .push(Op::Delete(Span::Prefix(self.keys.service_history(name))));
                    changes.push(deleted(Kind::Service, name));
                }
            }
            for (name, (_, kv)) in &policies.by_name {
                if !manifest.policies.contains_key(name) {
                    txn.when
                        .push(Compare::unchanged_since(kv.key.as_str(), kv.mod_revision));
                    txn.then.push(Op::delete(kv.key.as_str()));
                    changes.push(deleted(Kind::Policy, name));
                }
            }
            for (name, (_, kv)) in &routes.by_name {
                if !manifest.routes.contains_key(name) {
                    txn.when
                        .push(Compare::unchanged_since(kv.key.as_str(), kv.mod_revision));
                    txn.then.push(Op::delete(kv.key.as_str()));
                    changes.push(deleted(Kind::Route, name));
                }
            }
        }
        if txn.then.len() > MAX_TXN_OPS {
            return Err(StoreError::Invalid(ValidationError::new(
                "manifest",
                format!(
                    "these changes need {} operations and etcd makes at most {MAX_TXN_OPS} in one transaction; apply the file in parts",
                    txn.then.len()
                ),
            )));
        }
        changes.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(ApplyPlan { changes, txn })
    }

    /// Plan a policy or route: create, update (with the fields that change) or nothing.
    #[allow(clippy::too_many_arguments)]
    fn plan_one<T: serde::Serialize + PartialEq>(
        &self,
        txn: &mut Txn,
        changes: &mut Vec<Change>,
        kind: Kind,
        name: &str,
        key: &str,
        wanted: &T,
        stored: Option<(&T, &Kv)>,
    ) {
        let value = serde_json::to_value(wanted).expect("registry values always serialize");
        match stored {
            Some((current, _)) if current == wanted => {
                changes.push(unchanged(kind, name, String::new()))
            }
            Some((current, kv)) => {
                let old = serde_json::to_value(current).expect("registry values always serialize");
                txn.when
                    .push(Compare::unchanged_since(key, kv.mod_revision));
                txn.then.push(Op::put(key, value.to_string()));
                changes.push(Change {
                    kind,
                    name: name.to_owned(),
                    action: Action::Update,
                    detail: field_diff(&old, &value),
                });
            }
            None => {
                txn.when.push(Compare::absent(key));
                txn.then.push(Op::put(key, value.to_string()));
                changes.push(created(kind, name, String::new()));
            }
        }
    }

    /// Make a plan, all of it or nothing: [`StoreError::Conflict`] if
    /// anything it touches changed since it was planned.
    pub async fn apply(&self, plan: &ApplyPlan) -> Result<(), StoreError> {
        if plan.txn.then.is_empty() {
            return Ok(());
        }
        if !self
            .write("apply the file", plan.txn.clone())
            .await?
            .succeeded
        {
            return Err(StoreError::Conflict {
                key: "the registry".to_owned(),
            });
        }
        Ok(())
    }
}

fn created(kind: Kind, name: &str, detail: String) -> Change {
    Change {
        kind,
        name: name.to_owned(),
        action: Action::Create,
        detail,
    }
}

fn unchanged(kind: Kind, name: &str, detail: String) -> Change {
    Change {
        kind,
        name: name.to_owned(),
        action: Action::Unchanged,
        detail,
    }
}

fn deleted(kind: Kind, name: &str) -> Change {
    Change {
        kind,
        name: name.to_owned(),
        action: Action::Delete,
        detail: String::new(),
    }
}
