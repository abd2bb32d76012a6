//! Per-operation tests of the executor through its VMBus entry point: raw request heads in,
//! rendered heads and bodies out.

use std::sync::Arc;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use md5::{Digest, Md5};

use super::*;
use crate::auth::{EMULATOR_ACCOUNT, EMULATOR_KEY};
use crate::request::ResponseHeaders;
use crate::store::MemStore;

fn exec_with(auth: Option<SharedKeyAuth>, faults: Faults) -> Executor {
    let e = Executor::new(
        Arc::new(MemStore::new()),
        ExecutorConfig {
            account: EMULATOR_ACCOUNT.into(),
            auth,
            faults,
        },
    );
    e.backend().create_container("test", Vec::new()).unwrap();
    e
}

/// An executor verifying SharedKey with the emulator key, and a signer with that key.
fn signed_exec() -> (SharedKeyAuth, Executor) {
    let auth = SharedKeyAuth::new(EMULATOR_ACCOUNT, EMULATOR_KEY).unwrap();
    (auth.clone(), exec_with(Some(auth), Faults::default()))
}

fn exec() -> Executor {
    exec_with(None, Faults::default())
}

struct R {
    status: u16,
    headers: ResponseHeaders,
    body: Vec<u8>,
}

impl R {
    fn h(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn code(&self) -> Option<&str> {
        self.h("x-ms-error-code")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn head(method: &str, path: &str, headers: &[&str], body_len: usize) -> String {
    let mut s = format!(
        "{method} /devstoreaccount1/test{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-ms-version: 2023-11-03\r\n"
    );
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if body_len > 0 {
        s.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    s.push_str("\r\n");
    s
}

fn run(e: &Executor, method: &str, path: &str, headers: &[&str], body: &[u8]) -> R {
    let h = head(method, path, headers, body.len());
    let mut out = vec![0u8; 1 << 20];
    let ex = e.execute_into(h.as_bytes(), body, &mut out).expect("fits");
    out.truncate(ex.body_len);
    // The rendered head must parse as an HTTP response with the same status.
    let bytes = ex.head_bytes();
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hdrs);
    assert!(matches!(resp.parse(&bytes), Ok(httparse::Status::Complete(n)) if n == bytes.len()));
    assert_eq!(resp.code, Some(ex.status.as_u16()));
    R {
        status: ex.status.as_u16(),
        headers: ex.headers,
        body: out,
    }
}

fn put(e: &Executor, path: &str, body: &[u8], headers: &[&str]) -> R {
    let mut h = vec!["x-ms-blob-type: BlockBlob"];
    h.extend_from_slice(headers);
    run(e, "PUT", path, &h, body)
}

#[test]
fn put_get_head_delete() {
    let e = exec();
    let r = put(
        &e,
        "/a/b.txt",
        b"hello world",
        &[
            "x-ms-meta-Colour: blue",
            "x-ms-blob-content-type: text/plain",
        ],
    );
    assert_eq!(r.status, 201);
    let etag = r.h("etag").unwrap().to_owned();
    assert!(etag.starts_with("\"0x"));
    assert_eq!(r.h("content-md5"), Some("XrY7u+Ae7tCTyyK7j1rNww=="));

    let r = run(&e, "GET", "/a/b.txt", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.h("etag"), Some(etag.as_str()));
    assert_eq!(r.h("content-length"), Some("11"));
    assert_eq!(r.h("content-type"), Some("text/plain"));
    assert_eq!(r.h("x-ms-meta-colour"), Some("blue"));
    assert_eq!(r.h("x-ms-blob-type"), Some("BlockBlob"));
    assert_eq!(r.h("x-ms-version"), Some("2023-11-03"));
    assert!(r.h("x-ms-request-id").is_some());
    assert!(r.h("last-modified").is_some());
    assert!(r.h("x-ms-creation-time").is_some());

    let r = run(&e, "HEAD", "/a/b.txt", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.h("content-length"), Some("11"));

    let r = run(&e, "DELETE", "/a/b.txt", &[], b"");
    assert_eq!(r.status, 202);
    let r = run(&e, "GET", "/a/b.txt", &[], b"");
    assert_eq!((r.status, r.code()), (404, Some("BlobNotFound")));
    assert!(
        r.text()
            .contains("<Error><Code>BlobNotFound</Code><Message>")
    );
    let r = run(&e, "HEAD", "/a/b.txt", &[], b"");
    assert_eq!((r.status, r.code()), (404, Some("BlobNotFound")));
    assert!(r.body.is_empty());
    let r = run(&e, "DELETE", "/a/b.txt", &[], b"");
    assert_eq!((r.status, r.code()), (404, Some("BlobNotFound")));
}

#[test]
fn missing_container() {
    let e = exec();
    let h = "GET /devstoreaccount1/nope/x HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut out = vec![0; 4096];
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!(ex.status, 404);
    assert_eq!(&ex.headers["x-ms-error-code"], "ContainerNotFound");
    assert!(
        std::str::from_utf8(&out[..ex.body_len])
            .unwrap()
            .contains("ContainerNotFound")
    );
}

#[test]
fn containers() {
    let e = exec();
    let mk = |name: &str, m: &str| {
        let h =
            format!("{m} /devstoreaccount1/{name}?restype=container HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut out = vec![0; 4096];
        let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
        (
            ex.status.as_u16(),
            ex.headers
                .get("x-ms-error-code")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    };
    assert_eq!(mk("other", "PUT"), (201, None));
    assert_eq!(
        mk("other", "PUT"),
        (409, Some("ContainerAlreadyExists".into()))
    );
    assert_eq!(mk("Bad_Name", "PUT"), (400, Some("OutOfRangeInput".into())));
    assert_eq!(mk("ab", "PUT"), (400, Some("OutOfRangeInput".into())));
    assert_eq!(mk("other", "GET"), (200, None));
    assert_eq!(mk("other", "DELETE"), (202, None));
    assert_eq!(
        mk("other", "DELETE"),
        (404, Some("ContainerNotFound".into()))
    );
    let h = "GET /devstoreaccount1?comp=list HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut out = vec![0; 4096];
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!(ex.status, 200);
    let x = std::str::from_utf8(&out[..ex.body_len]).unwrap();
    assert!(x.contains("<Container><Name>test</Name>"), "{x}");
}

#[test]
fn ranges() {
    let e = exec();
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    put(&e, "/r", &data, &[]);
    let r = run(&e, "GET", "/r", &["Range: bytes=10-19"], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.h("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(r.body, &data[10..20]);
    // x-ms-range wins over Range.
    let r = run(
        &e,
        "GET",
        "/r",
        &["Range: bytes=10-19", "x-ms-range: bytes=0-1"],
        b"",
    );
    assert_eq!(r.body, &data[0..2]);
    // Open-ended and past-the-end end.
    let r = run(&e, "GET", "/r", &["x-ms-range: bytes=990-"], b"");
    assert_eq!(
        (r.status, r.h("content-range")),
        (206, Some("bytes 990-999/1000"))
    );
    let r = run(&e, "GET", "/r", &["x-ms-range: bytes=995-5000"], b"");
    assert_eq!(r.body, &data[995..]);
    // Start past the end.
    let r = run(&e, "GET", "/r", &["Range: bytes=1000-1001"], b"");
    assert_eq!((r.status, r.code()), (416, Some("InvalidRange")));
    assert_eq!(r.h("content-range"), Some("bytes */1000"));
    // Any range on an empty blob is 416 (as Azure; Azurite answers 206).
    put(&e, "/empty", b"", &[]);
    let r = run(&e, "GET", "/empty", &["Range: bytes=0-"], b"");
    assert_eq!((r.status, r.h("content-range")), (416, Some("bytes */0")));
    let r = run(&e, "GET", "/empty", &[], b"");
    assert_eq!((r.status, r.body.len()), (200, 0));
    // Transactional MD5 of a range.
    let r = run(
        &e,
        "GET",
        "/r",
        &["x-ms-range: bytes=0-9", "x-ms-range-get-content-md5: true"],
        b"",
    );
    assert_eq!(
        r.h("content-md5").unwrap(),
        BASE64_STANDARD.encode(Md5::digest(&data[..10]))
    );
}

/// A body window carries part of the body of the answer the request would get, with that
/// answer's status and headers; pinned to an ETag, a changed blob is 412; a signed request
/// still verifies with the (unsigned) window headers added.
#[test]
fn body_windows_of_whole_and_ranged_answers() {
    let e = exec();
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    put(&e, "/w", &data, &["x-ms-blob-content-type: text/plain"]);
    let whole = run(&e, "GET", "/w", &[], b"");
    let w = run(&e, "GET", "/w", &["x-blobring-body-window: 100-299"], b"");
    assert_eq!((w.status, &w.body[..]), (200, &data[100..300]));
    assert_eq!(w.h("x-blobring-body-window"), Some("100/1000"));
    assert_eq!(w.h("content-length"), Some("200"));
    for h in ["etag", "content-md5", "content-type", "last-modified"] {
        assert_eq!(w.h(h), whole.h(h), "{h}");
    }
    // Past the end: clipped, then empty.
    let w = run(&e, "GET", "/w", &["x-blobring-body-window: 900-5000"], b"");
    assert_eq!(&w.body[..], &data[900..]);
    let w = run(&e, "GET", "/w", &["x-blobring-body-window: 1000-1999"], b"");
    assert_eq!(
        (w.body.len(), w.h("x-blobring-body-window")),
        (0, Some("1000/1000"))
    );
    // Within a signed range: offsets are into the range's body, the 206 and Content-Range kept.
    let w = run(
        &e,
        "GET",
        "/w",
        &["x-ms-range: bytes=500-899", "x-blobring-body-window: 10-19"],
        b"",
    );
    assert_eq!((w.status, &w.body[..]), (206, &data[510..520]));
    assert_eq!(w.h("content-range"), Some("bytes 500-899/1000"));
    assert_eq!(w.h("x-blobring-body-window"), Some("10/400"));
    // Pinned to the current ETag: served; after an overwrite: 412.
    let etag = whole.h("etag").unwrap().to_owned();
    let pin = format!("x-blobring-body-window-etag: {etag}");
    let w = run(&e, "GET", "/w", &["x-blobring-body-window: 0-9", &pin], b"");
    assert_eq!((w.status, &w.body[..]), (200, &data[..10]));
    put(&e, "/w", b"changed", &[]);
    let w = run(&e, "GET", "/w", &["x-blobring-body-window: 0-9", &pin], b"");
    assert_eq!((w.status, w.code()), (412, Some("ConditionNotMet")));
    // Malformed windows, and a window that would split a transactional hash.
    for bad in ["9-0", "a-b", "10"] {
        let w = run(
            &e,
            "GET",
            "/w",
            &[&format!("x-blobring-body-window: {bad}")],
            b"",
        );
        assert_eq!(
            (w.status, w.code()),
            (400, Some("InvalidHeaderValue")),
            "{bad}"
        );
    }
    let w = run(
        &e,
        "GET",
        "/w",
        &[
            "x-ms-range: bytes=0-5",
            "x-ms-range-get-content-md5: true",
            "x-blobring-body-window: 0-1",
        ],
        b"",
    );
    assert_eq!(w.status, 400);
    // HEAD ignores it.
    let h = run(&e, "HEAD", "/w", &["x-blobring-body-window: 0-1"], b"");
    assert_eq!((h.status, h.h("x-blobring-body-window")), (200, None));
    // The window is not signed: a SharedKey request verifies with it added.
    let (auth, e) = signed_exec();
    let mut out = vec![0; 4096];
    let h = signed_head(
        &auth,
        "PUT",
        "/devstoreaccount1/test/s",
        &[("x-ms-blob-type", "BlockBlob"), ("content-length", "4")],
    );
    assert_eq!(
        e.execute_into(h.as_bytes(), b"abcd", &mut out)
            .unwrap()
            .status,
        201
    );
    let h = signed_head(&auth, "GET", "/devstoreaccount1/test/s", &[])
        .replace("\r\n\r\n", "\r\nx-blobring-body-window: 1-2\r\n\r\n");
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!((ex.status.as_u16(), &out[..ex.body_len]), (200, &b"bc"[..]));
}

/// A Put Blob carried in body parts: staged part by part (202, nothing visible), committed by
/// the last part with the signed head's properties and the whole body's MD5 checked; parts out
/// of order abandon the upload; a wrong MD5 leaves the previous blob as it was.
#[test]
fn put_blob_in_parts_commits_once_whole_and_checked() {
    let e = exec();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 + 5) as u8).collect();
    let md5 = BASE64_STANDARD.encode(Md5::digest(&data));
    let part = |first: usize, n: usize, id: &str, extra: &str| {
        let h = format!(
            "PUT /devstoreaccount1/test/p HTTP/1.1\r\nHost: h\r\nx-ms-version: 2023-11-03\r\n\
             x-ms-blob-type: BlockBlob\r\nContent-Length: {}\r\n\
             x-blobring-body-part: {first}/{}\r\nx-blobring-body-part-id: {id}\r\n{extra}\r\n",
            data.len(),
            data.len()
        );
        let mut out = vec![0u8; 4096];
        let ex = e
            .execute_into(h.as_bytes(), &data[first..first + n], &mut out)
            .unwrap();
        let text = String::from_utf8_lossy(&out[..ex.body_len]).into_owned();
        (ex.status.as_u16(), ex.headers, text)
    };
    let good = format!("Content-MD5: {md5}\r\nx-ms-blob-content-type: text/csv\r\n");
    let (st, h, _) = part(0, 4000, "u1", &good);
    assert_eq!((st, &h["x-blobring-body-part"]), (202, "4000/10000"));
    assert_eq!(
        run(&e, "GET", "/p", &[], b"").status,
        404,
        "visible before the last part"
    );
    assert_eq!(part(4000, 4000, "u1", &good).0, 202);
    let (st, h, text) = part(8000, 2000, "u1", &good);
    assert_eq!(st, 201, "{text}");
    assert_eq!(&h["content-md5"], md5);
    let r = run(&e, "GET", "/p", &[], b"");
    assert!(r.body == data, "the committed blob differs");
    assert_eq!(r.h("content-type"), Some("text/csv"));
    assert_eq!(r.h("content-md5"), Some(&*md5));
    // Out of order: refused, and the upload is forgotten.
    assert_eq!(part(0, 4000, "u2", "").0, 202);
    assert_eq!(part(8000, 2000, "u2", "").0, 400);
    assert_eq!(part(4000, 4000, "u2", "").0, 400);
    // A Content-MD5 that is not the whole body's: 400 at the last part, the blob unchanged.
    let wrong = "Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==\r\n";
    assert_eq!(part(0, 4000, "u3", wrong).0, 202);
    assert_eq!(part(4000, 6000, "u3", wrong).0, 400);
    assert!(run(&e, "GET", "/p", &[], b"").body == data);
    // Bad part headers.
    assert_eq!(part(0, 10_000, "bad/id", "").0, 400);
}

#[test]
fn body_larger_than_buffer_is_a_transport_error() {
    let e = exec();
    put(&e, "/big", &[7u8; 5000], &[]);
    let h = head("GET", "/big", &[], 0);
    let mut out = vec![0u8; 4096];
    assert_eq!(
        e.execute_into(h.as_bytes(), b"", &mut out).unwrap_err(),
        ExecuteError::BodyTooLarge {
            needed: 5000,
            capacity: 4096
        }
    );
    // The same request with a range that fits succeeds.
    let h = head("GET", "/big", &["x-ms-range: bytes=0-4095"], 0);
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!((ex.status.as_u16(), ex.body_len), (206, 4096));
    // A head that does not fit the response buffer reports the size needed.
    let mut small = [0u8; 16];
    match ex.write_head(&mut small) {
        Err(ExecuteError::HeadTooLarge {
            needed,
            capacity: 16,
        }) => assert_eq!(needed, ex.head_len()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn write_conditions() {
    let e = exec();
    let r = put(&e, "/c", b"1", &[]);
    let etag = r.h("etag").unwrap().to_owned();
    let r = put(&e, "/c", b"2", &["If-Match: \"0xdead\""]);
    assert_eq!((r.status, r.code()), (412, Some("ConditionNotMet")));
    let r = put(&e, "/c", b"2", &["If-None-Match: *"]);
    assert_eq!((r.status, r.code()), (409, Some("BlobAlreadyExists")));
    let r = put(&e, "/c", b"2", &[&format!("If-Match: {etag}")]);
    assert_eq!(r.status, 201);
    // If-Match on a missing blob fails the condition.
    let r = put(&e, "/missing", b"2", &[&format!("If-Match: {etag}")]);
    assert_eq!(r.status, 412);
    let r = put(&e, "/new", b"2", &["If-None-Match: *"]);
    assert_eq!(r.status, 201);
    let r = put(
        &e,
        "/c",
        b"3",
        &["If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
    );
    assert_eq!(r.status, 412);
    let r = run(&e, "DELETE", "/c", &["If-Match: \"0xdead\""], b"");
    assert_eq!(r.status, 412);
    let r = run(
        &e,
        "PUT",
        "/c",
        &["x-ms-blob-type: BlockBlob", "If-Modified-Since: garbage"],
        b"x",
    );
    assert_eq!((r.status, r.code()), (400, Some("InvalidHeaderValue")));
}

#[test]
fn read_conditions() {
    let e = exec();
    let etag = put(&e, "/c", b"1", &[]).h("etag").unwrap().to_owned();
    let r = run(&e, "GET", "/c", &[&format!("If-None-Match: {etag}")], b"");
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.h("etag"), Some(etag.as_str()));
    let r = run(
        &e,
        "GET",
        "/c",
        &["If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT"],
        b"",
    );
    assert_eq!(r.status, 304);
    let r = run(
        &e,
        "GET",
        "/c",
        &["If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = run(&e, "GET", "/c", &["If-Match: \"0xdead\""], b"");
    assert_eq!((r.status, r.code()), (412, Some("ConditionNotMet")));
    let r = run(
        &e,
        "HEAD",
        "/c",
        &["If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
        b"",
    );
    assert_eq!(r.status, 412);
    let r = run(&e, "GET", "/c", &[&format!("If-Match: {etag}")], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn integrity_checks() {
    let e = exec();
    let r = put(
        &e,
        "/m",
        b"hello",
        &["Content-MD5: AAAAAAAAAAAAAAAAAAAAAA=="],
    );
    assert_eq!((r.status, r.code()), (400, Some("Md5Mismatch")));
    let md5 = BASE64_STANDARD.encode(Md5::digest(b"hello"));
    let r = put(&e, "/m", b"hello", &[&format!("Content-MD5: {md5}")]);
    assert_eq!(r.status, 201);
    let r = put(&e, "/m", b"hello", &["x-ms-content-crc64: AQIDBAUGBwg="]);
    assert_eq!((r.status, r.code()), (400, Some("Crc64Mismatch")));
    let crc = BASE64_STANDARD.encode(crc64(b"hello"));
    let r = put(&e, "/m", b"hello", &[&format!("x-ms-content-crc64: {crc}")]);
    assert_eq!(r.status, 201);
    assert_eq!(r.h("x-ms-content-crc64"), Some(crc.as_str()));
    let r = run(
        &e,
        "PUT",
        "/m?comp=block&blockid=QQ%3D%3D",
        &["Content-MD5: AAAAAAAAAAAAAAAAAAAAAA=="],
        b"x",
    );
    assert_eq!(r.code(), Some("Md5Mismatch"));
    // Content-Length must match the data buffer.
    let h = "PUT /devstoreaccount1/test/m HTTP/1.1\r\nx-ms-blob-type: BlockBlob\r\nContent-Length: 9\r\n\r\n";
    let mut out = vec![0; 4096];
    let ex = e.execute_into(h.as_bytes(), b"abc", &mut out).unwrap();
    assert_eq!(ex.status, 400);
}

/// Values returned by the real service (recorded in Azure SDK test fixtures).
#[test]
fn crc64_matches_azure() {
    assert_eq!(
        BASE64_STANDARD.encode(crc64(b"Hello World")),
        "YeJLfssylmU="
    );
    assert_eq!(
        BASE64_STANDARD.encode(crc64(b"Hello World!")),
        "peH8Xsgc5QI="
    );
    assert_eq!(
        BASE64_STANDARD.encode(Md5::digest(b"Hello World")),
        "sQqNsWTgdUEFt6mb5y4/5Q=="
    );
}

fn b64(s: &str) -> String {
    BASE64_STANDARD.encode(s)
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[test]
fn blocks() {
    let e = exec();
    for (id, data) in [("a", "AAA"), ("b", "BB"), ("c", "C")] {
        let r = run(
            &e,
            "PUT",
            &format!("/blk?comp=block&blockid={}", enc(&b64(id))),
            &[],
            data.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Not visible before commit.
    assert_eq!(run(&e, "GET", "/blk", &[], b"").status, 404);
    let r = run(&e, "GET", "/blk?comp=blocklist&blocklisttype=all", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains(&format!(
        "<UncommittedBlocks><Block><Name>{}</Name><Size>3</Size></Block>",
        b64("a")
    )));
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Uncommitted>{}</Uncommitted><Latest>{}</Latest></BlockList>",
        b64("b"),
        b64("a")
    );
    let r = run(
        &e,
        "PUT",
        "/blk?comp=blocklist",
        &["x-ms-blob-content-type: text/x"],
        xml.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = run(&e, "GET", "/blk", &[], b"");
    assert_eq!(r.body, b"BBAAA");
    assert_eq!(r.h("content-type"), Some("text/x"));
    // Staged "c" was discarded by the commit.
    let r = run(&e, "GET", "/blk?comp=blocklist&blocklisttype=all", &[], b"");
    assert!(
        r.text().contains("<UncommittedBlocks></UncommittedBlocks>"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("<CommittedBlocks><Block>"));
    // Reuse a committed block and add a new one.
    run(
        &e,
        "PUT",
        &format!("/blk?comp=block&blockid={}", enc(&b64("d"))),
        &[],
        b"DDDD",
    );
    let xml = format!(
        "<BlockList><Committed>{}</Committed><Uncommitted>{}</Uncommitted></BlockList>",
        b64("a"),
        b64("d")
    );
    assert_eq!(
        run(&e, "PUT", "/blk?comp=blocklist", &[], xml.as_bytes()).status,
        201
    );
    assert_eq!(run(&e, "GET", "/blk", &[], b"").body, b"AAADDDD");
    // Unknown ids.
    let xml = format!(
        "<BlockList><Uncommitted>{}</Uncommitted></BlockList>",
        b64("zz")
    );
    let r = run(&e, "PUT", "/blk?comp=blocklist", &[], xml.as_bytes());
    assert_eq!((r.status, r.code()), (400, Some("InvalidBlockList")));
    let r = run(
        &e,
        "PUT",
        "/blk?comp=blocklist",
        &[],
        b"<BlockList><Latest>",
    );
    assert_eq!((r.status, r.code()), (400, Some("InvalidXmlDocument")));
    let r = run(&e, "PUT", "/blk?comp=block&blockid=!!", &[], b"x");
    assert_eq!(r.status, 400);
    let long = b64(&"x".repeat(65));
    let r = run(
        &e,
        "PUT",
        &format!("/blk?comp=block&blockid={}", enc(&long)),
        &[],
        b"x",
    );
    assert_eq!(r.code(), Some("InvalidBlockId"));
    // Get Block List of a blob with neither committed nor staged blocks.
    assert_eq!(run(&e, "GET", "/none?comp=blocklist", &[], b"").status, 404);
}

fn names(x: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}><Name>");
    x.split(&open)
        .skip(1)
        .map(|s| s.split("</Name>").next().unwrap().to_owned())
        .collect()
}

fn next_marker(x: &str) -> String {
    x.split("<NextMarker>")
        .nth(1)
        .unwrap()
        .split("</NextMarker>")
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn list_blobs() {
    let e = exec();
    for n in ["a/1", "a/2", "b", "c/x/y", "c/z", "d & <e>"] {
        put(
            &e,
            &format!("/{}", enc(n).replace("%2F", "/")),
            b"x",
            &["x-ms-meta-k: v"],
        );
    }
    let r = run(&e, "GET", "?restype=container&comp=list", &[], b"");
    let x = r.text();
    assert_eq!(
        names(&x, "Blob"),
        ["a/1", "a/2", "b", "c/x/y", "c/z", "d &amp; &lt;e&gt;"]
    );
    assert_eq!(next_marker(&x), "");
    assert!(!x.contains("<Metadata>"));
    let r = run(
        &e,
        "GET",
        "?restype=container&comp=list&delimiter=%2F",
        &[],
        b"",
    );
    let x = r.text();
    assert_eq!(names(&x, "BlobPrefix"), ["a/", "c/"]);
    assert_eq!(names(&x, "Blob"), ["b", "d &amp; &lt;e&gt;"]);
    let r = run(
        &e,
        "GET",
        "?restype=container&comp=list&delimiter=%2F&prefix=c%2F",
        &[],
        b"",
    );
    let x = r.text();
    assert_eq!(names(&x, "BlobPrefix"), ["c/x/"]);
    assert_eq!(names(&x, "Blob"), ["c/z"]);
    // Paging with a delimiter: prefixes count toward maxresults and are not repeated.
    let mut seen = Vec::new();
    let mut marker = String::new();
    for _ in 0..10 {
        let r = run(
            &e,
            "GET",
            &format!(
                "?restype=container&comp=list&delimiter=%2F&maxresults=1&marker={}",
                enc(&marker)
            ),
            &[],
            b"",
        );
        let x = r.text();
        seen.extend(names(&x, "BlobPrefix"));
        seen.extend(names(&x, "Blob"));
        marker = next_marker(&x);
        if marker.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["a/", "b", "c/", "d &amp; &lt;e&gt;"]);
    // startFrom is inclusive; include=metadata.
    let r = run(
        &e,
        "GET",
        "?restype=container&comp=list&startFrom=b&include=metadata",
        &[],
        b"",
    );
    let x = r.text();
    assert_eq!(names(&x, "Blob")[0], "b");
    assert!(x.contains("<Metadata><k>v</k></Metadata>"));
    let r = run(
        &e,
        "GET",
        "?restype=container&comp=list&maxresults=0",
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn copy_blob() {
    let e = exec();
    put(&e, "/src", b"data", &["x-ms-meta-a: 1"]);
    put(&e, "/dst2", b"old", &[]);
    let src = "x-ms-copy-source: http://127.0.0.1:10000/devstoreaccount1/test/src";
    let r = run(&e, "PUT", "/dst", &[src], b"");
    assert_eq!(r.status, 202);
    assert_eq!(r.h("x-ms-copy-status"), Some("success"));
    assert!(r.h("x-ms-copy-id").is_some());
    let r = run(&e, "GET", "/dst", &[], b"");
    assert_eq!(r.body, b"data");
    assert_eq!(r.h("x-ms-meta-a"), Some("1"));
    let r = run(&e, "PUT", "/dst2", &[src, "If-None-Match: *"], b"");
    assert_eq!((r.status, r.code()), (409, Some("BlobAlreadyExists")));
    let r = run(
        &e,
        "PUT",
        "/dst3",
        &["x-ms-copy-source: http://127.0.0.1:10000/devstoreaccount1/test/nope"],
        b"",
    );
    assert_eq!((r.status, r.code()), (404, Some("CannotVerifyCopySource")));
    let r = run(
        &e,
        "PUT",
        "/dst3",
        &["x-ms-copy-source: http://elsewhere/other/test/src"],
        b"",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn batch_delete() {
    let e = exec();
    put(&e, "/one", b"1", &[]);
    put(&e, "/two", b"2", &[]);
    let mut body = String::new();
    for (i, n) in ["one", "missing", "two"].iter().enumerate() {
        body.push_str(&format!(
            "--batch_x\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: {i}\r\n\r\nDELETE /devstoreaccount1/test/{n} HTTP/1.1\r\nContent-Length: 0\r\n\r\n\r\n"
        ));
    }
    body.push_str("--batch_x--\r\n");
    let r = run(
        &e,
        "POST",
        "?restype=container&comp=batch",
        &["Content-Type: multipart/mixed; boundary=batch_x"],
        body.as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let ct = r.h("content-type").unwrap().to_owned();
    let boundary = ct.strip_prefix("multipart/mixed; boundary=").unwrap();
    let text = r.text();
    let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 5, "{text}");
    assert!(parts[1].contains("Content-ID: 0") && parts[1].contains("HTTP/1.1 202 Accepted"));
    assert!(parts[2].contains("Content-ID: 1") && parts[2].contains("HTTP/1.1 404 Not Found"));
    assert!(parts[3].contains("Content-ID: 2") && parts[3].contains("HTTP/1.1 202 Accepted"));
    assert_eq!(parts[4], "--\r\n");
    assert_eq!(run(&e, "GET", "/one", &[], b"").status, 404);
    assert_eq!(run(&e, "GET", "/two", &[], b"").status, 404);
    // More than 256 sub-requests is refused.
    let mut body = String::new();
    for i in 0..257 {
        body.push_str(&format!(
            "--b\r\nContent-ID: {i}\r\n\r\nDELETE /devstoreaccount1/test/x{i} HTTP/1.1\r\n\r\n\r\n"
        ));
    }
    body.push_str("--b--\r\n");
    let r = run(
        &e,
        "POST",
        "?restype=container&comp=batch",
        &["Content-Type: multipart/mixed; boundary=b"],
        body.as_bytes(),
    );
    assert_eq!(
        (r.status, r.code()),
        (400, Some("ExceedsMaxBatchRequestCount"))
    );
}

#[test]
fn tags_and_metadata() {
    let e = exec();
    put(&e, "/t", b"x", &["x-ms-tags: a=1&b%20c=two%20words"]);
    let r = run(&e, "GET", "/t?comp=tags", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>b c</Key><Value>two words</Value></Tag>"), "{}", r.text());
    let etag = run(&e, "HEAD", "/t", &[], b"")
        .h("etag")
        .unwrap()
        .to_owned();
    assert_eq!(
        run(&e, "HEAD", "/t", &[], b"").h("x-ms-tag-count"),
        Some("2")
    );
    let r = run(
        &e,
        "PUT",
        "/t?comp=tags",
        &[],
        b"<Tags><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tags>",
    );
    assert_eq!(r.status, 204);
    assert!(
        run(&e, "GET", "/t?comp=tags", &[], b"")
            .text()
            .contains("<Key>k</Key>")
    );
    // Setting tags does not change the ETag; setting metadata does.
    assert_eq!(
        run(&e, "HEAD", "/t", &[], b"").h("etag"),
        Some(etag.as_str())
    );
    let r = run(&e, "PUT", "/t?comp=metadata", &["x-ms-meta-new: yes"], b"");
    assert_eq!(r.status, 200);
    let h = run(&e, "HEAD", "/t", &[], b"");
    assert_ne!(h.h("etag"), Some(etag.as_str()));
    assert_eq!(h.h("x-ms-meta-new"), Some("yes"));
    // Set Blob Properties replaces the content headers.
    let r = run(
        &e,
        "PUT",
        "/t?comp=properties",
        &[
            "x-ms-blob-content-type: image/png",
            "x-ms-blob-cache-control: no-cache",
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let h = run(&e, "GET", "/t", &[], b"");
    assert_eq!(h.h("content-type"), Some("image/png"));
    assert_eq!(h.h("cache-control"), Some("no-cache"));
    assert_eq!(
        run(&e, "PUT", "/nope?comp=properties", &[], b"").status,
        404
    );
}

#[test]
fn malformed_requests() {
    let e = exec();
    let mut out = vec![0; 4096];
    for h in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: x\r\n",
        b"\xff\xfe",
    ] {
        let ex = e.execute_into(h, b"", &mut out).unwrap();
        assert_eq!(ex.status, 400, "{:?}", String::from_utf8_lossy(h));
    }
    let r = run(&e, "PUT", "/x", &[], b"no blob type");
    assert_eq!((r.status, r.code()), (400, Some("MissingRequiredHeader")));
    let r = run(&e, "PUT", "/x", &["x-ms-blob-type: PageBlob"], b"");
    assert_eq!(r.status, 400);
    let r = run(&e, "PATCH", "/x", &[], b"");
    assert_eq!(r.status, 400);
}

fn signed_head(auth: &SharedKeyAuth, method: &str, pq: &str, extra: &[(&str, &str)]) -> String {
    let mut hm = HeaderMap::new();
    hm.insert("x-ms-version", HeaderValue::from_static("2023-11-03"));
    hm.insert(
        "x-ms-date",
        HeaderValue::from_static("Tue, 24 Nov 2026 04:00:00 GMT"),
    );
    for (k, v) in extra {
        hm.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let sig = auth.authorization(&method.parse().unwrap(), pq, &hm);
    let mut s = format!("{method} {pq} HTTP/1.1\r\nAuthorization: {sig}\r\n");
    for (k, v) in &hm {
        s.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    s.push_str("\r\n");
    s
}

#[test]
fn shared_key_auth() {
    let (auth, e) = signed_exec();
    let mut out = vec![0; 4096];
    let h = signed_head(
        &auth,
        "PUT",
        "/devstoreaccount1/test/a%20b?timeout=30",
        &[("x-ms-blob-type", "BlockBlob"), ("content-length", "2")],
    );
    let ex = e.execute_into(h.as_bytes(), b"hi", &mut out).unwrap();
    assert_eq!(
        ex.status,
        201,
        "{}",
        String::from_utf8_lossy(&out[..ex.body_len])
    );
    let h = signed_head(
        &auth,
        "GET",
        "/devstoreaccount1/test?restype=container&comp=list&prefix=a",
        &[],
    );
    assert_eq!(
        e.execute_into(h.as_bytes(), b"", &mut out).unwrap().status,
        200
    );
    // Tampered: signed for a different blob.
    let h =
        signed_head(&auth, "GET", "/devstoreaccount1/test/a%20b", &[]).replace("a%20b", "other");
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!(ex.status, 403);
    assert_eq!(&ex.headers["x-ms-error-code"], "AuthenticationFailed");
    // Wrong key.
    let other = SharedKeyAuth::new(EMULATOR_ACCOUNT, &BASE64_STANDARD.encode([1u8; 64])).unwrap();
    let h = signed_head(&other, "GET", "/devstoreaccount1/test/a%20b", &[]);
    assert_eq!(
        e.execute_into(h.as_bytes(), b"", &mut out).unwrap().status,
        403
    );
    // No auth at all.
    let h = "GET /devstoreaccount1/test/a%20b HTTP/1.1\r\nHost: h\r\n\r\n";
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!(ex.status, 401);
    assert_eq!(
        &ex.headers["x-ms-error-code"],
        "NoAuthenticationInformation"
    );
}

/// The VMBus front end's body is read only once the head is admitted: a refused request
/// (unsigned, or signed with another key) never has its body read; an admitted one has it read
/// once, and it is what the store gets.
#[test]
fn a_body_is_read_only_after_its_head_is_admitted() {
    let (auth, e) = signed_exec();
    let mut out = vec![0; 4096];
    let reads = std::cell::Cell::new(0);
    let read = |dst: &mut [u8]| {
        reads.set(reads.get() + 1);
        dst.copy_from_slice(b"hi");
        true
    };
    let unsigned = "PUT /devstoreaccount1/test/lazy HTTP/1.1\r\nHost: h\r\nx-ms-blob-type: \
                    BlockBlob\r\nContent-Length: 2\r\n\r\n";
    let ex = e
        .execute_lazy(unsigned.as_bytes(), 2, read, &mut SliceSink(&mut out))
        .unwrap();
    assert_eq!((ex.status.as_u16(), reads.get()), (401, 0));
    let other = SharedKeyAuth::new(EMULATOR_ACCOUNT, &BASE64_STANDARD.encode([1u8; 64])).unwrap();
    let headers = [("x-ms-blob-type", "BlockBlob"), ("content-length", "2")];
    let forged = signed_head(&other, "PUT", "/devstoreaccount1/test/lazy", &headers);
    let ex = e
        .execute_lazy(forged.as_bytes(), 2, read, &mut SliceSink(&mut out))
        .unwrap();
    assert_eq!((ex.status.as_u16(), reads.get()), (403, 0));
    let good = signed_head(&auth, "PUT", "/devstoreaccount1/test/lazy", &headers);
    let ex = e
        .execute_lazy(good.as_bytes(), 2, read, &mut SliceSink(&mut out))
        .unwrap();
    assert_eq!((ex.status.as_u16(), reads.get()), (201, 1));
    let get = signed_head(&auth, "GET", "/devstoreaccount1/test/lazy", &[]);
    let ex = e.execute_into(get.as_bytes(), b"", &mut out).unwrap();
    assert_eq!(&out[..ex.body_len], b"hi");
}

/// A string-to-sign spelled out by hand from the Shared Key documentation, so the signer is
/// not only checked against itself.
#[test]
fn string_to_sign_layout() {
    let auth = SharedKeyAuth::new(EMULATOR_ACCOUNT, EMULATOR_KEY).unwrap();
    let e = exec();
    let target = "/devstoreaccount1/test/x?comp=block&blockid=QQ%3D%3D";
    let mut headers = HeaderMap::new();
    headers.insert("content-length", HeaderValue::from_static("5"));
    headers.insert("x-ms-version", HeaderValue::from_static("2023-11-03"));
    headers.insert(
        "x-ms-date",
        HeaderValue::from_static("Tue, 24 Nov 2026 04:00:00 GMT"),
    );
    let list = borrow_map(&headers);
    let req = e.make_req(Method::PUT, target, RequestHeaders(&list), b"hello");
    let s = auth.string_to_sign(&req, "");
    assert_eq!(
        s,
        "PUT\n\n\n5\n\n\n\n\n\n\n\n\nx-ms-date:Tue, 24 Nov 2026 04:00:00 GMT\nx-ms-version:2023-11-03\n/devstoreaccount1/devstoreaccount1/test/x\nblockid:QQ==\ncomp:block"
    );
}

#[test]
fn injected_faults() {
    let e = exec_with(
        None,
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    );
    let r = run(&e, "GET", "/x", &[], b"");
    assert_eq!((r.status, r.code()), (503, Some("ServerBusy")));
    // Reproducible with a seed: the same sequence of outcomes for the same seed.
    let seq = |seed| {
        let e = exec_with(
            None,
            Faults {
                error_rate: 0.5,
                seed,
                ..Faults::default()
            },
        );
        (0..32)
            .map(|_| run(&e, "GET", "/x", &[], b"").status)
            .collect::<Vec<_>>()
    };
    assert_eq!(seq(7), seq(7));
    assert!(seq(7).contains(&503) && seq(7).contains(&404));
    let e = exec_with(
        None,
        Faults {
            latency: Duration::from_millis(30),
            ..Faults::default()
        },
    );
    let t = std::time::Instant::now();
    run(&e, "GET", "/x", &[], b"");
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[test]
fn rest_entry_point_matches() {
    let e = exec();
    let req = http::Request::builder()
        .method("PUT")
        .uri("/devstoreaccount1/test/r?timeout=5")
        .header("x-ms-blob-type", "BlockBlob")
        .body(Bytes::from_static(b"abc"))
        .unwrap();
    assert_eq!(e.execute_request(req).status(), 201);
    let req = http::Request::builder()
        .uri("/devstoreaccount1/test/r")
        .header("range", "bytes=1-")
        .body(Bytes::new())
        .unwrap();
    let resp = e.execute_request(req);
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.body().as_ref(), b"bc");
}

/// A sink like guest memory: no `fill_from_file`, so file-backed reads use the bounce path.
struct GuestLike {
    mem: Vec<u8>,
    writes: usize,
}

impl BodySink for GuestLike {
    fn capacity(&self) -> u64 {
        self.mem.len() as u64
    }
    fn write_at(&mut self, offset: u64, src: &[u8]) -> std::io::Result<()> {
        self.writes += 1;
        self.mem[offset as usize..offset as usize + src.len()].copy_from_slice(src);
        Ok(())
    }
}

#[test]
fn sinks_and_fs_store() {
    let dir = tempfile::tempdir().unwrap();
    let e = Executor::new(
        Arc::new(crate::store::FsStore::open(dir.path()).unwrap()),
        ExecutorConfig {
            account: EMULATOR_ACCOUNT.into(),
            auth: None,
            faults: Faults::default(),
        },
    );
    e.backend().create_container("test", Vec::new()).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(put(&e, "/big", &data, &[]).status, 201);
    let h = head("GET", "/big", &["x-ms-range: bytes=5-2999999"], 0);
    let mut sink = GuestLike {
        mem: vec![0; 4 << 20],
        writes: 0,
    };
    let ex = e.execute(h.as_bytes(), b"", &mut sink).unwrap();
    assert_eq!((ex.status.as_u16(), ex.body_len), (206, 2_999_995));
    assert_eq!(&sink.mem[..ex.body_len], &data[5..]);
    assert!(sink.writes >= 3, "bounced in 1 MiB chunks");
    // Host buffers take the pread fast path.
    let mut out = vec![0u8; 4 << 20];
    let ex = e.execute_into(h.as_bytes(), b"", &mut out).unwrap();
    assert_eq!(&out[..ex.body_len], &data[5..]);
    // An error body that does not fit is dropped; status and code remain.
    let h = head("GET", "/missing", &[], 0);
    let ex = e.execute_into(h.as_bytes(), b"", &mut []).unwrap();
    assert_eq!((ex.status.as_u16(), ex.body_len), (404, 0));
    assert_eq!(&ex.headers["x-ms-error-code"], "BlobNotFound");
    assert_eq!(&ex.headers["content-length"], "0");
}

#[test]
fn executor_is_shareable_across_worker_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Executor>();
    assert_send_sync::<Arc<dyn Store>>();
}

/// A streamed Put Blob (the REST front end's path for large or chunked bodies): pieces of any
/// size across the 8 MiB staging blocks land byte-exact with the whole body's MD5; a body whose
/// Content-MD5 or Content-Length does not match changes nothing visible; conditions hold.
#[test]
fn streamed_put_blob_is_byte_exact_and_all_or_nothing() {
    let e = exec();
    let body: Vec<u8> = (0..(20 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let parts = |headers: &[(&str, String)]| {
        let mut b = http::Request::builder()
            .method("PUT")
            .uri("/devstoreaccount1/test/streamed")
            .header("x-ms-blob-type", "BlockBlob")
            .header("x-ms-version", "2023-11-03");
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        b.body(()).unwrap().into_parts().0
    };
    let stream = |e: &Executor, p: &http::request::Parts, body: &[u8]| {
        // Pieces of uneven sizes, as frames arrive.
        let mut at = 0;
        let mut n = 0usize;
        let mut next = || {
            if at >= body.len() {
                return None;
            }
            n += 1;
            let len = (n * 977_123 % (3 << 20)).max(1).min(body.len() - at);
            let piece = Bytes::copy_from_slice(&body[at..at + len]);
            at += len;
            Some(Ok(piece))
        };
        e.execute_put_stream(p, &mut next)
    };
    let md5 = BASE64_STANDARD.encode(Md5::digest(&body));
    let r = stream(&e, &parts(&[("content-md5", md5.clone())]), &body);
    assert_eq!(r.status(), 201, "{:?}", r.body());
    assert_eq!(r.headers()["content-md5"], md5.as_str());
    let get = |e: &Executor| {
        let req = http::Request::builder()
            .uri("/devstoreaccount1/test/streamed")
            .header("x-ms-version", "2023-11-03")
            .body(Bytes::new())
            .unwrap();
        e.execute_request(req)
    };
    let got = get(&e);
    assert_eq!(got.status(), 200);
    assert!(
        got.body()[..] == body[..],
        "streamed blob differs from what was sent"
    );
    assert_eq!(got.headers()["content-md5"], md5.as_str());
    // Wrong Content-MD5, short Content-Length, failed condition: 4xx, the old version stays.
    let other = vec![7u8; 9 << 20];
    let r = stream(&e, &parts(&[("content-md5", md5.clone())]), &other);
    assert_eq!(r.status(), 400);
    let r = stream(&e, &parts(&[("content-length", "5".into())]), &other);
    assert_eq!(r.status(), 400);
    let r = stream(&e, &parts(&[("if-none-match", "*".into())]), &other);
    assert_eq!(r.status(), 409);
    assert!(
        get(&e).body()[..] == body[..],
        "a refused streamed upload changed the blob"
    );
    // A body that fails mid-stream commits nothing either.
    let mut pieces = vec![Ok(Bytes::from(vec![1u8; 9 << 20])), Err("reset".to_owned())].into_iter();
    let r = e.execute_put_stream(&parts(&[]), &mut || pieces.next());
    assert_eq!(r.status(), 400);
    assert!(get(&e).body()[..] == body[..]);
}
