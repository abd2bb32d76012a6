//! The client↔daemon handshake, both directions, over real unix sockets:
//! - **daemon side**: a real `blobringd` (the library's `run`, in this process: one worker, no
//!   host, `--keep-privileges` so the fuzzer keeps its identity) receives fuzzed hello bytes
//!   (any length; magic, version, flags, reserved bytes, sizes) and must answer every complete
//!   hello with a well-formed 256-byte reply whose status follows the ABI's rules (file
//!   descriptors only with `HelloStatus::Ok`), and never accept a malformed hello;
//! - **client side**: the SDK's `Connection::connect_with` talks to a fuzzed daemon that answers
//!   with arbitrary reply bytes, a sealed region whose header and queue indices may be
//!   corrupt, and any number of file descriptors; it must return an error or a connection
//!   consistent with the reply and the region — never panic or hang.
//!
//! Input: byte 0 chooses the side (bit 0); the rest is that side's material (see below).
#![no_main]

use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use blobring::{ConnectOptions, Connection};
use blobring_abi::{
    ABI_VERSION, FromBytes, HELLO_REPLY_MAGIC, HELLO_REQUEST_MAGIC, HelloReply, HelloRequest,
    HelloStatus, IntoBytes, RegionGeometry, qc,
};
use blobring_fuzz::{Input, fuzzed_hello};
use blobring_ring::{EventFd, QueueLayout};
use blobring_shm::{PagePolicy, Region, RegionOptions, SharedMemory};
use clap::Parser as _;
use libfuzzer_sys::fuzz_target;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The in-process daemon's limits.
const QUEUE_DEPTH: u32 = 64;
const ARENA_LIMIT: u64 = 256 << 10;

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blobring-fuzz-handshake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// Daemon side

/// Starts the daemon once per fuzzing process; returns its client socket.
fn daemon() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let dir = scratch_dir();
        let socket = dir.join("d.sock");
        let arg = |p: &str| dir.join(p).display().to_string();
        let depth = QUEUE_DEPTH.to_string();
        let arena = ARENA_LIMIT.to_string();
        let cfg = blobring_daemon::Config::parse_from([
            "blobringd",
            "--socket",
            &arg("d.sock"),
            "--ctl-socket",
            &arg("d.ctl"),
            "--host-socket",
            &arg("no-host.sock"),
            "--transport",
            "sim",
            "--workers",
            "1",
            "--no-pin",
            "--keep-privileges",
            "--queue-depth",
            &depth,
            "--arena-size",
            &arena,
            "--max-clients",
            "100000",
            "--max-clients-per-uid",
            "100000",
        ]);
        std::thread::spawn(move || blobring_daemon::run(cfg).expect("in-process blobringd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "blobringd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        socket
    })
}

/// Reads up to 256 bytes and every file descriptor attached, until EOF, a full reply or the
/// timeout.
fn read_reply(sock: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; size_of::<HelloReply>()];
    let mut got = 0;
    let mut fds = Vec::new();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
    while got < buf.len() {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let Ok(r) = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[got..])],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) else {
            break;
        };
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if r.bytes == 0 {
            break;
        }
        got += r.bytes;
    }
    buf.truncate(got);
    (buf, fds)
}

fn daemon_side(mut inp: Input) {
    let socket = daemon();
    let mode = inp.u8();
    // Fixups make every branch reachable from short inputs.
    let mut hello = fuzzed_hello(&mut inp, mode, 10, 2 * ARENA_LIMIT);
    let mut bytes = hello.as_bytes().to_vec();
    // Short hellos, and bytes after the hello.
    let len = if mode & 0x10 != 0 {
        usize::from(inp.u8()) % 64
    } else {
        64
    };
    bytes.truncate(len);
    bytes.extend_from_slice(inp.0);
    // What the daemon reads as the hello: the first 64 bytes sent (trailing input bytes may
    // complete a truncated one).
    let complete = bytes.len() >= 64;
    if complete {
        hello = HelloRequest::read_from_bytes(&bytes[..64]).unwrap();
    }

    let sock = UnixStream::connect(socket).expect("daemon socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = (&sock).write_all(&bytes);
    if !complete || mode & 0x20 != 0 {
        let _ = sock.shutdown(std::net::Shutdown::Write);
    }
    let (reply, fds) = read_reply(&sock);
    if !complete && reply.is_empty() {
        // An incomplete hello: no reply at all, or a refusal.
        assert!(fds.is_empty());
        return;
    }
    assert_eq!(
        reply.len(),
        256,
        "partial reply to {} hello bytes",
        bytes.len()
    );
    let reply = HelloReply::read_from_bytes(&reply).unwrap();
    assert_eq!(reply.magic, HELLO_REPLY_MAGIC);
    assert_eq!(reply.abi_version, ABI_VERSION);
    let well_formed = complete
        && hello.magic == HELLO_REQUEST_MAGIC
        && hello.flags == 0
        && hello.reserved == [0; 40];
    let sq = if hello.sq_entries == 0 {
        QUEUE_DEPTH
    } else {
        hello.sq_entries
    };
    let acceptable = well_formed
        && hello.abi_version == ABI_VERSION
        && sq.is_power_of_two()
        && sq <= QUEUE_DEPTH
        && hello.arena_len <= ARENA_LIMIT;
    match HelloStatus::from_code(reply.status) {
        Some(HelloStatus::Ok) => {
            assert!(acceptable, "accepted {hello:?}");
            assert_eq!(reply.n_queues, 1);
            assert_eq!(fds.len(), 2, "memfd + one eventfd");
            assert!(reply.region_len > 0);
        }
        status => {
            assert!(fds.is_empty(), "fds with a refusal");
            assert!(!reply.message_text().is_empty(), "a refusal says why");
            match status {
                Some(HelloStatus::BadRequest) => assert!(!well_formed, "refused {hello:?}"),
                Some(HelloStatus::VersionMismatch) => assert_ne!(hello.abi_version, ABI_VERSION),
                Some(HelloStatus::LimitExceeded | HelloStatus::Unavailable) => {}
                _ => panic!("unknown status {}", reply.status),
            }
            assert!(!acceptable || status != Some(HelloStatus::BadRequest));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side

/// What the fuzzed daemon sends to the next connection.
struct Plan {
    reply: Vec<u8>,
    region: Option<Region>,
    fds: usize,
}

struct FakeDaemon {
    socket: PathBuf,
    plans: Mutex<Sender<Plan>>,
}

fn fake_daemon() -> &'static FakeDaemon {
    static FAKE: OnceLock<FakeDaemon> = OnceLock::new();
    FAKE.get_or_init(|| {
        let socket = scratch_dir().join("fake.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || serve(listener, rx));
        FakeDaemon {
            socket,
            plans: Mutex::new(tx),
        }
    })
}

fn serve(listener: UnixListener, plans: Receiver<Plan>) {
    let doorbells: Vec<EventFd> = (0..8).map(|_| EventFd::new().unwrap()).collect();
    for conn in listener.incoming() {
        let conn = conn.unwrap();
        let plan = plans.recv().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The client's hello is always well-formed.
        let mut hello = [0u8; 64];
        std::io::Read::read_exact(&mut &conn, &mut hello).unwrap();
        let hello = HelloRequest::read_from_bytes(&hello).unwrap();
        assert_eq!(hello.magic, HELLO_REQUEST_MAGIC);
        assert_eq!(hello.abi_version, ABI_VERSION);
        assert_eq!((hello.flags, hello.reserved), (0, [0; 40]));

        let mut fds: Vec<BorrowedFd> = Vec::new();
        if let Some(r) = &plan.region {
            fds.push(r.fd());
        }
        fds.extend(doorbells.iter().map(|d| d.as_fd()));
        fds.truncate(plan.fds);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
        }
        let _ = rustix::net::sendmsg(
            &conn,
            &[IoSlice::new(&plan.reply)],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        );
        // Dropping the connection: a connected client sees the daemon go away later.
    }
}

fn client_side(mut inp: Input) {
    let fake = fake_daemon();
    let flags = inp.u8();
    let shape = inp.u8();
    let n_queues = 1 + u32::from(shape & 3);
    let sq = 1 << (1 + (shape >> 2) % 6);
    let arena = 4096 * (1 + u64::from(inp.u8() % 16));
    let g = RegionGeometry::new(n_queues, sq, sq * 2, arena, 4096).unwrap();
    let client_id = u64::from(inp.u32());

    let region = Region::create_with(
        "fuzz-handshake",
        g.region_len,
        RegionOptions {
            pages: PagePolicy::Small,
            prefault: false,
        },
    )
    .unwrap();
    region.write_obj(0, &g.header(client_id)).unwrap();
    for q in 0..n_queues {
        QueueLayout::from_geometry(&g, q)
            .unwrap()
            .initialize(&region, 0)
            .unwrap();
    }
    // Corrupt the header (any byte of its 128) or a queue index.
    if flags & 1 != 0 {
        let off = u64::from(inp.u8() % 128);
        let mut b = vec![0u8; usize::from(inp.u8() % 9)];
        inp.fill(&mut b);
        let b = &b[..b.len().min((128 - off) as usize)];
        region.write(off, b).unwrap();
    }
    if flags & 2 != 0 {
        let q = u32::from(inp.u8()) % n_queues;
        let field = [qc::SQ_TAIL, qc::SQ_HEAD, qc::CQ_HEAD, qc::CQ_TAIL][usize::from(inp.u8() & 3)];
        region
            .store_u32(g.queue_control(q) + field, inp.u32(), Ordering::Relaxed)
            .unwrap();
    }

    let mut raw = [0u8; 256];
    inp.fill(&mut raw);
    let mut reply = HelloReply::read_from_bytes(&raw).unwrap();
    let honest = flags & 4 != 0;
    if honest {
        reply.magic = HELLO_REPLY_MAGIC;
        reply.abi_version = ABI_VERSION;
        reply.status = HelloStatus::Ok.code();
        reply.n_queues = n_queues;
        reply.region_len = g.region_len;
        reply.client_id = client_id;
    } else if flags & 8 != 0 {
        reply.magic = HELLO_REPLY_MAGIC;
        reply.status %= 8;
        reply.n_queues %= 8;
        reply.region_len = g.region_len.wrapping_add(u64::from(inp.u8() % 3) * 4096);
        reply.region_len = reply.region_len.wrapping_sub(4096);
    }
    let mut reply = reply.as_bytes().to_vec();
    if flags & 0x10 != 0 {
        reply.truncate(usize::from(inp.u8()));
    }
    let fds = if flags & 0x20 != 0 {
        usize::from(inp.u8() % 10)
    } else {
        1 + n_queues as usize
    };
    // Nothing corrupted, truncated, miscounted or withheld.
    let faithful = honest && flags & 0x73 == 0;
    let plan = Plan {
        reply: reply.clone(),
        region: (flags & 0x40 == 0).then_some(region),
        fds,
    };
    fake.plans.lock().unwrap().send(plan).unwrap();

    let started = Instant::now();
    // No retry: the fake daemon serves one plan per connection.
    let opts = ConnectOptions {
        handshake_retry: Some(Duration::ZERO),
        ..ConnectOptions::default()
    };
    let result = Connection::connect_with(&fake.socket, opts);
    assert!(started.elapsed() < Duration::from_secs(20), "connect hung");
    match result {
        Ok(conn) => {
            let r = HelloReply::read_from_bytes(&reply).expect("a full reply was sent");
            assert_eq!(r.magic, HELLO_REPLY_MAGIC);
            assert_eq!(r.status, HelloStatus::Ok.code());
            assert_eq!(conn.n_queues(), r.n_queues);
            assert_eq!(conn.client_id(), r.client_id);
            let cg = conn.geometry();
            assert_eq!(cg.region_len, r.region_len);
            assert!(cg.arena_offset + cg.arena_len <= cg.region_len);
            assert_eq!(fds, 1 + r.n_queues as usize);
        }
        Err(e) => assert!(!faithful, "a faithful daemon was refused: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    if inp.u8() & 1 == 0 {
        daemon_side(inp);
    } else {
        client_side(inp);
    }
});
