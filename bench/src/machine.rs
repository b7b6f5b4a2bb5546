//! The machine a figure was measured on, and what a process used (memory, CPU).

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

/// A file of `/proc/PID/`: how every per-process figure (memory, CPU) is read.
fn read_proc(pid: u32, file: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/{file}: {e}"))
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    parse_vm_rss(&read_proc(pid, "status")?)
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second of the times in `/proc/PID/stat` (USER_HZ).
/// `sysconf(_SC_CLK_TCK)` would say, but `libc` is not a dependency of this
/// crate (adding it would change Cargo.lock), so this assumes 100: the value
/// Linux reports to user space on x86 and ARM whatever its internal HZ.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds a process (all its threads) has used so far
/// (`utime` + `stime` of `/proc/PID/stat`).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let ticks = parse_stat_cpu_ticks(&read_proc(pid, "stat")?)
        .ok_or_else(|| anyhow::anyhow!("no utime and stime in /proc/{pid}/stat"))?;
    Ok(ticks as f64 / CLOCK_TICKS_PER_SEC)
}

/// `utime + stime` in clock ticks from a `/proc/PID/stat` line:
/// `pid (comm) state ppid ... utime stime ...`. The command name may hold
/// spaces and parentheses, so the fields are counted from its *last* `)`:
/// state is the first after it, utime the 12th, stime the 13th.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// What a server process spent on one measured phase.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ProcessCpu {
    /// User plus system CPU seconds over the phase.
    pub cpu_secs: f64,
    /// CPU microseconds per operation completed in the phase.
    pub us_per_op: Option<f64>,
    /// Cores it kept busy: CPU seconds per wall-clock second of the phase.
    pub cores: Option<f64>,
}

impl ProcessCpu {
    /// From CPU-second readings just before and just after a phase of
    /// `wall_secs` that completed `ops` operations; `None` if the clock went
    /// backwards (another process behind the PID).
    pub fn between(before: f64, after: f64, ops: u64, wall_secs: f64) -> Option<ProcessCpu> {
        let cpu_secs = after - before;
        (cpu_secs >= 0.0).then(|| ProcessCpu {
            cpu_secs,
            us_per_op: (ops > 0).then(|| cpu_secs * 1e6 / ops as f64),
            cores: (wall_secs > 0.0).then(|| cpu_secs / wall_secs),
        })
    }
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
    fn process_cpu_is_utime_plus_stime_after_the_command_name() {
        let line = |comm: &str| {
            format!(
                "4242 ({comm}) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                 731 204 0 0 20 0 3 0 12345 100000000 2500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"
            )
        };
        assert_eq!(super::parse_stat_cpu_ticks(&line("tessera")), Some(935));
        // A command name with spaces and parentheses (one may even close early).
        assert_eq!(
            super::parse_stat_cpu_ticks(&line("my (odd) ) name")),
            Some(935)
        );
        assert_eq!(
            super::parse_stat_cpu_ticks(&line("redis-server *:6379")),
            Some(935)
        );
        assert_eq!(super::parse_stat_cpu_ticks("4242 (x) S 1 2 3\n"), None);
        assert_eq!(super::parse_stat_cpu_ticks("no parenthesis 1 2 3"), None);
    }

    #[test]
    fn this_process_has_a_cpu_reading() {
        let secs = super::cpu_secs(std::process::id()).unwrap();
        assert!(secs >= 0.0);
        assert!(super::cpu_secs(u32::MAX).is_err());
    }

    #[test]
    fn cpu_per_operation_and_cores_over_a_phase() {
        // 2.5 CPU s over a 5 s phase of 100,000 operations.
        let cpu = super::ProcessCpu::between(10.0, 12.5, 100_000, 5.0).unwrap();
        assert_eq!(cpu.cpu_secs, 2.5);
        assert!((cpu.us_per_op.unwrap() - 25.0).abs() < 1e-9);
        assert!((cpu.cores.unwrap() - 0.5).abs() < 1e-12);
        let idle = super::ProcessCpu::between(3.0, 3.0, 0, 0.0).unwrap();
        assert_eq!(
            (idle.cpu_secs, idle.us_per_op, idle.cores),
            (0.0, None, None)
        );
        assert!(super::ProcessCpu::between(5.0, 4.0, 10, 1.0).is_none());
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
