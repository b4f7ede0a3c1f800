//! What an operator changes, through the CLI or the admin API: routes,
//! scaling policies, the pin on a policy, rolling-restart requests, and
//! retiring one instance. Input is validated before anything is sent
//! ([`StoreError::Invalid`] names the field). Changes that depend on what is
//! stored are transactions that compare first, so two operators never
//! overwrite each other unknowingly:
//! - a pin is a compare-and-set on the policy's mod revision
//!   ([`StoreError::Conflict`] if it changed in between);
//! - a rollout is requested only while the service has a policy (the
//!   autoscaler carries it out only then) and no rollout is in progress;
//! - a retire key is written only while the instance is registered (a
//!   retire key for nobody would wait for an instance that never comes).

use super::backend::{Compare, Op, OpResult, Txn};
use super::{Store, StoreError, Stored};
use crate::keys::validate_segment;
use crate::model::{RegistryValue, RetireRequest, Rollout, Route, ScalingPolicy};

/// Whether a put made a new entry or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
}

/// A pin set or removed.
#[derive(Debug, Clone, PartialEq)]
pub struct PinChange {
    /// The policy as stored now.
    pub policy: ScalingPolicy,
    /// The pin before.
    pub was: Option<u32>,
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("registry values always serialize")
}

impl Store {
    /// Put `value` at `key` and say whether it was new.
    pub(super) async fn put(
        &self,
        what: &'static str,
        key: String,
        value: Vec<u8>,
    ) -> Result<Written, StoreError> {
        let outcome = self
            .write(what, Txn::ops(vec![Op::put(key, value)]))
            .await?;
        Ok(match outcome.results.first() {
            Some(OpResult::Put { prev: Some(_) }) => Written::Replaced,
            _ => Written::Created,
        })
    }

    /// Delete `key`; whether it was there.
    pub(super) async fn delete(&self, what: &'static str, key: String) -> Result<bool, StoreError> {
        let outcome = self.write(what, Txn::ops(vec![Op::delete(key)])).await?;
        Ok(matches!(
            outcome.results.first(),
            Some(OpResult::Delete { deleted }) if *deleted > 0
        ))
    }

    /// Create or replace the route `name`.
    pub async fn put_route(&self, name: &str, route: &Route) -> Result<Written, StoreError> {
        validate_segment("route name", name)?;
        route.validate()?;
        self.put("write the route", self.keys.route(name), json(route))
            .await
    }

    /// Delete the route `name`; whether there was one.
    pub async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        validate_segment("route name", name)?;
        self.delete("delete the route", self.keys.route(name)).await
    }

    /// Create or replace the scaling policy of `policy.service`.
    pub async fn put_policy(&self, policy: &ScalingPolicy) -> Result<Written, StoreError> {
        policy.validate()?;
        let key = self.keys.policy(&policy.service);
        self.put("write the policy", key, json(policy)).await
    }

    /// Delete the scaling policy of `service`; whether there was one.
    pub async fn delete_policy(&self, service: &str) -> Result<bool, StoreError> {
        validate_segment("service", service)?;
        self.delete("delete the policy", self.keys.policy(service))
            .await
    }

    /// Pin `service` at `pinned` instances, or hand it back to its metric
    /// (`None`): read the policy, then [`Store::repin`] it.
    pub async fn set_pin(
        &self,
        service: &str,
        pinned: Option<u32>,
    ) -> Result<PinChange, StoreError> {
        validate_segment("service", service)?;
        let stored = self
            .policy(service)
            .await?
            .ok_or_else(|| StoreError::NoPolicy {
                service: service.to_owned(),
            })?;
        self.repin(stored, pinned).await
    }

    /// Change the pin of a policy read earlier, only if nobody wrote it since.
    pub async fn repin(
        &self,
        stored: Stored<ScalingPolicy>,
        pinned: Option<u32>,
    ) -> Result<PinChange, StoreError> {
        let mut policy = stored.value;
        let was = policy.pinned;
        if was == pinned {
            return Ok(PinChange { policy, was });
        }
        policy.pinned = pinned;
        policy.validate()?;
        let key = self.keys.policy(&policy.service);
        let txn = Txn {
            when: vec![Compare::unchanged_since(key.as_str(), stored.mod_revision)],
            then: vec![Op::put(key.as_str(), json(&policy))],
            otherwise: vec![],
        };
        if !self.write("write the policy", txn).await?.succeeded {
            return Err(StoreError::Conflict { key });
        }
        Ok(PinChange { policy, was })
    }

    /// Ask the leading autoscaler for a rolling restart of `rollout.service`.
    pub async fn request_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        rollout.validate()?;
        let key = self.keys.rollout(&rollout.service);
        let txn = Txn {
            when: vec![
                Compare::exists(self.keys.policy(&rollout.service)),
                Compare::absent(key.as_str()),
            ],
            then: vec![Op::put(key.as_str(), json(rollout))],
            otherwise: vec![Op::Get(key.clone())],
        };
        let outcome = self.write("write the rollout request", txn).await?;
        if outcome.succeeded {
            return Ok(());
        }
        match outcome.first_get() {
            // One in progress; if it does not decode, report ours as the one in the way.
            Some(kv) => Err(StoreError::RolloutInProgress(Box::new(
                Rollout::decode(&self.keys, &key, &kv.value).unwrap_or_else(|_| rollout.clone()),
            ))),
            None => Err(StoreError::NoPolicy {
                service: rollout.service.clone(),
            }),
        }
    }

    /// Ask the registered instance `id` of `service` to drain and leave.
    pub async fn retire(
        &self,
        service: &str,
        id: &str,
        request: &RetireRequest,
    ) -> Result<(), StoreError> {
        validate_segment("service", service)?;
        validate_segment("instance id", id)?;
        request.validate()?;
        let txn = Txn {
            when: vec![Compare::exists(self.keys.instance(service, id))],
            then: vec![Op::put(self.keys.retire(service, id), json(request))],
            otherwise: vec![],
        };
        if !self.write("write the retire key", txn).await?.succeeded {
            return Err(StoreError::NotRegistered {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Delete the retire key of `id` (the instance does as it leaves);
    /// whether there was one.
    pub async fn clear_retire(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        self.delete("delete the retire key", self.keys.retire(service, id))
            .await
    }
}
