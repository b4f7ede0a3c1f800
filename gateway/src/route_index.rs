//! Finding a request's route without scanning the routes: a map from host
//! to a map from path prefix to route, built once per routing-table
//! snapshot. A lookup probes the path's own prefixes, longest first, at the
//! lengths some route's prefix has, so its cost depends on the path, not on
//! how many routes there are (10 or 10,000).
//!
//! It answers exactly what a scan in the table's order would (see
//! [`crate::table`]): host-specific routes before host-less ones, then the
//! longest prefix, then the lowest name; a prefix matches at a segment
//! boundary ([`prefix_matches`]).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::table::{RouteEntry, prefix_matches};

/// Where each route sits in the table's sorted route list.
#[derive(Debug, Default)]
pub struct RouteIndex {
    /// Lower-case host → its routes.
    by_host: HashMap<String, Prefixes>,
    any_host: Prefixes,
}

/// Routes of one host (or of any host) by path prefix.
#[derive(Debug, Default)]
struct Prefixes {
    /// Prefix → position of the first route (in table order) with it.
    routes: HashMap<String, usize>,
    /// `has_length[n]`: some prefix here is `n` bytes long.
    has_length: Vec<bool>,
}

impl RouteIndex {
    /// The index of `routes`, given in the table's order.
    pub fn new(routes: &[RouteEntry]) -> RouteIndex {
        let mut index = RouteIndex::default();
        for (position, entry) in routes.iter().enumerate() {
            let prefixes = match &entry.route.host {
                Some(host) => index.by_host.entry(host.to_ascii_lowercase()).or_default(),
                None => &mut index.any_host,
            };
            prefixes.insert(&entry.route.path_prefix, position);
        }
        index
    }

    /// The position of the route for `host` (port removed) and `path`, if any.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let specific = host.filter(|_| !self.by_host.is_empty()).and_then(|host| {
            let host: Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                host.to_ascii_lowercase().into()
            } else {
                host.into()
            };
            self.by_host.get(host.as_ref())?.longest(path)
        });
        specific.or_else(|| self.any_host.longest(path))
    }
}

impl Prefixes {
    fn insert(&mut self, prefix: &str, position: usize) {
        // Routes come in table order: the first with a prefix is the one a scan finds.
        self.routes.entry(prefix.to_owned()).or_insert(position);
        if self.has_length.len() <= prefix.len() {
            self.has_length.resize(prefix.len() + 1, false);
        }
        self.has_length[prefix.len()] = true;
    }

    /// The route of the longest prefix matching `path`.
    fn longest(&self, path: &str) -> Option<usize> {
        let bytes = path.as_bytes();
        let longest = path.len().min(self.has_length.len().saturating_sub(1));
        (1..=longest).rev().find_map(|n| {
            // Only a prefix ending at a segment boundary can match.
            let boundary = n == path.len() || bytes[n] == b'/' || bytes[n - 1] == b'/';
            if !self.has_length[n] || !boundary || !path.is_char_boundary(n) {
                return None;
            }
            let prefix = &path[..n];
            let position = *self.routes.get(prefix)?;
            prefix_matches(prefix, path).then_some(position)
        })
    }
}
