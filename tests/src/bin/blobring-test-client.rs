#![forbid(unsafe_code)]
//! A client process for integration tests.
//!
//! `blobring-test-client SOCKET nop N` — N NOP round trips at depth 16; prints `ok N`.
//! `blobring-test-client SOCKET hang` — submits 8 blob requests the test host holds, prints
//! `submitted`, then sleeps (the test kills it with SIGKILL).
//! `blobring-test-client SOCKET putget /account/container/blob BODY` — PUT then GET a blob
//! (against `blobring-host --no-auth`); prints each status line and body.
//! `blobring-test-client SOCKET wait` — waits on queue 0 for one completion; prints the res of
//! what it reaped (`res -104` when the daemon dies).

use std::time::{Duration, Instant};

use blobring::{Connection, Cqe, FromZeros};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut conn = Connection::connect(&args[1])?;
    match args[2].as_str() {
        "nop" => {
            let n: u64 = args[3].parse()?;
            let (mut sent, mut done) = (0u64, 0u64);
            let mut cq = vec![Cqe::new_zeroed(); 64];
            let deadline = Instant::now() + Duration::from_secs(30);
            while done < n {
                anyhow::ensure!(Instant::now() < deadline, "timed out after {done} of {n}");
                let batch: Vec<_> = (sent..(sent + 16).min(n).min(done + 16))
                    .map(blobring_tests::nop)
                    .collect();
                sent += conn.submit(0, &batch)? as u64;
                let got = conn.reap(0, &mut cq)?;
                for c in &cq[..got] {
                    anyhow::ensure!(c.res == 0, "NOP failed: {}", c.res);
                }
                done += got as u64;
                if got == 0 {
                    conn.wait(0, Some(Duration::from_secs(1)))?;
                }
            }
            println!("ok {done}");
        }
        "hang" => {
            let sqes: Vec<_> = (0..8)
                .map(|i| blobring_tests::blob_sqe(&mut conn, i, b"HANG /x", 0))
                .collect();
            conn.submit(0, &sqes)?;
            println!("submitted");
            std::thread::sleep(Duration::from_secs(60));
        }
        "wait" => {
            let sqe = blobring_tests::blob_sqe(&mut conn, 1, b"HANG /x", 0);
            conn.submit(0, &[sqe])?;
            println!("submitted");
            let mut cq = vec![Cqe::new_zeroed(); 4];
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                anyhow::ensure!(Instant::now() < deadline, "no completion");
                conn.wait(0, Some(Duration::from_secs(1)))?;
                match conn.reap(0, &mut cq) {
                    Ok(0) => continue,
                    Ok(_) => {
                        println!("res {}", cq[0].res);
                        break;
                    }
                    Err(e) => anyhow::bail!("{e}"),
                }
            }
        }
        "putget" => {
            // PUT a block blob, GET it back (path-style URL, host run with --no-auth).
            let path = &args[3];
            let body = args[4].as_bytes();
            let put = format!(
                "PUT {path} HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\nx-ms-blob-type: BlockBlob\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut sqe = blobring_tests::blob_sqe(&mut conn, 1, put.as_bytes(), body.len() as u32);
            conn.write_buf(sqe.data_offset, body)?;
            sqe.data_valid = body.len() as u32;
            let get = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\r\n"
            );
            let mut sqe2 = blobring_tests::blob_sqe(&mut conn, 2, get.as_bytes(), 4096);
            // Real response heads are longer than blob_sqe's 256 bytes.
            for s in [&mut sqe, &mut sqe2] {
                s.response_offset = conn.alloc(4096, 64)?.offset;
                s.response_len = 4096;
            }
            for s in [sqe, sqe2] {
                conn.submit(0, &[s])?;
                let mut cq = vec![Cqe::new_zeroed(); 1];
                let deadline = Instant::now() + Duration::from_secs(10);
                while conn.reap(0, &mut cq)? == 0 {
                    anyhow::ensure!(Instant::now() < deadline, "no completion");
                    conn.wait(0, Some(Duration::from_millis(100)))?;
                }
                let c = cq[0];
                let mut head = vec![0u8; c.response_len as usize];
                conn.read_buf(s.response_offset, &mut head)?;
                let mut data = vec![0u8; c.data_len as usize];
                conn.read_buf(s.data_offset, &mut data)?;
                println!(
                    "res {} vsp {} head {:?} body {:?}",
                    c.res,
                    c.vsp_status,
                    String::from_utf8_lossy(&head).lines().next().unwrap_or(""),
                    String::from_utf8_lossy(&data)
                );
            }
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    Ok(())
}
