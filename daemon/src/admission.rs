//! The admission decision of a client handshake, as a pure function: the decoded hello, the
//! peer's credentials, the daemon's policy and limits and its current load go in; a grant
//! (what to provision) or a refusal (the status and the exact message the client is told)
//! comes out. No I/O: the control thread gathers the inputs (`SO_PEERCRED`, the supplementary
//! groups from `/proc`, the descriptor count) and provisions a grant (`control::handshake`).
//!
//! **Trusts:** nothing in the hello (it is the client's); the credentials are the kernel's.
//!
//! **Invariants** (unit-tested here, fuzzed by `fuzz/fuzz_targets/admission.rs`):
//! - a grant never exceeds the limits: `sq_entries` is a power of two no larger than
//!   `queue_depth` and [`MAX_SQ_ENTRIES`], `arena_len` is no larger than `arena_size`, and it
//!   is given only while the daemon runs, below `max_clients`, below `max_clients_per_uid`
//!   for the peer's uid, within the descriptor budget, to an allowed peer whose hello is
//!   well-formed and speaks [`ABI_VERSION`];
//! - a refusal has a non-empty message saying what to do, and its status is one of the
//!   ABI's refusal codes;
//! - the checks run in a fixed order (form, version, permission, shutdown, daemon-wide
//!   limit, per-uid limit, descriptors, queue size, arena size): the first that fails is
//!   the one reported.

use blobring_abi::{ABI_VERSION, HELLO_REQUEST_MAGIC, HelloRequest, HelloStatus, MAX_SQ_ENTRIES};

use crate::fds::Budget;

/// Who is connecting, as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// pid (0 when not visible in the daemon's pid namespace).
    pub pid: i32,
    /// Supplementary groups; read only when [`Policy::needs_groups`] says they matter.
    pub groups: Vec<u32>,
}

/// The daemon's admission policy and limits (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// uids allowed to connect.
    pub allow_uid: &'a [u32],
    /// gids (primary or supplementary) allowed to connect; empty allows no group.
    pub allow_gid: &'a [u32],
    /// Most clients at once (`--max-clients`).
    pub max_clients: usize,
    /// Most clients of one uid at once (`--max-clients-per-uid`).
    pub max_clients_per_uid: usize,
    /// Largest (and default) SQ size (`--queue-depth`).
    pub queue_depth: u32,
    /// Largest (and default) arena (`--arena-size`).
    pub arena_size: u64,
    /// Queue pairs a client gets: one per worker.
    pub n_queues: u32,
    /// The descriptor budget.
    pub budget: Budget,
}

impl Policy<'_> {
    /// Whether the decision for `(uid, gid)` depends on the peer's supplementary groups (so
    /// the caller reads them from `/proc` only then).
    pub fn needs_groups(&self, uid: u32, gid: u32) -> bool {
        !self.allow_gid.is_empty()
            && !self.allow_uid.contains(&uid)
            && !self.allow_gid.contains(&gid)
    }

    fn permits(&self, peer: &Peer) -> bool {
        let gid_ok = !self.allow_gid.is_empty()
            && (self.allow_gid.contains(&peer.gid)
                || peer.groups.iter().any(|g| self.allow_gid.contains(g)));
        self.allow_uid.contains(&peer.uid) || gid_ok
    }
}

/// The daemon's state at the moment of the decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Whether the daemon is draining to stop.
    pub shutting_down: bool,
    /// Clients served now (not leaving).
    pub live: usize,
    /// Of those, the peer's uid's.
    pub live_for_uid: usize,
    /// Descriptors the daemon has open.
    pub open_fds: u64,
}

/// What a granted client gets provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Queue pairs (one per worker).
    pub n_queues: u32,
    /// SQ entries per queue (CQ twice that).
    pub sq_entries: u32,
    /// Arena bytes.
    pub arena_len: u64,
}

/// Why a client is turned away: the reply's status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reply's status: a refusal, never [`HelloStatus::Ok`].
    pub status: HelloStatus,
    /// What went wrong and what to do (sent to the client and logged).
    pub message: String,
}

impl Refusal {
    fn new(status: HelloStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Decides whether `peer` saying `hello` is admitted under `policy` at `load`.
pub fn decide(
    hello: &HelloRequest,
    peer: &Peer,
    policy: &Policy<'_>,
    load: &Load,
) -> Result<Grant, Refusal> {
    if hello.magic != HELLO_REQUEST_MAGIC
        || hello.flags != 0
        || hello.reserved.iter().any(|&b| b != 0)
    {
        return Err(Refusal::new(
            HelloStatus::BadRequest,
            "malformed hello (bad magic or non-zero reserved fields); use a matching blobring client",
        ));
    }
    if hello.abi_version != ABI_VERSION {
        return Err(Refusal::new(
            HelloStatus::VersionMismatch,
            format!(
                "client speaks ABI version {}, daemon speaks {ABI_VERSION}; upgrade the client library or the daemon so they match",
                hello.abi_version
            ),
        ));
    }
    let (uid, gid) = (peer.uid, peer.gid);
    if !policy.permits(peer) {
        return Err(Refusal::new(
            HelloStatus::NotPermitted,
            format!(
                "uid {uid} (gid {gid}) is not allowed to use this daemon; ask the administrator to add --allow-uid {uid} or --allow-gid"
            ),
        ));
    }
    check_load(uid, policy, load)?;
    sizes(hello, policy)
}

/// The daemon-wide checks: running, client limits, descriptors.
fn check_load(uid: u32, policy: &Policy<'_>, load: &Load) -> Result<(), Refusal> {
    if load.shutting_down {
        return Err(Refusal::new(
            HelloStatus::Unavailable,
            "the daemon is shutting down; retry when it is back",
        ));
    }
    if load.live >= policy.max_clients {
        return Err(Refusal::new(
            HelloStatus::LimitExceeded,
            format!(
                "the daemon already serves {} clients (--max-clients {}); retry later or raise the limit",
                load.live, policy.max_clients
            ),
        ));
    }
    if load.live_for_uid >= policy.max_clients_per_uid {
        return Err(Refusal::new(
            HelloStatus::LimitExceeded,
            format!(
                "uid {uid} already has {} connections (--max-clients-per-uid {}); close some or raise the limit",
                load.live_for_uid, policy.max_clients_per_uid
            ),
        ));
    }
    policy
        .budget
        .check(load.open_fds)
        .map_err(|msg| Refusal::new(HelloStatus::Unavailable, msg))
}

/// The queue and arena sizes asked for (0 = the default), within the limits.
fn sizes(hello: &HelloRequest, policy: &Policy<'_>) -> Result<Grant, Refusal> {
    let sq = match hello.sq_entries {
        0 => policy.queue_depth,
        n => n,
    };
    if !sq.is_power_of_two() || sq > policy.queue_depth || sq > MAX_SQ_ENTRIES {
        return Err(Refusal::new(
            HelloStatus::LimitExceeded,
            format!(
                "sq_entries {sq} must be a power of two no larger than {} (--queue-depth)",
                policy.queue_depth
            ),
        ));
    }
    let arena = match hello.arena_len {
        0 => policy.arena_size,
        n => n,
    };
    if arena > policy.arena_size {
        return Err(Refusal::new(
            HelloStatus::LimitExceeded,
            format!(
                "arena of {arena} bytes exceeds the limit of {} (--arena-size); ask for less",
                policy.arena_size
            ),
        ));
    }
    Ok(Grant {
        n_queues: policy.n_queues,
        sq_entries: sq,
        arena_len: arena,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blobring_abi::FromZeros;

    const UIDS: &[u32] = &[1000, 0];
    const GIDS: &[u32] = &[50];

    fn budget() -> Budget {
        Budget {
            limit: 1024,
            per_client: 4,
            max_clients: 100,
            reserve: 64,
        }
    }

    fn policy() -> Policy<'static> {
        Policy {
            allow_uid: UIDS,
            allow_gid: &[],
            max_clients: 10,
            max_clients_per_uid: 3,
            queue_depth: 256,
            arena_size: 1 << 20,
            n_queues: 2,
            budget: budget(),
        }
    }

    fn hello() -> HelloRequest {
        let mut h = HelloRequest::new_zeroed();
        h.magic = HELLO_REQUEST_MAGIC;
        h.abi_version = ABI_VERSION;
        h
    }

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: 42,
            groups: Vec::new(),
        }
    }

    fn refusal(h: &HelloRequest, p: &Peer, pol: &Policy<'_>, l: &Load) -> Refusal {
        let r = decide(h, p, pol, l).expect_err("refused");
        assert!(!r.message.is_empty());
        assert_ne!(r.status, HelloStatus::Ok);
        r
    }

    #[test]
    fn grants_the_defaults_to_an_allowed_uid() {
        let g = decide(&hello(), &peer(1000), &policy(), &Load::default()).unwrap();
        assert_eq!(
            g,
            Grant {
                n_queues: 2,
                sq_entries: 256,
                arena_len: 1 << 20
            }
        );
    }

    #[test]
    fn grants_smaller_sizes_when_asked() {
        let mut h = hello();
        h.sq_entries = 16;
        h.arena_len = 4096;
        let g = decide(&h, &peer(0), &policy(), &Load::default()).unwrap();
        assert_eq!((g.sq_entries, g.arena_len), (16, 4096));
    }

    #[test]
    fn refuses_a_malformed_hello() {
        let pol = policy();
        let l = Load::default();
        let mut bad = Vec::new();
        let mut h = hello();
        h.magic ^= 1;
        bad.push(h);
        let mut h = hello();
        h.flags = 1;
        bad.push(h);
        let mut h = hello();
        h.reserved[39] = 1;
        bad.push(h);
        for h in &bad {
            let r = refusal(h, &peer(1000), &pol, &l);
            assert_eq!(r.status, HelloStatus::BadRequest);
            assert!(r.message.starts_with("malformed hello"), "{}", r.message);
        }
    }

    #[test]
    fn refuses_another_abi_version() {
        let mut h = hello();
        h.abi_version = ABI_VERSION + 1;
        let r = refusal(&h, &peer(1000), &policy(), &Load::default());
        assert_eq!(r.status, HelloStatus::VersionMismatch);
        assert!(
            r.message
                .contains(&format!("ABI version {}", ABI_VERSION + 1))
        );
    }

    #[test]
    fn refuses_a_uid_not_allowed_and_admits_by_group() {
        let r = refusal(&hello(), &peer(7), &policy(), &Load::default());
        assert_eq!(r.status, HelloStatus::NotPermitted);
        assert_eq!(
            r.message,
            "uid 7 (gid 7) is not allowed to use this daemon; ask the administrator to add --allow-uid 7 or --allow-gid"
        );
        let pol = Policy {
            allow_gid: GIDS,
            ..policy()
        };
        assert!(pol.needs_groups(7, 7));
        assert!(!pol.needs_groups(7, 50));
        assert!(!pol.needs_groups(1000, 7));
        assert!(
            !policy().needs_groups(7, 7),
            "no --allow-gid: groups never matter"
        );
        let by_primary = Peer { gid: 50, ..peer(7) };
        assert!(decide(&hello(), &by_primary, &pol, &Load::default()).is_ok());
        let by_supplementary = Peer {
            groups: vec![3, 50],
            ..peer(7)
        };
        assert!(decide(&hello(), &by_supplementary, &pol, &Load::default()).is_ok());
        let r = refusal(
            &hello(),
            &Peer {
                groups: vec![3],
                ..peer(7)
            },
            &pol,
            &Load::default(),
        );
        assert_eq!(r.status, HelloStatus::NotPermitted);
        // Supplementary groups without --allow-gid admit nobody.
        let r = refusal(&hello(), &by_supplementary, &policy(), &Load::default());
        assert_eq!(r.status, HelloStatus::NotPermitted);
    }

    #[test]
    fn refuses_while_shutting_down() {
        let l = Load {
            shutting_down: true,
            ..Load::default()
        };
        let r = refusal(&hello(), &peer(1000), &policy(), &l);
        assert_eq!(r.status, HelloStatus::Unavailable);
        assert!(r.message.contains("shutting down"));
    }

    #[test]
    fn refuses_beyond_the_client_limits() {
        for (live, live_for_uid, message) in [
            (
                10,
                0,
                "the daemon already serves 10 clients (--max-clients 10); retry later or raise the limit",
            ),
            (
                9,
                3,
                "uid 1000 already has 3 connections (--max-clients-per-uid 3); close some or raise the limit",
            ),
        ] {
            let l = Load {
                live,
                live_for_uid,
                ..Load::default()
            };
            let r = refusal(&hello(), &peer(1000), &policy(), &l);
            assert_eq!(
                (r.status, r.message.as_str()),
                (HelloStatus::LimitExceeded, message)
            );
        }
        let l = Load {
            live: 9,
            live_for_uid: 2,
            ..Load::default()
        };
        assert!(decide(&hello(), &peer(1000), &policy(), &l).is_ok());
    }

    #[test]
    fn refuses_when_out_of_descriptors() {
        let l = Load {
            open_fds: 1024 - 12 + 1,
            ..Load::default()
        };
        let r = refusal(&hello(), &peer(1000), &policy(), &l);
        assert_eq!(r.status, HelloStatus::Unavailable);
        assert_eq!(r.message, budget().refusal(l.open_fds));
        let l = Load {
            open_fds: 1024 - 12,
            ..Load::default()
        };
        assert!(decide(&hello(), &peer(1000), &policy(), &l).is_ok());
    }

    #[test]
    fn refuses_queue_sizes_out_of_bounds() {
        for sq in [3, 512, 1 << 31, MAX_SQ_ENTRIES * 2] {
            let mut h = hello();
            h.sq_entries = sq;
            let r = refusal(&h, &peer(1000), &policy(), &Load::default());
            assert_eq!(r.status, HelloStatus::LimitExceeded);
            assert_eq!(
                r.message,
                format!(
                    "sq_entries {sq} must be a power of two no larger than 256 (--queue-depth)"
                )
            );
        }
        // Beyond the ABI's maximum even when --queue-depth allows it.
        let mut h = hello();
        h.sq_entries = MAX_SQ_ENTRIES * 2;
        let pol = Policy {
            queue_depth: MAX_SQ_ENTRIES * 4,
            ..policy()
        };
        assert_eq!(
            refusal(&h, &peer(1000), &pol, &Load::default()).status,
            HelloStatus::LimitExceeded
        );
    }

    #[test]
    fn refuses_an_arena_beyond_the_limit() {
        let mut h = hello();
        h.arena_len = (1 << 20) + 1;
        let r = refusal(&h, &peer(1000), &policy(), &Load::default());
        assert_eq!(r.status, HelloStatus::LimitExceeded);
        assert_eq!(
            r.message,
            "arena of 1048577 bytes exceeds the limit of 1048576 (--arena-size); ask for less"
        );
    }

    #[test]
    fn reports_the_first_failing_check() {
        // Malformed beats everything else.
        let mut h = hello();
        h.flags = 1;
        h.abi_version = 0;
        h.sq_entries = 3;
        let l = Load {
            shutting_down: true,
            live: 99,
            live_for_uid: 99,
            open_fds: 1 << 20,
        };
        assert_eq!(
            refusal(&h, &peer(7), &policy(), &l).status,
            HelloStatus::BadRequest
        );
        h.flags = 0;
        assert_eq!(
            refusal(&h, &peer(7), &policy(), &l).status,
            HelloStatus::VersionMismatch
        );
        h.abi_version = ABI_VERSION;
        assert_eq!(
            refusal(&h, &peer(7), &policy(), &l).status,
            HelloStatus::NotPermitted
        );
        assert_eq!(
            refusal(&h, &peer(0), &policy(), &l).status,
            HelloStatus::Unavailable
        );
    }
}
