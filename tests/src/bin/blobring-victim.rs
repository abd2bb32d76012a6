#![forbid(unsafe_code)]
//! A well-behaved client process for the hostile-client suite (`tests/tests/hostile.rs`): Put
//! Blob / Get Blob of known content through `blobringd` and a real `blobring-host --no-auth`,
//! every byte it gets back checked, and its whole arena checked against a private shadow copy.
//!
//! `blobring-victim SOCKET CONTAINER` — connects (2 MiB arena), fills its arena with a
//! sentinel pattern derived from a key unique to this process, prints `ready`, then obeys
//! commands on stdin, one per line:
//! - `run MS`: runs the workload for MS milliseconds (8 slots in flight, spread over every
//!   queue; each slot alternates PUT `v<slot>` with new content and GET `v<slot>`), drains, and
//!   prints `ops N bytes B` (completed requests and body bytes moved in the window);
//! - `lat MS`: one request at a time (slot 0) for MS milliseconds; prints `lat n N p50 US p99
//!   US max US` (microseconds per request, submit to completion);
//! - `check`: compares the whole arena with the shadow copy, prints `check ok ARENA_BYTES`;
//! - `quit` (or end of input): exits 0.
//!
//! Every completion is checked: `res == 0`, no flags, VSP status 0, status line `201` (PUT) or
//! `200` (GET), the response buffer beyond the head still holds its sentinel, the request head
//! untouched, the data buffer of a PUT untouched, and the data buffer of a GET holds exactly the
//! content this process last stored, followed by its sentinel. The first mismatch ends the
//! process with exit status 1 and a message on stderr saying where and what.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use blobring::{ConnectOptions, Connection, Cqe, FromZeros, Opcode, Sqe};

const SLOTS: u64 = 8;
/// Bytes of arena per slot: request head at +0, response at +1 KiB, data at +4 KiB; the rest
/// of the stride is never used and must keep its sentinel.
const STRIDE: u64 = 32 << 10;
const REQ: u64 = 0;
const REQ_LEN: u64 = 512;
const RESP: u64 = 1024;
const RESP_LEN: u64 = 2048;
const DATA: u64 = 4096;
const DATA_LEN: u64 = 20 << 10;
const ARENA: u64 = 2 << 20;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `len` bytes of the stream `seed`.
fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&mix(seed ^ mix(i)).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

struct Slot {
    base: u64,
    queue: u32,
    seq: u64,
    /// Content last stored in `v<slot>` (None before the first PUT).
    stored: Option<Vec<u8>>,
    in_flight: Option<Op>,
}

struct Victim {
    conn: Connection,
    container: String,
    key: u64,
    arena: u64,
    /// What the arena must hold (between requests).
    shadow: Vec<u8>,
    slots: Vec<Slot>,
    cq: Vec<Cqe>,
}

impl Victim {
    fn write(&mut self, off: u64, bytes: &[u8]) -> anyhow::Result<()> {
        self.conn.write_buf(off, bytes)?;
        let s = (off - self.arena) as usize;
        self.shadow[s..s + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Resets `len` bytes at `off` to a fresh sentinel (so stale bytes from an earlier request
    /// can never pass for new ones).
    fn poison(&mut self, off: u64, len: u64, salt: u64) -> anyhow::Result<()> {
        let bytes = stream(self.key ^ mix(off) ^ mix(salt), len as usize);
        self.write(off, &bytes)
    }

    fn shadow(&self, off: u64, len: u64) -> &[u8] {
        let s = (off - self.arena) as usize;
        &self.shadow[s..s + len as usize]
    }

    fn submit(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &self.slots[i];
        let (base, queue, seq) = (slot.base, slot.queue, slot.seq);
        let op = if slot.stored.is_none() || seq % 2 == 0 {
            Op::Put
        } else {
            Op::Get
        };
        let path = format!("/devstoreaccount1/{}/v{i}", self.container);
        let (head, body) = match op {
            Op::Put => {
                let len = 4096 + (mix(self.key ^ seq ^ (i as u64) << 40) % 12_289) as usize;
                let body = stream(self.key ^ mix(i as u64) ^ mix(seq << 1), len);
                let head = format!(
                    "PUT {path} HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\
                     x-ms-blob-type: BlockBlob\r\nContent-Length: {len}\r\n\r\n"
                );
                (head, Some(body))
            }
            Op::Get => (
                format!(
                    "GET {path} HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\r\n"
                ),
                None,
            ),
        };
        ensure!(head.len() as u64 <= REQ_LEN, "request head too long");
        self.poison(base + RESP, RESP_LEN, seq)?;
        self.poison(base + DATA, DATA_LEN, seq)?;
        self.write(base + REQ, head.as_bytes())?;
        let data_valid = match &body {
            Some(b) => {
                self.write(base + DATA, b)?;
                b.len() as u32
            }
            None => 0,
        };
        let sqe = Sqe {
            opcode: Opcode::Blob.code(),
            user_data: i as u64,
            timeout_ms: 10_000,
            request_offset: base + REQ,
            request_len: head.len() as u32,
            response_offset: base + RESP,
            response_len: RESP_LEN as u32,
            data_offset: base + DATA,
            data_len: DATA_LEN as u32,
            data_valid,
            ..Sqe::new_zeroed()
        };
        ensure!(
            self.conn.submit(queue, &[sqe])? == 1,
            "queue {queue} refused a submission with 8 requests in flight"
        );
        let slot = &mut self.slots[i];
        slot.in_flight = Some(op);
        if let Some(b) = body {
            // Slots run one request at a time: the next GET of `v<slot>` follows this PUT's
            // acknowledgement, so it must return exactly these bytes.
            slot.stored = Some(b);
        }
        Ok(())
    }

    /// Checks one completion; returns the body bytes moved.
    fn complete(&mut self, c: Cqe) -> anyhow::Result<u64> {
        let i = c.user_data as usize;
        ensure!(
            i < self.slots.len(),
            "completion for unknown user_data {c:?}"
        );
        let Some(op) = self.slots[i].in_flight.take() else {
            bail!("completion for slot {i} with nothing in flight: {c:?}");
        };
        let (base, seq) = (self.slots[i].base, self.slots[i].seq);
        let what = format!(
            "slot {i} seq {seq} {}",
            if op == Op::Put { "PUT" } else { "GET" }
        );
        ensure!(
            c.res == 0 && c.flags == 0 && c.vsp_status == 0,
            "{what}: failed completion {c:?}"
        );
        ensure!(
            u64::from(c.response_len) <= RESP_LEN,
            "{what}: response_len {} exceeds its {RESP_LEN}-byte buffer",
            c.response_len
        );
        let mut resp = vec![0u8; RESP_LEN as usize];
        self.conn.read_buf(base + RESP, &mut resp)?;
        let n = c.response_len as usize;
        let want_status: &[u8] = if op == Op::Put {
            b"HTTP/1.1 201"
        } else {
            b"HTTP/1.1 200"
        };
        ensure!(
            resp.starts_with(want_status),
            "{what}: status line {:?}",
            String::from_utf8_lossy(&resp[..n.min(80)])
        );
        ensure!(
            resp[n..] == self.shadow(base + RESP, RESP_LEN)[n..],
            "{what}: response buffer changed beyond the {n}-byte head"
        );
        let mut req = vec![0u8; REQ_LEN as usize];
        self.conn.read_buf(base + REQ, &mut req)?;
        ensure!(
            req == self.shadow(base + REQ, REQ_LEN),
            "{what}: request head buffer changed"
        );
        let mut data = vec![0u8; DATA_LEN as usize];
        self.conn.read_buf(base + DATA, &mut data)?;
        let stored = self.slots[i].stored.as_deref().unwrap_or_default();
        let moved = match op {
            Op::Put => {
                ensure!(
                    data == self.shadow(base + DATA, DATA_LEN),
                    "{what}: the data buffer of a write changed"
                );
                stored.len() as u64
            }
            Op::Get => {
                let len = stored.len();
                ensure!(
                    c.data_len as usize == len,
                    "{what}: {} body bytes, expected {len}",
                    c.data_len
                );
                if let Some(at) = (0..len).find(|&j| data[j] != stored[j]) {
                    bail!(
                        "{what}: body byte {at} is {:#04x}, expected {:#04x} (wrong bytes in this \
                         client's buffer)",
                        data[at],
                        stored[at]
                    );
                }
                ensure!(
                    data[len..] == self.shadow(base + DATA, DATA_LEN)[len..],
                    "{what}: data buffer changed beyond the {len}-byte body"
                );
                len as u64
            }
        };
        // The host's writes are now part of the expected image.
        let s = (base + RESP - self.arena) as usize;
        self.shadow[s..s + n].copy_from_slice(&resp[..n]);
        let s = (base + DATA - self.arena) as usize;
        self.shadow[s..s + DATA_LEN as usize].copy_from_slice(&data);
        self.slots[i].seq += 1;
        Ok(moved)
    }

    /// Runs for `window`, then drains; returns (requests, body bytes).
    fn run(&mut self, window: Duration) -> anyhow::Result<(u64, u64)> {
        let t0 = Instant::now();
        let (mut ops, mut bytes) = (0u64, 0u64);
        let nq = self.conn.n_queues();
        let mut wait_q = 0;
        loop {
            let open = t0.elapsed() < window;
            if open {
                for i in 0..self.slots.len() {
                    if self.slots[i].in_flight.is_none() {
                        self.submit(i)?;
                    }
                }
            } else if self.slots.iter().all(|s| s.in_flight.is_none()) {
                return Ok((ops, bytes));
            }
            ensure!(
                t0.elapsed() < window + Duration::from_secs(20),
                "requests still in flight 20 s after the window closed"
            );
            let mut got = 0;
            for q in 0..nq {
                let n = self.conn.reap(q, &mut self.cq)?;
                got += n;
                for k in 0..n {
                    let c = self.cq[k];
                    bytes += self.complete(c)?;
                    if t0.elapsed() < window {
                        ops += 1;
                    }
                }
            }
            if got == 0 {
                wait_q = (wait_q + 1) % nq;
                self.conn.wait(wait_q, Some(Duration::from_millis(1)))?;
            }
        }
    }

    /// One request at a time on slot 0 (PUT and GET of `v0` alternating) for `window`;
    /// returns each request's latency in microseconds.
    fn latency(&mut self, window: Duration) -> anyhow::Result<Vec<u64>> {
        let t0 = Instant::now();
        let q = self.slots[0].queue;
        let mut lat = Vec::new();
        while t0.elapsed() < window {
            let start = Instant::now();
            self.submit(0)?;
            loop {
                let n = self.conn.reap(q, &mut self.cq)?;
                for k in 0..n {
                    let c = self.cq[k];
                    self.complete(c)?;
                }
                if n > 0 {
                    break;
                }
                ensure!(
                    start.elapsed() < Duration::from_secs(120),
                    "one request took more than 120 s"
                );
                self.conn.wait(q, Some(Duration::from_millis(1)))?;
            }
            lat.push(start.elapsed().as_micros() as u64);
        }
        Ok(lat)
    }

    fn check(&self) -> anyhow::Result<u64> {
        let mut now = vec![0u8; self.shadow.len()];
        self.conn.read_buf(self.arena, &mut now)?;
        if let Some(at) = (0..now.len()).find(|&j| now[j] != self.shadow[j]) {
            let end = (at..now.len())
                .find(|&j| now[j] == self.shadow[j])
                .unwrap_or(now.len());
            bail!(
                "arena bytes {at}..{end} (region offset {:#x}) changed outside any request: \
                 {:02x?}… instead of {:02x?}…",
                self.arena + at as u64,
                &now[at..end.min(at + 16)],
                &self.shadow[at..end.min(at + 16)]
            );
        }
        Ok(now.len() as u64)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(args.len() == 3, "usage: blobring-victim SOCKET CONTAINER");
    let conn = Connection::connect_with(
        &args[1],
        ConnectOptions {
            arena_len: ARENA,
            ..Default::default()
        },
    )
    .context("connecting to blobringd")?;
    let g = *conn.geometry();
    ensure!(
        g.arena_len >= SLOTS * STRIDE,
        "arena of {} bytes is too small",
        g.arena_len
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let key = mix(u64::from(std::process::id()) ^ mix(conn.client_id()) ^ now.as_nanos() as u64);
    let n_queues = conn.n_queues();
    let mut v = Victim {
        conn,
        container: args[2].clone(),
        key,
        arena: g.arena_offset,
        shadow: vec![0; g.arena_len as usize],
        slots: (0..SLOTS)
            .map(|i| Slot {
                base: g.arena_offset + i * STRIDE,
                queue: (i % u64::from(n_queues)) as u32,
                seq: 0,
                stored: None,
                in_flight: None,
            })
            .collect(),
        cq: vec![Cqe::new_zeroed(); 64],
    };
    let sentinel = stream(key, g.arena_len as usize);
    v.write(g.arena_offset, &sentinel)?;
    // One PUT per slot so that every later GET has content to check.
    for i in 0..v.slots.len() {
        v.submit(i)?;
    }
    v.run(Duration::ZERO)?;
    v.check()?;
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("run") => {
                let ms: u64 = words.next().context("run MS")?.parse()?;
                let (ops, bytes) = v.run(Duration::from_millis(ms))?;
                println!("ops {ops} bytes {bytes}");
            }
            Some("lat") => {
                let ms: u64 = words.next().context("lat MS")?.parse()?;
                let mut lat = v.latency(Duration::from_millis(ms))?;
                lat.sort_unstable();
                let at = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
                println!(
                    "lat n {} p50 {} p99 {} max {}",
                    lat.len(),
                    at(50),
                    at(99),
                    lat[lat.len() - 1]
                );
            }
            Some("check") => println!("check ok {}", v.check()?),
            Some("quit") | None => break,
            Some(other) => bail!("unknown command {other:?}"),
        }
    }
    Ok(())
}
