//! What the generator reads off the machine: the server's RSS and CPU time
//! from /proc, and percentiles of recorded latencies.

use std::time::Duration;

use anyhow::{Context, Result};

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("read /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS not found")
}

/// User + system CPU time consumed by `pid` so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/<pid>/stat")?;
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .context("utime")?;
    let stime: u64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .context("stime")?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks() as f64,
    ))
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Latency percentiles of samples in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(samples: &mut [u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] as f64;
        Percentiles {
            count: samples.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1] as f64,
        }
    }

    /// `p50 … max` in milliseconds, for the printed report.
    pub fn ms(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (n={})",
            self.p50 / 1000.0,
            self.p90 / 1000.0,
            self.p99 / 1000.0,
            self.p999 / 1000.0,
            self.max / 1000.0,
            self.count
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_ms": self.p50 / 1000.0, "p90_ms": self.p90 / 1000.0, "p99_ms": self.p99 / 1000.0,
            "p999_ms": self.p999 / 1000.0, "max_ms": self.max / 1000.0, "n": self.count
        })
    }
}

/// CPU time and context switches of one thread (or their difference).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user: Duration,
    pub system: Duration,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

impl Usage {
    /// This usage and `other` together (two threads' shares).
    pub fn plus(&self, other: Usage) -> Usage {
        Usage {
            user: self.user + other.user,
            system: self.system + other.system,
            voluntary_switches: self.voluntary_switches + other.voluntary_switches,
            involuntary_switches: self.involuntary_switches + other.involuntary_switches,
        }
    }

    /// What was used between `earlier` and this reading.
    pub fn since(&self, earlier: Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(earlier.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(earlier.involuntary_switches),
        }
    }
}

/// The calling thread's own usage: `getrusage(RUSAGE_THREAD)` (µs
/// resolution, where `/proc/<pid>/stat` counts clock ticks).
#[allow(unsafe_code)]
pub fn thread_usage() -> Result<Usage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `struct rusage` through the pointer,
    // which points to enough (zeroed) memory for one; RUSAGE_THREAD is a
    // valid `who` on Linux.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_THREAD)");
    }
    // SAFETY: getrusage returned 0, so it filled the struct (and it was
    // zeroed before, so every field is initialized either way).
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(Usage {
        user: time(usage.ru_utime),
        system: time(usage.ru_stime),
        voluntary_switches: usage.ru_nvcsw.max(0) as u64,
        involuntary_switches: usage.ru_nivcsw.max(0) as u64,
    })
}

/// Voluntary + involuntary context switches of every thread of `pid` so
/// far (from `/proc/<pid>/task/*/status`; threads that ended are not counted).
pub fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("read /proc/<pid>/task")? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(value) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += value.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// CPUs in `taskset -c` list syntax (`1`, `0-3`, `0,2-3`).
pub fn parse_cpus(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>()?, b.trim().parse::<usize>()?),
            None => {
                let cpu = part.parse::<usize>()?;
                (cpu, cpu)
            }
        };
        if first > last || last >= libc::CPU_SETSIZE as usize {
            anyhow::bail!("CPU list {list:?}: {part:?} is not a range of CPUs");
        }
        cpus.extend(first..=last);
    }
    if cpus.is_empty() {
        anyhow::bail!("CPU list {list:?} names no CPU");
    }
    Ok(cpus)
}

/// The CPUs the calling thread may run on, as the kernel lists them
/// (`Cpus_allowed_list` of `/proc/thread-self/status`).
pub fn allowed_cpus() -> Result<String> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_string())
        .context("no Cpus_allowed_list in /proc/thread-self/status")
}

/// Keeps the calling thread (and the threads it starts later) on `cpus`:
/// `sched_setaffinity(0, …)`, as `taskset -c` does for a process.
#[allow(unsafe_code)]
pub fn pin_thread(cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` < CPU_SETSIZE (checked by `parse_cpus`), so the bit
        // is inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the size is that of `set`, which
    // lives for the call.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_cpus;

    #[test]
    fn cpu_lists_read_as_taskset_reads_them() {
        assert_eq!(parse_cpus("1").ok(), Some(vec![1]));
        assert_eq!(parse_cpus("0-2").ok(), Some(vec![0, 1, 2]));
        assert_eq!(parse_cpus("0, 2-3").ok(), Some(vec![0, 2, 3]));
        for bad in ["", "x", "3-1", "1-", "99999"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} was taken");
        }
    }
}
