//! The daemon's admission decision on its own (`blobring_daemon::admission::decide`, pure):
//! arbitrary hello bytes, peer credentials (uid, gid, supplementary groups), policy (allowed
//! uids and gids, client limits, queue depth, arena size, descriptor budget) and load (shutting
//! down, clients live, the uid's clients, descriptors open). Checks, for every input:
//! - a grant never exceeds a limit: sq a power of two ≤ `--queue-depth` and `MAX_SQ_ENTRIES`,
//!   arena ≤ `--arena-size`, one queue per worker, below both client limits, within the
//!   descriptor budget, to an allowed peer with a well-formed hello of this ABI version, and
//!   what was asked for (or the default for 0) is what is granted;
//! - every input that passes all of those is granted (nothing is refused without cause);
//! - a refusal's message is non-empty and fits the reply, its status is one of the ABI's
//!   refusal codes and names a check that really failed;
//! - supplementary groups change nothing when `Policy::needs_groups` says they do not matter,
//!   and the decision is deterministic.
//!
//! The socket-level handshake (a real daemon answering fuzzed bytes) is `handshake.rs`.
#![no_main]

use blobring_abi::{
    ABI_VERSION, FromZeros, HELLO_REQUEST_MAGIC, HelloReply, HelloStatus, MAX_SQ_ENTRIES,
};
use blobring_daemon::admission::{Load, Peer, Policy, decide};
use blobring_daemon::fds::Budget;
use blobring_fuzz::{Input, fuzzed_hello};
use libfuzzer_sys::fuzz_target;

/// A few small ids, so allowed lists and credentials collide often.
fn ids(inp: &mut Input) -> Vec<u32> {
    (0..inp.u8() % 4).map(|_| u32::from(inp.u8() % 8)).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mode = inp.u8();
    // Fixups make every check reachable from short inputs.
    let hello = fuzzed_hello(&mut inp, mode, 20, 1 << 24);
    let peer = Peer {
        uid: u32::from(inp.u8() % 8),
        gid: u32::from(inp.u8() % 8),
        pid: inp.u32() as i32,
        groups: ids(&mut inp),
    };
    let (allow_uid, allow_gid) = (ids(&mut inp), ids(&mut inp));
    let n_queues = 1 + u32::from(inp.u8() % 64);
    let max_clients = usize::from(inp.u8());
    let budget = Budget {
        limit: u64::from(inp.u16()),
        per_client: 3 + u64::from(n_queues),
        max_clients,
        reserve: 64,
    };
    let policy = Policy {
        allow_uid: &allow_uid,
        allow_gid: &allow_gid,
        max_clients,
        max_clients_per_uid: usize::from(inp.u8()),
        queue_depth: 1 << (inp.u8() % 20),
        arena_size: inp.u64() >> (inp.u8() % 64),
        n_queues,
        budget,
    };
    let live = usize::from(inp.u8());
    let load = Load {
        shutting_down: mode & 0x10 != 0,
        live,
        live_for_uid: usize::from(inp.u8()).min(live),
        open_fds: u64::from(inp.u16()),
    };

    let decision = decide(&hello, &peer, &policy, &load);
    assert_eq!(
        decision,
        decide(&hello, &peer, &policy, &load),
        "deterministic"
    );
    if !policy.needs_groups(peer.uid, peer.gid) {
        let without = Peer {
            groups: Vec::new(),
            ..peer.clone()
        };
        assert_eq!(decision, decide(&hello, &without, &policy, &load));
    }

    // The checks, written out independently.
    let well_formed =
        hello.magic == HELLO_REQUEST_MAGIC && hello.flags == 0 && hello.reserved == [0; 40];
    let version_ok = hello.abi_version == ABI_VERSION;
    let permitted = allow_uid.contains(&peer.uid)
        || allow_gid.contains(&peer.gid)
        || peer.groups.iter().any(|g| allow_gid.contains(g));
    let fds_ok = load.open_fds + budget.per_client + 8 <= budget.limit;
    let room = !load.shutting_down
        && load.live < policy.max_clients
        && load.live_for_uid < policy.max_clients_per_uid
        && fds_ok;
    let sq = if hello.sq_entries == 0 {
        policy.queue_depth
    } else {
        hello.sq_entries
    };
    let arena = if hello.arena_len == 0 {
        policy.arena_size
    } else {
        hello.arena_len
    };
    let sizes_ok = sq.is_power_of_two()
        && sq <= policy.queue_depth
        && sq <= MAX_SQ_ENTRIES
        && arena <= policy.arena_size;
    let admissible = well_formed && version_ok && permitted && room && sizes_ok;

    match decision {
        Ok(g) => {
            assert!(admissible, "granted {hello:?} to {peer:?} at {load:?}");
            assert_eq!(g.n_queues, n_queues);
            assert_eq!((g.sq_entries, g.arena_len), (sq, arena));
            assert!(g.sq_entries.is_power_of_two());
            assert!(g.sq_entries <= policy.queue_depth && g.sq_entries <= MAX_SQ_ENTRIES);
            assert!(g.arena_len <= policy.arena_size);
        }
        Err(r) => {
            assert!(
                !admissible,
                "refused an admissible {hello:?}: {}",
                r.message
            );
            assert!(!r.message.is_empty(), "a refusal says why");
            // The reply's message field holds it whole.
            assert!(
                r.message.len() <= HelloReply::new_zeroed().message.len(),
                "{}",
                r.message
            );
            match r.status {
                HelloStatus::BadRequest => assert!(!well_formed),
                HelloStatus::VersionMismatch => assert!(well_formed && !version_ok),
                HelloStatus::NotPermitted => assert!(well_formed && version_ok && !permitted),
                HelloStatus::Unavailable => {
                    assert!(well_formed && version_ok && permitted);
                    assert!(load.shutting_down || !fds_ok);
                }
                HelloStatus::LimitExceeded => {
                    assert!(well_formed && version_ok && permitted && !load.shutting_down);
                    assert!(
                        load.live >= policy.max_clients
                            || load.live_for_uid >= policy.max_clients_per_uid
                            || !sizes_ok
                    );
                }
                other => panic!("unknown refusal status {other}"),
            }
        }
    }
});
