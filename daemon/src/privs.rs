//! Privileges: what `blobringd` gives up once it is set up, and what it reports about itself.
//!
//! Order in [`crate::run`]: the sockets are bound, the transport is selected (uio: the
//! `/proc/self/pagemap` file is opened) and the metrics port is bound; then
//! [`drop_process`] runs while the control thread is still the only thread; then the workers
//! (and the metrics thread) are spawned, inheriting the reduced credentials, and each calls
//! [`drop_thread`] to give up what only the control thread keeps.
//!
//! What is kept, and why (see [`Plan::for_transport`]):
//! - `sim` transport: nothing. Client regions are memfds and eventfds, the emulated host is
//!   reached through a unix socket, and everything after startup is ordinary file access.
//! - `uio` transport: `CAP_IPC_LOCK` in the control thread only, because every new client
//!   region is `mlock`ed before its page numbers are handed to Hyper-V, and regions are
//!   larger than a typical `RLIMIT_MEMLOCK` (dropped too when that limit is unlimited).
//!   `CAP_SYS_ADMIN` is **not** kept: pagemap shows page frame numbers to a reader whose
//!   *opener* had `CAP_SYS_ADMIN` (the kernel checks the file's credentials), and the file is
//!   opened at startup and kept open.
//! - When `kernel.io_uring_disabled` is 1 and the daemon is not in `kernel.io_uring_group`,
//!   `CAP_SYS_ADMIN` is kept (in every thread) because each worker creates its io_uring
//!   after the drop; the log says so.
//!
//! Everything else goes: the effective, permitted, inheritable and ambient sets are emptied
//! down to the kept set, the bounding set too (so not even a bug that reaches `execve` of a
//! set-uid file could regain them, besides `no_new_privs`), `RLIMIT_CORE` becomes 0 and the
//! process is marked non-dumpable: no core file can hold client bytes, and only root with
//! `CAP_SYS_PTRACE` can read the daemon's `/proc/<pid>` files (`fd`, `maps`, `mem`) or attach
//! to it. Optionally (`--user`, `--group`) the daemon switches to an unprivileged user after
//! handing its sockets to that user.

use std::path::PathBuf;

use rustix::fs::{Gid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets};
use serde_json::{Value, json};

use crate::DaemonError;

/// What the daemon keeps after the drop.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Capabilities the control thread keeps.
    pub control: CapabilitySet,
    /// Capabilities every other thread keeps (a subset of `control`).
    pub threads: CapabilitySet,
    /// Why each kept capability is kept.
    pub reasons: Vec<String>,
    /// The uid and gid to switch to.
    pub ids: Ids,
}

impl Plan {
    /// The plan for a transport (`uio` or not) and the `--user`/`--group` flags.
    pub fn for_transport(uio: bool, ids: Ids) -> Result<Self, DaemonError> {
        let mut control = CapabilitySet::empty();
        let mut threads = CapabilitySet::empty();
        let mut reasons = Vec::new();
        if uio {
            let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock);
            if memlock.current.is_some() {
                control |= CapabilitySet::IPC_LOCK;
                reasons.push(
                    "CAP_IPC_LOCK (control thread): uio client regions are mlocked beyond RLIMIT_MEMLOCK"
                        .to_owned(),
                );
            }
        }
        let Ids { uid, gid } = ids;
        if uio && uid.is_some() {
            return Err(DaemonError::Setup(
                "--user is not supported with the uio transport: reopening the device after a \
                 rescind needs root-owned /dev/uioN and sysfs files; run without --user"
                    .into(),
            ));
        }
        let own_gid = gid.unwrap_or_else(|| rustix::process::getgid().as_raw());
        if io_uring_needs_admin(own_gid) {
            control |= CapabilitySet::SYS_ADMIN;
            threads |= CapabilitySet::SYS_ADMIN;
            reasons.push(
                "CAP_SYS_ADMIN (all threads): kernel.io_uring_disabled=1 and the daemon's group is \
                 not kernel.io_uring_group (set it to avoid this)"
                    .to_owned(),
            );
        }
        Ok(Self {
            control,
            threads,
            reasons,
            ids,
        })
    }
}

/// The uid and gid to switch to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ids {
    /// `--user`.
    pub uid: Option<u32>,
    /// `--group`, or the `--user`'s primary group.
    pub gid: Option<u32>,
}

/// Resolves `--user` and `--group` (names through the user database, or numbers); a numeric
/// `--user` without a database entry needs `--group`.
pub fn resolve_ids(user: Option<&str>, group: Option<&str>) -> Result<Ids, DaemonError> {
    use nix::unistd::{Group, User};
    let lookup = |what: &str, e: nix::Error| {
        DaemonError::Setup(format!("looking up {what} in the user database: {e}"))
    };
    let mut primary = None;
    let uid = match user {
        None => None,
        Some(u) => match u.parse::<u32>() {
            Ok(n) => {
                primary = User::from_uid(n.into())
                    .map_err(|e| lookup(u, e))?
                    .map(|e| e.gid.as_raw());
                Some(n)
            }
            Err(_) => {
                let e = User::from_name(u).map_err(|e| lookup(u, e))?.ok_or_else(|| {
                    DaemonError::Setup(format!(
                        "--user {u}: no such user; pass a name from /etc/passwd or a numeric uid"
                    ))
                })?;
                primary = Some(e.gid.as_raw());
                Some(e.uid.as_raw())
            }
        },
    };
    let gid = match group {
        None => match (user, primary) {
            (Some(u), None) => {
                return Err(DaemonError::Setup(format!(
                    "--user {u} has no entry in the user database, so its group is unknown; pass --group too"
                )));
            }
            (_, p) => p,
        },
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .map_err(|e| lookup(g, e))?
                .ok_or_else(|| {
                    DaemonError::Setup(format!(
                        "--group {g}: no such group; pass a name from /etc/group or a numeric gid"
                    ))
                })?
                .gid
                .as_raw(),
        }),
    };
    Ok(Ids { uid, gid })
}

/// Whether io_uring_setup needs `CAP_SYS_ADMIN` for a process of group `gid`
/// (`kernel.io_uring_disabled` = 1 and `gid` is not `kernel.io_uring_group`).
fn io_uring_needs_admin(gid: u32) -> bool {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    read("/proc/sys/kernel/io_uring_disabled") == Some(1)
        && read("/proc/sys/kernel/io_uring_group") != Some(i64::from(gid))
}

fn sys(what: &'static str) -> impl Fn(rustix::io::Errno) -> DaemonError {
    move |e| DaemonError::Setup(format!("dropping privileges: {what}: {e}"))
}

/// Highest capability number the kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Names of a capability set, e.g. `CAP_IPC_LOCK,CAP_SYS_ADMIN` (`none` when empty).
pub fn names(set: CapabilitySet) -> String {
    if set.is_empty() {
        return "none".into();
    }
    (0..64)
        .filter(|b| set.bits() & (1u64 << b) != 0)
        .map(|b| {
            CapabilitySet::from_bits_retain(1u64 << b)
                .iter_names()
                .next()
                .map_or_else(|| format!("CAP_{b}"), |(n, _)| format!("CAP_{n}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Applies `plan` to the process; call while the control thread is the only thread (the
/// capability sets and `no_new_privs` are per thread; threads spawned later inherit them).
/// `own` are files to hand to `--user`/`--group` first (the sockets, a directory the daemon
/// created). Logs one line saying what was dropped and kept.
pub fn drop_process(plan: &Plan, own: &[PathBuf]) -> Result<(), DaemonError> {
    use rustix::thread::{
        capabilities, capability_is_in_bounding_set, clear_ambient_capability_set,
        remove_capability_from_bounding_set, set_capabilities, set_keep_capabilities,
        set_no_new_privs,
    };
    let before = capabilities(None).map_err(sys("capget"))?;
    if plan.ids.uid.is_some() || plan.ids.gid.is_some() {
        for p in own {
            rustix::fs::chown(
                p,
                plan.ids.uid.map(Uid::from_raw),
                plan.ids.gid.map(Gid::from_raw),
            )
            .map_err(|e| {
                DaemonError::Setup(format!(
                    "handing {} to --user/--group: {e} (the daemon needs CAP_CHOWN for that)",
                    p.display()
                ))
            })?;
        }
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    let mut bounding_dropped = 0u32;
    if before.effective.contains(CapabilitySet::SETPCAP) {
        for bit in 0..=last_cap().min(63) {
            let cap = CapabilitySet::from_bits_retain(1u64 << bit);
            if !plan.control.contains(cap) && capability_is_in_bounding_set(cap).unwrap_or(false) {
                remove_capability_from_bounding_set(cap).map_err(sys("PR_CAPBSET_DROP"))?;
                bounding_dropped += 1;
            }
        }
    }
    // EINVAL: a kernel without ambient capabilities (< 4.3) has none to clear.
    match clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(sys("clearing the ambient set")(e)),
    }
    if let Some(gid) = plan.ids.gid {
        let g = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setgroups(&[g]).map_err(|e| {
            DaemonError::Setup(format!("--group {gid}: setgroups: {e} (needs CAP_SETGID)"))
        })?;
        nix::unistd::setresgid(g, g, g).map_err(|e| {
            DaemonError::Setup(format!("--group {gid}: setresgid: {e} (needs CAP_SETGID)"))
        })?;
    }
    if let Some(uid) = plan.ids.uid {
        // Keep the permitted set across the uid change only if something is to be kept.
        set_keep_capabilities(!plan.control.is_empty()).map_err(sys("PR_SET_KEEPCAPS"))?;
        let u = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(|e| {
            DaemonError::Setup(format!("--user {uid}: setresuid: {e} (needs CAP_SETUID)"))
        })?;
        set_keep_capabilities(false).map_err(sys("PR_SET_KEEPCAPS"))?;
    }
    let now = capabilities(None).map_err(sys("capget"))?;
    let keep = plan.control & now.permitted;
    set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(sys("capset"))?;
    set_no_new_privs(true).map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(sys("RLIMIT_CORE"))?;
    // Last: a credential change may reset dumpability.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(sys("PR_SET_DUMPABLE"))?;
    tracing::info!(
        dropped = %names(before.permitted - keep),
        kept = %names(keep),
        why_kept = %plan.reasons.join("; "),
        bounding_dropped,
        uid = rustix::process::getuid().as_raw(),
        gid = rustix::process::getgid().as_raw(),
        "privileges dropped: no_new_privs set, core dumps off, not dumpable"
    );
    Ok(())
}

/// Reduces the calling thread's capabilities to `keep` (workers and the metrics thread call
/// it first thing: they inherit the control thread's sets) and sets `no_new_privs`.
pub fn drop_thread(keep: CapabilitySet) -> Result<(), String> {
    let now = rustix::thread::capabilities(None).map_err(|e| format!("capget: {e}"))?;
    let keep = keep & now.permitted;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| format!("capset: {e}"))?;
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))
}

/// Capability sets and `NoNewPrivs` of every thread of this process, from
/// `/proc/self/task/*/status`: the union of each set over the threads, and whether every
/// thread has `no_new_privs`.
struct ThreadPrivs {
    threads: usize,
    eff: u64,
    prm: u64,
    inh: u64,
    bnd: u64,
    amb: u64,
    no_new_privs: bool,
}

fn thread_privs() -> ThreadPrivs {
    let mut t = ThreadPrivs {
        threads: 0,
        eff: 0,
        prm: 0,
        inh: 0,
        bnd: 0,
        amb: 0,
        no_new_privs: true,
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        t.no_new_privs = false;
        return t;
    };
    for e in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        t.threads += 1;
        let mut nnp = false;
        for line in status.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let hex = || u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            match k {
                "CapEff" => t.eff |= hex(),
                "CapPrm" => t.prm |= hex(),
                "CapInh" => t.inh |= hex(),
                "CapBnd" => t.bnd |= hex(),
                "CapAmb" => t.amb |= hex(),
                "NoNewPrivs" => nnp = v.trim() == "1",
                _ => {}
            }
        }
        t.no_new_privs &= nnp;
    }
    t
}

/// This process as the ctl socket's `process` object: `open_fds`, `rss_bytes`, `threads`,
/// and `privileges` (uid/gid, `no_new_privs` of every thread, `dumpable`, `core_limit`, and
/// each capability set as the union over all threads, by name and as the hex of
/// `/proc/<pid>/status`).
pub fn process_json() -> Value {
    // read_dir holds one descriptor of its own while listing.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0);
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * rustix::param::page_size() as u64);
    let t = thread_privs();
    let set = |bits: u64| {
        json!({
            "names": names(CapabilitySet::from_bits_retain(bits)),
            "hex": format!("{bits:016x}"),
        })
    };
    let core = rustix::process::getrlimit(rustix::process::Resource::Core);
    json!({
        "pid": std::process::id(),
        "open_fds": open_fds,
        "rss_bytes": rss_bytes,
        "threads": t.threads,
        "privileges": {
            "uid": rustix::process::getuid().as_raw(),
            "euid": rustix::process::geteuid().as_raw(),
            "gid": rustix::process::getgid().as_raw(),
            "egid": rustix::process::getegid().as_raw(),
            "no_new_privs": t.no_new_privs,
            "dumpable": !matches!(
                rustix::process::dumpable_behavior(),
                Ok(rustix::process::DumpableBehavior::NotDumpable)
            ),
            "core_limit": core.current,
            "effective": set(t.eff),
            "permitted": set(t.prm),
            "inheritable": set(t.inh),
            "bounding": set(t.bnd),
            "ambient": set(t.amb),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_keeps_nothing_and_uio_only_ipc_lock_in_the_control_thread() {
        let gid = rustix::process::getgid().as_raw();
        let admin = if io_uring_needs_admin(gid) {
            CapabilitySet::SYS_ADMIN
        } else {
            CapabilitySet::empty()
        };
        let sim = Plan::for_transport(false, Ids::default()).unwrap();
        assert_eq!((sim.control, sim.threads), (admin, admin));
        let uio = Plan::for_transport(true, Ids::default()).unwrap();
        let memlock_limited = rustix::process::getrlimit(rustix::process::Resource::Memlock)
            .current
            .is_some();
        let lock = if memlock_limited {
            CapabilitySet::IPC_LOCK
        } else {
            CapabilitySet::empty()
        };
        assert_eq!((uio.control, uio.threads), (lock | admin, admin));
        assert!(!uio.control.contains(CapabilitySet::SYS_ADMIN) || !admin.is_empty());
        assert_eq!(
            uio.reasons.len(),
            usize::from(memlock_limited) + usize::from(!admin.is_empty())
        );
    }

    #[test]
    fn user_switch_is_refused_on_uio_and_ids_resolve() {
        let ids = Ids {
            uid: Some(65534),
            gid: Some(65534),
        };
        let e = Plan::for_transport(true, ids).unwrap_err().to_string();
        assert!(
            e.contains("--user is not supported with the uio transport"),
            "{e}"
        );
        let r = resolve_ids(Some("0"), None).unwrap();
        assert_eq!((r.uid, r.gid), (Some(0), Some(0)), "root's primary group");
        let r = resolve_ids(None, Some("4321")).unwrap();
        assert_eq!((r.uid, r.gid), (None, Some(4321)));
        let e = resolve_ids(Some("4242424"), None).unwrap_err().to_string();
        assert!(e.contains("pass --group too"), "{e}");
    }

    #[test]
    fn names_are_kernel_spellings() {
        assert_eq!(names(CapabilitySet::empty()), "none");
        assert_eq!(
            names(CapabilitySet::IPC_LOCK | CapabilitySet::SYS_ADMIN),
            "CAP_IPC_LOCK,CAP_SYS_ADMIN"
        );
        assert_eq!(names(CapabilitySet::from_bits_retain(1 << 62)), "CAP_62");
    }
}
