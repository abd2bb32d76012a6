//! The guest-driver scenario of `vmbus_path.rs` through `passthrough:` to a real Azurite
//! (npm `azurite`, installed by `scripts/azurite.sh`; started by `common/azurite.rs` on a free
//! loopback port, in memory), with every answer compared to Azurite's own direct HTTP answer.
//!
//! Two Azurite instances start empty: one behind `blobring-host --socket … --store
//! passthrough:…` (driven over VMBus by `BlobDriver`), one answering the very same signed
//! request heads and bodies over plain HTTP/1.1. Both see the same sequence, so their answers
//! must agree: status, `x-ms-error-code`, `Content-Range`, `Content-Length`,
//! `x-ms-blob-type`, `ETag` presence and the body (byte-exact; list and error bodies with
//! request ids, times, ETags and the endpoint URL blanked).

#[path = "common/azurite.rs"]
mod azurite;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

use azurite::Azurite;
use blobring_vmbus::sim::driver::{BlobDriver, Completion, DriverConfig};
use common::vmbus::{
    Resp, VmbusHost, assert_ranged, block_list_xml, block_path, completion_resp, parse_head,
    pattern, signed_head,
};

const CHANNELS: usize = 2;
const IO_LIMIT: Duration = Duration::from_secs(10);

/// `blobring-host --socket … --store passthrough:<upstream> --channels 2` (auth on, emulator
/// key), and a driver on it whose calls wait up to [`IO_LIMIT`].
fn passthrough_host(upstream_account_url: &str) -> (VmbusHost, BlobDriver) {
    let store = format!("passthrough:{upstream_account_url}");
    let host = VmbusHost::start(Some(&store), CHANNELS as u32, &[]);
    let d = host.driver_with(DriverConfig {
        timeout_ms: 10_000,
        wait_limit: IO_LIMIT,
        ..DriverConfig::default()
    });
    (host, d)
}

/// One request of the scenario: a head signed with the emulator key (path-style, like
/// Azurite: `/devstoreaccount1/<path>`) and its body.
struct Req {
    method: &'static str,
    head: Vec<u8>,
    body: Vec<u8>,
}

fn req(method: &'static str, path: &str, extra: &[(&str, &str)], body: &[u8], host: &str) -> Req {
    Req {
        method,
        head: signed_head(method, path, extra, Some(body.len()), host),
        body: body.to_vec(),
    }
}

/// Through the host over VMBus.
fn via_vmbus(d: &mut BlobDriver, ch: usize, r: &Req, data_cap: u32) -> Resp {
    let c: Completion = d
        .call(ch, &r.head, &r.body, 8192, data_cap)
        .expect("VMBus call");
    completion_resp(&c)
}

/// Directly to Azurite: the same head and body on a fresh HTTP/1.1 connection.
fn direct(addr: &str, r: &Req) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to Azurite");
    s.set_read_timeout(Some(IO_LIMIT)).unwrap();
    s.set_write_timeout(Some(IO_LIMIT)).unwrap();
    s.write_all(&r.head).unwrap();
    s.write_all(&r.body).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    let (mut resp, n) = loop {
        if let Some(done) = parse_head(&buf) {
            break done;
        }
        let k = s.read(&mut chunk).expect("read Azurite answer");
        assert!(k > 0, "Azurite closed the connection mid-head");
        buf.extend_from_slice(&chunk[..k]);
    };
    let mut rest = buf.split_off(n);
    let no_body = r.method == "HEAD" || resp.status == 204 || resp.status == 304;
    if no_body {
        return resp;
    }
    if resp
        .h("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        // Read to the terminating chunk, then decode.
        while !rest.ends_with(b"0\r\n\r\n") {
            let k = s.read(&mut chunk).expect("read chunked body");
            assert!(k > 0, "Azurite closed the connection mid-body");
            rest.extend_from_slice(&chunk[..k]);
        }
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let eol = at + rest[at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size = std::str::from_utf8(&rest[at..eol]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            at = eol + 2 + size + 2;
        }
        resp.body = body;
    } else {
        let len: usize = resp
            .h("content-length")
            .expect("Content-Length or chunked")
            .parse()
            .unwrap();
        while rest.len() < len {
            let k = s.read(&mut chunk).expect("read body");
            assert!(k > 0, "Azurite closed the connection mid-body");
            rest.extend_from_slice(&chunk[..k]);
        }
        rest.truncate(len);
        resp.body = rest;
    }
    resp
}

/// Blank the text of every `<tag>…</tag>`.
fn blank_tag(s: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        out.push_str(&rest[..i + open.len()]);
        rest = &rest[i + open.len()..];
        let j = rest.find(&close).unwrap_or(0);
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// Blank the value of every `attr="…"`.
fn blank_attr(s: &str, attr: &str) -> String {
    let open = format!("{attr}=\"");
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        out.push_str(&rest[..i + open.len()]);
        rest = &rest[i + open.len()..];
        let j = rest.find('"').unwrap_or(0);
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// Remove `\n<key>:…` up to the next `\n` or `<` (the `RequestId:`/`Time:` lines of error
/// messages).
fn drop_line(s: &str, key: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i]);
        rest = &rest[i + key.len()..];
        let j = rest.find(['\n', '<']).unwrap_or(rest.len());
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// A body without what differs between two servers run at different times on different ports.
fn normalise(body: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(body).into_owned();
    for tag in [
        "Etag",
        "Last-Modified",
        "Creation-Time",
        "AccessTierChangeTime",
        "LastAccessTime",
    ] {
        s = blank_tag(&s, tag);
    }
    s = blank_attr(&s, "ServiceEndpoint");
    for key in ["\nRequestId:", "\nTime:"] {
        s = drop_line(&s, key);
    }
    s
}

/// Compare the two answers to the same request; returns the VMBus one.
fn compare(step: &str, vm: Resp, az: &Resp) -> Resp {
    let ctx = || {
        format!(
            "{step}:\n via host: {} {:?} {:?}\n direct:   {} {:?} {:?}",
            vm.status,
            vm.headers,
            String::from_utf8_lossy(&vm.body),
            az.status,
            az.headers,
            String::from_utf8_lossy(&az.body)
        )
    };
    assert_eq!(vm.status, az.status, "status differs; {}", ctx());
    for name in ["x-ms-error-code", "content-range", "x-ms-blob-type"] {
        assert_eq!(vm.h(name), az.h(name), "{name} differs; {}", ctx());
    }
    assert_eq!(
        vm.h("etag").is_some(),
        az.h("etag").is_some(),
        "ETag presence differs; {}",
        ctx()
    );
    // Bodies whose bytes carry times, ids or URLs (lists, errors) are compared normalised,
    // and so is their length; everything else byte for byte.
    let xml = az.h("content-type").is_some_and(|t| t.contains("xml"));
    if xml {
        assert_eq!(
            normalise(&vm.body),
            normalise(&az.body),
            "body differs; {}",
            ctx()
        );
    } else {
        assert_eq!(
            vm.h("content-length"),
            az.h("content-length"),
            "Content-Length differs; {}",
            ctx()
        );
        assert!(vm.body == az.body, "body bytes differ; {}", ctx());
    }
    vm
}

/// The text of a 200 answer (a list).
fn ok_text(r: Resp) -> String {
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

#[test]
fn guest_driver_scenario_through_passthrough_matches_azurite_directly() {
    let t0 = Instant::now();
    // Guards first: every process is killed on drop, also when an assertion fails.
    let upstream = Azurite::start();
    let reference = Azurite::start();
    let (_host, mut d) = passthrough_host(&upstream.account_url());
    assert_eq!(d.channel_count(), CHANNELS, "primary + 1 subchannel");
    let addr = reference
        .url
        .strip_prefix("http://")
        .expect("http url")
        .to_owned();

    let mut n = 0usize;
    let mut both = |step: &str, r: Req, data_cap: u32| -> Resp {
        let ch = n % CHANNELS;
        n += 1;
        let vm = via_vmbus(&mut d, ch, &r, data_cap);
        let az = direct(&addr, &r);
        compare(step, vm, &az)
    };
    let rq = |method, path: &str, extra: &[(&str, &str)], body: &[u8]| {
        req(method, path, extra, body, &addr)
    };

    let r = both(
        "create container",
        rq("PUT", "data?restype=container", &[], b""),
        4096,
    );
    assert_eq!(r.status, 201);

    let a = pattern(300_000, 1);
    let r = both(
        "put blob",
        rq("PUT", "data/a.bin", &[("x-ms-blob-type", "BlockBlob")], &a),
        4096,
    );
    assert_eq!(r.status, 201);

    let (b1, b2) = (pattern(70_000, 2), pattern(5_000, 3));
    for (id, data) in [("b1", &b1), ("b2", &b2)] {
        let path = block_path("data/blk", id);
        let r = both(
            &format!("put block {id}"),
            rq("PUT", &path, &[], data),
            4096,
        );
        assert_eq!(r.status, 201);
    }
    let xml = block_list_xml(&["b2", "b1"]);
    let r = both(
        "put block list",
        rq("PUT", "data/blk?comp=blocklist", &[], xml.as_bytes()),
        4096,
    );
    assert_eq!(r.status, 201);

    let r = both("get whole", rq("GET", "data/a.bin", &[], b""), 512 << 10);
    assert_eq!(r.status, 200);
    assert!(r.body == a, "whole GET is byte-exact");
    assert_eq!(r.h("x-ms-blob-type"), Some("BlockBlob"));
    let r = both("get block blob", rq("GET", "data/blk", &[], b""), 128 << 10);
    assert_eq!(r.status, 200);
    assert!(
        r.body == [b2.clone(), b1.clone()].concat(),
        "committed blocks in list order"
    );

    let r = both(
        "get range",
        rq(
            "GET",
            "data/a.bin",
            &[("x-ms-range", "bytes=1000-99999")],
            b"",
        ),
        128 << 10,
    );
    assert_ranged(&r, &a, 1000, 99_999);

    // Wholly past the end (Azurite answers a start equal to the size with a 206 and
    // `bytes 300000-299999/300000`, unlike Azure).
    let r = both(
        "range past end",
        rq(
            "GET",
            "data/a.bin",
            &[("x-ms-range", "bytes=400000-400099")],
            b"",
        ),
        64 << 10,
    );
    assert_eq!(r.status, 416, "{r:?}");

    let r = both("head", rq("HEAD", "data/a.bin", &[], b""), 4096);
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-length"), Some("300000"));
    assert!(r.body.is_empty());

    let text = ok_text(both(
        "list",
        rq("GET", "data?restype=container&comp=list", &[], b""),
        64 << 10,
    ));
    assert!(
        text.contains("<Name>a.bin</Name>") && text.contains("<Name>blk</Name>"),
        "{text}"
    );
    let text = ok_text(both(
        "list with prefix",
        rq("GET", "data?restype=container&comp=list&prefix=b", &[], b""),
        64 << 10,
    ));
    assert!(
        text.contains("<Name>blk</Name>") && !text.contains("<Name>a.bin</Name>"),
        "{text}"
    );
    assert!(
        text.contains("<Content-Length>75000</Content-Length>"),
        "{text}"
    );

    let r = both("delete", rq("DELETE", "data/a.bin", &[], b""), 4096);
    assert_eq!(r.status, 202);
    let r = both(
        "get after delete",
        rq("GET", "data/a.bin", &[], b""),
        64 << 10,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.h("x-ms-error-code"), Some("BlobNotFound"));

    assert_eq!(d.in_flight(), 0);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}
