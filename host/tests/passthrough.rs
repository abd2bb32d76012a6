//! `passthrough:<url>` against a real Azurite (started by the fixture in `common/azurite.rs`;
//! install it with `scripts/azurite.sh`):
//! - the same operations through object_store and raw REST, once against Azurite directly and
//!   once through `blobring-host --store passthrough:…`, with the answers compared;
//! - object_store's integration suite through the passthrough host;
//! - the VMBus-style executor path (`Executor::execute` with a raw request head) through a
//!   passthrough store, byte-exact, including `BodyTooLarge`;
//! - an unreachable upstream answering 502 with a message that says what to do.

#[path = "common/azurite.rs"]
mod azurite;
mod common;

use std::sync::Arc;
use std::time::Duration;

use azurite::Azurite;
use blobring_host::{EMULATOR_ACCOUNT, ExecuteError, Executed, Executor, open_store};
use common::{Host, azure, azurite_suite, header, plain_executor};
use object_store::azure::MicrosoftAzure;
use object_store::integration::*;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Every async test body must finish within this bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

type Raw = (u16, Vec<(String, String)>, Vec<u8>);

/// Send one raw request to `base` (`http://127.0.0.1:PORT`), signed with the emulator key.
fn raw(base: &str, method: &str, pq: &str, headers: &[(&str, &str)], body: &[u8]) -> Raw {
    common::signed_request(base, method, pq, headers, body)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// object_store errors reduced to what a client acts on.
fn kind(e: &object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => "NotFound".into(),
        object_store::Error::AlreadyExists { .. } => "AlreadyExists".into(),
        object_store::Error::Precondition { .. } => "Precondition".into(),
        object_store::Error::NotModified { .. } => "NotModified".into(),
        other => format!("Other({other})"),
    }
}

fn res<T: std::fmt::Debug>(r: &Result<T, object_store::Error>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", kind(e)),
    }
}

/// The whole body of `p`.
async fn read(store: &MicrosoftAzure, p: &Path) -> bytes::Bytes {
    store.get(p).await.unwrap().bytes().await.unwrap()
}

/// `exec` runs the request `head` with `body`, answering `status`, its body in `buf`.
fn execute(exec: &Executor, head: &[u8], body: &[u8], buf: &mut [u8], status: u16) -> Executed {
    let done = exec.execute_into(head, body, buf).unwrap();
    assert_eq!(done.status, status);
    done
}

/// Header `name` of an executed request.
fn executed_header<'a>(done: &'a Executed, name: &str) -> Option<&'a str> {
    done.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Names between `<Name>` tags of a List Blobs answer, and its `NextMarker`.
fn names_and_marker(xml: &str) -> (Vec<String>, String) {
    let names = xml
        .split("<Name>")
        .skip(1)
        .filter_map(|s| s.split("</Name>").next())
        .map(str::to_owned)
        .collect();
    let marker = xml
        .split("<NextMarker>")
        .nth(1)
        .and_then(|s| s.split("</NextMarker>").next())
        .unwrap_or("")
        .to_owned();
    (names, marker)
}

/// Run the same operations on `container` through `base` (server root URL) and return a
/// transcript without request ids, dates or ETags.
async fn transcript(base: &str, container: &str) -> Vec<String> {
    let acct = format!("{base}/{EMULATOR_ACCOUNT}");
    let c = format!("/{EMULATOR_ACCOUNT}/{container}");
    let mut t = Vec::new();
    let mut log = |op: &str, v: String| t.push(format!("{op}: {v}"));
    // A raw request to `rel` below the container.
    let req = |method: &str, rel: &str, headers: &[(&str, &str)], body: &[u8]| {
        raw(base, method, &format!("{c}{rel}"), headers, body)
    };
    let get = |rel: &str| req("GET", rel, &[], &[]);

    // Containers (raw: object_store has no container calls).
    let (s, _, _) = req("PUT", "?restype=container", &[], &[]);
    log("create container", s.to_string());
    let (s, h, _) = req("PUT", "?restype=container", &[], &[]);
    log(
        "create container again",
        format!("{s} {:?}", header(&h, "x-ms-error-code")),
    );

    let store = azure(&acct, container);
    let data = pattern(1000, 7);
    let a = Path::from("a.txt");
    let r = store.put(&a, data.clone().into()).await;
    log("put a.txt", res(&r.map(|_| ())));
    let got = read(&store, &a).await;
    log(
        "get a.txt equal",
        (got.as_ref() == data.as_slice()).to_string(),
    );
    let got = store.get_range(&a, 10..20).await.unwrap();
    log("get_range 10..20", format!("{:?}", got.as_ref()));
    let meta = store.head(&a).await.unwrap();
    log("head a.txt size", meta.size.to_string());

    // Ranged raw reads: 206 and 416.
    let (s, h, b) = req("GET", "/a.txt", &[("x-ms-range", "bytes=10-19")], &[]);
    log(
        "raw range 10-19",
        format!("{s} {:?} {:?}", header(&h, "content-range"), b),
    );
    let (s, h, _) = req("GET", "/a.txt", &[("x-ms-range", "bytes=2000-")], &[]);
    log(
        "raw range past end",
        format!(
            "{s} {:?} {:?}",
            header(&h, "content-range"),
            header(&h, "x-ms-error-code")
        ),
    );
    let (s, h, b) = req("HEAD", "/a.txt", &[], &[]);
    log(
        "raw head",
        format!(
            "{s} {:?} {:?} body {}",
            header(&h, "content-length"),
            header(&h, "x-ms-blob-type"),
            b.len()
        ),
    );
    let (s, h, b) = req("HEAD", "/missing", &[], &[]);
    log(
        "raw head missing",
        format!("{s} {:?} body {}", header(&h, "x-ms-error-code"), b.len()),
    );

    // Put Block + Put Block List, raw, then read back.
    let b1 = pattern(3000, 1);
    let b2 = pattern(5000, 2);
    for (id, d) in [("YmxrMQ==", &b1), ("YmxrMg==", &b2)] {
        let enc = id.replace('=', "%3D");
        let (s, _, _) = req(
            "PUT",
            &format!("/blocks.bin?comp=block&blockid={enc}"),
            &[],
            d,
        );
        log("put block", s.to_string());
    }
    let (s, _, b) = get("/blocks.bin?comp=blocklist&blocklisttype=all");
    let xml = String::from_utf8_lossy(&b).into_owned();
    log(
        "block list before commit",
        format!("{s} uncommitted {}", xml.matches("<Block>").count()),
    );
    let list = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>YmxrMQ==</Latest><Latest>YmxrMg==</Latest></BlockList>";
    let (s, _, _) = req("PUT", "/blocks.bin?comp=blocklist", &[], list.as_bytes());
    log("put block list", s.to_string());
    let got = read(&store, &Path::from("blocks.bin")).await;
    let mut want = b1.clone();
    want.extend_from_slice(&b2);
    log(
        "blocks.bin equal",
        (got.as_ref() == want.as_slice()).to_string(),
    );
    let mut up = store.put_multipart(&Path::from("multi.bin")).await.unwrap();
    up.put_part(pattern(100_000, 3).into()).await.unwrap();
    up.put_part(pattern(50_000, 4).into()).await.unwrap();
    log("multipart complete", res(&up.complete().await.map(|_| ())));
    let got = read(&store, &Path::from("multi.bin")).await;
    let mut want = pattern(100_000, 3);
    want.extend_from_slice(&pattern(50_000, 4));
    log(
        "multi.bin equal",
        (got.as_ref() == want.as_slice()).to_string(),
    );

    // Listing with prefix, delimiter and pagination.
    for p in ["dir/x", "dir/sub/y", "dir/sub/z", "dir2/w", "other"] {
        store
            .put(&Path::from(p), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }
    use futures_like::collect_list;
    let names = collect_list(&store, Some(&Path::from("dir"))).await;
    log("list prefix dir", format!("{names:?}"));
    let l = store
        .list_with_delimiter(Some(&Path::from("dir")))
        .await
        .unwrap();
    log(
        "list_with_delimiter dir",
        format!(
            "{:?} {:?}",
            l.common_prefixes
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            l.objects
                .iter()
                .map(|o| o.location.to_string())
                .collect::<Vec<_>>()
        ),
    );
    let mut pages = Vec::new();
    let mut marker = String::new();
    for _ in 0..20 {
        let (s, _, b) = get(&format!(
            "?restype=container&comp=list&maxresults=3&marker={marker}"
        ));
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        let (names, next) = names_and_marker(&String::from_utf8_lossy(&b));
        pages.push(names);
        if next.is_empty() {
            break;
        }
        marker = percent_encode(&next);
    }
    log("paginated list", format!("{pages:?}"));
    let (s, _, b) = get("?restype=container&comp=list&prefix=dir%2F&delimiter=%2F");
    let xml = String::from_utf8_lossy(&b).into_owned();
    log(
        "raw list delimiter",
        format!("{s} {:?}", names_and_marker(&xml).0),
    );

    // Copy, copy-if-not-exists, delete.
    let cp = Path::from("copy.txt");
    log("copy", res(&store.copy(&a, &cp).await));
    let got = read(&store, &cp).await;
    log("copy equal", (got.as_ref() == data.as_slice()).to_string());
    log(
        "copy_if_not_exists onto existing",
        res(&store.copy_if_not_exists(&a, &cp).await),
    );
    log("delete copy", res(&store.delete(&cp).await));
    log("get deleted", res(&store.get(&cp).await.map(|_| ())));
    log(
        "copy missing source",
        res(&store.copy(&Path::from("nope"), &cp).await),
    );

    // Conditional requests.
    let etag = store.head(&a).await.unwrap().e_tag.unwrap();
    let r = store
        .get_opts(
            &a,
            GetOptions {
                if_match: Some("\"0x1234\"".into()),
                ..Default::default()
            },
        )
        .await;
    log("get if-match wrong", res(&r.map(|_| ())));
    let r = store
        .get_opts(
            &a,
            GetOptions {
                if_none_match: Some(etag.clone()),
                ..Default::default()
            },
        )
        .await;
    log("get if-none-match current", res(&r.map(|_| ())));
    let (s, _, _) = req("GET", "/a.txt", &[("if-none-match", &etag)], &[]);
    log("raw get if-none-match current", s.to_string());
    let (s, h, _) = req(
        "PUT",
        "/a.txt",
        &[("x-ms-blob-type", "BlockBlob"), ("if-match", "\"0x1234\"")],
        b"new",
    );
    log(
        "raw put if-match wrong",
        format!("{s} {:?}", header(&h, "x-ms-error-code")),
    );
    let r = store
        .put_opts(
            &a,
            "new".into(),
            PutOptions::from(PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(etag.clone()),
                version: None,
            })),
        )
        .await;
    log("put update current etag", res(&r.map(|_| ())));
    let r = store
        .put_opts(
            &a,
            "newer".into(),
            PutOptions::from(PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(etag),
                version: None,
            })),
        )
        .await;
    log("put update stale etag", res(&r.map(|_| ())));
    let (s, h, _) = req("DELETE", "/missing", &[], &[]);
    log(
        "raw delete missing",
        format!("{s} {:?}", header(&h, "x-ms-error-code")),
    );
    let (s, _, _) = req("DELETE", "?restype=container", &[], &[]);
    log("delete container", s.to_string());
    let (s, h, _) = get("/a.txt");
    log(
        "get after container delete",
        format!("{s} {:?}", header(&h, "x-ms-error-code")),
    );
    t
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

mod futures_like {
    use object_store::ObjectStore;
    use object_store::path::Path;

    /// All names under `prefix`, sorted (via the `list` stream, polled by hand so that the
    /// test needs no `futures` dependency).
    pub async fn collect_list(store: &dyn ObjectStore, prefix: Option<&Path>) -> Vec<String> {
        let mut stream = store.list(prefix);
        let mut names = Vec::new();
        while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            names.push(item.unwrap().location.to_string());
        }
        names.sort();
        names
    }
}

fn passthrough_host(az: &Azurite) -> Host {
    Host::start(&format!("passthrough:{}", az.account_url()), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passthrough_answers_like_azurite() {
    let az = Azurite::start();
    let host = passthrough_host(&az);
    let (direct, via_host) = tokio::time::timeout(TEST_TIMEOUT, async {
        let direct = transcript(&az.url, "cmp-direct").await;
        let via_host = transcript(&host.url, "cmp-host").await;
        (direct, via_host)
    })
    .await
    .expect("comparison timed out");
    for (d, h) in direct.iter().zip(&via_host) {
        assert_eq!(d, h, "Azurite directly vs through the passthrough host");
    }
    assert_eq!(direct.len(), via_host.len());
    // The answers are Azurite's own (spot checks, so that equal-but-wrong transcripts fail).
    let expect = [
        "create container: 201",
        "create container again: 409 Some(\"ContainerAlreadyExists\")",
        "raw range 10-19: 206 Some(\"bytes 10-19/1000\")",
        "raw range past end: 416",
        "raw head missing: 404 Some(\"BlobNotFound\") body 0",
        "blocks.bin equal: true",
        "multi.bin equal: true",
        "copy equal: true",
        "get deleted: Err(NotFound)",
        "get if-match wrong: Err(Precondition)",
        "get if-none-match current: Err(NotModified)",
        "raw get if-none-match current: 304",
        "raw put if-match wrong: 412 Some(\"ConditionNotMet\")",
        "put update stale etag: Err(Precondition)",
        "paginated list: [[\"a.txt\", \"blocks.bin\", \"dir/sub/y\"], [\"dir/sub/z\", \"dir/x\", \"dir2/w\"], [\"multi.bin\", \"other\"]]",
        "delete container: 202",
    ];
    for e in expect {
        assert!(
            via_host.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in {via_host:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_suite_through_passthrough() {
    let az = Azurite::start();
    // Host::start creates the container `test` through the passthrough store.
    let host = passthrough_host(&az);
    let integration = azure(&host.account_url(), "test");
    tokio::time::timeout(TEST_TIMEOUT, async {
        azurite_suite(&integration).await;
        copy_rename_nonexistent_object(&integration).await;
        let err = get_nonexistent_object(&integration, None)
            .await
            .unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    })
    .await
    .expect("suite timed out");
    // The data really lives in Azurite.
    let direct = azure(&az.account_url(), "test");
    let p = Path::from("passthrough-marker");
    integration.put(&p, "via host".into()).await.unwrap();
    let got = read(&direct, &p).await;
    assert_eq!(got.as_ref(), b"via host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sas_through_passthrough_is_resigned() {
    let az = Azurite::start();
    let host = passthrough_host(&az);
    let store = azure(&host.account_url(), "test");
    let pq = common::sas_get(&store, &host.url).await;
    let bad = pq.replace("sp=r", "sp=rw");
    let (status, _, _) = common::unsigned_get(&host.url, &bad);
    assert_eq!(status, 403, "a tampered SAS is rejected by the host");
}

/// The VSP worker's view: raw request heads into `Executor::execute` over a passthrough store.
#[test]
fn executor_path_through_passthrough_is_byte_exact() {
    let az = Azurite::start();
    let store = open_store(&format!("passthrough:{}", az.account_url())).unwrap();
    let exec = plain_executor(store);
    let mut buf = vec![0u8; 1 << 20];
    let head = b"PUT /devstoreaccount1/vsp?restype=container HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    execute(&exec, head, &[], &mut buf, 201);

    let data = pattern(300_000, 9);
    let head = format!(
        "PUT /devstoreaccount1/vsp/blob%20one.bin HTTP/1.1\r\nx-ms-blob-type: BlockBlob\r\n\
         Content-Length: {}\r\nx-ms-meta-k: v\r\n\r\n",
        data.len()
    );
    let done = execute(&exec, head.as_bytes(), &data, &mut buf, 201);
    assert!(done.headers.contains_key("etag"));

    let head = b"GET /devstoreaccount1/vsp/blob%20one.bin HTTP/1.1\r\n\r\n";
    let done = execute(&exec, head, &[], &mut buf, 200);
    assert_eq!(done.body_len, data.len());
    assert_eq!(&buf[..done.body_len], &data[..], "whole GET is byte-exact");
    assert_eq!(executed_header(&done, "x-ms-meta-k"), Some("v"));
    let mut resp = vec![0u8; 4096];
    let n = done.write_head(&mut resp).unwrap();
    assert!(resp[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        String::from_utf8_lossy(&resp[..n])
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}\r\n", data.len())),
        "exactly one, correct Content-Length"
    );

    let head =
        b"GET /devstoreaccount1/vsp/blob%20one.bin HTTP/1.1\r\nx-ms-range: bytes=1000-1999\r\n\r\n";
    let done = execute(&exec, head, &[], &mut buf, 206);
    assert_eq!(&buf[..done.body_len], &data[1000..2000]);

    // The same bytes as Azurite serves directly.
    let (s, _, direct) = raw(
        &az.url,
        "GET",
        "/devstoreaccount1/vsp/blob%20one.bin",
        &[],
        &[],
    );
    assert_eq!(s, 200);
    assert_eq!(direct, data);

    // Too small a data buffer: the same BodyTooLarge as the local stores.
    let head = b"GET /devstoreaccount1/vsp/blob%20one.bin HTTP/1.1\r\n\r\n";
    let mut small = vec![0u8; 4096];
    let err = exec.execute_into(head, &[], &mut small).unwrap_err();
    assert_eq!(
        err,
        ExecuteError::BodyTooLarge {
            needed: data.len() as u64,
            capacity: 4096
        }
    );

    // HEAD of the same blob is not "too large": it has no body.
    let head = b"HEAD /devstoreaccount1/vsp/blob%20one.bin HTTP/1.1\r\n\r\n";
    let done = execute(&exec, head, &[], &mut small, 200);
    assert_eq!(done.body_len, 0);
    assert_eq!(
        executed_header(&done, "content-length"),
        Some(data.len().to_string().as_str())
    );
    // After a refused body the executor still works (the pool drops that connection).
    let head =
        b"GET /devstoreaccount1/vsp/blob%20one.bin HTTP/1.1\r\nx-ms-range: bytes=0-99\r\n\r\n";
    let done = execute(&exec, head, &[], &mut small, 206);
    assert_eq!(&small[..done.body_len], &data[..100]);

    // An upstream error is passed through with its code.
    let head = b"GET /devstoreaccount1/vsp/missing HTTP/1.1\r\n\r\n";
    let done = execute(&exec, head, &[], &mut buf, 404);
    assert_eq!(
        executed_header(&done, "x-ms-error-code"),
        Some("BlobNotFound")
    );
}

/// Upstream down: a 502 whose message names the URL and says what to check, and `Store`
/// calls made by the host itself fail the same way.
#[test]
fn unreachable_upstream_answers_502_with_hint() {
    // Bind then drop a listener: the port is free and (for this short test) nobody listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/devstoreaccount1");
    let store = open_store(&format!("passthrough:{url}")).unwrap();
    let err = store.create_container("data", Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("is Azurite/the endpoint running?"),
        "{err}"
    );
    let exec = Arc::new(plain_executor(store));
    let mut buf = vec![0u8; 8192];
    let head = b"GET /devstoreaccount1/data/x HTTP/1.1\r\n\r\n";
    let done = execute(&exec, head, &[], &mut buf, 502);
    assert_eq!(
        executed_header(&done, "x-ms-error-code"),
        Some("UpstreamUnreachable")
    );
    let body = String::from_utf8_lossy(&buf[..done.body_len]).into_owned();
    assert!(
        body.contains(&format!("Cannot reach upstream at {url}")),
        "{body}"
    );
    assert!(body.contains("is Azurite/the endpoint running?"), "{body}");
}

/// The binary refuses a malformed passthrough URL at start-up with a hint.
#[test]
fn bad_passthrough_url_fails_at_startup() {
    let err = common::host_fails(&["--store", "passthrough:ftp://x", "--http", "127.0.0.1:0"]);
    assert!(
        err.contains("passthrough:http://127.0.0.1:10000/devstoreaccount1"),
        "{err}"
    );
}
