//! `seed`: the seed experiment in miniature — P client processes each read every one of C
//! blobs of S bytes in full through each path, paths in alternating order across rounds
//! (forward on even rounds, backward on odd ones, so no path always runs first or last).

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use serde_json::json;

use crate::data::BlobRef;
use std::collections::BTreeMap;

use crate::report::{PathFigures, Report, Target};
use crate::stack::Stack;
use crate::worker::{Fleet, Job, PathKind, Tuning, Work, WriteSpec};

/// Parameters of a seed run.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Client processes.
    pub clients: usize,
    /// Blobs.
    pub blobs: usize,
    /// Bytes per blob.
    pub size: u64,
    /// Rounds over all paths.
    pub rounds: usize,
    /// Paths to run.
    pub paths: Vec<PathKind>,
    /// Uploads instead of reads ([`run_write`]).
    pub write: bool,
    /// Request shapes.
    pub tuning: Tuning,
}

/// Phases a seed run reports to the progress bar (uploads count as one).
pub fn phases(o: &SeedOptions) -> u64 {
    (o.rounds * o.paths.len()) as u64 + 1
}

/// The parameters a run records in the report's `config` (`write`: an upload run's, whose
/// blobs are per client and which has no synchronous path).
fn config(o: &SeedOptions, write: bool) -> Vec<(&'static str, serde_json::Value)> {
    let blobs = if write { "blobs_per_client" } else { "blobs" };
    let mut c = vec![
        ("clients", json!(o.clients)),
        (blobs, json!(o.blobs)),
        ("blob_bytes", json!(o.size)),
        ("rounds", json!(o.rounds)),
        ("chunk_bytes", json!(o.tuning.chunk)),
        ("parallel", json!(o.tuning.parallel)),
        ("arena_bytes", json!(o.tuning.arena)),
    ];
    if !write {
        c.push(("sync_chunk_bytes", json!(o.tuning.sync_chunk)));
    }
    c
}

/// Writes the blobs and runs every round; fills `report.paths`, `ratios` and targets.
pub fn run(stack: &Stack, o: &SeedOptions, pb: &ProgressBar, report: &mut Report) -> Result<()> {
    pb.set_message(format!("writing {} blobs of {} MiB", o.blobs, o.size >> 20));
    let blobs = crate::data::write_blobs(stack, "seed", o.blobs, o.size, false, |_| {})?;
    pb.inc(1);
    for (k, v) in config(o, false) {
        report.config.insert(k.into(), v);
    }
    rounds(o, pb, "seed", |_, path| {
        phase(stack, o, &blobs, path, report)
    })?;
    finish(report);
    Ok(())
}

/// Runs `each(round, path)` for every round and path, in alternating order (forward on even
/// rounds, backward on odd ones), with the progress bar saying which (`what round r/n: path`).
fn rounds(
    o: &SeedOptions,
    pb: &ProgressBar,
    what: &str,
    mut each: impl FnMut(usize, PathKind) -> Result<()>,
) -> Result<()> {
    for round in 0..o.rounds {
        let order: Vec<PathKind> = if round % 2 == 0 {
            o.paths.clone()
        } else {
            o.paths.iter().rev().copied().collect()
        };
        for path in order {
            pb.set_message(format!(
                "{what} round {}/{}: {}",
                round + 1,
                o.rounds,
                path.name()
            ));
            each(round, path)?;
            pb.inc(1);
        }
    }
    Ok(())
}

fn phase(
    stack: &Stack,
    o: &SeedOptions,
    blobs: &[BlobRef],
    path: PathKind,
    report: &mut Report,
) -> Result<()> {
    let jobs: Vec<Job> = (0..o.clients)
        .map(|i| Job {
            path,
            endpoint: stack.endpoint(),
            tuning: o.tuning.clone(),
            work: Work::Stream {
                blobs: blobs.to_vec(),
                first: i * blobs.len() / o.clients.max(1),
            },
        })
        .collect();
    let (f, verified) = timed(stack, path, &jobs, &mut report.paths)?;
    f.verified_blobs += verified;
    f.blob_reads += (o.clients * blobs.len()) as u64;
    Ok(())
}

/// Runs `jobs` on `path` once, timed, and adds bytes, wall time, every process's CPU (the
/// clients', the daemon's, the host's, the gateway's, and the mount process's as client side
/// on the mount path) and requests to the path's figures, which it returns with the number of
/// blobs the workers verified.
fn timed<'r>(
    stack: &Stack,
    path: PathKind,
    jobs: &[Job],
    figures: &'r mut BTreeMap<String, PathFigures>,
) -> Result<(&'r mut PathFigures, u64)> {
    let fleet = Fleet::spawn(jobs)?;
    let mount_cpu = || match (path, stack.mount_pid()) {
        (PathKind::Mount, Some(pid)) => crate::machine::proc_cpu_seconds(pid),
        _ => Ok(0.0),
    };
    let m0 = mount_cpu()?;
    let ((d0, h0), g0) = (stack.cpu()?, stack.gateway_cpu()?);
    let (outs, wall) = fleet.go()?;
    let ((d1, h1), g1) = (stack.cpu()?, stack.gateway_cpu()?);
    let m1 = mount_cpu()?;
    let f = figures.entry(path.name().into()).or_default();
    let bytes: u64 = outs.iter().map(|x| x.bytes).sum();
    f.bytes += bytes;
    f.seconds += wall;
    f.client_cpu_s += outs.iter().map(|x| x.cpu_s).sum::<f64>() + (m1 - m0);
    f.daemon_cpu_s += d1 - d0;
    f.host_cpu_s += h1 - h0;
    f.gateway_cpu_s += g1 - g0;
    f.requests += outs.iter().map(|x| x.requests).sum::<u64>();
    f.rounds_gbps.push(bytes as f64 / wall / 1e9);
    Ok((f, outs.iter().map(|x| x.verified).sum()))
}

/// `seed --write`: in each round, every client uploads its own C blobs of S bytes through
/// each path (made in memory before the barrier); every blob is then read back through the
/// native SDK and checked against the bytes sent, and deleted, outside the timed interval.
pub fn run_write(
    stack: &Stack,
    o: &SeedOptions,
    pb: &ProgressBar,
    report: &mut Report,
) -> Result<()> {
    // Prefixed: `all` runs a read phase first, whose parameters differ.
    for (k, v) in config(o, true) {
        report.config.insert(format!("write_{k}"), v);
    }
    pb.inc(1);
    let svc = crate::data::service(crate::data::connect(&stack.socket, 64 << 20)?);
    rounds(o, pb, "write", |round, path| {
        write_phase(stack, &svc, o, round, path, report)
    })?;
    finish_figures(&mut report.writes);
    write_ratios(report);
    targets(report);
    Ok(())
}

fn write_phase(
    stack: &Stack,
    svc: &blobring::blob::BlobService,
    o: &SeedOptions,
    round: usize,
    path: PathKind,
    report: &mut Report,
) -> Result<()> {
    let specs: Vec<Vec<WriteSpec>> = (0..o.clients)
        .map(|i| {
            (0..o.blobs)
                .map(|k| WriteSpec {
                    name: format!("write-{}-{round}-{i}-{k}", path.name()),
                    size: o.size,
                    seed: 0x5eed ^ ((round as u64) << 40) ^ ((i as u64) << 20) ^ k as u64,
                })
                .collect()
        })
        .collect();
    let jobs: Vec<Job> = specs
        .iter()
        .map(|blobs| Job {
            path,
            endpoint: stack.endpoint(),
            tuning: o.tuning.clone(),
            work: Work::Write {
                blobs: blobs.clone(),
            },
        })
        .collect();
    timed(stack, path, &jobs, &mut report.writes)?;
    // Untimed: every blob read back and compared with what was sent, then deleted.
    let mut verified = 0;
    let mut buf = vec![0u8; o.size as usize];
    for b in specs.iter().flatten() {
        crate::data::fill(&mut buf, b.seed);
        let want = crate::data::checksum(&buf);
        let got = blobring::block_on(async {
            let mut d = blobring::transfer::Download::start(
                svc,
                crate::stack::CONTAINER,
                &b.name,
                &blobring::transfer::TransferOptions::default(),
            )
            .await?;
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            while let Some(c) = d.next_chunk().await {
                h.update(&c?.into_bytes()?);
            }
            anyhow::Ok(h.digest())
        })
        .with_context(|| format!("read back {} written through {}", b.name, path.name()))?;
        if got != want {
            bail!(
                "{} written through {} reads back as xxh3 {got:016x}, sent as {want:016x}",
                b.name,
                path.name()
            );
        }
        verified += 1;
        blobring::block_on(svc.delete_blob(crate::stack::CONTAINER, &b.name, &Default::default()))
            .with_context(|| format!("delete {}", b.name))?;
    }
    let f = report.writes.entry(path.name().into()).or_default();
    f.verified_blobs += verified;
    f.blob_reads += (o.clients * o.blobs) as u64;
    Ok(())
}

fn finish(report: &mut Report) {
    finish_figures(&mut report.paths);
    ratios(report);
    targets(report);
}

/// GB/s, CPU s/GB and the checksum verdict of every path.
fn finish_figures(figures: &mut BTreeMap<String, PathFigures>) {
    for f in figures.values_mut() {
        f.gbps = f.bytes as f64 / f.seconds.max(1e-9) / 1e9;
        let cpu = f.client_cpu_s + f.daemon_cpu_s + f.host_cpu_s + f.gateway_cpu_s;
        f.cpu_s_per_gb = cpu / (f.bytes as f64 / 1e9).max(1e-12);
        f.checksums_ok = f.verified_blobs == f.blob_reads && f.blob_reads > 0;
    }
}

/// Adds `{prefix}{p}_vs_{base}` (throughput) and `cpu_per_gb_{prefix}{p}_vs_{base}` for every
/// path `p` of `figures` other than `base`, when both were measured.
fn ratios_against(
    report: &mut Report,
    figures: &BTreeMap<String, PathFigures>,
    prefix: &str,
    base: &str,
) {
    let Some(b) = figures.get(base) else {
        return;
    };
    let (bg, bc) = (b.gbps, b.cpu_s_per_gb);
    for (p, f) in figures.iter().filter(|(p, _)| p.as_str() != base) {
        report.ratio(&format!("{prefix}{p}_vs_{base}"), Some(f.gbps), Some(bg));
        let key = format!("cpu_per_gb_{prefix}{p}_vs_{base}");
        report.ratio(&key, Some(f.cpu_s_per_gb), Some(bc));
    }
}

fn ratios(report: &mut Report) {
    let paths = report.paths.clone();
    for base in ["http", "https", "pread", "native", "connector"] {
        ratios_against(report, &paths, "", base);
    }
}

/// Upload ratios, keyed `write_{p}_vs_{base}`.
fn write_ratios(report: &mut Report) {
    let writes = report.writes.clone();
    for base in ["http", "https"] {
        ratios_against(report, &writes, "write_", base);
    }
}

/// The issues' read targets: (ratio, what it measures, at least (else at most), bound). Each is
/// reported when its ratio was measured.
const TARGETS: [(&str, &str, bool, f64); 14] = [
    (
        "native_vs_http",
        "(d) native throughput vs (b) HTTP",
        true,
        2.5,
    ),
    (
        "native_vs_pread",
        "(d) native throughput vs (a) pread",
        true,
        0.7,
    ),
    (
        "connector_vs_http",
        "(c) connector throughput vs (b) HTTP",
        true,
        1.5,
    ),
    (
        "gateway_vs_https",
        "(g) gateway throughput vs (b) HTTPS",
        true,
        1.2,
    ),
    (
        "cpu_per_gb_gateway_vs_https",
        "(g) gateway CPU per GB vs (b) HTTPS",
        false,
        0.7,
    ),
    (
        "gateway_vs_connector",
        "(g) gateway throughput vs (c) connector",
        true,
        0.6,
    ),
    (
        "cpu_per_gb_native_vs_http",
        "(d) CPU per GB vs (b) HTTP",
        false,
        0.5,
    ),
    (
        "native_vs_pread",
        "#15 large reads: (d) native vs (a) pread",
        true,
        0.8,
    ),
    (
        "native_vs_https",
        "#15 large reads: (d) native vs (b) HTTPS",
        true,
        6.0,
    ),
    (
        "cpu_per_gb_native_vs_https",
        "#15 large reads: (d) CPU per GB vs (b) HTTPS",
        false,
        0.2,
    ),
    (
        "write_native_vs_https",
        "#15 writes: (d) striped upload vs (b) HTTPS",
        true,
        3.0,
    ),
    (
        "mount_vs_native",
        "(m) mount throughput vs (d) native",
        true,
        0.6,
    ),
    (
        "mount_vs_http",
        "(m) mount throughput vs (b) HTTP",
        true,
        2.0,
    ),
    (
        "cpu_per_gb_mount_vs_http",
        "(m) mount CPU per GB vs (b) HTTP",
        false,
        0.5,
    ),
];

/// The read targets (issues #6, #13 and #14) against the ratios.
fn targets(report: &mut Report) {
    for (ratio, what, at_least, bound) in TARGETS {
        // Called after the read and after the write phase of `all`: each target once.
        if report.targets.iter().any(|t| t.what == what) {
            continue;
        }
        if let Some(&v) = report.ratios.get(ratio) {
            let t = if at_least {
                Target::at_least(what, v, bound, "×")
            } else {
                Target::at_most(what, v, bound, "×")
            };
            report.targets.push(t);
        }
    }
}
