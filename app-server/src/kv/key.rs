//! Key and value rules of the key-value API, checked at the HTTP edge so that
//! every method and every instance refuses the same input the same way.

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value accepted (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Why a key is refused; the HTTP edge adds the rule itself.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("it is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("it is {} bytes long", key.len()));
    }
    // Byte by byte (every request checks its key): the allowed characters
    // are ASCII, so the first byte refused starts a character, named whole.
    if let Some(at) = key
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-')))
    {
        let c = key[at..].chars().next().expect("a character starts there");
        return Err(format!("it contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        for good in ["a", "user:42", "a.b_c~d-e", &"k".repeat(MAX_KEY_BYTES)] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        assert_eq!(check_key(""), Err("it is empty".into()));
        assert_eq!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err("it is 257 bytes long".into())
        );
        assert_eq!(check_key("a/b"), Err("it contains '/'".into()));
        assert_eq!(check_key("é"), Err("it contains 'é'".into()));
        assert_eq!(check_key("ok-é"), Err("it contains 'é'".into()));
    }
}
