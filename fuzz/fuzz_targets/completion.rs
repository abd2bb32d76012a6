//! Feeds host completions to the daemon's completion handling as a hostile or buggy host could:
//! the reply decoder and [`parse_blob_reply`] (what a worker runs on every packet it receives:
//! any packet type, as the `hv_azure_blob` driver reads replies) and [`InFlight::match_completion`] (its matching against the in-flight slab:
//! unknown and stale transaction ids, requests never sent or sent on another channel, lengths
//! larger than the buffers lent, packet types other than a completion).
//!
//! Input: a sequence of operations (first byte selects, see the match below) that insert
//! requests into the slab in any state, retire them (so ids go stale and slots are reused),
//! and deliver completions: well-formed ones aimed at a live request with fuzzed channel,
//! generation and lengths, raw packet bytes, and the right payload in the wrong packet type.
//! Invariants: no panic; a completion is accepted exactly when it names a request of the same
//! generation sent on that channel and (on success) its lengths fit that request's buffers;
//! an accepted completion retires its request, so the same completion again is refused.
#![no_main]

use std::time::Instant;

use blobring_abi::vmbus::AzBlobVspResponse;
use blobring_abi::{FromZeros, IntoBytes, Opcode, Sqe};
use blobring_daemon::worker::{InFlight, ReqState, transaction_id};
use blobring_fuzz::Input;
use blobring_vmbus::blob::{encode_blob_completion, parse_blob_reply};
use blobring_vmbus::packet::{GpaRangeRef, decode_reply, encode_gpa_direct, encode_inband};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 128;

/// A length near the interesting boundaries of `around`.
fn len_near(inp: &mut Input, around: u32) -> u32 {
    match inp.u8() % 4 {
        0 => around,
        1 => around.wrapping_add(1),
        2 => around.saturating_sub(1),
        _ => inp.u32(),
    }
}

/// What the daemon must decide, computed independently from the slab's contents.
fn expected(slab: &InFlight, chan: usize, tid: u64, resp: &AzBlobVspResponse) -> Option<usize> {
    slab.iter()
        .find(|(key, r)| {
            let sent_here = match r.state {
                ReqState::Sent { chan: c } | ReqState::TimedOut { chan: c } => c == chan,
                ReqState::Waiting => false,
            };
            slab.tid(*key) == Some(tid)
                && tid & 0xffff_ffff == *key as u64 + 1
                && transaction_id(*key, (tid >> 32) as u32) == tid
                && sent_here
                && (resp.error != 0
                    || (resp.response_len <= r.sqe.response_len && resp.length <= r.sqe.data_len))
        })
        .map(|(key, _)| key)
}

/// Delivers one packet as a worker does: decode as a reply, parse the response, match, retire.
fn deliver(slab: &mut InFlight, chan: usize, packet: &[u8]) -> Option<usize> {
    let p = decode_reply(packet).ok()?;
    let (tid, resp) = parse_blob_reply(&p).ok()?;
    let want = expected(slab, chan, tid, &resp);
    let got = slab.match_completion(chan, tid, &resp);
    assert_eq!(got, want, "tid {tid:#x} on channel {chan}: {resp:?}");
    let key = got?;
    // The worker's `finish`: the request leaves the slab, so a replay is stale.
    slab.remove(key);
    assert_eq!(
        slab.match_completion(chan, tid, &resp),
        None,
        "replay accepted"
    );
    Some(key)
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mut slab = InFlight::new();
    let mut keys: Vec<usize> = Vec::new();
    let now = Instant::now();
    let mut pkt = Vec::new();
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let pick = |inp: &mut Input, keys: &[usize]| -> Option<usize> {
            let i = usize::from(inp.u8());
            (!keys.is_empty()).then(|| keys[i % keys.len()])
        };
        match op % 6 {
            // A request taken, in some state on channel 0..3.
            0 => {
                let sqe = Sqe {
                    opcode: Opcode::Blob.code(),
                    user_data: inp.u64(),
                    response_len: inp.u32() >> (inp.u8() % 32),
                    data_len: inp.u32() >> (inp.u8() % 32),
                    ..Sqe::new_zeroed()
                };
                let (key, _) = slab.insert_waiting(0, sqe, now, 0);
                let s = inp.u8();
                slab[key].state = match s % 3 {
                    0 => ReqState::Waiting,
                    1 => ReqState::Sent {
                        chan: usize::from(s >> 2 & 3),
                    },
                    _ => ReqState::TimedOut {
                        chan: usize::from(s >> 2 & 3),
                    },
                };
                keys.push(key);
            }
            // Retire one (finish / timeout with release / drop): its id goes stale.
            1 => {
                if let Some(key) = pick(&mut inp, &keys) {
                    slab.remove(key);
                    keys.retain(|&k| k != key);
                }
            }
            // A well-formed completion aimed at a request, with fuzzed details.
            2 => {
                let Some(key) = pick(&mut inp, &keys) else {
                    continue;
                };
                let r = &slab[key];
                let (resp_len, data_len) = (r.sqe.response_len, r.sqe.data_len);
                let tweak = inp.u8();
                let mut tid = slab.tid(key).unwrap();
                match tweak % 4 {
                    1 => tid ^= 1 << 32,               // stale generation
                    2 => tid &= 0xffff_ffff_0000_0000, // key 0 ("key + 1" never is 0)
                    3 => tid = tid.wrapping_add(u64::from(tweak >> 2)),
                    _ => {}
                }
                let chan = usize::from(inp.u8() & 3);
                let resp = AzBlobVspResponse {
                    error: if inp.u8() & 1 == 0 { 0 } else { inp.u32() },
                    response_len: len_near(&mut inp, resp_len),
                    length: len_near(&mut inp, data_len),
                };
                pkt.clear();
                encode_blob_completion(&mut pkt, tid, &resp).unwrap();
                if let Some(k) = deliver(&mut slab, chan, &pkt) {
                    keys.retain(|&x| x != k);
                }
            }
            // Raw packet bytes (length-prefixed).
            3 => {
                let len = usize::from(inp.u8());
                let raw = inp.take(len);
                let chan = usize::from(op >> 3 & 3);
                if let Some(k) = deliver(&mut slab, chan, raw) {
                    keys.retain(|&x| x != k);
                }
            }
            // The right payload in another packet type: read as the driver reads replies (the
            // response at hv_pkt_data of any type), so matched like a completion.
            4 => {
                let Some(key) = pick(&mut inp, &keys) else {
                    continue;
                };
                let tid = slab.tid(key).unwrap();
                let resp = AzBlobVspResponse::new_zeroed();
                pkt.clear();
                if op & 0x80 == 0 {
                    encode_inband(&mut pkt, tid, inp.u8() & 1 == 1, resp.as_bytes()).unwrap();
                } else {
                    let pfns = [inp.u64() & 0xf_ffff_ffff];
                    let range = GpaRangeRef {
                        byte_count: 4096,
                        byte_offset: 0,
                        pfns: &pfns,
                    };
                    encode_gpa_direct(&mut pkt, tid, &[range], resp.as_bytes()).unwrap();
                }
                let chan = usize::from(op >> 3 & 3);
                assert!(!decode_reply(&pkt).unwrap().is_completion());
                if let Some(k) = deliver(&mut slab, chan, &pkt) {
                    keys.retain(|&x| x != k);
                }
            }
            // A short completion payload (a truncated response).
            _ => {
                let Some(key) = pick(&mut inp, &keys) else {
                    continue;
                };
                let tid = slab.tid(key).unwrap();
                let resp = AzBlobVspResponse::new_zeroed();
                let cut = usize::from(inp.u8()) % resp.as_bytes().len();
                pkt.clear();
                blobring_vmbus::packet::encode_completion(&mut pkt, tid, &resp.as_bytes()[..cut])
                    .unwrap();
                let p = decode_reply(&pkt).unwrap();
                // Packets are padded to 8 bytes and only their length in 8-byte units is on
                // the wire: a payload padded up to the response's 12 bytes reads as zeros.
                match parse_blob_reply(&p) {
                    Ok((t, r)) => {
                        assert!(cut.next_multiple_of(8) >= size_of::<AzBlobVspResponse>());
                        assert_eq!((t, r), (tid, resp));
                    }
                    Err(_) => assert!(cut.next_multiple_of(8) < size_of::<AzBlobVspResponse>()),
                }
            }
        }
    }
});
