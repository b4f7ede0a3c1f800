//! Every registry value type decoded from arbitrary bytes under an arbitrary
//! (or the type's usual) key: decoding never panics, an error names the key,
//! and a decoded value encodes to JSON that decodes to the same value.
//!
//! Input: one byte choosing the type, then `key\nvalue` (the key is taken
//! from the bytes up to the first newline), or just `value` under a fixed
//! key of that type when there is no newline.

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::model::{GatewayInfo, NamedRoute, RawValue, Rollout, ScalingEvent, ScalingPolicy};
use registry::{Instance, Keys, RegistryValue};
use serde::Serialize;

/// Decode, and if that works, encode and decode again: same value.
fn check<T, S>(keys: &Keys, key: &str, value: &[u8], encode: impl Fn(&T) -> S)
where
    T: RegistryValue + PartialEq,
    S: Serialize,
{
    match T::decode(keys, key, value) {
        Ok(decoded) => {
            let json = serde_json::to_vec(&encode(&decoded)).expect("a decoded value encodes");
            match T::decode(keys, key, &json) {
                Ok(again) => assert_eq!(
                    again,
                    decoded,
                    "re-encoded as {}",
                    String::from_utf8_lossy(&json)
                ),
                Err(e) => panic!(
                    "decoded {decoded:?} but its encoding {} does not decode: {e}",
                    String::from_utf8_lossy(&json)
                ),
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.starts_with(key),
                "error does not name the key {key:?}: {text}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let keys = Keys::default();
    let kind = selector % 7;
    let (key, value) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&rest[..at]).into_owned(),
            &rest[at + 1..],
        ),
        None => {
            let key = match kind {
                0 => keys.instance("app", "i1"),
                1 => keys.route("api"),
                2 => keys.policy("app"),
                3 => keys.rollout("app"),
                4 => keys.event("app", 7),
                5 => keys.gateway("g1"),
                _ => keys.retire("app", "i1"),
            };
            (key, rest)
        }
    };
    match kind {
        0 => check::<Instance, _>(&keys, &key, value, |v| v.clone()),
        1 => check::<NamedRoute, _>(&keys, &key, value, |v| v.route.clone()),
        2 => check::<ScalingPolicy, _>(&keys, &key, value, |v| v.clone()),
        3 => check::<Rollout, _>(&keys, &key, value, |v| v.clone()),
        4 => check::<ScalingEvent, _>(&keys, &key, value, |v| v.clone()),
        5 => check::<GatewayInfo, _>(&keys, &key, value, |v| v.clone()),
        _ => {
            // Raw bytes: anything within the size limit, unchanged.
            if let Ok(RawValue(bytes)) = RawValue::decode(&keys, &key, value) {
                assert_eq!(bytes, value);
            }
        }
    }
});
