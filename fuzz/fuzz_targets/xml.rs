//! The XML bodies parsed from peers, both ways:
//! - the client SDK's parsers of service responses (List Blobs, Get Block List, error bodies;
//!   `blobring::blob::fuzzing`) on arbitrary bytes;
//! - the emulated host's request-body reader behind Put Block List and Set Blob Tags, reached
//!   through the Blob executor as a VMBus client would;
//! - round trips: names and block ids chosen by the fuzzer are stored on the host
//!   (`mem` store), listed by the host's XML writer and parsed back by the client, and must come
//!   back exactly (escaping of `&`, `<`, quotes, control and non-ASCII characters).
//!
//! Input: a mode byte, then the mode's bytes. Must never panic; round trips must be exact.
#![no_main]

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blobring::blob::fuzzing::{parse_block_list, parse_error, parse_list};
use blobring_fuzz::mem_executor;
use blobring_host::{EMULATOR_ACCOUNT, Executor, SliceSink};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Runs one request; returns (status, body) or `None` when the response did not fit.
fn call(exec: &Executor, head: &str, body: &[u8], out: &mut [u8]) -> Option<(u16, Vec<u8>)> {
    let done = exec
        .execute(head.as_bytes(), body, &mut SliceSink(&mut *out))
        .ok()?;
    let head = done.head_bytes();
    let status = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    Some((status, out[..done.body_len].to_vec()))
}

fn put(exec: &Executor, path: &str, query: &str, body: &[u8], out: &mut [u8]) -> Option<u16> {
    let head = format!(
        "PUT /{EMULATOR_ACCOUNT}/data/{path}{query} HTTP/1.1\r\nx-ms-blob-type: BlockBlob\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    call(exec, &head, body, out).map(|(s, _)| s)
}

/// Splits `data` at zero bytes into at most `max` non-empty UTF-8 strings.
fn strings(data: &[u8], max: usize) -> Vec<String> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .take(max)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut out = vec![0u8; 64 << 10];
    match mode % 6 {
        0 => {
            if let Ok(page) = parse_list(rest) {
                assert!(page.next_marker.as_ref().is_none_or(|m| !m.is_empty()));
            }
        }
        1 => {
            let _ = parse_block_list(rest);
        }
        2 => {
            let _ = parse_error(rest);
        }
        // Put Block List with a fuzzed body, after staging two blocks.
        3 => {
            let exec = mem_executor(None);
            for id in ["QQ==", "Qg=="] {
                let q = format!(
                    "?comp=block&blockid={}",
                    utf8_percent_encode(id, NON_ALPHANUMERIC)
                );
                assert_eq!(put(&exec, "b", &q, b"abcd", &mut out), Some(201));
            }
            let _ = put(&exec, "b", "?comp=blocklist", rest, &mut out);
        }
        // Set Blob Tags with a fuzzed body.
        4 => {
            let exec = mem_executor(None);
            assert_eq!(put(&exec, "b", "", b"x", &mut out), Some(201));
            let _ = put(&exec, "b", "?comp=tags", rest, &mut out);
        }
        // Round trips through the host's XML writer and the client's parsers.
        _ => {
            let exec = mem_executor(None);
            let mut names = BTreeSet::new();
            for name in strings(rest, 8) {
                let path = utf8_percent_encode(&name, NON_ALPHANUMERIC).to_string();
                if put(&exec, &path, "", b"0123", &mut out) == Some(201) {
                    names.insert(name);
                }
            }
            let head = format!(
                "GET /{EMULATOR_ACCOUNT}/data?restype=container&comp=list HTTP/1.1\r\n\r\n"
            );
            let (status, body) = call(&exec, &head, &[], &mut out).expect("listing fits");
            assert_eq!(status, 200);
            let page = parse_list(&body).expect("the host's listing parses");
            let listed: BTreeSet<String> = page.blobs.iter().map(|b| b.name.clone()).collect();
            assert_eq!(
                listed,
                names,
                "listing:\n{}",
                String::from_utf8_lossy(&body)
            );
            assert!(page.blobs.iter().all(|b| b.size == 4));

            // Block ids: any bytes, base64 as the service requires.
            let ids: Vec<String> = rest
                .chunks(7)
                .take(8)
                .map(|c| B64.encode(c))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut staged = Vec::new();
            for id in &ids {
                let q = format!(
                    "?comp=block&blockid={}",
                    utf8_percent_encode(id, NON_ALPHANUMERIC)
                );
                if put(&exec, "blocks", &q, b"xy", &mut out) == Some(201) {
                    staged.push(id.clone());
                }
            }
            let head = format!(
                "GET /{EMULATOR_ACCOUNT}/data/blocks?comp=blocklist&blocklisttype=all HTTP/1.1\r\n\r\n"
            );
            if let Some((200, body)) = call(&exec, &head, &[], &mut out) {
                let bl = parse_block_list(&body).expect("the host's block list parses");
                let got: BTreeSet<&str> = bl.uncommitted.iter().map(|b| b.id.as_str()).collect();
                let want: BTreeSet<&str> = staged.iter().map(String::as_str).collect();
                assert_eq!(got, want, "block list:\n{}", String::from_utf8_lossy(&body));
                assert!(bl.committed.is_empty());
            } else {
                assert!(staged.is_empty(), "staged blocks but no block list");
            }
        }
    }
});
