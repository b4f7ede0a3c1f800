//! Sticky sessions: a cookie (`shoal-sticky-{service}`, value = instance id)
//! pins a client to an instance. While that instance is eligible (in the
//! table, hence ready; not ejected; not already tried by this request) the
//! request goes there. Otherwise the request is balanced by least-request and
//! the cookie is rewritten to the new instance.
//!
//! The pinned instance is found in [`Pins`], an index by id built once per
//! ready set: one hash probe a request. (A binary search over the backends,
//! sorted by id, read one cold entry and its id per step: 14 steps, about
//! 560 instructions and as many cache lines, at 10,000 instances.)

use std::collections::HashMap;
use std::sync::Arc;

use super::{Eligible, Pick, PickContext, RequestView, cookie_value, least_request};
use crate::backend::Backend;

/// A service's sticky cookie name and its backends' indices by id, for
/// one ready set (shared by the service's sticky routes, see
/// [`Prepared`](super::Prepared)).
#[derive(Debug)]
pub struct Pins {
    cookie: String,
    by_id: HashMap<Box<str>, usize>,
}

impl Pins {
    pub fn of(backends: &[Arc<Backend>]) -> Self {
        let service = backends.first().map_or("", |b| b.instance.service.as_str());
        Pins {
            cookie: cookie_name(service),
            by_id: backends
                .iter()
                .enumerate()
                .map(|(index, b)| (Box::from(b.id()), index))
                .collect(),
        }
    }
}

/// The sticky policy over one ready set, whose [`Pins`] it holds.
#[derive(Debug)]
pub struct Sticky(Arc<Pins>);

/// The cookie name for `service`.
pub fn cookie_name(service: &str) -> String {
    format!("shoal-sticky-{service}")
}

impl Sticky {
    /// `pins` belong to the backends this policy will pick from.
    pub fn new(pins: Arc<Pins>) -> Self {
        Sticky(pins)
    }

    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &Eligible,
        request: &RequestView<'_>,
        ctx: &PickContext,
    ) -> Option<Pick> {
        let pins = &self.0;
        if let Some(pinned) = cookie_value(request.headers, &pins.cookie)
            && let Some(&index) = pins.by_id.get(pinned)
            && (eligible.accepts(index) || eligible.untried(index) && eligible.panicking())
        {
            return Some(Pick {
                index,
                set_cookie: false,
            });
        }
        least_request::pick(backends, eligible, ctx, least_request::Draw::Anywhere).map(|index| {
            Pick {
                index,
                set_cookie: true,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use http::HeaderMap;

    use super::super::testing::backends;
    use super::*;

    fn pick_with(b: &[Arc<Backend>], cookie: Option<&str>, tried: &[usize]) -> Pick {
        let mut headers = HeaderMap::new();
        if let Some(c) = cookie {
            headers.insert(
                "cookie",
                format!("other=1; shoal-sticky-app={c}").parse().unwrap(),
            );
        }
        let view = RequestView {
            path: "/",
            query: None,
            headers: &headers,
        };
        let ctx = PickContext {
            now: Instant::now(),
            slow_start: Duration::ZERO,
        };
        Sticky::new(Arc::new(Pins::of(b)))
            .pick(b, &Eligible::new(b, tried, ctx.now), &view, &ctx)
            .unwrap()
    }

    #[test]
    fn the_cookie_pins_and_a_missing_one_is_set() {
        let b = backends(3);
        for _ in 0..20 {
            assert_eq!(
                pick_with(&b, Some("b2"), &[]),
                Pick {
                    index: 2,
                    set_cookie: false
                }
            );
        }
        assert!(pick_with(&b, None, &[]).set_cookie);
    }

    /// The index finds every instance by its id, whatever the order of the
    /// backends (`b10` sorts before `b2`), and an unknown id finds none.
    #[test]
    fn every_instance_of_many_is_found_by_its_id() {
        let b = backends(1000);
        for (index, backend) in b.iter().enumerate() {
            let pick = pick_with(&b, Some(backend.id()), &[]);
            assert_eq!(
                pick,
                Pick {
                    index,
                    set_cookie: false
                },
                "{}",
                backend.id()
            );
        }
        assert!(pick_with(&b, Some("b1000"), &[]).set_cookie);
        assert!(pick_with(&b, Some("b"), &[]).set_cookie);
    }

    #[test]
    fn a_gone_ejected_or_failed_instance_is_replaced_and_the_cookie_rewritten() {
        let b = backends(3);
        let gone = pick_with(&b, Some("b9"), &[]);
        assert!(gone.set_cookie);
        b[2].state
            .update_health(|h| h.ejected_until = Some(Instant::now() + Duration::from_secs(5)));
        let ejected = pick_with(&b, Some("b2"), &[]);
        assert!(ejected.set_cookie && ejected.index != 2, "{ejected:?}");
        let retried = pick_with(&b, Some("b1"), &[1]);
        assert!(retried.set_cookie && retried.index != 1, "{retried:?}");
    }
}
