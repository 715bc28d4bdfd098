//! The process's own figures for `/metrics`: resident memory, open file descriptors (and
//! the most it may open) and CPU time, read from Linux's `/proc/self` at each scrape.
//!
//! Three small files are read by hand rather than through a crate: the series are the
//! standard `process_*` ones Prometheus clients export, so dashboards know them.

use std::fmt::Write;

pub struct ProcessStats {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub cpu_seconds: f64,
}

impl ProcessStats {
    /// The figures now; None where there is no `/proc` (not Linux), and the series are
    /// then left out rather than reported as zero.
    pub fn read() -> Option<ProcessStats> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Listing the directory opens a descriptor of its own, which is not the node's.
        let open_fds = (std::fs::read_dir("/proc/self/fd").ok()?.count() as u64).saturating_sub(1);
        let page_bytes = sysconf(libc::_SC_PAGESIZE)?;
        let ticks_per_second = sysconf(libc::_SC_CLK_TCK)?;
        Some(ProcessStats {
            resident_bytes: resident_pages(&statm)? * page_bytes,
            open_fds,
            max_fds: max_fds(),
            cpu_seconds: cpu_ticks(&stat)? as f64 / ticks_per_second as f64,
        })
    }

    pub fn render(&self, out: &mut String) {
        let mut series = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        series(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.to_string(),
        );
        series(
            "process_open_fds",
            "gauge",
            "Open file descriptors (every socket is one).",
            self.open_fds.to_string(),
        );
        if let Some(max) = self.max_fds {
            series(
                "process_max_fds",
                "gauge",
                "Most file descriptors the process may open.",
                max.to_string(),
            );
        }
        series(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            self.cpu_seconds.to_string(),
        );
    }
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf(3) only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|&v| v > 0)
}

/// The soft limit on open descriptors (the server raises it to the hard limit at start).
fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the struct it is given.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (got == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Resident pages: the second field of `/proc/self/statm`.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system time in clock ticks: fields 14 and 15 of `/proc/self/stat`. The
/// command name (field 2) is in parentheses and may itself hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // `after_name` starts at field 3 (the state).
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (we ird) (name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn resident_pages_are_the_second_field() {
        assert_eq!(resident_pages("10240 2048 512 100 0 900 0\n"), Some(2048));
        assert_eq!(resident_pages(""), None);
    }

    #[test]
    fn this_process_has_memory_descriptors_and_time() {
        let stats = ProcessStats::read().expect("/proc on Linux");
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds > 0);
        assert!(stats.cpu_seconds >= 0.0);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
    }
}
