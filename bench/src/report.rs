//! Figures, targets, the stdout table and the JSON document.
//!
//! JSON layout: `{ "mode", "machine", "config", "paths": {pread,http,https,connector,native,
//! sync,...}, "writes": {http,https,connector,native}, "ratios": {...}, "small": {...},
//! "scale": {...}, "targets": [...] }` — each present when its mode ran (`all` fills every
//! one).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::Machine;

/// One path of the seed experiment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathFigures {
    /// Aggregate throughput over all rounds: bytes / wall seconds, in GB/s (10^9).
    pub gbps: f64,
    /// Body bytes read and verified.
    pub bytes: u64,
    /// Wall seconds (sum over rounds, from `go` to the last client done).
    pub seconds: f64,
    /// CPU seconds per GB: (clients + daemon + host + gateway) / (bytes / 10^9).
    pub cpu_s_per_gb: f64,
    /// CPU seconds of the client processes (getrusage, summed).
    pub client_cpu_s: f64,
    /// CPU seconds of blobringd over the same intervals.
    pub daemon_cpu_s: f64,
    /// CPU seconds of blobring-host over the same intervals.
    pub host_cpu_s: f64,
    /// CPU seconds of `blobring gateway` over the same intervals (the gateway path's; 0 when
    /// the stack runs none).
    pub gateway_cpu_s: f64,
    /// Requests (or pread calls).
    pub requests: u64,
    /// Blob reads whose xxh3 matched the data written.
    pub verified_blobs: u64,
    /// Blob reads made (equals `verified_blobs`: a mismatch stops the run).
    pub blob_reads: u64,
    /// Whether every checksum matched.
    pub checksums_ok: bool,
    /// GB/s of each round.
    pub rounds_gbps: Vec<f64>,
}

/// Small-request figures of one path at one depth.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SmallFigures {
    /// Queue depth.
    pub depth: usize,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in µs.
    pub p50_us: f64,
    /// p99 in µs.
    pub p99_us: f64,
    /// p99.9 in µs.
    pub p999_us: f64,
    /// Requests made (all verified).
    pub requests: u64,
    /// CPU µs per request of the client process (warm-up included).
    pub client_cpu_us_per_req: f64,
    /// CPU µs per request of blobringd (for HTTP: only its idle cost).
    pub daemon_cpu_us_per_req: f64,
    /// CPU µs per request of blobring-host.
    pub host_cpu_us_per_req: f64,
    /// Whether every 4 KiB block matched.
    pub checksums_ok: bool,
    /// Latency CDF: (µs, fraction ≤) points, for charts.
    pub cdf: Vec<(f64, f64)>,
}

/// One step of the scale run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleStep {
    /// Client processes.
    pub clients: usize,
    /// Aggregate GB/s.
    pub gbps: f64,
    /// Requests per second, all clients.
    pub rps: f64,
    /// p99 request latency in µs.
    pub p99_us: f64,
    /// Daemon RSS growth per client (VmRSS, region pages included), KiB.
    pub daemon_rss_per_client_kib: f64,
    /// Daemon private-memory growth per client (RssAnon: region excluded), KiB.
    pub daemon_anon_per_client_kib: f64,
    /// Daemon shared-memory growth per client (RssShmem: the client regions it touched), KiB.
    pub daemon_shmem_per_client_kib: f64,
    /// Same, with the clients connected but idle (before `go`), VmRSS, KiB.
    pub daemon_rss_per_idle_client_kib: f64,
    /// Same, RssAnon, idle clients, KiB.
    pub daemon_anon_per_idle_client_kib: f64,
    /// Requests verified.
    pub requests: u64,
    /// Whether every block matched.
    pub checksums_ok: bool,
}

/// A target from an issue beside the measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared.
    pub what: String,
    /// The target, e.g. `≥ 2.5×`.
    pub target: String,
    /// Measured value.
    pub measured: f64,
    /// Unit of `measured`.
    pub unit: String,
    /// Whether it is met.
    pub met: bool,
}

impl Target {
    /// A "measured ≥ min" target.
    pub fn at_least(what: &str, measured: f64, min: f64, unit: &str) -> Self {
        Self {
            what: what.into(),
            target: format!("≥ {min}{unit}"),
            measured,
            unit: unit.into(),
            met: measured >= min,
        }
    }

    /// A "measured ≤ max" target.
    pub fn at_most(what: &str, measured: f64, max: f64, unit: &str) -> Self {
        Self {
            what: what.into(),
            target: format!("≤ {max}{unit}"),
            measured,
            unit: unit.into(),
            met: measured <= max,
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `seed`, `small`, `scale` or `all`.
    pub mode: String,
    /// The machine.
    pub machine: Option<Machine>,
    /// Parameters of the run.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Seed figures per path.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, PathFigures>,
    /// Upload figures per path (`seed --write`, and `all`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub writes: BTreeMap<String, PathFigures>,
    /// Ratios (throughput and CPU per GB; uploads prefixed `write_`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ratios: BTreeMap<String, f64>,
    /// Small-request figures: path → depth → figures.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub small: BTreeMap<String, BTreeMap<String, SmallFigures>>,
    /// Scale steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scale: Vec<ScaleStep>,
    /// Targets.
    pub targets: Vec<Target>,
    /// Notes on how to read the figures.
    pub notes: Vec<String>,
}

fn fmt_x(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "n/a".into()
    }
}

/// One seed table: a row per path (throughput, CPU per GB, ratios to (b) HTTP and (a) pread,
/// requests, checksums) and the per-process CPU split.
fn seed_table(s: &mut String, title: &str, paths: &BTreeMap<String, PathFigures>, write: bool) {
    use crate::worker::PathKind;
    let http = paths.get("http").map(|p| p.gbps);
    let pread = paths.get("pread").map(|p| p.gbps);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{title:<42} {:>7} {:>9} {:>8} {:>8} {:>9}  checksums",
        "GB/s", "CPU s/GB", "vs (b)", "vs (a)", "reqs"
    );
    for k in PathKind::ALL {
        let Some(p) = paths.get(k.name()) else {
            continue;
        };
        let label = match k {
            PathKind::Native if write => "(d) blobring striped upload",
            k => k.label(),
        };
        let _ = writeln!(
            s,
            "{:<42} {:>7.2} {:>9.2} {:>8} {:>8} {:>9}  {}/{} ok",
            label,
            p.gbps,
            p.cpu_s_per_gb,
            http.map_or("n/a".into(), |h| fmt_x(p.gbps / h)),
            pread.map_or("n/a".into(), |h| fmt_x(p.gbps / h)),
            p.requests,
            p.verified_blobs,
            p.blob_reads
        );
    }
    let split: Vec<String> = PathKind::ALL
        .iter()
        .filter_map(|k| {
            paths.get(k.name()).map(|p| {
                format!(
                    "{} {:.1}/{:.1}/{:.1}/{:.1}",
                    k.name(),
                    p.client_cpu_s,
                    p.daemon_cpu_s,
                    p.host_cpu_s,
                    p.gateway_cpu_s
                )
            })
        })
        .collect();
    let _ = writeln!(
        s,
        "  CPU s/GB = (client getrusage + daemon + host + gateway utime/stime) / GB; per path: \
         clients/daemon/host/gateway s = {}",
        split.join(", ")
    );
}

impl Report {
    /// Adds `a / b` as `ratios[name]` when both exist.
    pub fn ratio(&mut self, name: &str, a: Option<f64>, b: Option<f64>) -> Option<f64> {
        let (a, b) = (a?, b?);
        if b == 0.0 {
            return None;
        }
        self.ratios.insert(name.into(), a / b);
        Some(a / b)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        if let Some(m) = &self.machine {
            let _ = writeln!(s, "{}", m.line());
        }
        if !self.config.is_empty() {
            let cfg: Vec<String> = self
                .config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "config: {}", cfg.join(" "));
        }
        if !self.paths.is_empty() {
            seed_table(
                &mut s,
                "seed: every client reads every blob",
                &self.paths,
                false,
            );
        }
        if !self.writes.is_empty() {
            let title = "seed --write: each client uploads its blobs";
            seed_table(&mut s, title, &self.writes, true);
        }
        if !self.small.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<42} {:>6} {:>10} {:>9} {:>9} {:>9}  CPU µs/req client+daemon+host",
                "small: 4 KiB ranged GETs, 1 client",
                "depth",
                "req/s",
                "p50 µs",
                "p99 µs",
                "p999 µs"
            );
            for k in crate::worker::PathKind::ALL {
                let Some(m) = self.small.get(k.name()) else {
                    continue;
                };
                let mut v: Vec<&SmallFigures> = m.values().collect();
                v.sort_by_key(|f| f.depth);
                for f in v {
                    let _ = writeln!(
                        s,
                        "{:<42} {:>6} {:>10.0} {:>9.1} {:>9.1} {:>9.1}  {:.1}+{:.1}+{:.1}",
                        k.label(),
                        f.depth,
                        f.rps,
                        f.p50_us,
                        f.p99_us,
                        f.p999_us,
                        f.client_cpu_us_per_req,
                        f.daemon_cpu_us_per_req,
                        f.host_cpu_us_per_req
                    );
                }
            }
        }
        if !self.scale.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<8} {:>7} {:>9} {:>9} {:>14} {:>14} {:>14} {:>14}",
                "scale",
                "GB/s",
                "req/s",
                "p99 µs",
                "RSS/client",
                "anon/client",
                "shmem/client",
                "idle anon/cl."
            );
            for st in &self.scale {
                let _ = writeln!(
                    s,
                    "{:<8} {:>7.2} {:>9.0} {:>9.1} {:>11.0} KiB {:>10.0} KiB {:>10.0} KiB {:>10.0} KiB",
                    format!("{} cl.", st.clients),
                    st.gbps,
                    st.rps,
                    st.p99_us,
                    st.daemon_rss_per_client_kib,
                    st.daemon_anon_per_client_kib,
                    st.daemon_shmem_per_client_kib,
                    st.daemon_anon_per_idle_client_kib
                );
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<58} {:>10} {:>12}  status",
                "target (from the issues)", "target", "measured"
            );
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "{:<58} {:>10} {:>12}  {}",
                    t.what,
                    t.target,
                    format!("{:.2}{}", t.measured, t.unit),
                    if t.met { "met" } else { "MISSED" }
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}
