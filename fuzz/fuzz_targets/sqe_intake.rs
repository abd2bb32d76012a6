//! Drives the daemon's SQ intake ([`blobring_daemon::worker::take_sqes`], the function every
//! worker turn runs per client) and its packet building
//! ([`blobring_daemon::worker::encode_request`]) on a real sealed region whose client half the
//! fuzzer writes: SQE slots, `sq_tail`, `cq_head`, flags and raw bytes of the queue pair, over
//! many rounds, with completions posted through the same `DaemonQueue` the worker uses.
//!
//! Input: 4 header bytes (SQ size, queue count and index, batch, channels, guest base, start
//! index), then a sequence of operations (first byte selects; see `Op`). Asserted invariants:
//! - no panic, no hang;
//! - every SQE started has all its buffers inside the data arena, and its packet decodes
//!   (host parser) with the same transaction id and pages that lie inside the arena's guest
//!   pages;
//! - refused SQEs complete with `-EINVAL`, NOPs with 0; the CQ never overflows: posting the
//!   completions of taken requests never fails for lack of room (credits), and `in_flight`
//!   never exceeds `cq_entries`;
//! - corrupt indices surface as `RingError::Corrupt` and only mark the client corrupt: the
//!   daemon's published `sq_head`, its `in_flight` and every CQE already posted stay unchanged.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use blobring_abi::vmbus::HV_PAGE_SIZE;
use blobring_abi::{Cqe, FromBytes, FromZeros, IntoBytes, Opcode, RegionGeometry, Sqe, qc};
use blobring_daemon::worker::{
    Admission, InFlight, ReqState, encode_request, errno, take_sqes, validate_sqe,
};
use blobring_fuzz::Input;
use blobring_ring::{DaemonQueue, QueueLayout, RingError};
use blobring_shm::{PagePolicy, Region, RegionOptions, SharedMemory};
use blobring_vmbus::blob::parse_blob_request;
use blobring_vmbus::guest_phys::SimPfns;
use blobring_vmbus::packet::decode;
use libfuzzer_sys::fuzz_target;

const ARENA: u64 = 64 << 10;
const MAX_OPS: usize = 64;

struct Client {
    g: RegionGeometry,
    q: u32,
    region: Arc<Region>,
    queue: DaemonQueue<Arc<Region>>,
    /// The client's private `sq_tail` (what a well-behaved client would store next).
    tail: u32,
    /// What the daemon has posted: `cq_tail` it stored last.
    cq_tail: u32,
    rejected: u32,
    corrupt: bool,
    batch: usize,
    have_channels: bool,
    gpa_base: u64,
    max_pages: Option<u32>,
    /// Requests started and not yet completed (the worker's slab).
    inflight: InFlight,
}

impl Client {
    fn ctl(&self, field: u64) -> u64 {
        self.g.queue_control(self.q) + field
    }
    fn load(&self, field: u64) -> u32 {
        self.region
            .load_u32(self.ctl(field), Ordering::Acquire)
            .unwrap()
    }
    fn store(&self, field: u64, v: u32) {
        self.region
            .store_u32(self.ctl(field), v, Ordering::Release)
            .unwrap();
    }
    fn sqe_slot(&self, i: u32) -> u64 {
        self.g.sqes(self.q) + u64::from(i & (self.g.sq_entries - 1)) * 64
    }
    fn cqe_slot(&self, i: u32) -> u64 {
        self.g.cqes(self.q) + u64::from(i & (self.g.cq_entries - 1)) * 32
    }

    /// Writes `sqe` at the client's tail and publishes it, as a well-behaved client would
    /// (only into a free slot).
    fn push(&mut self, sqe: &Sqe) {
        let head = self.load(qc::SQ_HEAD);
        if self.tail.wrapping_sub(head) >= self.g.sq_entries {
            return;
        }
        self.region
            .write(self.sqe_slot(self.tail), sqe.as_bytes())
            .unwrap();
        self.tail = self.tail.wrapping_add(1);
        self.store(qc::SQ_TAIL, self.tail);
    }

    /// The worker's post of final completions; corruption of `cq_head` marks the client
    /// corrupt. Anything else (no credit, more completions than taken) is a daemon bug.
    fn post(&mut self, cqes: &[Cqe]) {
        if cqes.is_empty() || self.corrupt {
            return;
        }
        let in_flight = self.queue.in_flight();
        match self.queue.complete(cqes) {
            Ok(p) => {
                assert_eq!(p.count, cqes.len());
                self.cq_tail = self.cq_tail.wrapping_add(cqes.len() as u32);
                assert_eq!(self.load(qc::CQ_TAIL), self.cq_tail, "cq_tail published");
                for (i, cqe) in cqes.iter().enumerate() {
                    let at = self.cq_tail.wrapping_sub((cqes.len() - i) as u32);
                    let got: Cqe = self.region.read_obj(self.cqe_slot(at)).unwrap();
                    assert_eq!(&got, cqe, "CQE written to its slot");
                }
            }
            Err(RingError::Corrupt { .. }) => {
                assert_eq!(self.queue.in_flight(), in_flight);
                self.corrupt = true;
            }
            Err(e) => panic!("posting {} completions failed: {e}", cqes.len()),
        }
        assert!(self.queue.in_flight() <= self.g.cq_entries);
    }

    /// One worker turn of intake for this client.
    fn turn(&mut self) {
        if self.corrupt {
            return;
        }
        let mut buf = vec![Sqe::new_zeroed(); self.batch];
        let mut verdicts = Vec::new();
        // The shared words the daemon owns may have been scribbled on by the client; the
        // daemon never reads them back, so compare with its private state.
        let head_before = self.queue.sq().head();
        let shared_head = self.load(qc::SQ_HEAD);
        let shared_cq_tail = self.load(qc::CQ_TAIL);
        let in_flight = self.queue.in_flight();
        let taken = take_sqes(
            &mut self.queue,
            &mut buf,
            &mut verdicts,
            &self.g,
            self.gpa_base,
            self.have_channels,
            &mut self.rejected,
        );
        let n = match taken {
            Ok(n) => n,
            Err(RingError::Corrupt { .. }) => {
                // The client is disconnected; nothing was taken or published.
                assert_eq!(self.queue.sq().head(), head_before);
                assert_eq!(self.load(qc::SQ_HEAD), shared_head);
                assert_eq!(self.queue.in_flight(), in_flight);
                assert_eq!(self.load(qc::CQ_TAIL), shared_cq_tail);
                self.corrupt = true;
                return;
            }
            Err(e) => panic!("intake failed with a non-corruption error: {e}"),
        };
        assert_eq!(verdicts.len(), n);
        assert_eq!(self.queue.in_flight(), in_flight + n as u32);
        assert!(
            self.queue.in_flight() <= self.g.cq_entries,
            "credits overrun"
        );
        assert_eq!(self.queue.sq().head(), head_before.wrapping_add(n as u32));
        if n > 0 {
            assert_eq!(
                self.load(qc::SQ_HEAD),
                self.queue.sq().head(),
                "sq_head published"
            );
        }
        let mut cqes = Vec::new();
        let now = Instant::now();
        for (sqe, &v) in buf[..n].iter().zip(&verdicts) {
            let valid = validate_sqe(sqe, &self.g, self.gpa_base);
            match v {
                Admission::Invalid => assert!(!valid),
                Admission::Nop => assert!(valid && sqe.opcode == Opcode::Nop.code()),
                Admission::NoDevice => {
                    assert!(valid && sqe.opcode == Opcode::Blob.code() && !self.have_channels)
                }
                Admission::Start => {
                    assert!(valid && sqe.opcode == Opcode::Blob.code() && self.have_channels);
                    if let Some(res) = self.start(sqe, now) {
                        cqes.push(Cqe {
                            user_data: sqe.user_data,
                            res,
                            ..Cqe::new_zeroed()
                        });
                    }
                    continue;
                }
            }
            assert_eq!(
                v.immediate_res(),
                Some(match v {
                    Admission::Invalid => -errno::EINVAL,
                    Admission::Nop => 0,
                    _ => -errno::ENODEV,
                })
            );
            cqes.push(Cqe {
                user_data: sqe.user_data,
                res: v.immediate_res().unwrap(),
                ..Cqe::new_zeroed()
            });
        }
        if n > 0 && verdicts.contains(&Admission::Invalid) {
            assert_eq!(self.load(qc::SQ_REJECTED), self.rejected);
        }
        self.post(&cqes);
    }

    /// Starts an admitted blob request: checks its buffers against the arena independently,
    /// builds its packet and parses it back as the host does. Returns the `res` of an
    /// immediate failure (`E2BIG`), or `None` once the request is in flight.
    fn start(&mut self, sqe: &Sqe, now: Instant) -> Option<i32> {
        let (lo, hi) = (self.g.arena_offset, self.g.arena_offset + self.g.arena_len);
        let inside = |off: u64, len: u32| {
            off >= lo && off.checked_add(u64::from(len)).is_some_and(|e| e <= hi)
        };
        assert!(inside(sqe.request_offset, sqe.request_len) && sqe.request_len > 0);
        assert!(inside(sqe.response_offset, sqe.response_len) && sqe.response_len > 0);
        assert!(sqe.data_len == 0 || inside(sqe.data_offset, sqe.data_len));
        assert!(sqe.data_valid <= sqe.data_len);

        let (key, generation) = self.inflight.insert_waiting(0, *sqe, now, 0);
        let tid = blobring_daemon::worker::transaction_id(key, generation);
        assert_eq!(self.inflight.tid(key), Some(tid));
        let pfns = SimPfns::new(self.gpa_base, self.g.region_len);
        let mut pkt = Vec::new();
        let mut scratch: [Vec<u64>; 4] = Default::default();
        let guid = self.inflight[key].guid;
        match encode_request(
            &mut pkt,
            &mut scratch,
            &pfns,
            sqe,
            tid,
            &guid,
            self.max_pages,
        ) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, errno::E2BIG, "an admitted SQE failed to encode");
                assert!(self.max_pages.is_some());
                self.inflight.remove(key);
                return Some(-e);
            }
        }
        let p = decode(&pkt).expect("our own packet decodes");
        let req = parse_blob_request(&p).expect("the host accepts our packet");
        assert_eq!(req.trans_id, tid);
        assert_eq!(
            req.request.end - req.request.start,
            u64::from(sqe.request_len)
        );
        assert_eq!(
            req.response.end - req.response.start,
            u64::from(sqe.response_len)
        );
        assert_eq!(req.data.end - req.data.start, u64::from(sqe.data_len));
        // Every byte the host may touch lies in the arena's guest pages.
        let arena_gpa = self.gpa_base + lo..self.gpa_base + hi;
        for range in [&req.data, &req.request, &req.response] {
            if range.is_empty() {
                continue;
            }
            for off in [range.start, range.end - 1] {
                let pfn = req.pfns[(off / HV_PAGE_SIZE) as usize];
                let gpa = pfn * HV_PAGE_SIZE + off % HV_PAGE_SIZE;
                assert!(arena_gpa.contains(&gpa), "gpa {gpa:#x} outside the arena");
            }
        }
        self.inflight[key].state = ReqState::Sent { chan: 0 };
        None
    }

    /// The host answers the `k` oldest requests in flight.
    fn host_completes(&mut self, k: usize) {
        let keys: Vec<usize> = self.inflight.iter().map(|(key, _)| key).take(k).collect();
        let mut cqes = Vec::new();
        for key in keys {
            let r = self.inflight.remove(key);
            cqes.push(Cqe {
                user_data: r.sqe.user_data,
                response_len: r.sqe.response_len,
                ..Cqe::new_zeroed()
            });
        }
        self.post(&cqes);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let sq = 1u32 << (1 + inp.u8() % 5);
    let b = inp.u8();
    let n_queues = 1 + u32::from(b & 1);
    let q = u32::from(b >> 1 & 1) % n_queues;
    let b = inp.u8();
    let batch = 1 + usize::from(b % 32);
    let have_channels = b & 0x80 == 0;
    let max_pages = (b & 0x40 != 0).then_some(u32::from(b & 0x3f) + 3);
    let b = inp.u8();
    // The daemon assigns page-aligned guest bases; the high bits stress the page arithmetic.
    let gpa_base = u64::from(b & 0x1f) << 36;
    let start = [0, u32::MAX - 2, 1 << 31, 7][usize::from(b >> 5 & 3)];

    let g = RegionGeometry::new(n_queues, sq, sq * 2, ARENA, 4096).unwrap();
    let region = Arc::new(
        Region::create_with(
            "fuzz-sqe-intake",
            g.region_len,
            RegionOptions {
                pages: PagePolicy::Small,
                prefault: false,
            },
        )
        .unwrap(),
    );
    for qi in 0..n_queues {
        QueueLayout::from_geometry(&g, qi)
            .unwrap()
            .initialize(&*region, start)
            .unwrap();
    }
    let layout = QueueLayout::from_geometry(&g, q).unwrap();
    let queue = DaemonQueue::new(region.clone(), &layout, start).unwrap();
    let mut c = Client {
        g,
        q,
        region,
        queue,
        tail: start,
        cq_tail: start,
        rejected: 0,
        corrupt: false,
        batch,
        have_channels,
        gpa_base,
        max_pages,
        inflight: InFlight::new(),
    };

    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 8 {
            // Raw SQEs from the input.
            0 => {
                for _ in 0..1 + inp.u8() % 4 {
                    let sqe = Sqe::read_from_bytes(&inp.bytes::<64>()).unwrap();
                    c.push(&sqe);
                }
            }
            // A blob SQE with buffers placed relative to the arena (signed deltas reach the
            // queues before it and the end after it).
            1 => {
                let arena = c.g.arena_offset as i64;
                let place = |inp: &mut Input| {
                    let delta = i64::from(inp.u16() as i16) * 16;
                    ((arena + delta).max(0) as u64, inp.u16() as u32 * 8)
                };
                let (request_offset, request_len) = place(&mut inp);
                let (response_offset, response_len) = place(&mut inp);
                let (data_offset, data_len) = place(&mut inp);
                let flags = inp.u8();
                let sqe = Sqe {
                    opcode: if flags & 0x80 != 0 {
                        Opcode::Nop.code()
                    } else {
                        Opcode::Blob.code()
                    },
                    user_data: u64::from(inp.u16()),
                    request_offset,
                    request_len,
                    response_offset,
                    response_len,
                    data_offset,
                    data_len,
                    data_valid: data_len >> (flags & 3),
                    timeout_ms: u32::from(flags & 0x40),
                    ..Sqe::new_zeroed()
                };
                c.push(&sqe);
            }
            // Corrupt (or merely odd) indices.
            2 => {
                c.tail = inp.u32();
                c.store(qc::SQ_TAIL, c.tail);
            }
            3 => {
                let v = inp.u32();
                c.store(qc::CQ_HEAD, v);
            }
            // A well-behaved reap: the client consumes every CQE posted.
            4 => c.store(qc::CQ_HEAD, c.load(qc::CQ_TAIL)),
            5 => c.turn(),
            6 => {
                let k = usize::from(inp.u8() % 8);
                c.host_completes(k);
            }
            // Raw bytes anywhere in the control page or the SQE array (flags, stale slots).
            _ => {
                let span = qc_span(&c.g);
                let off = c.g.queue_control(c.q) + u64::from(inp.u16()) % span;
                let len = usize::from(inp.u8() % 16);
                let bytes: Vec<u8> = (0..len).map(|_| inp.u8()).collect();
                let len = (len as u64).min(span - (off - c.g.queue_control(c.q)));
                c.region.write(off, &bytes[..len as usize]).unwrap();
            }
        }
    }
    // Drain: every request in flight completes without running out of CQ room.
    c.host_completes(usize::MAX);
    if !c.corrupt {
        assert_eq!(c.queue.in_flight(), 0);
    }
});

/// Bytes of the control block plus the SQE array of one queue pair (what the client writes).
fn qc_span(g: &RegionGeometry) -> u64 {
    g.cqes(0) - g.queue_control(0)
}
