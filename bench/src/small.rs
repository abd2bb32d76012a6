//! `small`: 4 KiB ranged GETs at random aligned offsets of one blob, from one client process
//! keeping `depth` requests in flight, for (b) HTTP, (c) connector and (d) native. Every
//! block is checked against the written data's per-block xxh3.

use anyhow::Result;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::json;

use crate::data::BlobRef;
use crate::report::{Report, SmallFigures, Target};
use crate::stack::Stack;
use crate::worker::{Fleet, Job, PathKind, Tuning, Work};

/// Parameters of a small run.
#[derive(Debug, Clone)]
pub struct SmallOptions {
    /// Queue depths.
    pub depths: Vec<usize>,
    /// Time budget per (path, depth), ms.
    pub millis: u64,
    /// Request budget per (path, depth).
    pub max_requests: u64,
    /// Bytes of the blob read from.
    pub blob_size: u64,
    /// Bytes per request.
    pub len: u64,
    /// Paths.
    pub paths: Vec<PathKind>,
    /// Arena per client.
    pub arena: u64,
}

/// Progress phases.
pub fn phases(o: &SmallOptions) -> u64 {
    (o.depths.len() * o.paths.len()) as u64 + 1
}

/// Latency percentiles (µs) and a CDF from a ns histogram.
pub fn summarize(h: &Histogram<u64>) -> (f64, f64, f64, Vec<(f64, f64)>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let mut cdf = Vec::new();
    for i in 0..=200 {
        // Denser towards the tail: q = 1 - 10^(-3 i / 200).
        let q = 1.0 - 10f64.powf(-3.0 * f64::from(i) / 200.0);
        cdf.push((us(q), q));
    }
    cdf.push((h.max() as f64 / 1e3, 1.0));
    (us(0.5), us(0.99), us(0.999), cdf)
}

/// Writes the blob and measures every (path, depth).
pub fn run(stack: &Stack, o: &SmallOptions, pb: &ProgressBar, report: &mut Report) -> Result<()> {
    pb.set_message("writing the small-request blob");
    let blob = crate::data::write_blobs(stack, "small", 1, o.blob_size, true, |_| {})?.remove(0);
    pb.inc(1);
    report
        .config
        .insert("small_request_bytes".into(), json!(o.len));
    report
        .config
        .insert("small_ms_per_depth".into(), json!(o.millis));
    report.config.insert("small_depths".into(), json!(o.depths));
    for &path in &o.paths {
        for &depth in &o.depths {
            pb.set_message(format!("small: {} at depth {depth}", path.name()));
            let f = measure(stack, o, &blob, path, depth)?;
            report
                .small
                .entry(path.name().into())
                .or_default()
                .insert(depth.to_string(), f);
            pb.inc(1);
        }
    }
    targets(report);
    Ok(())
}

fn measure(
    stack: &Stack,
    o: &SmallOptions,
    blob: &BlobRef,
    path: PathKind,
    depth: usize,
) -> Result<SmallFigures> {
    let job = Job {
        path,
        endpoint: stack.endpoint(),
        tuning: Tuning {
            chunk: o.len,
            parallel: depth,
            sync_chunk: o.len,
            arena: o.arena,
        },
        work: Work::Ranges {
            blob: blob.clone(),
            len: o.len,
            depth,
            millis: o.millis,
            max: o.max_requests,
            seed: depth as u64 * 7919 + path as u64,
        },
    };
    let fleet = Fleet::spawn(std::slice::from_ref(&job))?;
    let (d0, h0) = stack.cpu()?;
    let (outs, _) = fleet.go()?;
    let (d1, h1) = stack.cpu()?;
    let out = &outs[0];
    // Over the whole run, warm-up included: CPU per request of client + daemon + host.
    let all = out.requests_total.max(1) as f64;
    let per = |s: f64| s / all * 1e6;
    let h = out
        .histogram()?
        .ok_or_else(|| anyhow::anyhow!("the worker sent no latency histogram"))?;
    let (p50, p99, p999, cdf) = summarize(&h);
    Ok(SmallFigures {
        depth,
        rps: out.requests as f64 / out.wall_s.max(1e-9),
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
        requests: out.requests,
        client_cpu_us_per_req: per(out.cpu_s),
        daemon_cpu_us_per_req: per(d1 - d0),
        host_cpu_us_per_req: per(h1 - h0),
        checksums_ok: out.verified == out.requests && out.requests > 0,
        cdf,
    })
}

fn targets(report: &mut Report) {
    let get = |p: &str, d: &str| report.small.get(p).and_then(|m| m.get(d)).cloned();
    let (Some(n256), Some(h256), Some(h1)) =
        (get("native", "256"), get("http", "256"), get("http", "1"))
    else {
        return;
    };
    let n1 = get("native", "1");
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    let mut found = vec![
        (
            "small_native_vs_http_rps_depth256",
            Target::at_least(
                "(d) small req/s at depth 256 vs (b) at depth 256",
                ratio(n256.rps, h256.rps),
                5.0,
                "×",
            ),
        ),
        (
            "small_native_p99_d256_vs_http_p99_d1",
            Target::at_most(
                "(d) p99 at depth 256 vs (b) p99 at depth 1",
                ratio(n256.p99_us, h1.p99_us),
                0.5,
                "×",
            ),
        ),
    ];
    // The other reading of the latency target: like for like, one request at a time.
    if let Some(n1) = &n1 {
        found.push((
            "small_native_p99_d1_vs_http_p99_d1",
            Target::at_most(
                "(d) p99 at depth 1 vs (b) p99 at depth 1",
                ratio(n1.p99_us, h1.p99_us),
                0.5,
                "×",
            ),
        ));
        found.push((
            "small_native_p50_d1_vs_http_p50_d1",
            Target::at_most(
                "#15 (d) p50 at depth 1 vs (b) p50 at depth 1",
                ratio(n1.p50_us, h1.p50_us),
                0.5,
                "×",
            ),
        ));
    }
    // #15: the VM side of a 4 KiB GET (client + daemon; the host stands for Azure's servers).
    let vm_side = n256.client_cpu_us_per_req + n256.daemon_cpu_us_per_req;
    found.push((
        "small_native_vm_cpu_us_per_req_depth256",
        Target::at_most(
            "#15 (d) VM-side CPU per 4 KiB GET, depth 256",
            vm_side,
            4.0,
            " µs",
        ),
    ));
    found.push((
        "small_native_vm_cpu_vs_http_client_cpu_depth256",
        Target::at_most(
            "#15 (d) VM-side CPU per GET vs (b) client CPU, d. 256",
            ratio(vm_side, h256.client_cpu_us_per_req),
            0.15,
            "×",
        ),
    ));
    if let Some(s256) = get("https", "256") {
        found.push((
            "small_native_vs_https_rps_depth256",
            Target::at_least(
                "#15 (d) small req/s at depth 256 vs (b) HTTPS",
                ratio(n256.rps, s256.rps),
                5.0,
                "×",
            ),
        ));
    }
    for (key, t) in found {
        report.ratios.insert(key.into(), t.measured);
        report.targets.push(t);
    }
}
