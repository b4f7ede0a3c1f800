//! CPU time of processes, from `/proc/{pid}/stat`: what a benchmark's
//! servers and its own load generator spent over a measurement, to print as
//! CPU per operation beside the rates (the rates alone hide whose CPU
//! bounds them on a machine the servers and the load share).

use registry::proc_stat::ProcStat;

/// User + system CPU seconds `pid` has used so far; `None` if it is gone or
/// its stat line cannot be read.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    ProcStat::of(pid)?.cpu_seconds()
}

/// CPU seconds of a set of processes, summed; a process that is gone counts
/// 0 (so a meter over it reads what it used before it went as negative:
/// [`CpuMeter::stop`] clamps at 0).
fn cpu_seconds_of_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds_of(pid)).sum()
}

/// The CPU a measurement cost: the servers' (`pids`) and this process's.
pub struct CpuMeter {
    servers: Vec<u32>,
    servers_at_start: f64,
    client_at_start: f64,
}

/// CPU seconds spent between [`CpuMeter::start`] and [`CpuMeter::stop`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSpent {
    pub servers: f64,
    /// This process: the load generator.
    pub client: f64,
}

impl CpuMeter {
    pub fn start(servers: &[u32]) -> CpuMeter {
        CpuMeter {
            servers: servers.to_vec(),
            servers_at_start: cpu_seconds_of_all(servers),
            client_at_start: cpu_seconds_of(std::process::id()).unwrap_or(0.0),
        }
    }

    pub fn stop(self) -> CpuSpent {
        let client = cpu_seconds_of(std::process::id()).unwrap_or(0.0);
        CpuSpent {
            servers: (cpu_seconds_of_all(&self.servers) - self.servers_at_start).max(0.0),
            client: (client - self.client_at_start).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's CPU seconds by `getrusage`, the kernel's other account.
    fn rusage_seconds() -> f64 {
        use nix::sys::resource::{UsageWho, getrusage};
        let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    }

    #[test]
    fn busy_work_shows_as_this_process_s_cpu() {
        let meter = CpuMeter::start(&[]);
        let from = rusage_seconds();
        let mut x = 0u64;
        // Spin until getrusage has seen 300 ms of CPU, however busy the
        // machine is.
        while rusage_seconds() - from < 0.3 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let spent = meter.stop();
        let witnessed = rusage_seconds() - from;
        // /proc counts in ticks (10 ms at USER_HZ 100) and splits them
        // between user and system time by sampling.
        assert!(
            (spent.client - witnessed).abs() < 0.05,
            "/proc read {} s of CPU where getrusage read {witnessed} s",
            spent.client
        );
        assert_eq!(spent.servers, 0.0);
    }
}
