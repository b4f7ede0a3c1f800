//! A map from name to shared state that the request path reads without a
//! lock: an `ArcSwap` of an immutable `HashMap`, copied on the rare insert.
//! It holds proxy state that must outlive routing-table snapshots
//! (concurrency limits per instance); entries whose key
//! left the registry are dropped at the next insert.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

#[derive(Debug)]
pub struct LiveMap<T> {
    map: ArcSwap<HashMap<String, Arc<T>>>,
}

impl<T> Default for LiveMap<T> {
    fn default() -> Self {
        LiveMap {
            map: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl<T> LiveMap<T> {
    /// The entry for `key`, made with `make` if missing. On insert, entries
    /// for which `keep` is false are dropped.
    pub fn get_or_insert(
        &self,
        key: &str,
        make: impl Fn() -> T,
        keep: impl Fn(&str) -> bool,
    ) -> Arc<T> {
        if let Some(found) = self.map.load().get(key) {
            return found.clone();
        }
        let mut value = None;
        self.map.rcu(|current| {
            let mut next: HashMap<String, Arc<T>> = current
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let entry = next
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(make()))
                .clone();
            value = Some(entry);
            next
        });
        value.expect("rcu ran the update at least once")
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_shared_and_pruned_on_insert() {
        let map = LiveMap::<u32>::default();
        let a = map.get_or_insert("a", || 1, |_| true);
        let again = map.get_or_insert("a", || 2, |_| true);
        assert!(Arc::ptr_eq(&a, &again));
        map.get_or_insert("b", || 3, |k| k != "a");
        assert_eq!(map.len(), 1);
        assert_eq!(*map.get_or_insert("a", || 4, |_| true), 4, "a was pruned");
    }
}
