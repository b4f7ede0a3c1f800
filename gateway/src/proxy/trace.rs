//! Tracing headers (`--trace-headers`, off by default): `x-request-id` and
//! W3C Trace Context's `traceparent` (<https://www.w3.org/TR/trace-context/>),
//! set on the request an instance gets; the request id also goes back to
//! the client, and both go into the [access log](crate::access_log).
//!
//! - `x-request-id`: a client's is kept when it is one value of visible
//!   ASCII (`!`..`~`), 1 to [`MAX_REQUEST_ID`] bytes; otherwise (none,
//!   several, empty, too long, spaces or other bytes) the gateway sets its
//!   own: 32 lowercase hex digits, a 64-bit random prefix per worker thread
//!   followed by that thread's 64-bit counter. Unique without coordination
//!   (no shared counter for the cores to fight over) and readable in
//!   logs; not a uuid, and not unguessable (do not use it as a secret).
//! - `traceparent`: a client's is continued when it is exactly one valid
//!   version-00 value (55 characters, lowercase hex, non-zero trace-id and
//!   parent-id): same trace-id and flags, a new parent-id for the gateway's
//!   hop; `tracestate` is left as it is. Otherwise a new trace starts (new
//!   trace-id and parent-id, flags `01`, sampled) and `tracestate` is
//!   dropped, as the specification asks of a vendor that restarts a trace.
//!   Sampled because the gateway is then the trace's root and records no
//!   span itself: with `01`, an instance whose tracer follows its parent
//!   (OpenTelemetry's default, parent-based always-on) records as it would
//!   with no header at all; `00` would silence every such instance for
//!   requests that came without a trace. Other versions than `00` are
//!   restarted too.
//!
//! Cost: ids come from a thread-local SplitMix64 generator seeded once per
//! thread (no syscall per request), hex-formatted on the stack; each header
//! set is one small allocation (its `HeaderValue`).

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::headers;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest client request id kept.
pub const MAX_REQUEST_ID: usize = 200;

/// The ids a request travels with, decided from the client's headers
/// ([`read`]) as soon as the request is routed, so that every answer carries
/// the request id (a hold timeout's 503 too), and set on the instance's
/// request ([`set`]) once its headers are rewritten.
#[derive(Debug, Clone)]
pub struct TraceIds {
    pub request_id: HeaderValue,
    pub traceparent: HeaderValue,
    /// The client's trace was not continued: its `tracestate` goes too.
    restarted: bool,
}

/// The ids for a request with these `headers` (see the module doc).
pub fn read(headers: &HeaderMap) -> TraceIds {
    let request_id = match headers::get_only(headers, &X_REQUEST_ID) {
        Ok(Some(id)) if valid_request_id(id.as_bytes()) => id.clone(),
        _ => new_request_id(),
    };
    let parent = match headers::get_only(headers, &TRACEPARENT) {
        Ok(Some(value)) => parse_traceparent(value.as_bytes()),
        _ => None,
    };
    let (traceparent, restarted) = match parent {
        Some(parent) => (continue_trace(&parent), false),
        None => (new_trace(), true),
    };
    TraceIds {
        request_id,
        traceparent,
        restarted,
    }
}

/// Set `ids` in the request `headers` an instance gets (replacing the
/// client's values; after the rewrite, so that no `Connection` header can
/// name them away).
pub fn set(headers: &mut HeaderMap, ids: &TraceIds) {
    if ids.restarted && headers::has(headers, &TRACESTATE) {
        headers.remove(TRACESTATE);
    }
    headers.insert(X_REQUEST_ID, ids.request_id.clone());
    headers.insert(TRACEPARENT, ids.traceparent.clone());
}

/// [`read`] then [`set`].
#[cfg(test)]
fn prepare(headers: &mut HeaderMap) -> TraceIds {
    let ids = read(headers);
    set(headers, &ids);
    ids
}

/// One value of visible ASCII, 1 to [`MAX_REQUEST_ID`] bytes.
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(|b| b.is_ascii_graphic())
}

/// A valid version-00 `traceparent`'s trace-id and flags (as the lowercase
/// hex they were sent in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 32],
    pub flags: [u8; 2],
}

/// `00-{32 hex trace-id}-{16 hex parent-id}-{2 hex flags}`, lowercase hex,
/// ids not all zeros; `None` for anything else.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |s: &[u8]| s.iter().all(|&b| b == b'0');
    if !(hex(trace_id) && hex(parent_id) && hex(flags)) || zeros(trace_id) || zeros(parent_id) {
        return None;
    }
    Some(Parent {
        trace_id: trace_id.try_into().ok()?,
        flags: flags.try_into().ok()?,
    })
}

/// `parent`'s trace, with a new parent-id for the gateway's hop.
pub fn continue_trace(parent: &Parent) -> HeaderValue {
    traceparent(&parent.trace_id, next_nonzero(), &parent.flags)
}

/// A new sampled trace.
pub fn new_trace() -> HeaderValue {
    let mut trace_id = [0; 32];
    hex_into(&mut trace_id[..16], next_nonzero());
    hex_into(&mut trace_id[16..], next());
    traceparent(&trace_id, next_nonzero(), b"01")
}

fn traceparent(trace_id: &[u8; 32], span_id: u64, flags: &[u8; 2]) -> HeaderValue {
    let mut value = [0u8; 55];
    value[..3].copy_from_slice(b"00-");
    value[3..35].copy_from_slice(trace_id);
    value[35] = b'-';
    hex_into(&mut value[36..52], span_id);
    value[52] = b'-';
    value[53..].copy_from_slice(flags);
    HeaderValue::from_bytes(&value).expect("hex digits and dashes are a valid header value")
}

/// A new request id: this thread's random prefix and its next count, in hex.
pub fn new_request_id() -> HeaderValue {
    let (prefix, count) = IDS.with(|ids| {
        let count = ids.count.get();
        ids.count.set(count.wrapping_add(1));
        (ids.prefix, count)
    });
    let mut id = [0u8; 32];
    hex_into(&mut id[..16], prefix);
    hex_into(&mut id[16..], count);
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// Lowercase hex of `n` into `out` (16 bytes).
fn hex_into(out: &mut [u8], n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
}

struct ThreadIds {
    /// SplitMix64's state.
    state: Cell<u64>,
    /// The request ids' prefix on this thread.
    prefix: u64,
    count: Cell<u64>,
}

thread_local! {
    static IDS: ThreadIds = ThreadIds {
        // Seeded once per thread from the OS-seeded thread RNG.
        state: Cell::new(rand::random()),
        prefix: rand::random(),
        count: Cell::new(0),
    };
}

/// The thread's next SplitMix64 output: fast, and good enough for ids that
/// need to be unique, not unpredictable.
fn next() -> u64 {
    IDS.with(|ids| {
        let state = ids.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        ids.state.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn next_nonzero() -> u64 {
    loop {
        let n = next();
        if n != 0 {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn request_ids_are_visible_ascii_up_to_200_bytes() {
        assert!(valid_request_id(b"abc-123_XYZ.~!"));
        assert!(valid_request_id(&[b'a'; 200]));
        assert!(!valid_request_id(&[b'a'; 201]));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"tab\there"));
        assert!(!valid_request_id("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let ids: HashSet<Vec<u8>> = (0..10_000)
            .map(|_| new_request_id().as_bytes().to_vec())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            assert_eq!(id.len(), 32);
            assert!(
                id.iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(valid_request_id(id));
        }
        // Another thread has another prefix.
        let here = new_request_id().as_bytes()[..16].to_vec();
        let there = std::thread::spawn(|| new_request_id().as_bytes()[..16].to_vec())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn traceparent_validation() {
        let parent = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(&parent.trace_id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&parent.flags, b"01");
        let invalid = [
            "",
            // version ff, and a future version
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // too long, too short, wrong separators, not hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ];
        for value in invalid {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{value}");
        }
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_parent_id() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("client-id-1"));
        let ids = prepare(&mut headers);
        let sent = ids.traceparent.to_str().unwrap();
        assert_eq!(&sent[..36], &VALID[..36], "same version and trace-id");
        assert_ne!(&sent[36..52], &VALID[36..52], "a new parent-id");
        assert_eq!(&sent[52..], "-01", "the client's flags");
        assert!(parse_traceparent(sent.as_bytes()).is_some());
        assert_eq!(headers[TRACEPARENT], ids.traceparent);
        assert_eq!(headers[TRACESTATE], "congo=t61rcWkgMzE", "kept as is");
        assert_eq!(ids.request_id, "client-id-1");
        assert_eq!(headers[X_REQUEST_ID], "client-id-1");
    }

    #[test]
    fn a_missing_or_invalid_traceparent_starts_a_new_trace() {
        for client in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(value) = client {
                headers.insert(TRACEPARENT, HeaderValue::from_static(value));
            }
            headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            let ids = prepare(&mut headers);
            let sent = ids.traceparent.to_str().unwrap();
            let parent = parse_traceparent(sent.as_bytes()).expect("a valid traceparent");
            assert_eq!(&parent.flags, b"01", "sampled");
            assert_ne!(&sent[..36], &VALID[..36]);
            assert!(!headers.contains_key(TRACESTATE), "dropped with the trace");
            assert_eq!(headers[TRACEPARENT], ids.traceparent);
        }
        let a = new_trace();
        let b = new_trace();
        assert_ne!(a.as_bytes()[3..35], b.as_bytes()[3..35]);
    }

    #[test]
    fn a_bad_or_doubled_request_id_is_replaced() {
        for values in [vec!["has space"], vec!["a", "b"], vec![""]] {
            let mut headers = HeaderMap::new();
            for value in &values {
                headers.append(X_REQUEST_ID, HeaderValue::from_str(value).unwrap());
            }
            let ids = prepare(&mut headers);
            assert_eq!(ids.request_id.len(), 32, "{values:?}");
            let sent: Vec<_> = headers.get_all(X_REQUEST_ID).iter().collect();
            assert_eq!(sent, [&ids.request_id], "{values:?}");
        }
        let long = "x".repeat(201);
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_ne!(prepare(&mut headers).request_id, long.as_str());
    }
}
