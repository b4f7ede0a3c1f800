//! A weighted hash ring (consistent hashing with virtual points), shared by
//! every party that must agree on where a key lives: the gateway's
//! `consistent-hash` policy and the app server's key-value store.
//!
//! Each member puts [`POINTS_PER_WEIGHT`] × weight points on a 64-bit circle
//! (weight capped at [`MAX_WEIGHT`]); a key hashes to a position and belongs to
//! the member of the first point at or after it, clockwise. Walking on gives
//! the key's ranking: the next distinct members are its second, third, ...
//! choices.
//!
//! Why a ring and not rendezvous hashing (what Shoal used before): the ring
//! is built once per membership change, in O(P log P) for P points, and a
//! lookup is a binary search, O(log P), whatever the number of members;
//! rendezvous scores every member on every lookup, which made the gateway's
//! cost per request grow with the instance count. The properties that
//! matter are the same:
//! - a member's points depend only on its id and weight, never on the other
//!   members, so the ring of a subset is the full ring with the missing
//!   members' points removed: adding a member moves only the keys it now
//!   wins (about 1/(N+1) of them, to it), and removing one moves only its
//!   own keys, each to the next member in that key's ranking;
//! - skipping a member while walking (ejected, down, already tried) gives
//!   exactly the ranking of the set without it;
//! - the hash is fixed ([`crate::stable_hash`]), so every build and every
//!   host computes the same ring from the same members.
//!
//! Balance: with 100 points per unit of weight a member's share of the keys
//! varies by about ±10 % (one standard deviation) around its weight's share.
//!
//! Lookup: the points are bucketed by their top bits (about 16 points a
//! bucket), so finding a key's place reads one bucket bound and searches a
//! few points: O(1), two cache misses, however large the ring. Building
//! sorts by those buckets first (a counting sort), then each small bucket.
//!
//! Memory: 8 bytes per point plus 4 per bucket (about 0.25 per point):
//! about 825 bytes per member of weight 1, 8.3 MB for 10,000 such members.

use crate::stable_hash;

/// Points per unit of weight.
pub const POINTS_PER_WEIGHT: u32 = 100;
/// Weights above this count as this much on the ring (so that one member of
/// weight 1,000 does not put 100,000 points on it). Registry weights go up
/// to 1,000; a ring honours ratios up to 64 : 1.
pub const MAX_WEIGHT: u32 = 64;

/// Low bits of a point that hold its member's index; the high bits hold the
/// point's position. 24 bits: up to 16,777,216 members.
const MEMBER_BITS: u32 = 24;
const MEMBER_MASK: u64 = (1 << MEMBER_BITS) - 1;
/// Most members a ring holds.
pub const MAX_MEMBERS: usize = 1 << MEMBER_BITS;

/// A ring over members numbered `0..len` in the order they were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// Sorted; each is `position << MEMBER_BITS | member` (position: the top
    /// 40 bits of the point's hash). Equal positions (about one pair in a
    /// million points) order by member index, i.e. by the caller's order.
    points: Vec<u64>,
    /// `buckets[j]..buckets[j + 1]`: the points whose top `bucket_bits` bits are `j`.
    buckets: Vec<u32>,
    bucket_bits: u32,
    members: usize,
}

/// Points per bucket aimed at (a power of two).
const POINTS_PER_BUCKET: usize = 16;

impl Ring {
    /// The ring of `members` (`(id, weight)`), numbered in the given order.
    /// Callers that must agree with other hosts give the same order (e.g. by
    /// id); only exact position ties depend on it.
    ///
    /// # Panics
    /// With more than [`MAX_MEMBERS`] members.
    pub fn new<'a>(members: impl IntoIterator<Item = (&'a str, u32)>) -> Ring {
        let mut points = Vec::new();
        let mut count = 0;
        for (index, (id, weight)) in members.into_iter().enumerate() {
            add_points(&mut points, index, id, weight);
            count = index + 1;
        }
        let (points, buckets, bucket_bits) = bucket_sort(points);
        Ring {
            points,
            buckets,
            bucket_bits,
            members: count,
        }
    }

    /// The ring of `members`, made from `self`, the ring of `before`: the
    /// same ring [`Ring::new`] builds from `members`, in O(P) for P points
    /// rather than a sort of all of them when few members changed (one
    /// instance added to 10,000: a merge of 100 new points into a million).
    /// Members are matched by id; one whose weight changed counts as
    /// removed and added.
    ///
    /// # Panics
    /// With more than [`MAX_MEMBERS`] members, or when `before` is not what
    /// `self` was built from (a different member count).
    pub fn updated(&self, before: &[(&str, u32)], members: &[(&str, u32)]) -> Ring {
        assert_eq!(
            before.len(),
            self.members,
            "`before` must be the members this ring was built from"
        );
        let index_of: std::collections::HashMap<(&str, u32), usize> = members
            .iter()
            .enumerate()
            .map(|(index, &(id, weight))| ((id, weight.clamp(1, MAX_WEIGHT)), index))
            .collect();
        // Old member index -> new one, or DROPPED.
        const DROPPED: u64 = u64::MAX;
        let mut kept = vec![false; members.len()];
        let renumber: Vec<u64> = before
            .iter()
            .map(
                |&(id, weight)| match index_of.get(&(id, weight.clamp(1, MAX_WEIGHT))) {
                    Some(&index) if !kept[index] => {
                        kept[index] = true;
                        index as u64
                    }
                    _ => DROPPED,
                },
            )
            .collect();
        let mut added = Vec::new();
        for (index, &(id, weight)) in members.iter().enumerate() {
            if !kept[index] {
                add_points(&mut added, index, id, weight);
            }
        }
        added.sort_unstable();
        let mut points = Vec::with_capacity(self.points.len() + added.len());
        let mut new = added.into_iter().peekable();
        for &p in &self.points {
            let member = renumber[(p & MEMBER_MASK) as usize];
            if member == DROPPED {
                continue;
            }
            let p = (p & !MEMBER_MASK) | member;
            while let Some(a) = new.next_if(|&a| a < p) {
                points.push(a);
            }
            points.push(p);
        }
        points.extend(new);
        if !points.is_sorted() {
            // Renumbering reordered two points at one position (members
            // given in another order than before): sort, as `new` would.
            points.sort_unstable();
        }
        let (buckets, bucket_bits) = bucket_bounds(&points);
        Ring {
            points,
            buckets,
            bucket_bits,
            members: members.len(),
        }
    }

    /// Where the points at or after `position` begin (`points.len()`: none).
    fn start(&self, position: u64) -> usize {
        let bucket = bucket_of(position, self.bucket_bits);
        let (lo, hi) = (
            self.buckets[bucket] as usize,
            self.buckets[bucket + 1] as usize,
        );
        lo + self.points[lo..hi].partition_point(|&p| p < position)
    }

    /// How many members the ring was built from.
    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Members clockwise from `key`'s position, one per point, for one turn
    /// (so a member appears as many times as it has points).
    pub fn walk(&self, key: &str) -> impl Iterator<Item = usize> + '_ {
        let position = stable_hash::hash(key.as_bytes(), b"") & !MEMBER_MASK;
        let (before, after) = self.points.split_at(self.start(position));
        after
            .iter()
            .chain(before)
            .map(|&p| (p & MEMBER_MASK) as usize)
    }

    /// `key`'s owner among the members `eligible` accepts: the first such
    /// member clockwise. `None` when it accepts none.
    pub fn owner(&self, key: &str, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        self.walk(key).find(|&m| eligible(m))
    }

    /// `key`'s first `n` distinct members that `eligible` accepts, best first.
    pub fn rank(&self, key: &str, n: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut ranked: Vec<usize> = Vec::with_capacity(n.min(self.members));
        if n == 0 {
            return ranked;
        }
        for member in self.walk(key) {
            if !ranked.contains(&member) && eligible(member) {
                ranked.push(member);
                if ranked.len() == n {
                    break;
                }
            }
        }
        ranked
    }
}

/// 2^64 / φ: consecutive points of a member are this far apart before mixing.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The bucket of a point or position: its top `bits` bits.
fn bucket_of(position: u64, bits: u32) -> usize {
    position.checked_shr(64 - bits).unwrap_or(0) as usize
}

/// Member `index`'s points (`id`, `weight`) appended to `points`.
fn add_points(points: &mut Vec<u64>, index: usize, id: &str, weight: u32) {
    assert!(
        index < MAX_MEMBERS,
        "a ring holds at most {MAX_MEMBERS} members"
    );
    let seed = stable_hash::hash(id.as_bytes(), b"ring");
    let n = POINTS_PER_WEIGHT * weight.clamp(1, MAX_WEIGHT);
    points.extend((0..n as u64).map(|i| {
        let position = stable_hash::mix(seed.wrapping_add(i.wrapping_mul(GOLDEN)));
        (position & !MEMBER_MASK) | index as u64
    }));
}

/// How many top bits bucket a ring of `points` points.
fn bucket_bits_for(points: usize) -> u32 {
    (points / POINTS_PER_BUCKET).max(1).ilog2()
}

/// `points` sorted, with the bounds of each bucket: a counting sort on the
/// buckets, then a sort of each bucket (a handful of points: the positions
/// are uniform hashes).
fn bucket_sort(points: Vec<u64>) -> (Vec<u64>, Vec<u32>, u32) {
    let bits = bucket_bits_for(points.len());
    let bounds = bounds_of(&points, bits);
    let mut next = bounds.clone();
    let mut sorted = vec![0u64; points.len()];
    for p in points {
        let slot = &mut next[bucket_of(p, bits)];
        sorted[*slot as usize] = p;
        *slot += 1;
    }
    for j in 0..bounds.len() - 1 {
        sorted[bounds[j] as usize..bounds[j + 1] as usize].sort_unstable();
    }
    (sorted, bounds, bits)
}

/// The bucket bounds of points already sorted.
fn bucket_bounds(sorted: &[u64]) -> (Vec<u32>, u32) {
    let bits = bucket_bits_for(sorted.len());
    (bounds_of(sorted, bits), bits)
}

/// Where each of the `2^bits` buckets of `points` would begin once sorted
/// (a count per bucket, summed), with the end as a last bound.
fn bounds_of(points: &[u64], bits: u32) -> Vec<u32> {
    let mut bounds = vec![0u32; (1 << bits) + 1];
    for &p in points {
        bounds[bucket_of(p, bits) + 1] += 1;
    }
    for j in 1..bounds.len() {
        bounds[j] += bounds[j - 1];
    }
    bounds
}

/// A ring over members of weight 1 given by id, in any order: where the
/// key-value store places keys among instances of equal weight (its view
/// sorts them by id, as this does). Built once, asked for many keys.
pub struct IdRing<'a> {
    sorted: Vec<&'a str>,
    ring: Ring,
}

impl<'a> IdRing<'a> {
    /// # Panics
    /// With more than [`MAX_MEMBERS`] ids.
    pub fn new(ids: &[&'a str]) -> IdRing<'a> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let ring = Ring::new(sorted.iter().map(|id| (*id, 1)));
        IdRing { sorted, ring }
    }

    /// `key`'s first `n` ids, best first.
    pub fn rank(&self, key: &str, n: usize) -> Vec<&'a str> {
        self.ring
            .rank(key, n, |_| true)
            .into_iter()
            .map(|i| self.sorted[i])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> Ring {
        Ring::new(ids.iter().map(|id| (*id, 1)))
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("key-{i}")).collect()
    }

    #[test]
    fn the_ring_is_fixed() {
        // Gateways and app servers of different builds must agree: a change
        // here moves every key of every key-value store. Computed
        // independently (a Python transcription of the ring).
        let r = ring(&["i1", "i2", "i3"]);
        let owners: Vec<usize> = ["user:1", "user:2", "user:3", "a", ""]
            .iter()
            .map(|k| r.owner(k, |_| true).unwrap())
            .collect();
        assert_eq!(owners, [2, 1, 0, 0, 1]);
    }

    #[test]
    fn adding_a_fourth_member_moves_about_a_quarter_of_the_keys_and_only_to_it() {
        let (three, four) = (ring(&["a", "b", "c"]), ring(&["a", "b", "c", "d"]));
        let moved: Vec<String> = keys(4000)
            .into_iter()
            .filter(|k| three.owner(k, |_| true) != four.owner(k, |_| true))
            .collect();
        assert!((800..=1200).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|k| four.owner(k, |_| true) == Some(3)));
    }

    #[test]
    fn skipping_a_member_is_the_ring_without_it() {
        let all = ring(&["a", "b", "c", "d"]);
        let without_b = ring(&["a", "c", "d"]);
        let renumber = |m: usize| ["a", "c", "d"][m];
        let name = |m: usize| ["a", "b", "c", "d"][m];
        for k in keys(1000) {
            let skipped: Vec<&str> = all.rank(&k, 3, |m| m != 1).into_iter().map(name).collect();
            let rebuilt: Vec<&str> = without_b
                .rank(&k, 3, |_| true)
                .into_iter()
                .map(renumber)
                .collect();
            assert_eq!(skipped, rebuilt, "{k}");
        }
    }

    #[test]
    fn shares_follow_weights_within_the_documented_spread() {
        let r = Ring::new([("x", 3), ("y", 1)]);
        let heavy = keys(4000)
            .iter()
            .filter(|k| r.owner(k, |_| true) == Some(0))
            .count();
        // x has 3/4 of the points, so about 3/4 of the keys.
        assert!((2700..=3300).contains(&heavy), "{heavy}");

        let ids: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let r = Ring::new(ids.iter().map(|id| (id.as_str(), 1)));
        let mut counts = [0usize; 20];
        for k in keys(20_000) {
            counts[r.owner(&k, |_| true).unwrap()] += 1;
        }
        // 1,000 each on average; 100 points per member keep all within ±35 %.
        assert!(
            counts.iter().all(|&c| (650..=1350).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn rank_lists_distinct_members_best_first_and_stops_at_n() {
        let r = ring(&["a", "b", "c", "d"]);
        let full = r.rank("k", 10, |_| true);
        let mut sorted = full.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3]);
        assert_eq!(r.rank("k", 2, |_| true), full[..2]);
        assert_eq!(r.owner("k", |_| true), Some(full[0]));
        assert!(r.rank("k", 0, |_| true).is_empty());
        assert_eq!(r.owner("k", |_| false), None);
        assert_eq!(Ring::new([]).owner("k", |_| true), None);
    }

    #[test]
    fn lookups_find_the_first_point_at_or_after_the_key() {
        // Against a plain binary search over the sorted points, for rings
        // from one bucket to thousands.
        for n in [1usize, 3, 40, 700] {
            let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let r = Ring::new(ids.iter().map(|id| (id.as_str(), 1)));
            assert!(r.points.is_sorted());
            assert_eq!(r.buckets.len(), (1 << r.bucket_bits) + 1);
            for k in 0..2000u64 {
                let position = crate::stable_hash::mix(k) & !MEMBER_MASK;
                let expected = r.points.partition_point(|&p| p < position);
                assert_eq!(r.start(position), expected, "n={n} position={position:x}");
            }
            assert_eq!(r.start(0), 0);
        }
    }

    #[test]
    fn weights_are_capped() {
        let capped = Ring::new([("x", 1000)]);
        assert_eq!(
            capped.points.len(),
            (POINTS_PER_WEIGHT * MAX_WEIGHT) as usize
        );
    }

    #[test]
    fn an_updated_ring_is_the_ring_built_anew() {
        let ids: Vec<String> = (0..60).map(|i| format!("m{i:02}")).collect();
        let members = |picked: &[usize], heavy: usize| -> Vec<(&str, u32)> {
            picked
                .iter()
                .map(|&i| (ids[i].as_str(), if i == heavy { 3 } else { 1 }))
                .collect()
        };
        let cases: [(Vec<usize>, Vec<usize>, usize); 6] = [
            ((0..40).collect(), (0..41).collect(), 99), // one added at the end
            ((1..41).collect(), (0..41).collect(), 99), // one added first
            ((0..41).collect(), (0..20).chain(21..41).collect(), 99), // one removed
            ((0..30).collect(), (10..60).collect(), 99), // many out, many in
            ((0..30).collect(), (0..30).collect(), 7),  // a weight changed
            ((0..30).collect(), vec![], 99),            // all gone
        ];
        for (before, after, heavy) in cases {
            let (before, after) = (members(&before, 99), members(&after, heavy));
            let old = Ring::new(before.iter().copied());
            let updated = old.updated(&before, &after);
            assert_eq!(
                updated,
                Ring::new(after.iter().copied()),
                "{before:?} -> {after:?}"
            );
        }
        // Members in another order than before: still the ring `new` builds.
        let before = members(&(0..10).collect::<Vec<_>>(), 99);
        let mut after = before.clone();
        after.reverse();
        let updated = Ring::new(before.iter().copied()).updated(&before, &after);
        assert_eq!(updated, Ring::new(after.iter().copied()));
    }

    #[test]
    fn an_id_ring_ranks_by_id_whatever_the_order_given() {
        let ids = IdRing::new(&["c", "a", "d", "b"]);
        let sorted = ["a", "b", "c", "d"];
        let ring = Ring::new(sorted.map(|id| (id, 1)));
        for k in 0..200 {
            let key = format!("k{k}");
            let expected: Vec<&str> = ring
                .rank(&key, 3, |_| true)
                .into_iter()
                .map(|i| sorted[i])
                .collect();
            assert_eq!(ids.rank(&key, 3), expected, "{key}");
        }
    }
}
