//! Feeds arbitrary bytes to the Blob executor as a hostile VMBus client could: request heads
//! (parsed with `httparse`), queries, ranges, conditions, SharedKey/SAS fields, XML and
//! multipart bodies, executed on a `mem` store (container `data`) and answered into small buffers.
//!
//! Input: up to 8 requests separated by the 4 bytes `ff fe fd fc`; in each, the head runs to
//! the first `\r\n\r\n` (inclusive) and the rest is the body. Every request goes to an executor
//! without auth (so it reaches the store) and one verifying SharedKey/SAS with the emulator
//! key (so the auth parsers run); the stores persist across the requests of one input so
//! sequences (stage blocks, commit, read) are reachable. Must never panic or hang; a response
//! that does not fit the 4 KiB data buffer or the 512-byte response buffer must be a typed error.
#![no_main]

use blobring_fuzz::mem_executor;
use blobring_host::{EMULATOR_ACCOUNT, EMULATOR_KEY, SharedKeyAuth, SliceSink};
use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = &[0xff, 0xfe, 0xfd, 0xfc];
const MAX_REQUESTS: usize = 8;

fn split_requests(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < MAX_REQUESTS {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let open = mem_executor(None);
    let signed = mem_executor(Some(
        SharedKeyAuth::new(EMULATOR_ACCOUNT, EMULATOR_KEY).expect("emulator key is valid"),
    ));
    let mut out = vec![0u8; 4096];
    let mut head_buf = [0u8; 512];
    for req in split_requests(data) {
        let (head, body) = match req.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => req.split_at(i + 4),
            None => (req, &[][..]),
        };
        for exec in [&open, &signed] {
            match exec.execute(head, body, &mut SliceSink(&mut out)) {
                Ok(done) => {
                    assert!(done.body_len <= out.len());
                    let rendered = done.head_bytes();
                    assert_eq!(rendered.len(), done.head_len());
                    assert!(rendered.starts_with(b"HTTP/1.1 "));
                    match done.write_head(&mut head_buf) {
                        Ok(n) => assert_eq!(&head_buf[..n], &rendered[..]),
                        Err(_) => assert!(rendered.len() > head_buf.len()),
                    }
                }
                Err(e) => {
                    // Only the typed "does not fit" errors are expected from a host buffer.
                    assert!(
                        matches!(e, blobring_host::ExecuteError::BodyTooLarge { .. }),
                        "{e}"
                    );
                }
            }
        }
    }
});
