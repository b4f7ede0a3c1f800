//! The wrapped program: its command line, spawning it, signalling it, and
//! turning how it ended into an exit code.
//!
//! The child runs in its own process group. A Ctrl-C in a terminal then
//! reaches only the wrapper, which drains before it stops the child, and the
//! signals the wrapper forwards reach the whole group, so `sh -c '...'`
//! wrappers and worker processes stop too.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use registry::stop::StopSignals;

/// `args` with every `{port}` replaced by `port`.
pub fn substitute_port(args: &[String], port: u16) -> Vec<String> {
    let port = port.to_string();
    args.iter().map(|a| a.replace("{port}", &port)).collect()
}

/// Start `argv` with stdin closed, stdout and stderr shared with the wrapper,
/// and `env` added to its environment.
pub fn spawn(argv: &[String], env: Option<(&str, u16)>) -> io::Result<Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        // Any early return from the wrapper must not leave the child behind.
        .kill_on_drop(true);
    if let Some((var, port)) = env {
        command.env(var, port.to_string());
    }
    command.spawn()
}

/// Send `signal` to the child's process group. A child that is already gone is not an error.
pub fn signal(child: &Child, signal: Signal) {
    // `id()` is None once the child has been reaped: nothing left to signal.
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) => debug!(pid, %signal, "signalled the child's process group"),
        Err(Errno::ESRCH) => debug!(pid, %signal, "child already gone"),
        Err(e) => warn!(pid, %signal, error = %e, "cannot signal the child"),
    }
}

/// SIGTERM the child and wait for it; SIGKILL it after `timeout`, or at once
/// on another stop signal to the wrapper.
pub async fn stop(
    child: &mut Child,
    timeout: Duration,
    signals: &mut StopSignals,
) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    signal(child, Signal::SIGTERM);
    tokio::select! {
        status = child.wait() => return status,
        _ = tokio::time::sleep(timeout) => {
            warn!(timeout = ?timeout, "child did not exit within the drain timeout; killing it");
        }
        signal = signals.recv() => {
            warn!(signal, "another stop signal; killing the child now");
        }
    }
    signal(child, Signal::SIGKILL);
    let status = child.wait().await?;
    info!(%status, "child killed");
    Ok(status)
}

/// The exit code that passes `status` on: its own code, or 128+N if signal N ended it.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code).unwrap_or(1);
    }
    match status.signal() {
        Some(signal) => u8::try_from(128 + signal).unwrap_or(255),
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_port_placeholder_is_replaced() {
        let argv = strings(&[
            "python3",
            "-m",
            "http.server",
            "{port}",
            "--url=http://x:{port}/{port}",
            "{ port }",
        ]);
        assert_eq!(
            substitute_port(&argv, 8080),
            strings(&[
                "python3",
                "-m",
                "http.server",
                "8080",
                "--url=http://x:8080/8080",
                "{ port }"
            ])
        );
    }

    #[test]
    fn exit_codes_pass_through_and_signals_add_128() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
