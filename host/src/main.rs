//! `blobring-host`: the emulated Azure host. Parses arguments and calls the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use blobring_host::{
    EMULATOR_ACCOUNT, EMULATOR_KEY, Executor, ExecutorConfig, Faults, SharedKeyAuth, open_store,
    rest,
};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// The emulated Azure host: executes Azure Blob requests on a local store and serves them over
/// HTTP REST on loopback (and, later, over VMBus).
#[derive(Debug, Parser)]
#[command(name = "blobring-host", version)]
struct Args {
    /// Store: `fs:<dir>` (durable, survives restarts) or `mem` (lost on exit).
    #[arg(long, default_value = "fs:./blobring-data")]
    store: String,
    /// Serve the Blob REST API (path-style URLs, like Azurite) on this loopback address,
    /// e.g. 127.0.0.1:10000. Port 0 picks a free port; the chosen address is printed.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Storage account name served.
    #[arg(long, default_value = EMULATOR_ACCOUNT)]
    account: String,
    /// Base64 account key used to verify SharedKey signatures and SAS tokens
    /// (default: the well-known emulator key).
    #[arg(long, value_name = "BASE64", default_value = EMULATOR_KEY, hide_default_value = true)]
    key: String,
    /// Accept requests without verifying any signature.
    #[arg(long)]
    no_auth: bool,
    /// Create these containers at start-up if missing (repeatable).
    #[arg(long = "container", value_name = "NAME")]
    containers: Vec<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Fault injection: latency added to every request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    fault_latency_ms: u64,
    /// Fault injection: probability (0..1) of answering 503 ServerBusy.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_error_rate: f64,
    /// Fault injection: probability (0..1) that a request hangs (then answers 503).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_hang_rate: f64,
    /// Fault injection: how long a hung request blocks, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_600_000)]
    fault_hang_ms: u64,
    /// Fault injection: RNG seed, for reproducible failures.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fault_seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    for (name, p) in [
        ("--fault-error-rate", args.fault_error_rate),
        ("--fault-hang-rate", args.fault_hang_rate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be between 0 and 1, got {p}");
        }
    }
    let store = open_store(&args.store).with_context(|| format!("opening store {}", args.store))?;
    for c in &args.containers {
        if !blobring_host::executor::valid_container_name(c) {
            bail!(
                "--container {c:?} is not a valid container name: use 3-63 lower-case letters, digits and single hyphens"
            );
        }
        match store.create_container(c, Vec::new()) {
            Ok(_) | Err(blobring_host::StoreError::ContainerAlreadyExists(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("creating container {c}")),
        }
    }
    let auth = if args.no_auth {
        None
    } else {
        Some(SharedKeyAuth::new(&args.account, &args.key).context("checking --account/--key")?)
    };
    let faults = Faults {
        latency: Duration::from_millis(args.fault_latency_ms),
        error_rate: args.fault_error_rate,
        hang_rate: args.fault_hang_rate,
        hang_for: Duration::from_millis(args.fault_hang_ms),
        seed: args.fault_seed,
    };
    let exec = Arc::new(Executor::new(
        store,
        ExecutorConfig {
            account: args.account.clone(),
            auth,
            faults,
        },
    ));
    let Some(addr) = args.http else {
        bail!(
            "nothing to serve: pass --http 127.0.0.1:PORT (the VMBus transport is not wired yet)"
        );
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = rest::bind(addr).await?;
        let local = listener.local_addr().context("reading the bound address")?;
        tracing::info!(
            store = %exec.store().describe(),
            account = %args.account,
            auth = !args.no_auth,
            "serving Blob REST on http://{local}/{}",
            args.account
        );
        // Machine-readable line for scripts and tests that start us with port 0.
        println!("listening on http://{local}");
        rest::serve(listener, exec, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving REST")?;
        tracing::info!("shutting down");
        anyhow::Ok(())
    })
}
