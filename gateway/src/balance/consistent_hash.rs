//! Consistent hashing on a weighted hash ring (`registry::ring`): the
//! request key's owner is the first eligible backend clockwise from the key
//! on the ring of the service's ready backends. The same key reaches the same
//! backend while the set is unchanged; adding an (N+1)-th backend moves only
//! the keys it now wins, about 1/(N+1) of them, and removing, ejecting or
//! having tried one moves only its own keys, each to the key's next backend.
//! The ring is fixed across builds, so every gateway maps keys the same way,
//! and to the instance the app servers' key-value store makes the key's
//! primary. A pick is a binary search, O(log n); the ring is built once per
//! change of the service's ready set (see `table::LiveState`).

use std::borrow::Cow;
use std::sync::Arc;

use registry::model::HashKey;
use registry::ring::Ring;

use super::{Eligible, RequestView, cookie_value};
use crate::backend::Backend;

/// The request's hash key, if it has one.
pub fn key_of<'a>(key: &HashKey, request: &RequestView<'a>) -> Option<Cow<'a, str>> {
    match key {
        HashKey::PathSegment(n) => request
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .nth(*n)
            .map(Cow::Borrowed),
        HashKey::Header(name) => request
            .headers
            .get(name.as_str())?
            .to_str()
            .ok()
            .map(Cow::Borrowed),
        HashKey::Query(name) => request
            .query?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| k == name)
            .map(|(_, v)| Cow::Borrowed(v)),
        HashKey::Cookie(name) => cookie_value(request.headers, name).map(Cow::Borrowed),
    }
}

/// The key's owner: the first backend on `ring` that [`Eligible::accepts`];
/// when none does (panic mode), the first untried one.
pub fn pick(ring: &Ring, eligible: &Eligible, key: &str) -> Option<usize> {
    ring.owner(key, |i| eligible.accepts(i))
        .or_else(|| ring.owner(key, |i| eligible.untried(i)))
}

/// The ring of `backends` (in their order: the table sorts them by id, as
/// the key-value store sorts its members, so both number them alike).
pub fn ring_of(backends: &[Arc<Backend>]) -> Ring {
    Ring::new(backends.iter().map(member))
}

/// The ring of `now`, updated from `ring`, the ring of `before`
/// ([`Ring::updated`]: the same ring [`ring_of`] builds, by a merge).
pub fn ring_following(ring: &Ring, before: &[Arc<Backend>], now: &[Arc<Backend>]) -> Ring {
    let before: Vec<_> = before.iter().map(member).collect();
    let now: Vec<_> = now.iter().map(member).collect();
    ring.updated(&before, &now)
}

/// A backend as a ring member: its id and weight.
fn member(backend: &Arc<Backend>) -> (&str, u32) {
    (backend.id(), backend.instance.weight)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http::HeaderMap;

    use super::super::testing::backends;
    use super::*;

    fn owner(b: &[Arc<Backend>], key: &str) -> String {
        owner_skipping(b, key, &[])
    }

    fn owner_skipping(b: &[Arc<Backend>], key: &str, tried: &[usize]) -> String {
        let eligible = Eligible::new(b, tried, Instant::now());
        b[pick(&ring_of(b), &eligible, key).unwrap()]
            .id()
            .to_owned()
    }

    #[test]
    fn the_same_key_always_reaches_the_same_backend() {
        let b = backends(3);
        for k in 0..100 {
            let key = format!("user-{k}");
            assert_eq!(owner(&b, &key), owner(&b, &key));
        }
    }

    #[test]
    fn adding_a_fourth_backend_moves_about_a_quarter_of_the_keys_and_only_to_it() {
        let four = backends(4);
        let three = &four[..3];
        let mut moved = 0;
        for k in 0..1000 {
            let key = format!("key-{k}");
            let (before, after) = (owner(three, &key), owner(&four, &key));
            if before != after {
                moved += 1;
                assert_eq!(after, "b3", "a key moved between old backends");
            }
        }
        assert!((200..=300).contains(&moved), "{moved} of 1000 keys moved");
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let b = backends(4);
        let without_b1: Vec<_> = b.iter().filter(|x| x.id() != "b1").cloned().collect();
        for k in 0..500 {
            let key = format!("k{k}");
            let before = owner(&b, &key);
            if before != "b1" {
                assert_eq!(owner(&without_b1, &key), before);
            }
        }
    }

    #[test]
    fn an_ejected_or_tried_owner_hands_only_its_keys_to_their_next_backend() {
        let b = backends(4);
        let without_b2: Vec<_> = b.iter().filter(|x| x.id() != "b2").cloned().collect();
        let until = Instant::now() + std::time::Duration::from_secs(5);
        for k in 0..500 {
            let key = format!("k{k}");
            assert_eq!(owner_skipping(&b, &key, &[2]), owner(&without_b2, &key));
        }
        b[2].state.update_health(|h| h.ejected_until = Some(until));
        for k in 0..500 {
            let key = format!("k{k}");
            assert_eq!(owner(&b, &key), owner(&without_b2, &key));
        }
        // Every backend ejected: keys still map as if none were (panic mode).
        for x in &b {
            x.state.update_health(|h| h.ejected_until = Some(until));
        }
        let fresh = backends(4);
        for k in 0..100 {
            let key = format!("k{k}");
            assert_eq!(owner(&b, &key), owner(&fresh, &key));
        }
    }

    #[test]
    fn the_gateway_and_the_key_value_store_agree_on_owners() {
        // The key-value store ranks its members (sorted by id) on the same ring.
        let b = backends(5);
        let ids: Vec<&str> = b.iter().map(|x| x.id()).collect();
        let store_ring = Ring::new(ids.iter().map(|id| (*id, 1)));
        for k in 0..200 {
            let key = format!("user:{k}");
            let store_owner = ids[store_ring.owner(&key, |_| true).unwrap()];
            assert_eq!(owner(&b, &key), store_owner);
        }
    }

    #[test]
    fn keys_come_from_path_header_query_or_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.insert("cookie", "a=1; session=s42".parse().unwrap());
        let view = RequestView {
            path: "/kv/users/7",
            query: Some("x=1&tenant=acme&flag"),
            headers: &headers,
        };
        assert_eq!(
            key_of(&HashKey::PathSegment(1), &view).as_deref(),
            Some("users")
        );
        assert_eq!(key_of(&HashKey::PathSegment(9), &view), None);
        assert_eq!(
            key_of(&HashKey::Header("x-user".into()), &view).as_deref(),
            Some("alice")
        );
        assert_eq!(
            key_of(&HashKey::Query("tenant".into()), &view).as_deref(),
            Some("acme")
        );
        assert_eq!(
            key_of(&HashKey::Query("flag".into()), &view).as_deref(),
            Some("")
        );
        assert_eq!(
            key_of(&HashKey::Cookie("session".into()), &view).as_deref(),
            Some("s42")
        );
    }
}
