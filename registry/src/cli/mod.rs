//! What Shoal's command-line tools share: reaching etcd with one helpful
//! "cannot reach etcd" failure ([`etcd`]), exit codes and the failures that
//! map to them ([`exit`]), stdout output with aligned tables ([`out`]), and
//! the parser for a service name given as an argument.
//!
//! Used by the `registry` and `autoscaler` binaries, so that both report an
//! unreachable etcd and a bad command line the same way.

pub mod etcd;
pub mod exit;
pub mod out;

/// A service name given on the command line: a valid key segment.
pub fn service_name(s: &str) -> Result<String, String> {
    crate::keys::validate_segment("service", s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}
