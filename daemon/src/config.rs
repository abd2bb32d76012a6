//! Command-line configuration of `blobringd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The `--transport` flag (see [`blobring_vmbus::uio::select`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TransportArg {
    /// `uio` when an Azure Blob VMBus device exists and is (or, with `--bind`, can be) bound
    /// to `uio_hv_generic`; `sim` otherwise. The log says which and why.
    #[default]
    Auto,
    /// Real Hyper-V through `uio_hv_generic` (refuse to start if impossible).
    Uio,
    /// The emulated host (`blobring-host --socket`).
    Sim,
}

impl From<TransportArg> for blobring_vmbus::uio::TransportChoice {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Auto => Self::Auto,
            TransportArg::Uio => Self::Uio,
            TransportArg::Sim => Self::Sim,
        }
    }
}

/// `blobringd` options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "blobringd",
    version,
    about = "blobring daemon: thread-per-core proxy between client processes and the Azure Blob VMBus device"
)]
pub struct Config {
    /// Client socket (default: $BLOBRING_SOCKET, $XDG_RUNTIME_DIR/blobring/blobringd.sock or
    /// /run/blobring/blobringd.sock). Its parent directory is created.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Mode of the client socket (octal). The socket is created with this mode (never wider,
    /// not even for an instant) and belongs to the daemon's user and `--group`. Connecting
    /// needs write permission on it, so with the default 660 only the owner and members of the
    /// socket's group get past the file system; the handshake then applies `--allow-uid` and
    /// `--allow-gid`. A directory the daemon creates for the socket gets mode 755.
    #[arg(long, default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Admin socket serving statistics as JSON (default: blobringd.ctl next to --socket).
    #[arg(long)]
    pub ctl_socket: Option<PathBuf>,
    /// The emulated host's bus socket (sim transport).
    #[arg(long)]
    pub host_socket: Option<PathBuf>,
    /// How to reach the host: `uio` (real Hyper-V via uio_hv_generic), `sim` (blobring-host's
    /// socket), or `auto` (uio if the Azure Blob device is present and usable, else sim).
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// uio: bind the Azure Blob device to uio_hv_generic if it is not bound yet (writes
    /// new_id/unbind/bind in sysfs; needs root). Without it the daemon only uses a device that
    /// is already bound.
    #[arg(long)]
    pub bind: bool,
    /// uio: root of the sysfs tree (tests point it at a fake tree).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs_root: PathBuf,
    /// uio: directory holding the uioN device nodes.
    #[arg(long, default_value = "/dev", hide = true)]
    pub dev_dir: PathBuf,
    /// Worker threads, one per core (default: every CPU this process may run on).
    #[arg(long)]
    pub workers: Option<usize>,
    /// VMBus channels to open (primary + subchannels; default and minimum: one per worker).
    #[arg(long)]
    pub channels: Option<u32>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// The most an idle worker busy-polls before it sleeps, in microseconds (0: never spin).
    /// Measured on a 2-vCPU VM (NOP at depth 1 through the daemon): 0 µs → p50 32 µs,
    /// 29 k req/s; 30 µs → p50 1.3 µs, 411 k req/s; 100 µs → no further gain. Workers spin
    /// only while no request waits on the host (a host completion wakes them through io_uring
    /// anyway), and only as long as spinning pays: each worker's budget starts here, doubles
    /// (up to this) after a spin that found work within 10 µs and halves (to zero below 1 µs)
    /// after one that found it later or ran out; at zero every 64th idle period spins a 10 µs
    /// probe. The current budget and the spin hits and misses are in the ctl stats and the
    /// metrics (`blobring_worker_spin_*`). See the daemon's `spin` module.
    #[arg(long, default_value_t = 30)]
    pub spin_us: u64,
    /// Most SQEs taken from one client queue per worker turn (fairness).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Most requests one uid may have in flight per worker (taken from its queues and not yet
    /// completed by the host). Entries beyond it wait in that uid's own queues, so a uid that
    /// floods the daemon queues behind itself while every other uid keeps its share of the
    /// host (clients are taken round-robin, within and across uids).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub uid_inflight: u32,
    /// Largest SQ size a client may ask for (and the default), a power of two.
    #[arg(long, default_value_t = 256)]
    pub queue_depth: u32,
    /// Largest data arena a client may ask for (and the default), in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub arena_size: u64,
    /// Most concurrent clients.
    #[arg(long, default_value_t = 256)]
    pub max_clients: usize,
    /// Most concurrent clients per uid.
    #[arg(long, default_value_t = 64)]
    pub max_clients_per_uid: usize,
    /// Uids allowed to connect (repeatable; default: the daemon's own uid and root).
    #[arg(long)]
    pub allow_uid: Vec<u32>,
    /// Gids whose members may connect (repeatable).
    #[arg(long)]
    pub allow_gid: Vec<u32>,
    /// After binding its sockets, switch to this user (name or numeric uid; its primary
    /// group unless `--group` is given). The client and ctl sockets (and a socket directory
    /// the daemon created) are handed to that user first. The emulated host's socket must be
    /// connectable by it. Not supported with the `uio` transport (reopening the device after a
    /// rescind needs root-owned device and sysfs files).
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,
    /// After binding, switch to this group (name or numeric gid; supplementary groups are
    /// cleared) and make it the group of the client socket, so its members can connect with
    /// the default `--socket-mode 660`.
    #[arg(long, value_name = "NAME|GID")]
    pub group: Option<String>,
    /// Keep every privilege the daemon started with (debugging only). By default, once the
    /// sockets are bound and the transport is set up, the daemon sets no_new_privs, empties
    /// its capability sets (effective, permitted, inheritable, ambient, bounding) except
    /// CAP_IPC_LOCK on the `uio` transport (locking each new client region), sets
    /// RLIMIT_CORE to 0 and marks itself non-dumpable (no core files holding client bytes;
    /// only root with CAP_SYS_PTRACE can read its /proc files or attach). The startup log
    /// says what was dropped; the ctl socket's `process.privileges` shows the state.
    #[arg(long, conflicts_with_all = ["user", "group"])]
    pub keep_privileges: bool,
    /// Deadline of requests whose SQE sets none, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub default_timeout: u64,
    /// Back client regions with hugetlb pages (caveat: a client that punches holes in a hugetlb
    /// region can make the next toucher SIGBUS when the pool is empty; keep spare pool pages).
    #[arg(long)]
    pub hugetlb: bool,
    /// Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464). Port 0 picks a
    /// free port; the address bound is logged and reported as `daemon.metrics` in the ctl
    /// stats (`blobring stats --json`).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// How long a SIGTERM drain may take before exiting anyway, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub drain_timeout: u64,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s} is not an octal file mode"))
}

impl Config {
    /// The client socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(default_dir_path("blobringd.sock"))
    }

    /// The ctl socket path.
    pub fn ctl_path(&self) -> PathBuf {
        self.ctl_socket.clone().unwrap_or_else(|| {
            let s = self.socket_path();
            s.with_file_name("blobringd.ctl")
        })
    }

    /// The host bus socket path.
    pub fn host_path(&self) -> PathBuf {
        self.host_socket
            .clone()
            .unwrap_or_else(default_dir_path("host.sock"))
    }

    /// The default request deadline.
    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.default_timeout.max(1))
    }
}

fn default_dir_path(name: &'static str) -> impl FnOnce() -> PathBuf {
    move || {
        if name == "blobringd.sock"
            && let Some(p) = std::env::var_os("BLOBRING_SOCKET").filter(|p| !p.is_empty())
        {
            return PathBuf::from(p);
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
            Some(d) => PathBuf::from(d).join("blobring").join(name),
            None => PathBuf::from("/run/blobring").join(name),
        }
    }
}
