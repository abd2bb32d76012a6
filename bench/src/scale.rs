//! `scale`: N client processes (1 → 256 by default) each keep `depth` ranged GETs of `len`
//! bytes in flight through the native SDK for a fixed time; aggregate throughput, p99
//! latency, and the daemon's memory per connected client.
//!
//! Memory: the daemon creates and maps each client's region (a memfd; its pages are allocated
//! up front but the daemon's mapping is not populated), so the pages the daemon touches — the
//! header and queues, plus any arena page it maps in — count in its VmRSS as RssShmem, sized by
//! the client's geometry. The per-client *cost of the daemon itself* is its private
//! memory growth (RssAnon: session state, slabs, histograms), reported separately; the
//! target "≤ 256 KiB per client, region excluded" is checked against RssAnon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::json;

use crate::machine::{Rss, proc_rss};
use crate::report::{Report, ScaleStep, Target};
use crate::stack::Stack;
use crate::worker::{Fleet, Job, PathKind, Tuning, Work};

/// Parameters of a scale run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Client counts.
    pub steps: Vec<usize>,
    /// Bytes per request.
    pub len: u64,
    /// Requests in flight per client.
    pub depth: usize,
    /// Time per step, ms.
    pub millis: u64,
    /// Bytes of the blob read from.
    pub blob_size: u64,
    /// Arena per client.
    pub arena: u64,
}

/// Progress phases.
pub fn phases(o: &ScaleOptions) -> u64 {
    o.steps.len() as u64 + 1
}

/// Runs every step.
pub fn run(stack: &Stack, o: &ScaleOptions, pb: &ProgressBar, report: &mut Report) -> Result<()> {
    pb.set_message("writing the scale blob");
    let blob = crate::data::write_blobs(stack, "scale", 1, o.blob_size, true, |_| {})?.remove(0);
    pb.inc(1);
    report.config.insert("scale_steps".into(), json!(o.steps));
    report
        .config
        .insert("scale_request_bytes".into(), json!(o.len));
    report.config.insert("scale_depth".into(), json!(o.depth));
    report
        .config
        .insert("scale_ms_per_step".into(), json!(o.millis));
    report
        .config
        .insert("scale_arena_bytes".into(), json!(o.arena));
    for &n in &o.steps {
        pb.set_message(format!("scale: {n} clients"));
        // Let the daemon finish cleaning up the previous step's clients.
        wait_clients(stack, 0)?;
        let base = proc_rss(stack.daemon_pid())?;
        let jobs: Vec<Job> = (0..n)
            .map(|i| Job {
                path: PathKind::Native,
                endpoint: stack.endpoint(),
                tuning: Tuning {
                    chunk: o.len,
                    parallel: o.depth,
                    sync_chunk: o.len,
                    arena: o.arena,
                },
                work: Work::Ranges {
                    blob: blob.clone(),
                    len: o.len,
                    depth: o.depth,
                    millis: o.millis,
                    max: u64::MAX,
                    seed: i as u64 + 1,
                },
            })
            .collect();
        let fleet = Fleet::spawn(&jobs)?;
        wait_clients(stack, n)?;
        let idle = proc_rss(stack.daemon_pid())?;
        // Peak RSS while the clients run.
        let (res, peak) = peak_rss_while(stack.daemon_pid(), || fleet.go());
        let (outs, _) = res?;
        let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
        for o in &outs {
            if let Some(x) = o.histogram()? {
                h.add(x)?;
            }
        }
        // Each client measures its own window (after warm-up): the rate is over their union.
        let rate = |f: fn(&crate::worker::Outcome) -> u64| crate::worker::union_rate(&outs, f);
        let requests: u64 = outs.iter().map(|x| x.requests).sum();
        let verified: u64 = outs.iter().map(|x| x.verified).sum();
        let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
        report.scale.push(ScaleStep {
            clients: n,
            gbps: rate(|x| x.bytes) / 1e9,
            rps: rate(|x| x.requests),
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            daemon_rss_per_client_kib: per(peak.total_kib, base.total_kib),
            daemon_anon_per_client_kib: per(peak.anon_kib, base.anon_kib),
            daemon_shmem_per_client_kib: per(peak.shmem_kib, base.shmem_kib),
            daemon_rss_per_idle_client_kib: per(idle.total_kib, base.total_kib),
            daemon_anon_per_idle_client_kib: per(idle.anon_kib, base.anon_kib),
            requests,
            checksums_ok: verified == requests && requests > 0,
        });
        pb.inc(1);
    }
    scale_targets(report);
    report.notes.push(
        "scale RSS: the daemon maps each client's region; the pages it touches (header, \
         queues) count in VmRSS as RssShmem, sized by the client's geometry; RssAnon is the \
         daemon's own memory per client, which the RSS targets are checked against"
            .into(),
    );
    Ok(())
}

/// Samples the RSS of process `pid` every 20 ms while `f` runs: `f`'s result and the peak.
fn peak_rss_while<T>(pid: u32, f: impl FnOnce() -> T) -> (T, Rss) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = Rss::default();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = proc_rss(pid)
                    && r.total_kib > peak.total_kib
                {
                    peak = r;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    (out, sampler.join().unwrap_or_default())
}

/// The RSS-per-client and scale-vs-peak targets, from the largest step.
fn scale_targets(report: &mut Report) {
    if let Some(last) = report.scale.iter().max_by_key(|s| s.clients) {
        let anon = last.daemon_anon_per_client_kib;
        for (issue, bound) in [("#6", 256.0), ("#15", 64.0)] {
            report.targets.push(Target::at_most(
                &format!(
                    "{issue} daemon RSS/client, region excluded ({} cl.)",
                    last.clients
                ),
                anon,
                bound,
                " KiB",
            ));
        }
        let peak = report.scale.iter().map(|s| s.gbps).fold(0.0, f64::max);
        let of_peak = last.gbps / peak.max(1e-12);
        report.ratios.insert("scale_last_vs_peak".into(), of_peak);
        report.targets.push(Target::at_least(
            &format!(
                "#15 scale: GB/s at {} clients vs the peak step",
                last.clients
            ),
            of_peak,
            0.8,
            "×",
        ));
    }
}

/// Waits (≤ 30 s) until the daemon reports `n` connected clients.
fn wait_clients(stack: &Stack, n: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = stack.stats()?;
        if s["daemon"]["clients"].as_u64() == Some(n as u64) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the daemon reports {} clients, expected {n}",
                s["daemon"]["clients"]
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
