//! Settings of the benchmark and checker binaries, read from environment
//! variables, with an error that names the variable and what to use.

/// A binary's settings as `read` makes them, printed to stderr after
/// `binary`; on an error, the error (after `binary`) and exit code 2, the
/// code every such binary uses for "could not run".
pub fn read_or_exit<C: std::fmt::Debug>(
    binary: &str,
    read: impl FnOnce() -> Result<C, String>,
) -> Result<C, std::process::ExitCode> {
    match read() {
        Ok(config) => {
            eprintln!("{binary}: {config:?}");
            Ok(config)
        }
        Err(e) => {
            eprintln!("{binary}: {e}");
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// A whole number from the environment variable `name`, at least `min`;
/// `default` when it is unset.
pub fn env_number(name: &str, default: u64, min: u64) -> Result<u64, String> {
    number(name, std::env::var(name).ok().as_deref(), default, min)
}

fn number(name: &str, value: Option<&str>, default: u64, min: u64) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "{name}={value:?} is not allowed; use a whole number of at least {min} (default {default})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_the_default_and_a_bad_value_names_the_variable() {
        assert_eq!(number("N", None, 7, 1), Ok(7));
        assert_eq!(number("N", Some(" 12 "), 7, 1), Ok(12));
        let low = number("CLIENTS", Some("0"), 8, 1).unwrap_err();
        assert!(
            low.contains("CLIENTS=\"0\"") && low.contains("at least 1"),
            "{low}"
        );
        assert!(number("SECS", Some("ten"), 3, 1).is_err());
    }
}
