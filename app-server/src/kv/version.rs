//! Versions of key-value entries: a hybrid logical clock plus the writer.
//!
//! A version is `(hlc, node)`: `hlc` is milliseconds since the Unix epoch
//! shifted left 16 bits plus a counter, so it follows wall time but never
//! repeats or goes back on one instance, and it moves past every version the
//! instance has seen (`observe`). `node` is a fixed hash of the writer's id
//! and breaks ties. Versions order entries: the highest version of a key wins
//! everywhere (last writer wins), which is what makes replication,
//! hand-offs and read repair safe to repeat in any order.
//!
//! Caveat, written down: two writes of one key through two instances whose
//! clocks disagree by more than the time between the writes can be ordered
//! by the clocks rather than by real time. On one host, or NTP-synced hosts
//! (skew in milliseconds), this needs writes to one key from different
//! coordinators within that skew, which the primary-per-key routing avoids
//! except during a membership change.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;

/// The version of one entry; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub hlc: u64,
    pub node: u64,
}

impl Version {
    /// Wall time of the write, in ms since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.hlc >> 16
    }

    /// The quoted `ETag` header value.
    pub fn etag(self) -> HeaderValue {
        self.text(true).header_value()
    }

    /// Append the version as it prints to `out`, with no `String` of its own.
    pub fn push_to(self, out: &mut String) {
        out.push_str(self.text(false).as_str());
    }

    /// The version as a header value (`x-shoal-kv-version`), as it prints.
    pub fn header_value(self) -> HeaderValue {
        self.text(false).header_value()
    }

    /// `hlc-node` in lowercase hex, quoted or not: the one place a
    /// version is written out ([`fmt::Display`], the headers). In a buffer
    /// on the stack rather than through `fmt` and a `String`: every GET
    /// answers with one (it was about 2.5 % of an instance's CPU under
    /// direct GETs).
    fn text(self, quoted: bool) -> Text {
        let mut text = Text {
            bytes: [0; 35],
            len: 0,
        };
        if quoted {
            text.push(b'"');
        }
        text.hex(self.hlc);
        text.push(b'-');
        text.hex(self.node);
        if quoted {
            text.push(b'"');
        }
        text
    }

    /// Parse an `If-Match` / `ETag` value (quotes optional, `W/` refused:
    /// weak validators cannot back a compare-and-set).
    pub fn from_etag(s: &str) -> Option<Version> {
        let s = s.trim();
        let s = s
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(s);
        s.parse().ok()
    }
}

/// A version written out ([`Version::text`]): two 16-digit numbers, a
/// dash and two quotes at most.
struct Text {
    bytes: [u8; 35],
    len: usize,
}

impl Text {
    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// `n` in lowercase hex without leading zeros, as `{:x}` prints it.
    fn hex(&mut self, n: u64) {
        let mut digits = [0u8; 16];
        digits[..8].copy_from_slice(&hex8((n >> 32) as u32));
        digits[8..].copy_from_slice(&hex8(n as u32));
        let leading_zeros = (n.leading_zeros() / 4).min(15) as usize;
        let significant = &digits[leading_zeros..];
        self.bytes[self.len..self.len + significant.len()].copy_from_slice(significant);
        self.len += significant.len();
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("hex digits, a dash and quotes")
    }

    fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.bytes[..self.len]).expect("hex digits, a dash and quotes")
    }
}

/// The 8 lowercase hex digits of `n`, all 8 at once in one `u64` (a
/// digit per byte) rather than one at a time: every GET's `ETag` and
/// every PUT's answer writes two numbers (about 110 instructions each a
/// digit at a time, `bench/kv-cost.sh`).
fn hex8(n: u32) -> [u8; 8] {
    // Spread the 8 nibbles to a byte each, most significant in the top byte.
    let mut x = u64::from(n);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // Per byte: 1 where the nibble is 10 or more (adding 6 carries into
    // bit 4), then '0' + nibble, plus the gap from '9' + 1 to 'a'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * (b'a' - b'9' - 1) as u64).to_be_bytes()
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text(false).as_str())
    }
}

impl FromStr for Version {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (hlc, node) = s.split_once('-').ok_or(())?;
        let parse = |p: &str| {
            if p.is_empty() || p.len() > 16 {
                return Err(());
            }
            u64::from_str_radix(p, 16).map_err(|_| ())
        };
        Ok(Version {
            hlc: parse(hlc)?,
            node: parse(node)?,
        })
    }
}

/// One instance's hybrid logical clock.
#[derive(Debug)]
pub struct Clock {
    node: u64,
    last: AtomicU64,
}

impl Clock {
    pub fn new(node_id: &str) -> Self {
        Clock {
            node: registry::stable_hash::hash(node_id.as_bytes(), b""),
            last: AtomicU64::new(0),
        }
    }

    /// A version newer than every version this clock issued or observed,
    /// and newer than `after` (the entry being replaced).
    pub fn next(&self, after: Option<Version>) -> Version {
        let physical = wall_millis() << 16;
        let floor = after.map_or(0, |v| v.hlc);
        let mut issued = 0;
        self.last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                issued = physical.max(last + 1).max(floor + 1);
                Some(issued)
            })
            .expect("the update closure always returns Some");
        Version {
            hlc: issued,
            node: self.node,
        }
    }

    /// Move past a version seen from elsewhere, so later writes order after it.
    pub fn observe(&self, seen: Version) {
        self.last.fetch_max(seen.hlc, Ordering::AcqRel);
    }
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_as_hex_and_so_do_their_headers() {
        for (hlc, node) in [(0, 0), (1, 0xf), (0x10, u64::MAX), (u64::MAX, 0x8000_0000)] {
            let v = Version { hlc, node };
            let hex = format!("{hlc:x}-{node:x}");
            assert_eq!(v.to_string(), hex);
            assert_eq!(v.header_value(), hex.as_str());
            assert_eq!(v.etag(), format!("\"{hex}\"").as_str());
        }
    }

    #[test]
    fn hex_digits_are_those_fmt_prints() {
        let mut n: u32 = 0x9e37_79b9;
        for edge in [0, 9, 10, 0xf, 0x10, 0x9999_9999, 0xaaaa_aaaa, u32::MAX] {
            assert_eq!(hex8(edge), format!("{edge:08x}").as_bytes(), "{edge:#x}");
        }
        for _ in 0..10_000 {
            n = n.wrapping_mul(0x0019_660d).wrapping_add(0x3c6e_f35f);
            assert_eq!(hex8(n), format!("{n:08x}").as_bytes(), "{n:#x}");
        }
    }

    #[test]
    fn versions_print_and_parse_back() {
        let v = Version {
            hlc: 0x1234_5678_9abc,
            node: 7,
        };
        assert_eq!(v.to_string(), "123456789abc-7");
        assert_eq!(v.etag(), "\"123456789abc-7\"");
        assert_eq!(v.header_value(), "123456789abc-7");
        assert_eq!(Version::from_etag(v.etag().to_str().unwrap()), Some(v));
        assert_eq!(Version::from_etag("123456789abc-7"), Some(v));
        for bad in [
            "",
            "-",
            "1-",
            "x-1",
            "W/\"1-2\"",
            "1-2-3",
            "11111111111111111-1",
        ] {
            assert_eq!(Version::from_etag(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_clock_never_repeats_and_passes_what_it_saw() {
        let clock = Clock::new("i1");
        let a = clock.next(None);
        let b = clock.next(None);
        assert!(b > a);
        let far = Version {
            hlc: a.hlc + (1 << 40),
            node: 1,
        };
        clock.observe(far);
        assert!(clock.next(None).hlc > far.hlc);
        let after = Version {
            hlc: u64::MAX >> 1,
            node: 0,
        };
        assert!(clock.next(Some(after)).hlc > after.hlc);
    }

    #[test]
    fn the_clock_follows_wall_time() {
        let v = Clock::new("i1").next(None);
        let now = wall_millis();
        assert!(now.abs_diff(v.millis()) < 5_000, "{} vs {now}", v.millis());
    }
}
