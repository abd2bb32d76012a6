//! The sim transport end to end: a host thread (bus session + one VSP-like worker per channel)
//! and a guest: offer → open primary and subchannels → register a memfd → blob requests and
//! in-band packets both ways with eventfd signalling → a GPA outside registered memory is
//! refused → rescind observed by the guest. Plus: the host survives garbage on the bus.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use blobring_abi::vmbus::*;
use blobring_shm::{Region, SharedMemory};
use blobring_vmbus::blob::{
    BlobRequestDesc, contiguous_pfns, encode_blob_completion, encode_blob_request,
    parse_blob_completion, parse_blob_request,
};
use blobring_vmbus::channel::Channel;
use blobring_vmbus::guest_memory::GuestMemoryError;
use blobring_vmbus::packet::{PacketKind, encode_completion, encode_inband};
use blobring_vmbus::sim::guest::{BusClient, BusEvent};
use blobring_vmbus::sim::host::{
    BusListener, HostConfig, HostEvent, HostSession, SharedGuestMemory,
};
use blobring_vmbus::sim::{BusError, SimChannel, wait_readable};
use common::{pages, seqpacket_pair, without_data};
use zerocopy::{FromBytes, IntoBytes};

const STEP: Duration = Duration::from_millis(20);
const LIMIT: Duration = Duration::from_secs(20);
/// VSP status the test host returns when a buffer is outside registered memory.
const ERR_BAD_GPA: u32 = 0xbad;

/// A VSP-like worker: answers blob requests (response = "OK:" + request head) and echoes
/// in-band packets that request a completion, until `stop`.
fn worker(
    mut ch: SimChannel,
    memory: SharedGuestMemory,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut handled = 0u64;
    let deadline = Instant::now() + LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut replies = Vec::new();
        while let Some(p) = ch.recv(&mut buf).map_err(|e| e.to_string())? {
            handled += 1;
            match p.kind {
                PacketKind::GpaDirect(_) => {
                    let req = parse_blob_request(&p).map_err(|e| e.to_string())?;
                    let mem = memory.read().unwrap();
                    let resp = match req.buffers(&mem) {
                        Ok(b) => {
                            let (rq, rs) = (&b.request, &b.response);
                            assert!(b.data.is_empty());
                            let mut head = vec![0u8; rq.len() as usize];
                            rq.read_at(0, &mut head).map_err(|e| e.to_string())?;
                            let mut answer = b"OK:".to_vec();
                            answer.extend_from_slice(&head);
                            answer.truncate(rs.len() as usize);
                            rs.write_at(0, &answer).map_err(|e| e.to_string())?;
                            AzBlobVspResponse {
                                length: 0,
                                error: 0,
                                response_len: answer.len() as u32,
                            }
                        }
                        Err(GuestMemoryError::NotRegistered { .. }) => AzBlobVspResponse {
                            length: 0,
                            error: ERR_BAD_GPA,
                            response_len: 0,
                        },
                        Err(e) => return Err(e.to_string()),
                    };
                    encode_blob_completion(&mut out, req.trans_id, &resp)
                        .map_err(|e| e.to_string())?;
                    replies.push(out.clone());
                }
                PacketKind::InBand if p.completion_requested() => {
                    let mut echo = b"echo:".to_vec();
                    echo.extend_from_slice(p.payload);
                    encode_completion(&mut out, p.trans_id(), &echo).map_err(|e| e.to_string())?;
                    replies.push(out.clone());
                }
                _ => return Err(format!("unexpected packet {:?}", p.desc)),
            }
        }
        ch.release().map_err(|e| e.to_string())?;
        for r in &replies {
            ch.send(r).map_err(|e| e.to_string())?;
        }
        if replies.is_empty() && !ch.arm().map_err(|e| e.to_string())? {
            wait_readable(ch.as_fd(), STEP).map_err(|e| e.to_string())?;
            ch.clear_wakeups().map_err(|e| e.to_string())?;
        }
    }
    Ok(handled)
}

enum Cmd {
    Rescind,
}

/// The host: one session, one worker thread per opened channel. Returns the events seen.
fn host(listener: BusListener, cmds: mpsc::Receiver<Cmd>) -> Result<Vec<String>, String> {
    if !wait_readable(listener.as_fd(), LIMIT).map_err(|e| e.to_string())? {
        return Err("no guest connected".into());
    }
    let sock = listener.accept().map_err(|e| e.to_string())?;
    let config = HostConfig {
        max_channels: 4,
        ring_size: 16384,
        max_guest_memory: 16 * 4096,
        ..HostConfig::default()
    };
    let mut session = HostSession::new(sock, config).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Ok(Cmd::Rescind) = cmds.try_recv() {
            session.rescind(7).map_err(|e| e.to_string())?;
            events.push("rescinded".to_string());
        }
        let Some(ev) = session.try_next_event().map_err(|e| e.to_string())? else {
            wait_readable(session.as_fd(), STEP).map_err(|e| e.to_string())?;
            continue;
        };
        match ev {
            HostEvent::ChannelOpened(ch) => {
                events.push(format!("open {}", ch.index()));
                let (mem, stop) = (session.memory(), stop.clone());
                workers.push(thread::spawn(move || worker(ch, mem, stop)));
            }
            HostEvent::Disconnected => {
                events.push("disconnected".into());
                break;
            }
            HostEvent::Rejected(e) => events.push(format!("rejected {e}")),
            other => events.push(format!("{other:?}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let handled = w.join().map_err(|_| "worker panicked".to_string())??;
        events.push(format!("worker handled {handled}"));
    }
    Ok(events)
}

/// Waits (bounded) for the next packet on a guest channel; the host's eventfd signal must
/// wake us.
fn next_packet(ch: &mut SimChannel, buf: &mut Vec<u8>) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ch.recv(buf).unwrap().is_some() {
            let copy = buf.clone();
            ch.release().unwrap();
            return copy;
        }
        if !ch.arm().unwrap() {
            assert!(Instant::now() < deadline, "no packet from the host");
            assert!(
                wait_readable(ch.as_fd(), Duration::from_secs(10)).unwrap(),
                "host did not signal the guest eventfd"
            );
            ch.clear_wakeups().unwrap();
        }
    }
}

#[test]
fn offer_open_register_exchange_rescind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sock");
    let listener = BusListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let host = thread::spawn(move || host(listener, rx));

    let mut bus = BusClient::connect(&path).unwrap();
    let offer = *bus.offer();
    assert_eq!(offer.class_guid.to_string(), AZ_BLOB_CLASS_GUID_STR);
    assert_eq!((offer.max_channels, offer.ring_size), (4, 16384));

    let mut chans = vec![bus.open_channel(0).unwrap()];
    assert!(matches!(
        bus.open_channel(1),
        Err(BusError::Refused {
            code: BUS_ERR_NO_CHANNEL,
            ..
        })
    ));
    assert_eq!(bus.request_subchannels(8).unwrap(), 3);
    for i in 1..=3 {
        chans.push(bus.open_channel(i).unwrap());
    }
    assert!(matches!(
        bus.open_channel(0),
        Err(BusError::Refused {
            code: BUS_ERR_BUSY,
            ..
        })
    ));
    assert!(matches!(
        bus.open_channel(4),
        Err(BusError::Refused {
            code: BUS_ERR_NO_CHANNEL,
            ..
        })
    ));

    // Guest memory: 16 pages at guest-physical 0x1000_0000.
    const GPA: u64 = 0x1000_0000;
    let region = Region::create("guest-mem", 16 * 4096).unwrap();
    bus.register_memory(1, GPA, region.fd(), 16 * 4096).unwrap();
    // Registering maps the region in the host without pre-faulting it: neither the guest's
    // mapping nor the host's has a page resident until a request touches one, so a guest that
    // registers (and leaves) costs the host nothing per byte.
    let rss = memfd_rss_kib("guest-mem");
    assert_eq!(
        rss,
        [0, 0],
        "guest and host mappings of the region, KiB resident"
    );
    assert!(matches!(
        bus.register_memory(2, GPA + 4096, region.fd(), 4096),
        Err(BusError::Refused {
            code: BUS_ERR_BAD_REGION,
            ..
        })
    ));
    // The host's limit on registered guest memory (16 pages here) is enforced.
    let extra = Region::create("extra", 4096).unwrap();
    match bus.register_memory(3, 2 * GPA, extra.fd(), 4096) {
        Err(BusError::Refused {
            code: BUS_ERR_BAD_REGION,
            message,
        }) => {
            assert!(message.contains("limit"), "{message}")
        }
        other => panic!("limit not enforced: {other:?}"),
    }

    let (mut pkt, mut scratch, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ch) in chans.iter_mut().enumerate() {
        // Request head in page 2i, response buffer straddling pages 2i+1 and 2i+2.
        let req_off = (2 * i as u64) * 4096 + 100;
        let resp_off = (2 * i as u64 + 1) * 4096 + 4000;
        let head = format!("GET /container/blob{i} HTTP/1.1\r\n\r\n");
        region.write(req_off, head.as_bytes()).unwrap();
        let req_pfns: Vec<u64> = contiguous_pfns(GPA + req_off, head.len() as u32).collect();
        let resp_pfns: Vec<u64> = contiguous_pfns(GPA + resp_off, 200).collect();
        assert_eq!(resp_pfns.len(), 2);
        let desc = BlobRequestDesc {
            timeout_ms: 1000,
            transaction_guid: [i as u8; 16],
            ..without_data(
                pages(100, head.len() as u32, &req_pfns),
                pages(4000, 200, &resp_pfns),
            )
        };
        let trans_id = 100 + i as u64;
        encode_blob_request(&mut pkt, &mut scratch, trans_id, &desc).unwrap();
        ch.send(&pkt).unwrap();
        let reply = next_packet(ch, &mut buf);
        let p = blobring_vmbus::decode(&reply).unwrap();
        let (id, resp) = parse_blob_completion(&p).unwrap();
        assert_eq!((id, resp.error), (trans_id, 0));
        let mut got = vec![0u8; resp.response_len as usize];
        region.read(resp_off, &mut got).unwrap();
        assert_eq!(got, format!("OK:{head}").as_bytes());

        // In-band both ways.
        encode_inband(&mut pkt, 900 + i as u64, true, b"ping").unwrap();
        ch.send(&pkt).unwrap();
        let reply = next_packet(ch, &mut buf);
        let p = blobring_vmbus::decode(&reply).unwrap();
        assert_eq!(p.kind, PacketKind::Completion);
        assert_eq!(p.trans_id(), 900 + i as u64);
        assert_eq!(&p.payload[..9], b"echo:ping");
    }

    // A response buffer outside registered memory is refused by the host.
    let ch = &mut chans[0];
    let outside = [GPA / 4096 + 16];
    let inside = [GPA / 4096];
    let desc = without_data(pages(0, 10, &inside), pages(0, 10, &outside));
    encode_blob_request(&mut pkt, &mut scratch, 555, &desc).unwrap();
    ch.send(&pkt).unwrap();
    let reply = next_packet(ch, &mut buf);
    let (id, resp) = parse_blob_completion(&blobring_vmbus::decode(&reply).unwrap()).unwrap();
    assert_eq!((id, resp.error), (555, ERR_BAD_GPA));

    bus.unregister_memory(1).unwrap();
    assert!(matches!(
        bus.unregister_memory(1),
        Err(BusError::Refused {
            code: BUS_ERR_BAD_REGION,
            ..
        })
    ));

    // Rescind: the guest sees it on its bus socket.
    tx.send(Cmd::Rescind).unwrap();
    assert!(wait_readable(bus.as_fd(), Duration::from_secs(10)).unwrap());
    assert_eq!(
        bus.poll_event().unwrap(),
        Some(BusEvent::Rescinded { reason: 7 })
    );
    assert!(bus.is_rescinded());
    assert!(matches!(
        bus.request_subchannels(1),
        Err(BusError::Refused {
            code: BUS_ERR_RESCINDED,
            ..
        })
    ));

    drop(chans);
    drop(bus);
    let events = host.join().unwrap().unwrap();
    assert!(events.iter().any(|e| e == "open 3"), "{events:?}");
    assert!(events.iter().any(|e| e == "disconnected"), "{events:?}");
    let handled: u64 = events
        .iter()
        .filter_map(|e| e.strip_prefix("worker handled ")?.parse::<u64>().ok())
        .sum();
    assert_eq!(handled, 4 * 2 + 1, "{events:?}");
}

/// Resident KiB of each mapping of this process of the memfd called `name`, from
/// `/proc/self/smaps`.
fn memfd_rss_kib(name: &str) -> Vec<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut out = Vec::new();
    let mut ours = false;
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if ours {
                out.push(rss.trim().trim_end_matches("kB").trim().parse().unwrap());
            }
        } else if line.split(' ').next().is_some_and(|r| {
            r.contains('-') && r.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        }) {
            // A mapping's first line: its address range, …, then its path if any.
            ours = line.ends_with(&format!("/memfd:{name} (deleted)"));
        }
    }
    out
}

fn raw_send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(cmsg.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(bytes)],
        &mut cmsg,
        SendFlags::empty(),
    )
    .unwrap();
}

fn raw_reply(sock: BorrowedFd<'_>) -> (BusHeader, Vec<u8>) {
    assert!(
        wait_readable(sock, Duration::from_secs(10)).unwrap(),
        "host did not answer"
    );
    let mut b = [0u8; 512];
    let (n, _) = rustix::net::recv(sock, &mut b, rustix::net::RecvFlags::empty()).unwrap();
    let (h, _) = BusHeader::read_from_prefix(&b[..n]).unwrap();
    (h, b[16..n].to_vec())
}

fn message(msg_type: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let h = BusHeader {
        magic: BUS_MAGIC,
        msg_type,
        length: 16 + body.len() as u32,
        seq,
    };
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn host_survives_garbage() {
    let (host_end, guest) = seqpacket_pair();
    let rejected = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = rejected.clone();
    let host = thread::spawn(move || {
        let mut s = HostSession::new(host_end, HostConfig::default()).unwrap();
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            match s.next_event().unwrap() {
                HostEvent::Disconnected => break,
                HostEvent::Rejected(e) => log.lock().unwrap().push(e.to_string()),
                _ => {}
            }
        }
    });
    let g = guest.as_fd();
    let expect_error = |code: u32, seq: u32| {
        let (h, body) = raw_reply(g);
        assert_eq!((h.msg_type, h.seq), (BUS_MSG_ERROR, seq));
        let e = blobring_abi::vmbus::BusError::read_from_bytes(&body).unwrap();
        assert_eq!(e.code, code);
    };
    raw_send(g, b"garbage", &[]);
    expect_error(BUS_ERR_MALFORMED, 0);
    let hello = BusHello {
        version: BUS_VERSION,
        reserved: 0,
    };
    // Bad magic, wrong length field, wrong body size, unknown type.
    let mut m = message(BUS_MSG_HELLO, 1, hello.as_bytes());
    m[0] ^= 1;
    raw_send(g, &m, &[]);
    expect_error(BUS_ERR_MALFORMED, 1);
    let mut m = message(BUS_MSG_HELLO, 2, hello.as_bytes());
    m[8] = 99;
    raw_send(g, &m, &[]);
    expect_error(BUS_ERR_MALFORMED, 2);
    raw_send(g, &message(BUS_MSG_HELLO, 3, &[0; 12]), &[]);
    expect_error(BUS_ERR_MALFORMED, 3);
    raw_send(g, &message(77, 4, &[]), &[]);
    expect_error(BUS_ERR_MALFORMED, 4);
    // Fds where none are allowed (they must be closed, not leaked or used).
    let efd: OwnedFd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    raw_send(
        g,
        &message(BUS_MSG_HELLO, 5, hello.as_bytes()),
        &[efd.as_fd(), efd.as_fd()],
    );
    expect_error(BUS_ERR_MALFORMED, 5);
    // Requests before HELLO, bad version, host-only message types.
    raw_send(g, &message(BUS_MSG_OPEN_CHANNEL, 6, &[0; 8]), &[]);
    expect_error(BUS_ERR_UNEXPECTED, 6);
    raw_send(
        g,
        &message(
            BUS_MSG_HELLO,
            7,
            BusHello {
                version: 99,
                reserved: 0,
            }
            .as_bytes(),
        ),
        &[],
    );
    expect_error(BUS_ERR_VERSION, 7);
    raw_send(g, &message(BUS_MSG_HELLO, 8, hello.as_bytes()), &[]);
    let (h, _) = raw_reply(g);
    assert_eq!((h.msg_type, h.seq), (BUS_MSG_OFFER, 8));
    raw_send(g, &message(BUS_MSG_RESCIND, 9, &[0; 8]), &[]);
    expect_error(BUS_ERR_UNEXPECTED, 9);
    // Register memory: no fd, a non-memfd, an unsealed memfd, misaligned, too large.
    let register = |seq: u32, gpa_base: u64, len: u64, fds: &[BorrowedFd<'_>]| {
        let reg = BusRegisterMemory {
            region_id: 1,
            gpa_base,
            len,
        };
        raw_send(
            g,
            &message(BUS_MSG_REGISTER_MEMORY, seq, reg.as_bytes()),
            fds,
        );
    };
    register(10, 0, 4096, &[]);
    expect_error(BUS_ERR_MALFORMED, 10);
    register(11, 0, 4096, &[efd.as_fd()]);
    expect_error(BUS_ERR_BAD_REGION, 11);
    let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 4096).unwrap();
    register(12, 0, 4096, &[unsealed.as_fd()]);
    expect_error(BUS_ERR_BAD_REGION, 12);
    let region = Region::create("ok", 8192).unwrap();
    register(13, 100, 4096, &[region.fd()]);
    expect_error(BUS_ERR_BAD_REGION, 13);
    register(14, 0, 1 << 30, &[region.fd()]);
    expect_error(BUS_ERR_BAD_REGION, 14);
    register(15, 0, 4096, &[region.fd()]);
    let (h, _) = raw_reply(g);
    assert_eq!((h.msg_type, h.seq), (BUS_MSG_MEMORY_REGISTERED, 15));
    // The session still works: a guest client can use a fresh HELLO on it.
    let mut client = BusClient::from_socket(guest).unwrap();
    let _ch = client.open_channel(0).unwrap();
    drop(_ch);
    drop(client);
    host.join().unwrap();
    let rejected = rejected.lock().unwrap();
    assert_eq!(rejected.len(), 14, "{rejected:?}");
}

/// Exercise the unused-import guard: the channel trait object is usable generically.
#[allow(dead_code)]
fn generic_send<C: Channel>(c: &mut C, p: &[u8]) -> Result<(), blobring_vmbus::ChannelError> {
    c.send(p)
}

/// A guest producer and a host consumer stream packets through a small ring on two threads,
/// each sleeping on its eventfd whenever it cannot progress. A lost wakeup (a missing signal
/// on empty → non-empty, or on pending_send_sz crossing) shows up as a 10 s poll timeout.
#[test]
fn concurrent_stream_has_no_lost_wakeups() {
    use blobring_vmbus::ChannelError;
    const N: u64 = 100_000;
    const WAIT: Duration = Duration::from_secs(10);
    let payload = |i: u64| -> Vec<u8> {
        let len = 8 + (i * 37 % 300) as usize;
        let mut v = i.to_le_bytes().to_vec();
        v.extend((8..len).map(|j| (i as usize + j) as u8));
        v
    };
    let (host_end, guest) = seqpacket_pair();
    let host = thread::spawn(move || {
        let config = HostConfig {
            max_channels: 1,
            ring_size: 8192,
            ..HostConfig::default()
        };
        let mut s = HostSession::new(host_end, config).unwrap();
        let mut ch = loop {
            match s.next_event().unwrap() {
                HostEvent::ChannelOpened(ch) => break ch,
                HostEvent::Disconnected => panic!("guest left"),
                _ => {}
            }
        };
        let (mut buf, mut next, mut sleeps) = (Vec::new(), 0u64, 0u64);
        while next < N {
            while let Some(p) = ch.recv(&mut buf).unwrap() {
                assert_eq!(p.trans_id(), next + 1);
                let want = payload(next);
                assert_eq!(&p.payload[..want.len()], &want[..]);
                next += 1;
                if next % 8 == 0 {
                    ch.release().unwrap();
                }
            }
            ch.release().unwrap();
            if next < N && !ch.arm().unwrap() {
                sleeps += 1;
                assert!(
                    wait_readable(ch.as_fd(), WAIT).unwrap(),
                    "consumer never signalled at {next}"
                );
                ch.clear_wakeups().unwrap();
            }
        }
        sleeps
    });
    let mut bus = BusClient::from_socket(guest).unwrap();
    let mut ch = bus.open_channel(0).unwrap();
    let (mut pkt, mut blocked) = (Vec::new(), 0u64);
    for i in 0..N {
        encode_inband(&mut pkt, i + 1, false, &payload(i)).unwrap();
        loop {
            match ch.send(&pkt) {
                Ok(()) => break,
                Err(ChannelError::Full { needed }) => {
                    if ch.wait_for_space(needed).unwrap() {
                        continue;
                    }
                    blocked += 1;
                    assert!(
                        wait_readable(ch.as_fd(), WAIT).unwrap(),
                        "producer never signalled at {i}"
                    );
                    ch.clear_wakeups().unwrap();
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    }
    let sleeps = host.join().unwrap();
    assert!(
        blocked > 0,
        "the ring never filled: the test did not exercise pending_send_sz"
    );
    eprintln!("producer blocked {blocked} times, consumer slept {sleeps} times");
}
