//! Resource use of a process, from `/proc/<pid>`: how the generator reads a
//! gateway's memory and CPU without cooperation from it.

use anyhow::{Context, Result, anyhow};

use crate::report::Usage;

fn ticks_per_second() -> u64 {
    // The USER_HZ of every Linux this runs on; sysconf would need libc.
    100
}

/// RSS and CPU time of `pid`.
///
/// # Errors
/// When the process does not exist or `/proc` is unreadable.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("bad stat for {pid}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    Ok(Usage {
        rss_kib,
        cpu_ms: ticks * 1000 / ticks_per_second(),
    })
}

/// Usage of every pid, in order.
///
/// # Errors
/// The first pid that cannot be read.
pub fn usage_all(pids: &[u32]) -> Result<Vec<Usage>> {
    pids.iter().map(|p| usage(*p)).collect()
}

/// Raises this process's open-file soft limit to its hard limit, which is
/// all a process may hold here (and the only way past the default 1024).
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let u = super::usage(std::process::id()).unwrap();
        assert!(u.rss_kib > 0);
        assert!(super::raise_nofile() >= 1024);
    }
}
