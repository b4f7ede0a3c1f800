//! Sticky sessions: a cookie (`shoal-sticky-{service}`, value = instance id)
//! pins a client to an instance. While that instance is eligible (in the
//! table, hence ready; not ejected; not already tried by this request) the
//! request goes there. Otherwise the request is balanced by least-request and
//! the cookie is rewritten to the new instance. The pinned instance is found
//! by binary search: the table keeps a service's backends sorted by id.

use std::sync::Arc;

use super::{Eligible, Pick, PickContext, RequestView, cookie_value, least_request};
use crate::backend::Backend;

#[derive(Debug, Default)]
pub struct Sticky;

/// The cookie name for `service`.
pub fn cookie_name(service: &str) -> String {
    format!("shoal-sticky-{service}")
}

impl Sticky {
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &Eligible,
        request: &RequestView<'_>,
        ctx: &PickContext,
    ) -> Option<Pick> {
        let service = &backends.first()?.instance.service;
        if let Some(pinned) = cookie_value(request.headers, &cookie_name(service))
            && let Ok(index) = backends.binary_search_by(|b| b.id().cmp(&pinned))
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
        Sticky
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
