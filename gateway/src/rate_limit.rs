//! A route's `rate_limit`: a token bucket per key (the client's address, a
//! header's value, or the whole route), each kept as one number by the
//! generic cell rate algorithm (GCRA): the time at which its bucket will be
//! full again (the "theoretical arrival time"). A request is allowed when
//! taking one token would not leave the bucket short, i.e. when that time,
//! moved on by one request's worth (`1 / rate`), is at most one bucket's
//! worth (`burst / rate`) ahead of now; otherwise it gets 429 with
//! `Retry-After`, the time until a token is there.
//!
//! The limits are **local to each gateway**: each counts only the requests
//! it sees. With `shared: true` the route's rate and burst are for all
//! gateways together, and each allows its share, divided by the number of
//! live gateways in the registry (`gateways/`), which assumes clients are
//! spread evenly over the gateways.
//!
//! Keys are hashed to 64 bits (a header's value is never stored) in
//! [`SHARDS`] maps, each behind its own lock, held for one lookup. A key
//! whose bucket is full is the same as no key, so once a shard holds more
//! than [`SWEEP_AFTER`] keys (then twice what the last sweep kept) those are
//! swept out; if it is still over
//! [`MAX_KEYS_PER_SHARD`] (a flood of distinct clients, each with a partly
//! empty bucket), the shard is emptied and those clients start again with
//! full buckets: memory stays bounded and a limit fails open rather than
//! growing without end. The state lives on across routing-table rebuilds
//! while the route's limit is unchanged (`table::RouteLive`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use registry::model::{GatewayInfo, RateKey, RateLimit};

/// Maps a limiter's keys are spread over.
pub const SHARDS: usize = 16;
/// A shard with more keys than this is swept of full buckets.
pub const SWEEP_AFTER: usize = 4096;
/// Most keys a shard keeps after a sweep.
pub const MAX_KEYS_PER_SHARD: usize = 65_536;

/// What [`RouteLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; a token is there after this long.
    Limited {
        retry_after: Duration,
    },
}

/// Some of a limiter's keys.
#[derive(Debug)]
struct Shard {
    /// Key hash → when its bucket is full again, in nanoseconds after the
    /// limiter's epoch.
    buckets: HashMap<u64, u64>,
    /// Sweep once there are more keys than this: twice what the last sweep
    /// kept (at least [`SWEEP_AFTER`], at most one past
    /// [`MAX_KEYS_PER_SHARD`]), so sweeping costs O(1) per new key.
    sweep_at: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            buckets: HashMap::new(),
            sweep_at: SWEEP_AFTER,
        }
    }
}

impl Shard {
    /// Drop full buckets (`full_at <= now`); empty the shard if it is still
    /// over [`MAX_KEYS_PER_SHARD`].
    fn sweep(&mut self, now: u64) {
        self.buckets.retain(|_, full_at| *full_at > now);
        if self.buckets.len() > MAX_KEYS_PER_SHARD {
            self.buckets.clear();
        }
        self.sweep_at = (2 * self.buckets.len()).clamp(SWEEP_AFTER, MAX_KEYS_PER_SHARD + 1);
    }
}

/// One route's buckets.
#[derive(Debug)]
pub struct RouteLimiter {
    limit: RateLimit,
    /// Lower-case header name for `by: header`.
    header: Option<http::HeaderName>,
    shards: Vec<Mutex<Shard>>,
    epoch: Instant,
    /// Seeded per limiter: a client cannot choose a header value that
    /// lands in another's bucket.
    hasher: RandomState,
    limited: AtomicU64,
}

impl RouteLimiter {
    /// Buckets for `limit` (already validated with the route).
    pub fn new(limit: RateLimit) -> Self {
        let header = match &limit.by {
            RateKey::Header(name) => http::HeaderName::try_from(name.to_ascii_lowercase()).ok(),
            _ => None,
        };
        RouteLimiter {
            limit,
            header,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            epoch: crate::proxy::now(),
            hasher: RandomState::new(),
            limited: AtomicU64::new(0),
        }
    }

    /// The limit these buckets enforce.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Requests refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// The bucket a request belongs to: its client's address (`client` is
    /// only called for a limit by client), its header's value (requests
    /// without the header share one bucket), or the route.
    pub fn key(&self, client: impl FnOnce() -> IpAddr, headers: &HeaderMap) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        match (&self.limit.by, &self.header) {
            (RateKey::ClientIp, _) => match client() {
                IpAddr::V4(ip) => hasher.write(&ip.octets()),
                IpAddr::V6(ip) => hasher.write(&ip.octets()),
            },
            (RateKey::Header(_), Some(name)) => {
                if let Some(value) = headers.get(name) {
                    hasher.write_u8(1);
                    hasher.write(value.as_bytes());
                }
            }
            (RateKey::Header(_), None) | (RateKey::Route, _) => {}
        }
        hasher.finish()
    }

    /// Take a token from `key`'s bucket at `now`, this gateway being one of
    /// `gateways` live ones (only a `shared` limit divides by them).
    pub fn check(&self, key: u64, now: Instant, gateways: usize) -> Verdict {
        let share = if self.limit.shared {
            gateways.max(1) as f64
        } else {
            1.0
        };
        let rate = self.limit.per_second / share;
        // One request's worth, and one bucket's worth (at least one request).
        let interval = (1e9 / rate) as u64;
        let bucket = ((self.limit.bucket() / share).max(1.0) * 1e9 / rate) as u64;
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut shard = shard.lock().expect("rate limit shard poisoned");
        let full_at = shard.buckets.get(&key).copied().unwrap_or(0).max(now);
        let next = full_at + interval;
        if next - now > bucket {
            drop(shard);
            self.limited.fetch_add(1, Ordering::Relaxed);
            let retry_after = Duration::from_nanos(next - now - bucket);
            return Verdict::Limited { retry_after };
        }
        shard.buckets.insert(key, next);
        if shard.buckets.len() > shard.sweep_at {
            shard.sweep(now);
        }
        Verdict::Allowed
    }

    /// Keys held now (for tests and the memory bound).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("rate limit shard poisoned").buckets.len())
            .sum()
    }
}

/// Keep `live` at the number of gateways registered under `gateways/`
/// (at least 1: this one, before its own entry is there), for `shared`
/// limits. While etcd is unreachable the last count stays.
pub fn follow_live_gateways(store: &registry::Store, live: Arc<AtomicUsize>) {
    let gateways = registry::Watcher::<GatewayInfo>::start(store, store.keys().gateways());
    let mut snapshots = gateways.snapshots();
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _gateways = gateways;
        loop {
            let count = snapshots.borrow_and_update().entries.len().max(1);
            live.store(count, Ordering::Relaxed);
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    });
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn limiter(json: &str) -> RouteLimiter {
        RouteLimiter::new(serde_json::from_str(json).unwrap())
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    /// Requests allowed out of `n` sent at `at`.
    fn allowed(l: &RouteLimiter, key: u64, at: Instant, n: usize, gateways: usize) -> usize {
        (0..n)
            .filter(|_| l.check(key, at, gateways) == Verdict::Allowed)
            .count()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = limiter(r#"{"per_second":10,"burst":5}"#);
        let key = l.key(|| A, &HeaderMap::new());
        let t0 = l.epoch + Duration::from_secs(1);
        assert_eq!(allowed(&l, key, t0, 20, 1), 5, "the bucket's size at once");
        let Verdict::Limited { retry_after } = l.check(key, t0, 1) else {
            panic!("over the limit");
        };
        assert_eq!(retry_after, Duration::from_millis(100), "one token's time");
        // One token per 100 ms after that.
        assert_eq!(allowed(&l, key, t0 + Duration::from_millis(100), 5, 1), 1);
        assert_eq!(allowed(&l, key, t0 + Duration::from_millis(350), 5, 1), 2);
        // A quiet second refills the bucket, no more.
        assert_eq!(allowed(&l, key, t0 + Duration::from_secs(2), 20, 1), 5);
        assert_eq!(l.limited(), 20 - 5 + 1 + 4 + 3 + 15);
    }

    #[test]
    fn buckets_are_per_client_per_header_value_or_per_route() {
        let t = Instant::now() + Duration::from_secs(1);
        let by_ip = limiter(r#"{"per_second":1}"#);
        let (a, b) = (
            by_ip.key(|| A, &HeaderMap::new()),
            by_ip.key(|| B, &HeaderMap::new()),
        );
        assert_eq!(allowed(&by_ip, a, t, 3, 1), 1);
        assert_eq!(allowed(&by_ip, b, t, 3, 1), 1, "another client has its own");

        let by_header = limiter(r#"{"per_second":1,"by":{"from":"header","name":"X-Api-Key"}}"#);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-api-key", value.parse().unwrap());
            headers
        };
        let (k1, k2) = (
            by_header.key(|| A, &with("k1")),
            by_header.key(|| A, &with("k2")),
        );
        assert_ne!(k1, k2);
        assert_eq!(
            by_header.key(|| B, &with("k1")),
            k1,
            "the header, not the client"
        );
        assert_ne!(
            by_header.key(|| A, &HeaderMap::new()),
            k1,
            "no header: a bucket of its own"
        );

        let by_route = limiter(r#"{"per_second":1,"by":{"from":"route"}}"#);
        assert_eq!(
            by_route.key(|| A, &with("k1")),
            by_route.key(|| B, &HeaderMap::new())
        );
    }

    #[test]
    fn a_shared_limit_is_divided_by_the_live_gateways() {
        let shared = limiter(r#"{"per_second":100,"burst":100,"shared":true}"#);
        let local = limiter(r#"{"per_second":100,"burst":100}"#);
        let t = Instant::now() + Duration::from_secs(1);
        assert_eq!(allowed(&shared, 1, t, 1000, 4), 25, "a quarter each");
        assert_eq!(allowed(&local, 1, t, 1000, 4), 100, "not shared: all of it");
        // 4 gateways share 100/s: 25/s here, one per 40 ms.
        let Verdict::Limited { retry_after } = shared.check(1, t, 4) else {
            panic!("over the limit");
        };
        assert_eq!(retry_after, Duration::from_millis(40));
        // A bucket smaller than the gateways still lets one request through.
        let tiny = limiter(r#"{"per_second":1,"burst":1,"shared":true}"#);
        assert_eq!(allowed(&tiny, 1, t, 5, 3), 1);
    }

    #[test]
    fn full_buckets_are_swept_and_memory_stays_bounded() {
        let l = limiter(r#"{"per_second":1}"#);
        let t = Instant::now() + Duration::from_secs(1);
        // Many clients, one request each, then quiet for longer than a refill.
        for key in 0..(SHARDS * SWEEP_AFTER) as u64 {
            l.check(key, t, 1);
        }
        assert_eq!(l.keys(), SHARDS * SWEEP_AFTER);
        let later = t + Duration::from_secs(2);
        for key in 0..SHARDS as u64 {
            l.check(u64::MAX - key, later, 1);
        }
        assert!(
            l.keys() <= 2 * SHARDS,
            "full buckets swept: {} keys left",
            l.keys()
        );
        // A flood of distinct clients with partly empty buckets: bounded.
        let flood = limiter(r#"{"per_second":0.001,"burst":2}"#);
        for key in 0..(SHARDS * (MAX_KEYS_PER_SHARD + 10)) as u64 {
            flood.check(key, t, 1);
        }
        assert!(
            flood.keys() <= SHARDS * MAX_KEYS_PER_SHARD,
            "{}",
            flood.keys()
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
