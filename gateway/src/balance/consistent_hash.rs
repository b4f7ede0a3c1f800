//! Consistent hashing by weighted rendezvous (highest random weight): every
//! backend scores the request key, the highest score wins. The same key reaches
//! the same backend while the set is unchanged; adding an (N+1)-th backend
//! moves only the keys it now wins, about 1/(N+1) of them, and removing one
//! moves only its own keys. The ranking is `registry::rendezvous`, fixed
//! across builds, so every gateway maps keys the same way, and to the
//! instance the app servers' key-value store makes the key's primary.

use std::borrow::Cow;
use std::sync::Arc;

use registry::model::HashKey;

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
        HashKey::Cookie(name) => cookie_value(request.headers, name).map(Cow::Owned),
    }
}

pub fn pick(backends: &[Arc<Backend>], eligible: &Eligible, key: &str) -> Option<usize> {
    eligible
        .iter()
        .max_by(|&a, &b| score(key, &backends[a]).total_cmp(&score(key, &backends[b])))
}

/// Weighted rendezvous score (`registry::rendezvous`, the ranking app
/// servers use for their key-value store too).
pub fn score(key: &str, backend: &Backend) -> f64 {
    registry::rendezvous::score(key, backend.id(), backend.instance.weight)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http::HeaderMap;

    use super::super::testing::backends;
    use super::*;

    fn owner(b: &[Arc<Backend>], key: &str) -> String {
        let eligible = Eligible::new(b, &[], Instant::now());
        b[pick(b, &eligible, key).unwrap()].id().to_owned()
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
