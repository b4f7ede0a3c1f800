//! Weighted rendezvous (highest random weight) hashing, shared by every party
//! that must agree on where a key lives: the gateway's `consistent-hash`
//! policy and the app server's distributed key-value store.
//!
//! Every candidate scores the key; the highest score wins, the next highest is
//! second, and so on. The same key ranks the same candidates in the same order
//! while the set is unchanged; adding an (N+1)-th candidate moves only the keys
//! it now wins (about 1/(N+1) of them). The hash is fixed (FNV-1a over key,
//! a separator byte and id, then a SplitMix64 finaliser) so every build and
//! every host computes the same ranking.

/// The candidate's score for `key`: −weight / ln(u), u uniform in (0, 1)
/// drawn from hash(key, id). Higher wins.
pub fn score(key: &str, id: &str, weight: u32) -> f64 {
    let h = hash(key.as_bytes(), id.as_bytes());
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

/// Indices of `candidates` ranked for `key`, best first; `id_weight` gives a
/// candidate's id and weight. Ties (practically impossible) break by id.
pub fn rank<T>(key: &str, candidates: &[T], id_weight: impl Fn(&T) -> (&str, u32)) -> Vec<usize> {
    let mut scored: Vec<(f64, &str, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (id, weight) = id_weight(c);
            (score(key, id, weight), id, i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, _, i)| i).collect()
}

/// A stable 64-bit hash of `(key, id)`; also usable alone (`id` empty) as a
/// fixed fingerprint of a string.
pub fn hash(key: &[u8], id: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &byte in key.iter().chain(&[0xff]).chain(id) {
        h ^= byte as u64;
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64 finaliser: FNV alone mixes the high bits poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 4] = ["a", "b", "c", "d"];

    fn owner(ids: &[&str], key: &str) -> usize {
        rank(key, ids, |id| (id, 1))[0]
    }

    #[test]
    fn the_hash_is_fixed() {
        // Gateways and app servers of different builds must agree: these
        // values were computed independently (a Python transcription).
        assert_eq!(hash(b"user:1", b"i1"), 0x7130_f641_bb0a_1b9c);
        assert_eq!(hash(b"", b""), 0x4f2d_b50f_1240_40cd);
    }

    #[test]
    fn adding_a_fourth_candidate_moves_about_a_quarter_of_the_keys_and_only_to_it() {
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        let moved: Vec<&String> = keys
            .iter()
            .filter(|k| IDS[owner(&IDS[..3], k)] != IDS[owner(&IDS, k)])
            .collect();
        assert!((200..=300).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|k| IDS[owner(&IDS, k)] == "d"));
    }

    #[test]
    fn rank_lists_every_candidate_once_best_first() {
        let order = rank("k", &IDS, |id| (id, 1));
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        let scores: Vec<f64> = order.iter().map(|&i| score("k", IDS[i], 1)).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }

    #[test]
    fn weight_shifts_the_share() {
        let heavy = (0..2000)
            .filter(|i| rank(&format!("k{i}"), &[("x", 3), ("y", 1)], |c| (c.0, c.1))[0] == 0)
            .count();
        // Weighted rendezvous gives x 3/4 of the keys.
        assert!((1350..=1650).contains(&heavy), "{heavy}");
    }
}
