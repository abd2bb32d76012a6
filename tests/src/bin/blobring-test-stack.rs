#![forbid(unsafe_code)]
//! `blobring-test-stack`: a stack (real `blobring-host` on `fs:DIR/store`, real `blobringd`
//! with two unpinned workers) for test suites in other languages — the Python tests' fixture —
//! started by the one launcher, `blobring_ctl::stack`.
//!
//! Once ready it prints one JSON line: `socket`, `ctl`, `store`, `http_url` (with
//! `--host-arg=--http ...`), `host_pid`, `daemon_pid`. Then it reads commands from stdin, one a
//! line, answering each with one JSON line: `kill-daemon` (SIGKILL and reap the daemon),
//! `start-daemon [ARENA_MIB]` (a new daemon on the same sockets, once connected to the host).
//! At the end of stdin — the test process exited or closed it — both processes are killed and
//! reaped. Errors go to stderr as text, with exit status 1.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use blobring_ctl::stack::{self, StackBuilder};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(name = "blobring-test-stack")]
struct Args {
    /// Directory of the sockets, logs and store (must exist).
    #[arg(long)]
    dir: PathBuf,
    /// The daemon's largest client arena, in MiB.
    #[arg(long, default_value_t = 64)]
    arena_mib: u64,
    /// Extra argument for blobring-host (repeatable).
    #[arg(long = "host-arg", allow_hyphen_values = true)]
    host_args: Vec<String>,
}

fn daemon_launcher(base: &StackBuilder, arena_mib: u64) -> StackBuilder {
    let arena = (arena_mib << 20).to_string();
    base.clone()
        .daemon_args(["--workers", "2", "--no-pin", "--arena-size", &arena])
}

fn ready(s: &stack::Stack, store: &std::path::Path) -> serde_json::Value {
    json!({
        "socket": s.daemon.socket,
        "ctl": s.daemon.ctl,
        "store": store,
        "http_url": s.host.http_url,
        "host_pid": s.host.proc.pid(),
        "daemon_pid": s.daemon.proc.pid(),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = blobring_tests::launcher(&args.dir)
        .daemon_bin(stack::find_bin("blobringd", "BLOBRINGD_BIN")?)
        .host_args(&args.host_args);
    let mut s = daemon_launcher(&base, args.arena_mib).start()?;
    let store = args.dir.join("store");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", ready(&s, &store))?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a command")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words[..] {
            ["kill-daemon"] => {
                s.daemon.proc.kill();
                json!({"killed": s.daemon.proc.pid()})
            }
            ["start-daemon", ref rest @ ..] => {
                let mib = match rest {
                    [] => args.arena_mib,
                    [n] => n.parse().context("start-daemon ARENA_MIB")?,
                    _ => bail!("usage: start-daemon [ARENA_MIB]"),
                };
                s.daemon.proc.kill();
                let l = daemon_launcher(&base, mib);
                s.daemon = l.start_daemon()?;
                s.daemon
                    .wait_connected_or(&mut s.host.proc, l.ready_timeout(), || false)?;
                ready(&s, &store)
            }
            _ => bail!("unknown command {line:?}: kill-daemon | start-daemon [ARENA_MIB]"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
