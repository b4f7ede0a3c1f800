//! What lets a process-driver controller adopt the instances another
//! controller process started on this machine (a failover, or a restart):
//! each instance has `{log_dir}/{service}-{id}.pid`, holding its pid and the
//! process's start time (`/proc/{pid}/stat` field 22, so a pid the kernel
//! reused for another process is not mistaken for the instance). The file
//! goes when the driver that stops the instance forgets it.

use std::path::{Path, PathBuf};

use registry::proc_stat::ProcStat;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// One instance's pid file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    pub service: String,
    pub id: String,
    pub pid: u32,
    /// Clock ticks after boot at which the process started.
    pub start_time: u64,
}

const SUFFIX: &str = ".pid";

impl PidFile {
    /// The record of a process started now, if `/proc` knows it.
    pub fn of(service: &str, id: &str, pid: u32) -> Option<PidFile> {
        Some(PidFile {
            service: service.to_owned(),
            id: id.to_owned(),
            pid,
            start_time: start_time(pid)?,
        })
    }

    pub fn path(log_dir: &Path, service: &str, id: &str) -> PathBuf {
        log_dir.join(format!("{service}-{id}{SUFFIX}"))
    }

    /// Write it (to a temporary file renamed over the name, so a reader
    /// never sees half of one).
    pub fn write(&self, log_dir: &Path) -> std::io::Result<()> {
        let path = PidFile::path(log_dir, &self.service, &self.id);
        let partial = path.with_extension("pid.partial");
        let json = serde_json::to_vec(self).expect("a PidFile always serializes");
        std::fs::write(&partial, json)?;
        std::fs::rename(&partial, &path)
    }

    /// Forget the instance: remove its file (a missing one is fine).
    pub fn remove(log_dir: &Path, service: &str, id: &str) {
        let path = PidFile::path(log_dir, service, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "cannot remove pid file"),
        }
    }

    /// Every pid file in `log_dir`; unreadable ones are skipped with a warning.
    pub fn scan(log_dir: &Path) -> Vec<PidFile> {
        let Ok(entries) = std::fs::read_dir(log_dir) else {
            return Vec::new();
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            {
                Ok(file) => files.push(file),
                Err(e) => warn!(path = %path.display(), error = %e, "skipping unreadable pid file"),
            }
        }
        files.sort_by(|a: &PidFile, b| a.id.cmp(&b.id));
        files
    }

    /// The process still runs (and is the same process).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// When `pid` started (`/proc/{pid}/stat` field 22); `None` if it is gone
/// (a zombie counts as gone: it no longer serves).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = ProcStat::of(pid)?;
    (!stat.is_zombie()).then_some(stat.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_round_trips_and_knows_whether_its_process_lives() {
        let dir = tempfile::tempdir().unwrap();
        let me = PidFile::of("app", "i1", std::process::id()).unwrap();
        assert!(me.alive());
        me.write(dir.path()).unwrap();
        std::fs::write(dir.path().join("junk.pid"), "not json").unwrap();
        std::fs::write(dir.path().join("app-i1.log"), "").unwrap();
        assert_eq!(PidFile::scan(dir.path()), std::slice::from_ref(&me));

        let reused = PidFile {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.alive(), "a reused pid is another process");
        PidFile::remove(dir.path(), "app", "i1");
        PidFile::remove(dir.path(), "app", "i1");
        assert!(PidFile::scan(dir.path()).is_empty());
    }
}
