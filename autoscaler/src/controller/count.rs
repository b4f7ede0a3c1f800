//! Which owned instances make up a service's current size, and which need
//! the controller's attention (reaping, replacing).
//!
//! An owned instance counts while it runs, is not being retired, and is
//! registered `starting` or `ready` — or was started less than the startup
//! grace ago and has not registered yet. One whose registry entry vanished
//! (lease expired: frozen or cut off) still counts for `lost_after` (2 × the
//! lease TTL), so a brief lease hiccup does not start a second instance; past
//! that it is lost and replaced. Pure: the controller gathers the facts.

use std::time::Duration;

use registry::InstanceState;

/// What the controller knows about one owned instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// From the driver: the exit code once it has exited.
    pub exited: Option<i32>,
    /// From the registry: its state, if it is registered now.
    pub registered: Option<InstanceState>,
    /// The controller wrote its retire key.
    pub retiring: bool,
    /// Since the controller started it (or first saw it).
    pub age: Duration,
    /// It has been seen in the registry at least once.
    pub ever_registered: bool,
    /// How long its registry entry has been missing, if it is.
    pub missing_for: Option<Duration>,
}

/// Timing rules for [`judge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// How long a started instance may take to register.
    pub startup_grace: Duration,
    /// How long a registered instance may be missing from the registry (2 × lease TTL).
    pub lost_after: Duration,
}

/// What an owned instance is, for counting and self-healing.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Registered `starting` (`ready: false`) or `ready`.
    Serving { ready: bool },
    /// Started, not registered yet, within the startup grace.
    Starting,
    /// Its registry entry is gone, but not for long: still counted.
    Missing,
    /// Retiring (or draining on its own), still running.
    Leaving,
    /// Retired, exited and gone from the registry: the driver may forget it.
    Reapable,
    /// Exited while nobody asked it to: replace it.
    Crashed { code: i32 },
    /// Running but not in the registry for too long (or never got there): stop and replace.
    Lost { why: String },
}

impl Verdict {
    /// Whether it is part of the current size.
    pub fn counts(&self) -> bool {
        matches!(
            self,
            Verdict::Serving { .. } | Verdict::Starting | Verdict::Missing
        )
    }
}

pub fn judge(f: &Facts, rules: &Rules) -> Verdict {
    if f.retiring {
        // Reaped once it has both exited and left the registry (a lingering
        // entry expires with its lease; the deadline covers the rest).
        return if f.exited.is_some() && f.registered.is_none() {
            Verdict::Reapable
        } else {
            Verdict::Leaving
        };
    }
    if let Some(code) = f.exited {
        return Verdict::Crashed { code };
    }
    match f.registered {
        Some(InstanceState::Ready) => Verdict::Serving { ready: true },
        Some(InstanceState::Starting) => Verdict::Serving { ready: false },
        Some(InstanceState::Draining) => Verdict::Leaving,
        None if f.ever_registered => match f.missing_for {
            Some(gone) if gone >= rules.lost_after => Verdict::Lost {
                why: format!(
                    "its registry entry has been gone for {:.1} s (lease expired)",
                    gone.as_secs_f64()
                ),
            },
            _ => Verdict::Missing,
        },
        None if f.age < rules.startup_grace => Verdict::Starting,
        None => Verdict::Lost {
            why: format!(
                "it did not register within {:.0} s of starting",
                rules.startup_grace.as_secs_f64()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        startup_grace: Duration::from_secs(20),
        lost_after: Duration::from_secs(10),
    };

    fn running(registered: Option<InstanceState>) -> Facts {
        Facts {
            exited: None,
            registered,
            retiring: false,
            age: Duration::from_secs(60),
            ever_registered: registered.is_some(),
            missing_for: None,
        }
    }

    #[test]
    fn current_count_rules() {
        use InstanceState::*;
        let young = Facts {
            age: Duration::from_secs(1),
            ..running(None)
        };
        let gone_briefly = Facts {
            ever_registered: true,
            missing_for: Some(Duration::from_secs(3)),
            ..running(None)
        };
        let gone_long = Facts {
            ever_registered: true,
            missing_for: Some(Duration::from_secs(10)),
            ..running(None)
        };
        let retiring = Facts {
            retiring: true,
            ..running(Some(Ready))
        };
        let retired_exited = Facts {
            exited: Some(0),
            ..retiring.clone()
        };
        let retired_gone = Facts {
            registered: None,
            ..retired_exited.clone()
        };
        let crashed = Facts {
            exited: Some(137),
            ..running(Some(Ready))
        };
        // (facts, counted, verdict)
        let cases: Vec<(Facts, bool, Verdict)> = vec![
            (running(Some(Ready)), true, Verdict::Serving { ready: true }),
            (
                running(Some(Starting)),
                true,
                Verdict::Serving { ready: false },
            ),
            (young, true, Verdict::Starting),
            (gone_briefly, true, Verdict::Missing),
            (running(Some(Draining)), false, Verdict::Leaving),
            (retiring, false, Verdict::Leaving),
            (retired_exited, false, Verdict::Leaving),
            (retired_gone, false, Verdict::Reapable),
            (crashed, false, Verdict::Crashed { code: 137 }),
        ];
        for (facts, counted, want) in cases {
            let got = judge(&facts, &RULES);
            assert_eq!((got.counts(), &got), (counted, &want), "{facts:?}");
        }
        for lost in [gone_long, running(None)] {
            let got = judge(&lost, &RULES);
            assert!(matches!(got, Verdict::Lost { .. }), "{lost:?}: {got:?}");
            assert!(!got.counts());
        }
    }
}
