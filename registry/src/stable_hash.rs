//! A fixed 64-bit hash, the same on every build and every host: what the
//! hash ring ([`crate::ring`]) places members and keys with, and what
//! fingerprints (spec versions, owner sets) are made of.
//!
//! FNV-1a over the bytes, then the SplitMix64 finaliser ([`mix`]), since FNV
//! alone mixes the high bits poorly. Not for hash tables facing untrusted
//! input (no seed) and not cryptographic.

/// A stable 64-bit hash of `(key, id)` (FNV-1a over key, a separator byte and
/// id, then [`mix`]); also usable alone (`id` empty) as a fixed fingerprint
/// of a string.
pub fn hash(key: &[u8], id: &[u8]) -> u64 {
    hash_parts([key], id)
}

/// [`hash`] of a key given in parts, the hash of their concatenation,
/// without concatenating them.
pub fn hash_parts<'a>(key: impl IntoIterator<Item = &'a [u8]>, id: &'a [u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = key.into_iter().flatten().chain(&[0xff]).chain(id);
    mix(bytes.fold(OFFSET, |h, &byte| (h ^ byte as u64).wrapping_mul(PRIME)))
}

/// The SplitMix64 finaliser: every input bit affects every output bit.
pub fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // Gateways and app servers of different builds must agree: these
        // values were computed independently (a Python transcription).
        assert_eq!(hash(b"user:1", b"i1"), 0x7130_f641_bb0a_1b9c);
        assert_eq!(hash(b"", b""), 0x4f2d_b50f_1240_40cd);
    }

    #[test]
    fn a_key_in_parts_hashes_as_the_whole() {
        let parts: [&[u8]; 4] = [b"us", b"", b"er:", b"1"];
        assert_eq!(hash_parts(parts, b"i1"), hash(b"user:1", b"i1"));
        assert_eq!(hash_parts([], b""), hash(b"", b""));
    }
}
