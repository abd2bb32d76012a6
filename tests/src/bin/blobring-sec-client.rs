#![forbid(unsafe_code)]
//! A client process for the security tests, meant to be started under another uid/gid
//! (`std::os::unix::process::CommandExt::uid`/`gid` from a root test).
//!
//! `blobring-sec-client SOCKET once` — connects, runs one NOP round trip on every queue and
//! prints `ok CLIENT_ID UID GID`.
//! `blobring-sec-client SOCKET hold` — the same, then keeps the connection until its stdin
//! closes (the test holds a slot with it).
//!
//! `blobring-sec-client peek PID` — tries to list `/proc/PID/fd` and read `/proc/PID/environ`
//! and prints `peek ok N` (N open fds) or `peek denied: ERROR`.
//!
//! When the connection fails it prints `refused KIND: TEXT` (the daemon refused the
//! handshake) or `failed: TEXT` (anything else, e.g. the socket's permissions), TEXT being
//! the SDK's full error message, and exits with status 3.

use std::io::{Read, Write};
use std::time::Duration;

use blobring::{ConnectError, Connection};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "peek" {
        let pid = &args[2];
        let r = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .and_then(|d| d.collect::<Result<Vec<_>, _>>())
            .and_then(|fds| std::fs::read(format!("/proc/{pid}/environ")).map(|_| fds.len()));
        match r {
            Ok(n) => println!("peek ok {n}"),
            Err(e) => println!("peek denied: {e}"),
        }
        return Ok(());
    }
    anyhow::ensure!(
        args.len() == 3,
        "usage: blobring-sec-client SOCKET once|hold, or blobring-sec-client peek PID"
    );
    let mut conn = match Connection::connect(&args[1]) {
        Ok(c) => c,
        Err(e) => {
            match &e {
                ConnectError::Refused { kind, .. } => println!("refused {kind}: {e}"),
                _ => println!("failed: {e}"),
            }
            std::process::exit(3);
        }
    };
    for q in 0..conn.n_queues() {
        let user_data = 100 + u64::from(q);
        conn.submit(q, &[blobring_tests::nop(user_data)])?;
        let cqe = blobring_tests::reap_n(&mut conn, q, 1, Duration::from_secs(10));
        anyhow::ensure!(
            cqe[0].user_data == user_data && cqe[0].res == 0,
            "NOP on queue {q} completed as {:?}",
            cqe[0]
        );
    }
    println!(
        "ok {} {} {}",
        conn.client_id(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    std::io::stdout().flush()?;
    match args[2].as_str() {
        "once" => {}
        "hold" => {
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)?;
        }
        other => anyhow::bail!("unknown mode {other}; use once or hold"),
    }
    drop(conn);
    Ok(())
}
