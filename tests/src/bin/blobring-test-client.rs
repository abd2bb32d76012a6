#![forbid(unsafe_code)]
//! A client process for integration tests.
//!
//! `blobring-test-client SOCKET nop N` — N NOP round trips at depth 16; prints `ok N`.
//! `blobring-test-client SOCKET hang` — submits 8 blob requests the test host holds, prints
//! `submitted`, then sleeps (the test kills it with SIGKILL).
//! `blobring-test-client SOCKET wait` — waits on queue 0 for one completion; prints the res of
//! what it reaped (`res -104` when the daemon dies).

use std::time::{Duration, Instant};

use blobring::{Connection, Cqe, FromZeros, OP_NOP};

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
            let _ = OP_NOP;
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
        other => anyhow::bail!("unknown mode {other}"),
    }
    Ok(())
}
