//! What the figures were measured on, and the per-process counters the modes read: CPU time
//! of other processes (`/proc/<pid>/stat`), our own (`getrusage`), and memory
//! (`/proc/<pid>/status`).

use anyhow::{Context, Result};
use serde::Serialize;

/// The machine, printed with every result.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Memory in GiB.
    pub mem_gib: f64,
    /// Page kind of the client regions as the daemon reported it (`Small`, `Thp`, `Huge2M`).
    pub region_pages: String,
    /// Page size of the client regions in bytes.
    pub region_page_size: u64,
    /// `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (the selected mode).
    pub shmem_thp: String,
}

impl Machine {
    /// Describes this machine; `region_pages` comes from the daemon.
    pub fn describe(region_pages: Option<String>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = field_kib(&meminfo, "MemTotal:").unwrap_or(0);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .unwrap_or_default();
        let shmem_thp = thp
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(['[', ']']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let region_pages = region_pages.unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            mem_gib: mem_kib as f64 / (1 << 20) as f64,
            region_page_size: crate::stack::page_size_of(&region_pages),
            region_pages,
            shmem_thp,
        }
    }

    /// One line for the table.
    pub fn line(&self) -> String {
        format!(
            "machine: {} | {} cores | kernel {} | {:.1} GiB | client regions: {} pages ({} KiB; shmem THP {})",
            self.cpu,
            self.cores,
            self.kernel,
            self.mem_gib,
            self.region_pages,
            self.region_page_size / 1024,
            self.shmem_thp
        )
    }
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of process `pid` in seconds (all its threads), from `/proc/<pid>/stat`.
pub fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name may hold spaces: fields restart after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("parse {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let ticks = |i: usize| -> Result<u64> {
        f.get(i - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {i} of {path}"))
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(14)? + ticks(15)?) as f64 / hz)
}

/// This process's user + system CPU seconds (`getrusage(RUSAGE_SELF)`).
pub fn self_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// Resident memory of a process, in KiB (`/proc/<pid>/status`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rss {
    /// VmRSS: everything resident.
    pub total_kib: u64,
    /// RssAnon: the process's private memory (heap, stacks).
    pub anon_kib: u64,
    /// RssShmem: shared-memory pages it has mapped and touched (the client regions).
    pub shmem_kib: u64,
}

/// Reads [`Rss`] of `pid`.
pub fn proc_rss(pid: u32) -> Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    Ok(Rss {
        total_kib: field_kib(&s, "VmRSS:").unwrap_or(0),
        anon_kib: field_kib(&s, "RssAnon:").unwrap_or(0),
        shmem_kib: field_kib(&s, "RssShmem:").unwrap_or(0),
    })
}
