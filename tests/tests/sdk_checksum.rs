//! MD5-verified striped transfers through a real `blobringd` and a real `blobring-host` with an
//! `fs` store: an upload stores the whole blob's MD5 (checked here against an MD5 computed
//! independently of the SDK), a download checks every range and the whole blob, and bytes
//! changed in the store behind the host's back are caught by every download consumer — while
//! an unverified (or CRC64-verified) download hands back the changed bytes.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blobring::blob::{AccountConfig, BlobError, BlobService, GetOptions, PutOptions};
use blobring::transfer::{self, Checksum, Download, TransferOptions};
use blobring::{Client, block_on};
use blobring_tests::{HostStack, scratch};
use futures_util::TryStreamExt;
use md5::Digest as _;

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");

/// 9 MiB and a bit: ten 1 MiB blocks, the last one short.
const SIZE: usize = (9 << 20) + 12_345;

fn service(s: &HostStack) -> BlobService {
    let client = Client::connect(&s.daemon.socket).expect("connect");
    BlobService::new(client, AccountConfig::emulator()).with_timeout(Duration::from_secs(60))
}

fn md5_b64(data: &[u8]) -> String {
    B64.encode(md5::Md5::digest(data))
}

fn body(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn md5_opts() -> TransferOptions {
    TransferOptions {
        chunk_size: 1 << 20,
        parallelism: 4,
        ..Default::default()
    }
    .with_checksum(Checksum::Md5)
}

/// A stack whose blob `md5/x` holds `body(SIZE, seed)`, uploaded with MD5 verification.
fn stack_with_md5_x(dir: &std::path::Path, seed: u64) -> (HostStack, BlobService, Vec<u8>) {
    let s = HostStack::start(DAEMON, dir, &[], &["--arena-size", "67108864"]);
    let svc = service(&s);
    block_on(svc.create_container("md5")).unwrap();
    let data = body(SIZE, seed);
    let put = PutOptions::default();
    block_on(transfer::upload_from_slice(
        &svc,
        "md5",
        "x",
        &data,
        &put,
        &md5_opts(),
    ))
    .unwrap();
    (s, svc, data)
}

#[test]
fn md5_upload_stores_the_blob_md5_and_md5_downloads_return_the_bytes() {
    let dir = scratch();
    let (_stack, svc, data) = stack_with_md5_x(dir.path(), 1);
    let opts = md5_opts();
    let blocks = block_on(svc.get_block_list("md5", "x")).unwrap();
    assert_eq!(
        blocks.committed.len(),
        SIZE.div_ceil(1 << 20),
        "one block per MiB"
    );
    let head = block_on(svc.head_blob("md5", "x", &GetOptions::default())).unwrap();
    assert_eq!(head.size, SIZE as u64);
    assert_eq!(
        head.content_md5,
        Some(md5_b64(&data)),
        "the whole blob's MD5 is stored"
    );
    // A ranged GET reports the whole blob's MD5 too (x-ms-blob-content-md5), not the range's.
    let g = block_on(svc.get_range("md5", "x", 0..100, &GetOptions::default(), None)).unwrap();
    assert_eq!(g.properties.content_md5, Some(md5_b64(&data)));

    let got = block_on(transfer::download_to_vec(&svc, "md5", "x", &opts)).unwrap();
    assert!(got == data, "an MD5-verified download returns the bytes");
    let mut d = block_on(Download::start(&svc, "md5", "x", &opts)).unwrap();
    let chunks: Vec<bytes::Bytes> = block_on((&mut d).try_collect()).unwrap();
    assert!(chunks.concat() == data, "the stream returns the bytes");

    // A stream with odd item sizes, and an empty one: the MD5 follows the bytes in order.
    let parts: Vec<_> = data
        .chunks(777_777)
        .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
        .collect();
    block_on(transfer::upload_from_stream(
        &svc,
        "md5",
        "streamed",
        futures_util::stream::iter(parts),
        None,
        &PutOptions::default(),
        &opts,
    ))
    .unwrap();
    let head = block_on(svc.head_blob("md5", "streamed", &GetOptions::default())).unwrap();
    assert_eq!(head.content_md5, Some(md5_b64(&data)));
    let none = futures_util::stream::iter(Vec::<Result<bytes::Bytes, std::io::Error>>::new());
    block_on(transfer::upload_from_stream(
        &svc,
        "md5",
        "empty",
        none,
        Some(0),
        &PutOptions::default(),
        &opts,
    ))
    .unwrap();
    let head = block_on(svc.head_blob("md5", "empty", &GetOptions::default())).unwrap();
    assert_eq!(head.content_md5, Some(md5_b64(b"")));
    let got = block_on(transfer::download_to_vec(&svc, "md5", "empty", &opts)).unwrap();
    assert!(got.is_empty());

    // A caller's content_md5 that the bytes do not match: nothing is committed.
    let wrong = PutOptions {
        content_md5: Some(md5_b64(b"something else")),
        ..Default::default()
    };
    let e = block_on(transfer::upload_from_slice(
        &svc, "md5", "wrong", &data, &wrong, &opts,
    ))
    .unwrap_err();
    match &e {
        BlobError::Integrity {
            what,
            expected,
            actual,
        } => {
            assert!(what.contains("md5/wrong"), "{e}");
            assert_eq!(expected, &md5_b64(b"something else"));
            assert_eq!(actual, &md5_b64(&data));
        }
        other => panic!("expected an integrity error, got {other}"),
    }
    let e = block_on(svc.head_blob("md5", "wrong", &GetOptions::default())).unwrap_err();
    assert!(e.is_not_found(), "nothing committed: {e}");
    // The caller's MD5 when it is right.
    let right = PutOptions {
        content_md5: Some(md5_b64(&data)),
        ..Default::default()
    };
    block_on(transfer::upload_from_slice(
        &svc, "md5", "right", &data, &right, &opts,
    ))
    .unwrap();

    // CRC64 (the default checksum) stores no MD5 and still round-trips verified.
    let crc = TransferOptions {
        chunk_size: 1 << 20,
        verify: true,
        ..Default::default()
    };
    block_on(transfer::upload_from_slice(
        &svc,
        "md5",
        "crc",
        &data,
        &PutOptions::default(),
        &crc,
    ))
    .unwrap();
    let head = block_on(svc.head_blob("md5", "crc", &GetOptions::default())).unwrap();
    assert_eq!(head.content_md5, None);
    assert!(block_on(transfer::download_to_vec(&svc, "md5", "crc", &crc)).unwrap() == data);
}

/// Asserts that `r` is the whole-blob MD5 failure of `md5/x`.
#[track_caller]
fn at_rest<T>(r: Result<T, BlobError>, want: &str, changed: &str, via: &str) {
    match r {
        Err(BlobError::Integrity {
            what,
            expected,
            actual,
        }) => {
            assert!(
                what.contains("md5/x") && what.contains("as a whole"),
                "{via}: {what}"
            );
            assert_eq!(expected, want, "{via}: the stored MD5");
            assert_eq!(actual, changed, "{via}: the MD5 of the bytes stored now");
        }
        Err(e) => panic!("{via}: expected the whole-blob integrity error, got {e}"),
        Ok(_) => panic!("{via}: expected the whole-blob integrity error, got the bytes"),
    }
}

#[test]
fn md5_download_catches_bytes_changed_at_rest_in_every_consumer() {
    let dir = scratch();
    let (s, svc, data) = stack_with_md5_x(dir.path(), 2);
    let opts = md5_opts();
    let at = (5 << 20) + 7;
    s.corrupt_stored_byte("md5", "x", at as u64);
    let mut changed = data.clone();
    changed[at] = !changed[at];
    let (want, now) = (md5_b64(&data), md5_b64(&changed));

    // Unverified, and CRC64-verified (the service computes each range's CRC64 from the bytes
    // it stores): the changed bytes come back.
    let plain = TransferOptions {
        chunk_size: 1 << 20,
        ..Default::default()
    };
    let got = block_on(transfer::download_to_vec(&svc, "md5", "x", &plain)).unwrap();
    assert!(
        got == changed,
        "an unverified download returns the bytes stored"
    );
    let crc = plain.clone().with_checksum(Checksum::Crc64);
    let got = block_on(transfer::download_to_vec(&svc, "md5", "x", &crc)).unwrap();
    assert!(
        got == changed,
        "per-range CRC64 cannot see a change at rest"
    );

    // MD5-verified: every consumer fails, naming the blob, the stored MD5 and the actual one.
    at_rest(
        block_on(transfer::download_to_vec(&svc, "md5", "x", &opts)),
        &want,
        &now,
        "download_to_vec",
    );
    let mut buf = vec![0u8; SIZE];
    at_rest(
        block_on(transfer::download_into(&svc, "md5", "x", &mut buf, &opts)),
        &want,
        &now,
        "download_into",
    );
    let mut w = Vec::new();
    at_rest(
        block_on(transfer::download_to_writer(
            &svc, "md5", "x", &mut w, &opts,
        )),
        &want,
        &now,
        "download_to_writer",
    );
    assert!(
        w.len() < SIZE,
        "the last chunk is withheld: {} bytes",
        w.len()
    );
    let file = dir.path().join("x.bin");
    at_rest(
        block_on(transfer::download_to_file(&svc, "md5", "x", &file, &opts)),
        &want,
        &now,
        "download_to_file",
    );

    // next_chunk: every chunk but the last, then the error in its place, then the end.
    let mut d = block_on(Download::start(&svc, "md5", "x", &opts)).unwrap();
    let mut bytes = 0;
    let mut failure = None;
    while let Some(c) = block_on(d.next_chunk()) {
        match c {
            Ok(c) => {
                assert!(failure.is_none(), "no chunk after the failure");
                bytes += c.len;
            }
            Err(e) => failure = Some(e),
        }
    }
    assert_eq!(
        bytes,
        SIZE - (SIZE % (1 << 20)),
        "all but the short last chunk"
    );
    let failure = failure.expect("next_chunk returns the failure");
    at_rest(Err::<(), _>(failure), &want, &now, "next_chunk");

    // The Stream.
    let d = block_on(Download::start(&svc, "md5", "x", &opts)).unwrap();
    at_rest(block_on(d.try_collect::<Vec<_>>()), &want, &now, "Stream");

    // The message says what failed and what to do.
    let e = block_on(transfer::download_to_vec(&svc, "md5", "x", &opts)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("integrity check failed for md5/x as a whole") && msg.contains("re-upload"),
        "{msg}"
    );
}
