//! A process's line in `/proc/{pid}/stat`, read once for every program
//! that asks about another process: the autoscaler's pid files (when a
//! process started, so that a reused pid is not taken for it), the
//! benchmarks' CPU meters (the CPU time a server spent) and the test
//! harness (whose child a process still is).

/// The fields of `/proc/{pid}/stat` that Shoal reads (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), …
    pub state: char,
    /// Field 4: the parent's pid (1, or a subreaper's, once the parent has
    /// died).
    pub parent: u32,
    /// Fields 14 and 15, user and system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// `pid`'s line now; `None` if it is gone or the line cannot be read.
    pub fn of(pid: u32) -> Option<ProcStat> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// A zombie: it has exited and no longer serves.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// User and system time, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        Some(self.cpu_ticks as f64 / ticks_per_second()?)
    }

    fn parse(line: &str) -> Option<ProcStat> {
        // The command name (field 2) is in parentheses and may hold spaces
        // and parentheses: the fields after it start after the last ')'.
        let after_name = line.get(line.rfind(')')? + 1..)?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // fields[0] is field 3, so field N is fields[N - 3].
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let mut state = fields.first()?.chars();
        Some(ProcStat {
            state: state.next().filter(|_| state.next().is_none())?,
            parent: field(4)?.try_into().ok()?,
            cpu_ticks: field(14)?.checked_add(field(15)?)?,
            start_time: field(22)?,
        })
    }
}

/// Clock ticks a second (`sysconf(_SC_CLK_TCK)`), the unit of the times in
/// `/proc/{pid}/stat`.
fn ticks_per_second() -> Option<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    (ticks > 0).then_some(ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_after_a_name_with_spaces_and_parentheses() {
        // A real line's shape (proc(5)), its name chosen to mislead a
        // split on whitespace or on the first ')'.
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1021 0 0 0 \
                    37 12 0 0 20 0 3 0 987654 12345678 900 18446744073709551615";
        let stat = ProcStat::parse(line).expect("a well-formed line");
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                parent: 1,
                cpu_ticks: 49,
                start_time: 987654
            }
        );
        assert!(!stat.is_zombie());
    }

    #[test]
    fn a_short_or_garbled_line_is_none() {
        assert_eq!(ProcStat::parse("4242 (name) S 1 2 3"), None);
        assert_eq!(ProcStat::parse("no parenthesis at all"), None);
        let garbled = "4242 (name) S 1 4242 4242 0 -1 4194560 1021 0 0 0 \
                       x 12 0 0 20 0 3 0 987654";
        assert_eq!(ProcStat::parse(garbled), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_is_not_a_zombie() {
        let me = ProcStat::of(std::process::id()).expect("this process's line");
        assert!(!me.is_zombie());
        assert!(me.start_time > 0);
        assert_eq!(me.parent, std::os::unix::process::parent_id());
        assert!(me.cpu_seconds().is_some());
        // Pids wrap below /proc/sys/kernel/pid_max, at most 2^22.
        assert_eq!(ProcStat::of(u32::MAX), None);
    }
}
