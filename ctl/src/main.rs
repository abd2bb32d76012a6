#![forbid(unsafe_code)]
//! `blobring`: parses arguments and calls the ctl library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod up;

#[derive(Parser)]
#[command(name = "blobring", version, about = "blobring command-line tool")]
struct Cli {
    /// blobringd's ctl socket (default: blobringd.ctl next to the client socket).
    #[arg(long, global = true)]
    ctl_socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon summary and per-worker figures.
    Stats {
        /// Print the daemon's JSON document as is.
        #[arg(long)]
        json: bool,
    },
    /// Live rates, refreshed every --interval-ms.
    Top {
        /// Refresh interval.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (default: run until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Connected clients.
    Clients {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Host channels.
    Channels {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a local stack: blobring-host (fs store) and blobringd, until Ctrl-C.
    Up(up::UpArgs),
    /// Serve Azure Blob REST on loopback and carry each request over blobring, so any
    /// unmodified Blob client works with only its endpoint changed (until SIGINT/SIGTERM).
    Gateway(blobring_gateway::GatewayArgs),
    /// Mount a container (or a prefix of one) as a directory through FUSE; detaches once the
    /// mount is ready unless --foreground; SIGINT/SIGTERM unmount it.
    Mount(blobring_mount::MountArgs),
    /// Unmount a `blobring mount` (also one whose mount process died).
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Blob data commands: cp, ls, cat, rm, mb, rb.
    #[command(flatten)]
    Data(blobring_ctl::data::DataCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Data(d) = cli.cmd {
        // Prints `blobring: <message>` and returns the data commands' exit status.
        return blobring_ctl::data::main(d);
    }
    if let Cmd::Mount(a) = cli.cmd {
        return mount(a);
    }
    let r = match cli.cmd {
        Cmd::Up(a) => up::run(a),
        Cmd::Unmount { mountpoint } => blobring_mount::unmount(&mountpoint).map_err(Into::into),
        Cmd::Gateway(a) => gateway(a),
        cmd => admin(cmd, cli.ctl_socket),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blobring: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gateway`: logs to stderr (`RUST_LOG`, default `info`), serves until a signal.
fn gateway(a: blobring_gateway::GatewayArgs) -> anyhow::Result<()> {
    blobring_ctl::entry::log_to_stderr();
    blobring_gateway::run(a.config())?;
    Ok(())
}

/// `mount`: logs to stderr (`RUST_LOG`, default `info`; a detached mount's stderr is its log
/// file); the exit status says what failed (2 usage, 3 no such container, 4 no daemon).
fn mount(a: blobring_mount::MountArgs) -> ExitCode {
    if a.foreground {
        blobring_ctl::entry::log_to_stderr();
    }
    blobring_ctl::entry::mount_exit(blobring_mount::run(a))
}

/// `stats`, `top`, `clients`, `channels`.
fn admin(cmd: Cmd, ctl_socket: Option<PathBuf>) -> anyhow::Result<()> {
    let path = ctl_socket.unwrap_or_else(blobring_ctl::default_ctl_path);
    let doc = blobring_ctl::fetch(&path)?;
    if let Cmd::Top {
        interval_ms,
        iterations,
    } = cmd
    {
        let mut prev = doc;
        let mut t = std::time::Instant::now();
        for i in 0.. {
            if iterations.is_some_and(|n| i >= n) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(interval_ms.max(100)));
            let cur = blobring_ctl::fetch(&path)?;
            let secs = t.elapsed().as_secs_f64();
            t = std::time::Instant::now();
            // Clear the screen and home the cursor.
            print!(
                "\x1b[2J\x1b[H{}",
                blobring_ctl::render_top(&prev, &cur, secs)
            );
            prev = cur;
        }
        return Ok(());
    }
    let text = match cmd {
        Cmd::Top { .. }
        | Cmd::Data(_)
        | Cmd::Up(_)
        | Cmd::Gateway(_)
        | Cmd::Mount(_)
        | Cmd::Unmount { .. } => {
            unreachable!("handled above")
        }
        Cmd::Stats { json: true } => serde_json::to_string_pretty(&doc)?,
        Cmd::Clients { json: true } => serde_json::to_string_pretty(&doc["clients"])?,
        Cmd::Channels { json: true } => serde_json::to_string_pretty(&doc["channels"])?,
        Cmd::Stats { json: false } => blobring_ctl::render_stats(&doc),
        Cmd::Clients { json: false } => blobring_ctl::render_clients(&doc),
        Cmd::Channels { json: false } => blobring_ctl::render_channels(&doc),
    };
    println!("{}", text.trim_end());
    Ok(())
}
