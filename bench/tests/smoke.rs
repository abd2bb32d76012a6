//! Smoke run of every bench mode through the real binary with tiny sizes: a real
//! blobring-host and blobringd (from the same target directory: `cargo build --workspace
//! --release --bins` first), real client processes. Checks that the JSON has every path with
//! positive figures and verified checksums, and that the charts exist. Speed is printed by
//! the binary, never asserted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blobring-bench");

fn run(args: &[&str], dir: &Path, name: &str) -> Value {
    let json = dir.join(format!("{name}.json"));
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .arg("--chart")
        .arg(dir.join("charts"))
        .output()
        .expect("run blobring-bench");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "blobring-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("blobring-bench {args:?} ({took:.1?}):\n{stdout}");
    assert!(took < Duration::from_secs(60), "{name} took {took:?}");
    assert!(stdout.contains("machine: "), "no machine line:\n{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("JSON")
}

fn chart(dir: &Path, name: &str) {
    for ext in ["svg", "png"] {
        let p = dir.join("charts").join(format!("{name}.{ext}"));
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            bytes.len() > 1000,
            "{} is only {} bytes",
            p.display(),
            bytes.len()
        );
        match ext {
            "png" => assert_eq!(
                &bytes[..8],
                b"\x89PNG\r\n\x1a\n",
                "{} is no PNG",
                p.display()
            ),
            _ => assert!(
                String::from_utf8_lossy(&bytes).contains("<svg"),
                "{} is no SVG",
                p.display()
            ),
        }
    }
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// The size of the throughput runs: 2 clients × 2 blobs of 1 MiB, one round.
const TWO_BY_TWO: [&str; 8] = ["-P", "2", "-C", "2", "-S", "1M", "--rounds", "1"];

/// Runs `mode` (its words, [`TWO_BY_TWO`], then `extra`), JSON as `<json_mode>.json`; the JSON
/// must report `json_mode`.
fn run_two_by_two(d: &Path, mode: &[&str], extra: &[&str], json_mode: &str) -> Value {
    let v = run(&[mode, &TWO_BY_TWO, extra].concat(), d, json_mode);
    assert_eq!(v["mode"], json_mode);
    v
}

/// A read or write path's figures: positive throughput, checksums verified, and all 2 clients
/// × 2 blobs verified.
fn path_verified(f: &Value, p: &str) {
    assert!(num(&f["gbps"], p) > 0.0, "{p}: {f}");
    assert_eq!(f["checksums_ok"], true, "{p}: {f}");
    assert_eq!(f["verified_blobs"], 4, "{p}: {f}");
}

/// Every ratio `names` of the run `v` is positive.
fn ratios_positive(v: &Value, names: &[&str]) {
    for r in names {
        assert!(num(&v["ratios"][r], r) > 0.0, "{r}");
    }
}

/// Among the targets the run `v` printed is one whose `what` starts with `prefix`.
fn target_printed(v: &Value, prefix: &str) {
    let targets = v["targets"].as_array().expect("targets");
    assert!(
        targets
            .iter()
            .any(|t| t["what"].as_str().is_some_and(|w| w.starts_with(prefix))),
        "no target {prefix:?} printed: {targets:?}"
    );
}

#[test]
fn every_mode_runs_with_tiny_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    let seed = run_two_by_two(d, &["seed"], &["--chunk", "256K"], "seed");
    for p in ["pread", "http", "https", "connector", "native", "sync"] {
        let f = &seed["paths"][p];
        path_verified(f, p);
        assert!(num(&f["cpu_s_per_gb"], p) >= 0.0, "{p}: {f}");
        // 2 clients × 2 blobs, every one read.
        assert_eq!(f["blob_reads"], 4, "{p}: {f}");
        assert_eq!(f["bytes"], 4 << 20, "{p}: {f}");
    }
    ratios_positive(
        &seed,
        &[
            "native_vs_http",
            "native_vs_pread",
            "connector_vs_http",
            "https_vs_http",
            "sync_vs_http",
            "cpu_per_gb_native_vs_http",
        ],
    );
    let m = &seed["machine"];
    assert!(num(&m["cores"], "cores") >= 1.0);
    assert_ne!(
        m["region_pages"], "unknown",
        "page kind of the regions: {m}"
    );
    assert!(num(&m["region_page_size"], "page size") >= 4096.0);
    chart(d, "seed-throughput");

    let small = run(
        &[
            "small",
            "--depths",
            "1,4",
            "--millis",
            "300",
            "--requests",
            "400",
            "--blob-size",
            "1M",
        ],
        d,
        "small",
    );
    for p in ["http", "https", "connector", "native"] {
        for depth in ["1", "4"] {
            let f = &small["small"][p][depth];
            assert!(num(&f["rps"], p) > 0.0, "{p}@{depth}: {f}");
            assert!(num(&f["requests"], p) > 0.0, "{p}@{depth}: {f}");
            assert!(
                num(&f["p99_us"], p) >= num(&f["p50_us"], p),
                "{p}@{depth}: {f}"
            );
            assert_eq!(f["checksums_ok"], true, "{p}@{depth}: {f}");
        }
    }
    chart(d, "small-latency-cdf");

    let scale = run(
        &[
            "scale",
            "--steps",
            "1,2",
            "--millis",
            "300",
            "--len",
            "64K",
            "--blob-size",
            "1M",
            // hugetlb first; without a reserved pool the daemon falls back to other pages.
            "--hugetlb",
        ],
        d,
        "scale",
    );
    let pages = scale["machine"]["region_pages"]
        .as_str()
        .unwrap_or("unknown");
    assert!(
        ["Huge2M", "Thp", "Small"].contains(&pages),
        "regions of a --hugetlb run: {pages}"
    );
    let steps = scale["scale"].as_array().expect("scale steps");
    assert_eq!(steps.len(), 2);
    for (s, n) in steps.iter().zip([1, 2]) {
        assert_eq!(s["clients"], n, "{s}");
        assert!(num(&s["gbps"], "gbps") > 0.0, "{s}");
        assert!(num(&s["p99_us"], "p99") > 0.0, "{s}");
        assert_eq!(s["checksums_ok"], true, "{s}");
    }
    chart(d, "scale-throughput");

    // Uploads: every blob read back and checked by the bench itself.
    let w = run_two_by_two(d, &["seed", "--write"], &["--chunk", "256K"], "seed-write");
    for p in ["http", "https", "connector", "native"] {
        let f = &w["writes"][p];
        path_verified(f, p);
        assert_eq!(f["bytes"], 4 << 20, "{p}: {f}");
    }
    assert!(
        w["paths"].is_null(),
        "uploads are not read figures: {}",
        w["paths"]
    );
    ratios_positive(
        &w,
        &["write_native_vs_https", "cpu_per_gb_write_native_vs_https"],
    );
    target_printed(&w, "#15 writes");

    // The gateway's benchmark: a `blobring gateway` in front of the daemon, beside (b) over
    // HTTP and HTTPS and (c).
    let gw = run_two_by_two(d, &["gateway"], &["--chunk", "256K"], "gateway");
    for p in ["gateway", "http", "https", "connector"] {
        path_verified(&gw["paths"][p], p);
    }
    assert!(num(&gw["paths"]["gateway"]["gateway_cpu_s"], "gateway cpu") > 0.0);
    ratios_positive(
        &gw,
        &[
            "gateway_vs_https",
            "gateway_vs_connector",
            "cpu_per_gb_gateway_vs_https",
        ],
    );
}

#[test]
fn mount_mode_runs_with_tiny_sizes() {
    // A real FUSE mount (`blobring mount`, the CLI next to blobring-bench) beside (a), (b), (d).
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m = run_two_by_two(d, &["mount"], &["--millis", "300"], "mount");
    for p in ["pread", "http", "native", "mount"] {
        let f = &m["paths"][p];
        path_verified(f, p);
        assert_eq!(f["bytes"], 4 << 20, "{p}: {f}");
    }
    // The mount process's CPU is counted on the mount path.
    assert!(num(&m["paths"]["mount"]["client_cpu_s"], "mount CPU") > 0.0);
    ratios_positive(
        &m,
        &[
            "mount_vs_native",
            "mount_vs_http",
            "cpu_per_gb_mount_vs_http",
        ],
    );
    for p in ["native", "mount"] {
        let f = &m["small"][p]["1"];
        assert!(num(&f["rps"], p) > 0.0, "{p}: {f}");
        assert!(num(&f["p50_us"], p) > 0.0, "{p}: {f}");
        assert_eq!(f["checksums_ok"], true, "{p}: {f}");
    }
    target_printed(&m, "(m) mount");
}

#[test]
fn bad_arguments_fail_with_a_reason() {
    for (args, reason) in [
        (&["seed", "--size", "12X"][..], "unknown unit"),
        // gateway and mount check their shared workload before anything starts.
        (
            &["gateway", "-P", "0", "--quiet"][..],
            "--clients, --blobs and --rounds must be at least 1",
        ),
        (
            &["mount", "--rounds", "0", "--quiet"][..],
            "--clients, --blobs and --rounds must be at least 1",
        ),
        // The in-memory store has no files for the pread path (refused before anything starts).
        (
            &["seed", "--mem-store", "--quiet"][..],
            "--mem-store has no files",
        ),
    ] {
        let out = Command::new(BIN)
            .args(args)
            .output()
            .expect("run blobring-bench");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}

#[test]
fn a_missing_host_binary_is_named_with_the_command_that_builds_it() {
    let out = Command::new(BIN)
        .args(["seed", "-P", "1", "-C", "1", "-S", "1M", "--quiet"])
        .env("BLOBRING_HOST_BIN", "/nonexistent/blobring-host")
        .output()
        .expect("run blobring-bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BLOBRING_HOST_BIN") && err.contains("cargo build --workspace --release"),
        "{err}"
    );
}
