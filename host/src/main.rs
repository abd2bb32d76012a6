//! `blobring-host`: the emulated Azure host. Parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use blobring_host::{
    EMULATOR_ACCOUNT, EMULATOR_KEY, Executor, ExecutorConfig, Faults, SharedKeyAuth, StoreOptions,
    open_store_with, rest, vsp,
};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// The emulated Azure host: executes Azure Blob requests on a local store and serves them over
/// the emulated VMBus (the `sim` bus socket the daemon connects to) and/or HTTP REST on
/// loopback (plain and/or TLS). Without --http or --https the VMBus socket is served at its
/// default path; with either, only when --socket is given too.
#[derive(Debug, Parser)]
#[command(name = "blobring-host", version)]
struct Args {
    /// Store: `fs:<dir>` (durable, survives restarts), `mem` (lost on exit) or
    /// `passthrough:<url>` (forward to a real Blob endpoint, e.g.
    /// `passthrough:http://127.0.0.1:10000/devstoreaccount1` for Azurite; key for other
    /// accounts in $BLOBRING_UPSTREAM_KEY).
    #[arg(long, default_value = "fs:./blobring-data")]
    store: String,
    /// `fs` store: most blob data files kept open between reads, so a GET costs a `pread`
    /// instead of open + read + close (least recently read closed first; a file is closed as
    /// soon as its blob is overwritten or deleted). 0 opens the file on every read. Capped at
    /// half of RLIMIT_NOFILE, whose soft limit is raised toward the hard one if needed.
    #[arg(long, value_name = "N", default_value_t = blobring_host::store::DEFAULT_OPEN_FILES)]
    open_files: usize,
    /// Serve the Blob REST API (path-style URLs, like Azurite) on this loopback address,
    /// e.g. 127.0.0.1:10000. Port 0 picks a free port; the chosen address is printed.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve the same Blob REST API over HTTPS (rustls) on this loopback address — Azure Blob
    /// is served over HTTPS only, so this is what a real HTTP client pays. Port 0 picks a free
    /// port; the chosen address and the certificate to trust are printed.
    #[arg(long, value_name = "ADDR")]
    https: Option<SocketAddr>,
    /// PEM certificate chain for --https (with --tls-key). Without both, a self-signed
    /// certificate for localhost, 127.0.0.1 and ::1 is generated at start.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where to write the generated certificate (PEM) for clients to trust
    /// [default: blobring-host-<pid>.pem in the temporary directory].
    #[arg(long, value_name = "PATH", conflicts_with = "tls_cert")]
    tls_cert_out: Option<PathBuf>,
    /// VMBus bus socket (unix SOCK_SEQPACKET) the guest daemon connects to
    /// [default: $XDG_RUNTIME_DIR/blobring/host.sock, else /run/blobring/host.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// VMBus channels offered: the primary plus N-1 subchannels (1..=256).
    #[arg(long, value_name = "N", default_value_t = vsp::DEFAULT_CHANNELS)]
    channels: u32,
    /// Bytes of each VMBus ring, per direction (a multiple of 4096, 8 KiB..=64 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = blobring_vmbus::sim::DEFAULT_RING_SIZE)]
    ring_size: u32,
    /// Executor threads serving the VMBus channels of a guest (requests beyond this many
    /// queue; a slow or hung request holds one thread) [default: 4 per channel].
    #[arg(long, value_name = "N")]
    vsp_threads: Option<usize>,
    /// Copy file-backed response bodies into guest memory with pread + copy instead of
    /// reading them straight into it with io_uring.
    #[arg(long, alias = "no-fixed-buffers")]
    no_direct_reads: bool,
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
    /// Largest request body the REST front end accepts, in bytes (a larger one gets 413
    /// RequestBodyTooLarge before it is read; bodies are authenticated on the head first).
    #[arg(long, value_name = "BYTES", default_value_t = rest::DEFAULT_MAX_BODY)]
    max_body: u64,
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
    /// Fault injection (VMBus): probability (0..1) that a request is executed but its
    /// completion is never posted (the guest's deadline must fire).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_drop_completion_rate: f64,
    /// Fault injection (VMBus): after the completion of the N-th request, send RESCIND on the
    /// bus, drop that session's later requests and end the session; the next connection gets
    /// the device offered again. Fires once per process.
    #[arg(long, value_name = "N")]
    fault_rescind_after: Option<u64>,
    /// Fault injection: RNG seed, for reproducible failures.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fault_seed: u64,
}

/// How many data files the fs store may keep open: `requested`, capped at half of
/// RLIMIT_NOFILE so sockets, rings, eventfds and guest memory keep the other half. The soft
/// limit is first raised (up to the hard limit) when it is below twice the request.
fn open_files_budget(requested: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    if requested == 0 {
        return 0;
    }
    let want = (requested as u64).saturating_mul(2);
    let lim = getrlimit(Resource::Nofile);
    let mut soft = lim.current.unwrap_or(u64::MAX);
    if soft < want {
        let raised = lim.maximum.map_or(want, |hard| hard.min(want));
        if raised > soft
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(raised),
                    maximum: lim.maximum,
                },
            )
            .is_ok()
        {
            soft = raised;
        }
    }
    let budget = usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .min(requested);
    if budget < requested {
        tracing::warn!(
            requested,
            budget,
            rlimit_nofile = soft,
            "--open-files capped at half of RLIMIT_NOFILE; raise the hard limit (ulimit -Hn) to \
             keep more data files open"
        );
    }
    budget
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
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
}

/// The executor the arguments describe: its backend opened (and `--container`s created), its
/// authentication and fault injection set.
fn executor(args: &Args) -> anyhow::Result<Executor> {
    for (name, p) in [
        ("--fault-error-rate", args.fault_error_rate),
        ("--fault-hang-rate", args.fault_hang_rate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be between 0 and 1, got {p}");
        }
    }
    let opts = StoreOptions {
        open_files: open_files_budget(args.open_files),
    };
    let backend = open_store_with(&args.store, &opts)
        .with_context(|| format!("opening store {}", args.store))?;
    for c in &args.containers {
        if !blobring_host::executor::valid_container_name(c) {
            bail!(
                "--container {c:?} is not a valid container name: use 3-63 lower-case letters, digits and single hyphens"
            );
        }
        match backend.create_container(c, Vec::new()) {
            Ok(()) | Err(blobring_host::StoreError::ContainerAlreadyExists(_)) => {}
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
    Ok(Executor::new(
        backend,
        ExecutorConfig {
            account: args.account.clone(),
            auth,
            faults,
        },
    ))
}

/// The VMBus front end, serving on its own thread until the returned flag is set.
type VmbusThread = (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<(), vsp::VspError>>,
);

fn start_vmbus(args: &Args, exec: &Arc<Executor>) -> anyhow::Result<VmbusThread> {
    let path = args.socket.clone().unwrap_or_else(vsp::default_socket_path);
    let cfg = vsp::VspConfig {
        channels: args.channels,
        ring_size: args.ring_size,
        executor_threads: args
            .vsp_threads
            .unwrap_or(vsp::EXECUTOR_THREADS_PER_CHANNEL * args.channels.max(1) as usize),
        direct_reads: !args.no_direct_reads,
        faults: vsp::VspFaults {
            drop_completion_rate: args.fault_drop_completion_rate,
            rescind_after: args.fault_rescind_after,
            seed: args.fault_seed,
        },
        ..vsp::VspConfig::default()
    };
    let server = vsp::VspServer::bind(&path, exec.clone(), cfg)
        .with_context(|| format!("serving VMBus on {}", path.display()))?;
    tracing::info!(
        socket = %path.display(),
        channels = args.channels,
        ring_size = args.ring_size,
        store = %exec.backend().describe(),
        "serving the Azure Blob device over VMBus"
    );
    // Machine-readable line for scripts and tests.
    println!("vmbus on {}", path.display());
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("vsp-bus".into())
        .spawn(move || server.run(&s))
        .context("starting the VMBus thread")?;
    Ok((stop, thread))
}

/// TLS for `--https`: the given certificate and key, or a generated one.
fn tls(args: &Args) -> anyhow::Result<Option<rest::Tls>> {
    Ok(match (&args.https, &args.tls_cert, &args.tls_key) {
        (None, _, _) => None,
        (Some(_), Some(cert), Some(key)) => Some(rest::Tls::from_pem_files(cert, key)?),
        (Some(_), _, _) => {
            let out = args.tls_cert_out.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("blobring-host-{}.pem", std::process::id()))
            });
            Some(rest::Tls::self_signed(&out)?)
        }
    })
}

/// Serve REST on `--http` and/or `--https` until Ctrl-C or a server fails.
fn serve_rest(args: &Args, exec: &Arc<Executor>) -> anyhow::Result<()> {
    let tls = tls(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let mut servers = tokio::task::JoinSet::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for (addr, tls) in [(args.http, None), (args.https, tls)] {
            let Some(addr) = addr else { continue };
            let listener = rest::bind(addr).await?;
            let local = listener.local_addr().context("reading the bound address")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(
                store = %exec.backend().describe(),
                account = %args.account,
                auth = !args.no_auth,
                "serving Blob REST on {scheme}://{local}/{}",
                args.account
            );
            // Machine-readable lines for scripts and tests that start us with port 0.
            println!("listening on {scheme}://{local}");
            if let Some(t) = &tls {
                println!("tls certificate {}", t.cert_path.display());
            }
            let (exec, mut stop) = (exec.clone(), stop_rx.clone());
            servers.spawn(rest::serve(
                listener,
                tls,
                exec,
                args.max_body,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(r) = servers.join_next() => {
                r.context("the REST server task failed")?.context("serving REST")?;
            }
        }
        let _ = stop_tx.send(true);
        while let Some(r) = servers.join_next().await {
            r.context("the REST server task failed")?
                .context("serving REST")?;
        }
        tracing::info!("shutting down");
        anyhow::Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let exec = Arc::new(executor(&args)?);
    if args.http.is_none() && args.https.is_none() {
        let (_, thread) = start_vmbus(&args, &exec)?;
        return match thread.join() {
            Ok(r) => r.context("serving VMBus"),
            Err(_) => bail!("the VMBus thread panicked"),
        };
    }
    let vmbus = args
        .socket
        .is_some()
        .then(|| start_vmbus(&args, &exec))
        .transpose()?;
    serve_rest(&args, &exec)?;
    if let Some((stop, thread)) = vmbus {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    Ok(())
}
