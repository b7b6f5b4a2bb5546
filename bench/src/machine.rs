//! The machine a figure was measured on, and process memory readings.

use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub load_average: String,
    pub date: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model,
            load_average,
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} cores, {}, load average {}, {}",
            self.cores, self.cpu_model, self.load_average, self.date
        )
    }
}

/// The machine's CPU time so far (`cpu` line of `/proc/stat`, in clock ticks
/// summed over every core): how busy the cores were between two readings, with
/// whatever else ran on them (the load generator, other processes) included.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub fn read() -> Option<CpuTimes> {
        parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Fraction of all cores' time that was busy (not idle, not waiting for
    /// I/O) between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// `cpu  user nice system idle iowait irq softirq steal ...`: idle and iowait
/// are the idle time; guest time is already inside user and nice.
fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 5 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields[4];
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vm_rss_is_read_in_kilobytes() {
        let status = "Name:\ttessera\nVmPeak:\t 9000 kB\nVmRSS:\t  1234 kB\n";
        assert_eq!(super::parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(super::parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_busy_counts_all_but_idle_and_iowait() {
        let stat = |user, idle| format!("cpu  {user} 0 100 {idle} 50 0 0 0 0 0\ncpu0 1 2 3 4\n");
        let before = super::parse_cpu_times(&stat(1000, 5000)).unwrap();
        let after = super::parse_cpu_times(&stat(1300, 5100)).unwrap();
        // 300 busy ticks of 400.
        assert_eq!(after.busy_since(&before), Some(0.75));
        assert_eq!(before.busy_since(&after), None);
        assert_eq!(before.busy_since(&before), None);
        assert!(super::parse_cpu_times("intr 1 2 3\n").is_none());
    }
}
