//! Feeds arbitrary datagrams to the emulated host's bus session, as a hostile guest could.
//!
//! Input: a sequence of `len u8 | len bytes` datagrams (at most 16). The session must answer
//! or reject each one and never panic; afterwards the guest end hangs up and the session must
//! report the disconnect.
#![no_main]

use std::os::fd::AsFd;

use blobring_vmbus::sim::host::{HostConfig, HostEvent, HostSession};
use libfuzzer_sys::fuzz_target;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

fuzz_target!(|data: &[u8]| {
    let (host_end, guest) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let config = HostConfig {
        max_channels: 4,
        ring_size: 8192,
        ..HostConfig::default()
    };
    let mut session = HostSession::new(host_end, config).unwrap();
    let mut rest = data;
    let mut sent = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        if rustix::net::send(&guest, msg, SendFlags::empty()).is_err() {
            break;
        }
        sent += 1;
        if sent == 16 {
            break;
        }
    }
    // Each datagram yields exactly one event (answered or rejected).
    for _ in 0..sent {
        match session.try_next_event().unwrap() {
            Some(HostEvent::Disconnected) | None => break,
            Some(_) => {}
        }
        // Drain replies so the host never blocks on a full socket buffer.
        let mut b = [0u8; 512];
        while rustix::net::recv(guest.as_fd(), &mut b, RecvFlags::DONTWAIT).is_ok() {}
    }
    drop(guest);
    // Whatever is still queued is handled first; then the hang-up must be reported.
    for _ in 0..=16 {
        match session.try_next_event().unwrap() {
            Some(HostEvent::Disconnected) => return,
            Some(_) => {}
            None => panic!("hang-up not reported"),
        }
    }
    panic!("hang-up not reported after every queued message");
});
