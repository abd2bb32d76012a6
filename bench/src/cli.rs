//! Command line of `blobring-bench` and the driver that runs a mode and writes its outputs.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::machine::Machine;
use crate::report::Report;
use crate::scale::ScaleOptions;
use crate::seed::SeedOptions;
use crate::small::SmallOptions;
use crate::stack::{Stack, StackOptions};
use crate::worker::{PathKind, Tuning};

/// blobring benchmarks: the seed experiment in miniature, small requests and client scaling,
/// every path measured in the same run on the same bytes against a real blobring-host and
/// blobringd (found next to this executable).
#[derive(Debug, Parser)]
#[command(name = "blobring-bench", version)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub mode: Mode,
}

/// Modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// P client processes read C blobs of S bytes in full through (a) pread, (b) object_store
    /// HTTP, (c) object_store via the blobring connector, (d) the native striped download,
    /// (e) one synchronous request at a time; GB/s, CPU s/GB, ratios.
    Seed(SeedArgs),
    /// 4 KiB ranged GETs at queue depths 1, 16, 256 for (b), (c), (d): req/s and latency.
    Small(SmallArgs),
    /// 1 → 1000 client processes on the native path: throughput, p99, daemon RSS per client.
    Scale(ScaleArgs),
    /// The gateway issue's benchmark: P processes read 1 GiB with object_store through
    /// `blobring gateway` (g), direct to the host's REST front end over HTTP and HTTPS (b), and
    /// through the blobring connector (c); GB/s, CPU s/GB (gateway included), ratios.
    Gateway(GatewayArgs),
    /// seed, small and scale with their defaults, in one report.
    All(AllArgs),
    /// `blobring mount` (issue #13): P processes read C blobs in full through a FUSE mount of
    /// the container with 1 MiB read(2), beside (a) pread, (b) object_store HTTP and (d) the
    /// native striped download of the same bytes; then 4 KiB random reads through the mount
    /// vs (d) at depth 1. Needs /dev/fuse and the `blobring` binary next to this one.
    Mount(MountArgs),
    /// (internal) a client process: reads a job on stdin.
    #[command(hide = true)]
    Worker,
}

/// Outputs shared by every mode.
#[derive(Debug, Args, Clone)]
pub struct Output {
    /// Write the figures as JSON to this file (`-` = stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write charts (SVG and PNG) into this directory.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

/// How the stack under test is started (every mode).
#[derive(Debug, Args, Clone, Default)]
pub struct StackArgs {
    /// Back the client regions with 2 MiB hugetlb pages (blobringd `--hugetlb`); reserve a
    /// pool first (`sysctl vm.nr_hugepages=N`: about arena/2 MiB + 1 pages per client).
    /// Without a pool the daemon falls back to THP or 4 KiB pages, and the machine line of the
    /// report says which pages the regions got.
    #[arg(long)]
    pub hugetlb: bool,
    /// Serve from blobring-host's in-memory store instead of its fs store: nothing waits on
    /// the disk (the fs store fsyncs every committed blob), so uploads compare the paths
    /// rather than the disk. The pread path (a) and the mount need the fs store.
    #[arg(long)]
    pub mem_store: bool,
}

/// `seed` arguments.
#[derive(Debug, Args, Clone)]
pub struct SeedArgs {
    /// Client processes.
    #[arg(long = "clients", short = 'P', default_value_t = 4)]
    pub clients: usize,
    /// Blobs.
    #[arg(long = "blobs", short = 'C', default_value_t = 8)]
    pub blobs: usize,
    /// Bytes per blob (suffixes K, M, G = KiB, MiB, GiB). The defaults (4 clients, 8 blobs of
    /// 128 MiB, 5 rounds) keep the 1 GiB working set in the page cache and take about a
    /// minute on an idle 2-core machine.
    #[arg(long = "size", short = 'S', default_value = "128M", value_parser = parse_size)]
    pub size: u64,
    /// Rounds over all paths (path order alternates between rounds).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Bytes per ranged GET on (b), (c), (d) and per pread on (a).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub chunk: u64,
    /// Ranged GETs in flight per client on (b), (c), (d).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Bytes per synchronous request on (e).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub sync_chunk: u64,
    /// Arena bytes per blobring client.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    pub arena: u64,
    /// Paths to run (default: all but the gateway, which `gateway` measures; with --write:
    /// http, https, connector, native).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<PathKind>,
    /// Measure uploads instead: every client uploads its own C blobs of S bytes through each
    /// path (Put Block + Put Block List in --chunk blocks, --parallel in flight; the SDK's
    /// striped upload on (d)); each blob is read back and checked, untimed.
    #[arg(long)]
    pub write: bool,
    /// The stack.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Outputs.
    #[command(flatten)]
    pub out: Output,
}

/// The read workload of `gateway` and `mount`: P processes read C blobs of S bytes in full.
#[derive(Debug, Args, Clone)]
pub struct ReadSetArgs {
    /// Client processes.
    #[arg(long = "clients", short = 'P', default_value_t = 4)]
    pub clients: usize,
    /// Blobs.
    #[arg(long = "blobs", short = 'C', default_value_t = 4)]
    pub blobs: usize,
    /// Bytes per blob (the defaults: 4 × 256 MiB = 1 GiB, which every client reads in full per
    /// path and round).
    #[arg(long = "size", short = 'S', default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Rounds over the paths (path order alternates between rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

impl ReadSetArgs {
    /// `seed`'s arguments with its defaults but this workload.
    fn seed_args(&self) -> Result<SeedArgs> {
        if self.clients == 0 || self.blobs == 0 || self.rounds == 0 {
            bail!("--clients, --blobs and --rounds must be at least 1");
        }
        Ok(SeedArgs {
            clients: self.clients,
            blobs: self.blobs,
            size: self.size,
            rounds: self.rounds,
            ..SeedArgs::parse_defaults()
        })
    }
}

/// `gateway` arguments.
#[derive(Debug, Args, Clone)]
pub struct GatewayArgs {
    /// The workload.
    #[command(flatten)]
    pub set: ReadSetArgs,
    /// Bytes per ranged GET.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub chunk: u64,
    /// Ranged GETs in flight per client.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Paths (default: gateway, http, https, connector).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<PathKind>,
    /// The stack.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Outputs.
    #[command(flatten)]
    pub out: Output,
}

impl GatewayArgs {
    fn options(&self) -> Result<SeedOptions> {
        let paths = if self.paths.is_empty() {
            vec![
                PathKind::Gateway,
                PathKind::Http,
                PathKind::Https,
                PathKind::Connector,
            ]
        } else {
            self.paths.clone()
        };
        SeedArgs {
            chunk: self.chunk,
            parallel: self.parallel,
            sync_chunk: self.chunk,
            paths,
            ..self.set.seed_args()?
        }
        .options()
    }
}

/// `mount` arguments.
#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// The workload.
    #[command(flatten)]
    pub set: ReadSetArgs,
    /// Time of each random-read measurement, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub millis: u64,
    /// The stack.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Outputs.
    #[command(flatten)]
    pub out: Output,
}

impl MountArgs {
    fn options(&self) -> Result<(SeedOptions, SmallOptions)> {
        let seed = SeedArgs {
            paths: vec![
                PathKind::Pread,
                PathKind::Http,
                PathKind::Native,
                PathKind::Mount,
            ],
            ..self.set.seed_args()?
        }
        .options()?;
        let mut small = SmallArgs::parse_defaults().options()?;
        small.depths = vec![1];
        small.millis = self.millis;
        small.paths = vec![PathKind::Native, PathKind::Mount];
        Ok((seed, small))
    }
}

/// `small` arguments.
#[derive(Debug, Args, Clone)]
pub struct SmallArgs {
    /// Queue depths.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub depths: Vec<usize>,
    /// Time per (path, depth), in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub millis: u64,
    /// Most requests per (path, depth).
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Size of the blob read from.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub blob_size: u64,
    /// Paths (default: http, https, connector, native).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<PathKind>,
    /// The stack.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Outputs.
    #[command(flatten)]
    pub out: Output,
}

/// `scale` arguments.
#[derive(Debug, Args, Clone)]
pub struct ScaleArgs {
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256,1000")]
    pub steps: Vec<usize>,
    /// Bytes per ranged GET.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub len: u64,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// Time per step, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub millis: u64,
    /// Size of the blob read from.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub blob_size: u64,
    /// Arena bytes per client.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub arena: u64,
    /// The stack.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Outputs.
    #[command(flatten)]
    pub out: Output,
}

/// `all` arguments.
#[derive(Debug, Args, Clone)]
pub struct AllArgs {
    /// The stack.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Outputs.
    #[command(flatten)]
    pub out: Output,
}

/// Parses `64M`, `4KiB`, `1G`, `4096` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        u => return Err(format!("unknown unit `{u}` in `{s}` (use K, M or G)")),
    };
    n.checked_mul(mul)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

impl SeedArgs {
    fn options(&self) -> Result<SeedOptions> {
        if self.clients == 0 || self.blobs == 0 || self.rounds == 0 || self.parallel == 0 {
            bail!("--clients, --blobs, --rounds and --parallel must be at least 1");
        }
        if self.write
            && self
                .paths
                .iter()
                .any(|p| matches!(p, PathKind::Pread | PathKind::Sync))
        {
            bail!("--write measures http, https, gateway, connector and native only");
        }
        Ok(SeedOptions {
            clients: self.clients,
            blobs: self.blobs,
            size: self.size,
            rounds: self.rounds,
            paths: if !self.paths.is_empty() {
                self.paths.clone()
            } else if self.write {
                vec![
                    PathKind::Http,
                    PathKind::Https,
                    PathKind::Connector,
                    PathKind::Native,
                ]
            } else {
                PathKind::SEED.to_vec()
            },
            write: self.write,
            tuning: Tuning {
                chunk: self.chunk,
                parallel: self.parallel,
                sync_chunk: self.sync_chunk,
                arena: self.arena,
            },
        })
    }
}

impl SmallArgs {
    fn options(&self) -> Result<SmallOptions> {
        let paths = if self.paths.is_empty() {
            vec![
                PathKind::Http,
                PathKind::Https,
                PathKind::Connector,
                PathKind::Native,
            ]
        } else {
            self.paths.clone()
        };
        if paths
            .iter()
            .any(|p| matches!(p, PathKind::Pread | PathKind::Sync | PathKind::Gateway))
        {
            bail!("small measures http, https, connector and native only");
        }
        Ok(SmallOptions {
            depths: self.depths.clone(),
            millis: self.millis,
            max_requests: self.requests.max(1),
            blob_size: self.blob_size,
            len: 4096,
            paths,
            arena: 64 << 20,
        })
    }
}

impl ScaleArgs {
    fn options(&self) -> Result<ScaleOptions> {
        if !self.len.is_multiple_of(crate::data::BLOCK) || self.len > self.blob_size {
            bail!("--len must be a multiple of 4 KiB and at most --blob-size");
        }
        if self.len * self.depth as u64 + (64 << 10) > self.arena {
            bail!("--arena must hold --depth requests of --len bytes plus 64 KiB of heads");
        }
        Ok(ScaleOptions {
            steps: self.steps.clone(),
            len: self.len,
            depth: self.depth.max(1),
            millis: self.millis,
            blob_size: self.blob_size,
            arena: self.arena,
        })
    }
}

fn progress(out: &Output, len: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if out.quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// What one invocation measures, in this order: seed reads, seed writes, small requests, scale.
#[derive(Default)]
struct Plan {
    seed: Option<SeedOptions>,
    write: Option<SeedOptions>,
    small: Option<SmallOptions>,
    scale: Option<ScaleOptions>,
}

impl Plan {
    fn seed(o: SeedOptions) -> Self {
        Self {
            seed: Some(o),
            ..Self::default()
        }
    }

    fn write(o: SeedOptions) -> Self {
        Self {
            write: Some(o),
            ..Self::default()
        }
    }

    fn small(o: SmallOptions) -> Self {
        Self {
            small: Some(o),
            ..Self::default()
        }
    }

    fn scale(o: ScaleOptions) -> Self {
        Self {
            scale: Some(o),
            ..Self::default()
        }
    }

    /// `all`: every mode with its defaults; the write phase smaller (2 blobs per client,
    /// 3 rounds) so the whole run stays within a few minutes.
    fn all() -> Result<Self> {
        let mut write = SeedArgs::parse_defaults();
        write.write = true;
        write.blobs = 2;
        write.rounds = 3;
        Ok(Self {
            seed: Some(SeedArgs::parse_defaults().options()?),
            write: Some(write.options()?),
            small: Some(SmallArgs::parse_defaults().options()?),
            scale: Some(ScaleArgs::parse_defaults().options()?),
        })
    }

    fn phases(&self) -> u64 {
        self.seed.as_ref().map_or(0, crate::seed::phases)
            + self.write.as_ref().map_or(0, crate::seed::phases)
            + self.small.as_ref().map_or(0, crate::small::phases)
            + self.scale.as_ref().map_or(0, crate::scale::phases)
    }
}

/// Runs the command line.
pub fn run(cli: Cli) -> Result<()> {
    let (plan, out, stack_args, mode) = match cli.mode {
        Mode::Worker => return crate::worker::worker_main(),
        Mode::Seed(a) if a.write => (Plan::write(a.options()?), a.out, a.stack, "seed-write"),
        Mode::Seed(a) => (Plan::seed(a.options()?), a.out, a.stack, "seed"),
        Mode::Gateway(a) => (Plan::seed(a.options()?), a.out, a.stack, "gateway"),
        Mode::Small(a) => (Plan::small(a.options()?), a.out, a.stack, "small"),
        Mode::Scale(a) => (Plan::scale(a.options()?), a.out, a.stack, "scale"),
        Mode::Mount(a) => {
            let (seed, small) = a.options()?;
            let plan = Plan {
                small: Some(small),
                ..Plan::seed(seed)
            };
            (plan, a.out, a.stack, "mount")
        }
        Mode::All(a) => (Plan::all()?, a.out, a.stack, "all"),
    };
    let pb = progress(&out, plan.phases());
    pb.set_message("starting blobring-host and blobringd");
    let gateway = plan
        .seed
        .iter()
        .chain(&plan.write)
        .any(|o| o.paths.contains(&PathKind::Gateway));
    if gateway {
        pb.set_message("starting blobring-host, blobringd and blobring gateway");
    }
    if stack_args.mem_store
        && (mode == "mount" || plan.seed.iter().any(|o| o.paths.contains(&PathKind::Pread)))
    {
        bail!(
            "--mem-store has no files for the pread path (a) or the mount: pick --paths \
             without pread, or measure uploads (seed --write)"
        );
    }
    let mut stack = Stack::start(&StackOptions {
        hugetlb: stack_args.hugetlb,
        gateway,
        mem_store: stack_args.mem_store,
        ..StackOptions::default()
    })?;
    if mode == "mount" {
        pb.set_message("mounting the container");
        stack.mount_container()?;
    }
    let mut report = Report {
        mode: mode.into(),
        ..Report::default()
    };
    if let Some(o) = &plan.seed {
        crate::seed::run(&stack, o, &pb, &mut report)?;
    }
    if let Some(o) = &plan.write {
        crate::seed::run_write(&stack, o, &pb, &mut report)?;
    }
    if let Some(o) = &plan.small {
        crate::small::run(&stack, o, &pb, &mut report)?;
        if mode == "mount" {
            report.notes.push(
                "small (m): one synchronous 4 KiB pread at a time through the mount, opened \
                 O_DIRECT so every read reaches it (no page cache); its CPU column counts the \
                 reader, daemon and host, not the mount process"
                    .into(),
            );
        }
    }
    if let Some(o) = &plan.scale {
        crate::scale::run(&stack, o, &pb, &mut report)?;
    }
    report.machine = Some(Machine::describe(stack.region_pages()));
    drop(stack);
    pb.finish_and_clear();
    if let Some(dir) = &out.chart {
        let files = crate::chart::write_all(&report, dir)?;
        for f in files {
            report.notes.push(format!("chart: {}", f.display()));
        }
    }
    let table = report.table();
    let json = serde_json::to_string_pretty(&report)?;
    match &out.json {
        Some(p) if p.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{json}");
        }
        Some(p) => {
            std::fs::write(p, json + "\n").with_context(|| format!("write {}", p.display()))?;
            print!("{table}");
        }
        None => print!("{table}"),
    }
    Ok(())
}

trait Defaults: Sized {
    fn parse_defaults() -> Self;
}

macro_rules! defaults {
    ($t:ty) => {
        impl Defaults for $t {
            fn parse_defaults() -> Self {
                #[derive(Parser)]
                struct W {
                    #[command(flatten)]
                    a: $t,
                }
                W::parse_from(["blobring-bench"]).a
            }
        }
    };
}
defaults!(SeedArgs);
defaults!(SmallArgs);
defaults!(ScaleArgs);
