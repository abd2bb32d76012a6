//! The SDK through `passthrough:` to a real Azurite, compared with Azurite's direct answers.
//!
//! One Azurite (npm `azurite`, installed by `scripts/azurite.sh`, started on a free loopback
//! port by `host/tests/common/azurite.rs`) sits behind `blobring-host --socket …
//! --store passthrough:<azurite>` and a real `blobringd`. The same sequence of Blob API
//! operations then runs twice, each side on its own container of that Azurite:
//! - through blobring: the SDK's [`BlobService`] → blobringd → host → Azurite;
//! - directly to Azurite over HTTP: SharedKey-signed requests with reqwest (every operation,
//!   with status and `x-ms-error-code`), and object_store's own HTTP client for the
//!   operations it has (get, range, head, put and conditional put, list, copy).
//!
//! Every answer is reduced to an [`Outcome`] (success with named fields — bodies, sizes,
//! content types, MD5s, metadata, listing pages with names and sizes, block lists — or the
//! HTTP status and Azure error code) and compared field by field; all differences are
//! reported together. A second test runs one object_store transcript through the blobring
//! connector and through object_store's HTTP client, and compares them line by line.

#[path = "../../host/tests/common/azurite.rs"]
mod azurite;
mod common;

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use azurite::Azurite;
use blobring::blob::{
    AccountConfig, BlobError, BlobService, BlockRef, Conditions, Credentials, EMULATOR_ACCOUNT,
    EMULATOR_KEY, GetOptions, ListOptions, PutOptions, sign, string_to_sign,
};
use blobring::{Client, connector::BlobringConnector};
use blobring_tests::{Daemon, launcher, scratch};
use common::get_bytes;
use object_store::ObjectStore as _;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutPayload};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
/// Each test body must finish within this bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const API_VERSION: &str = "2023-11-03";

/// blobring-host (passthrough to `upstream`) and blobringd in `dir`, killed on drop.
struct Stack {
    daemon: Daemon,
    _host: blobring_ctl::stack::Host,
}

fn stack(dir: &FsPath, upstream: &str) -> Stack {
    let host = launcher(dir)
        .store(format!("passthrough:{upstream}"))
        .host_args(["--channels", "2"])
        .start_host()
        .unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start(DAEMON, dir, &["--arena-size", "67108864"]);
    daemon.wait_host_connected();
    Stack {
        daemon,
        _host: host,
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(53).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

// ------------------------------------------------------------------ outcomes

/// One answer, reduced to what both sides must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Success, with named fields.
    Ok(BTreeMap<&'static str, String>),
    /// An error status and its Azure error code.
    Err { status: u16, code: String },
}

fn ok(fields: &[(&'static str, String)]) -> Outcome {
    Outcome::Ok(fields.iter().cloned().collect())
}

/// A body as `len=N crc64=H head=..` (readable and exact enough to compare).
fn digest(b: &[u8]) -> String {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(b);
    let head: String = b.iter().take(8).map(|x| format!("{x:02x}")).collect();
    format!("len={} crc64={:016x} head={head}", b.len(), d.sum64())
}

fn meta_string(m: &[(String, String)]) -> String {
    let mut m: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
        .collect();
    m.sort();
    m.join(",")
}

fn sdk_outcome<T>(r: Result<T, BlobError>, fields: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => fields(v),
        Err(BlobError::Service { status, code, .. }) => Outcome::Err { status, code },
        Err(e) => panic!("the SDK failed without a service answer: {e}"),
    }
}

/// Collects the differences between two outcomes of `step` (`a_name` vs `b_name`).
fn diff(step: &str, a_name: &str, a: &Outcome, b_name: &str, b: &Outcome, out: &mut Vec<String>) {
    match (a, b) {
        (Outcome::Ok(fa), Outcome::Ok(fb)) => {
            for k in fa.keys().chain(fb.keys().filter(|k| !fa.contains_key(*k))) {
                let (va, vb) = (fa.get(k), fb.get(k));
                if va != vb {
                    out.push(format!(
                        "{step}: field `{k}` differs:\n    {a_name}: {va:?}\n    {b_name}: {vb:?}"
                    ));
                }
            }
        }
        _ if a == b => {}
        _ => out.push(format!(
            "{step}: outcome differs:\n    {a_name}: {a:?}\n    {b_name}: {b:?}"
        )),
    }
}

// ------------------------------------------------------------------ the operations

/// Conditions of a step; "current" means the ETag the side's own blob has now.
#[derive(Debug, Clone, Copy)]
enum Cond {
    None,
    IfMatchWrong,
    IfMatchCurrent,
    IfNoneMatchCurrent,
    CreateOnly,
}

#[derive(Debug, Clone)]
enum Op {
    CreateContainer,
    /// Create a container of another name (e.g. an invalid one).
    CreateNamed(&'static str),
    DeleteContainer,
    Put {
        blob: &'static str,
        data: Vec<u8>,
        cond: Cond,
        content_type: Option<&'static str>,
        meta: &'static [(&'static str, &'static str)],
    },
    Get {
        blob: &'static str,
        range: Option<(u64, u64)>,
        cond: Cond,
    },
    /// Get Blob from a container that does not exist.
    GetMissingContainer,
    Head {
        blob: &'static str,
        cond: Cond,
    },
    /// Every page of a listing (names, sizes, prefixes, whether a marker follows).
    List {
        prefix: Option<&'static str>,
        delimiter: Option<&'static str>,
        max: Option<u32>,
    },
    PutBlock {
        blob: &'static str,
        id: &'static str,
        data: Vec<u8>,
    },
    PutBlockList {
        blob: &'static str,
        ids: &'static [&'static str],
    },
    GetBlockList {
        blob: &'static str,
    },
    Copy {
        from: &'static str,
        to: &'static str,
        cond: Cond,
    },
    Delete {
        blob: &'static str,
        cond: Cond,
    },
}

/// Block ids (Base64 of equal-length strings, with `+`, `/` and `=` to exercise encoding).
const B1: &str = "YmxrLTAwMSs/Pz8=";
const B2: &str = "YmxrLTAwMiv+/v4=";
const B_MISSING: &str = "YmxrLTk5OSs/Pz8=";

/// The scenario: (step name, operation).
fn scenario() -> Vec<(&'static str, Op)> {
    use Op::*;
    let put = |blob, data, cond| Put {
        blob,
        data,
        cond,
        content_type: None,
        meta: &[],
    };
    let get = |blob, range, cond| Get { blob, range, cond };
    let list = |prefix, delimiter, max| List {
        prefix,
        delimiter,
        max,
    };
    vec![
        ("create container", CreateContainer),
        ("create container again (409)", CreateContainer),
        (
            "create container with an invalid name (400)",
            CreateNamed("ab"),
        ),
        ("put a.txt", put("a.txt", pattern(1000, 7), Cond::None)),
        ("get a.txt whole", get("a.txt", None, Cond::None)),
        ("get a.txt 10..20", get("a.txt", Some((10, 20)), Cond::None)),
        (
            "get a.txt 990..1000",
            get("a.txt", Some((990, 1000)), Cond::None),
        ),
        (
            "get a.txt past the end (416)",
            get("a.txt", Some((2000, 2010)), Cond::None),
        ),
        (
            "head a.txt",
            Head {
                blob: "a.txt",
                cond: Cond::None,
            },
        ),
        (
            "head missing (404)",
            Head {
                blob: "missing",
                cond: Cond::None,
            },
        ),
        ("get missing blob (404)", get("missing", None, Cond::None)),
        ("get from a missing container (404)", GetMissingContainer),
        (
            "put typed.json with content type and metadata",
            Put {
                blob: "typed.json",
                data: b"{\"k\":1}".to_vec(),
                cond: Cond::None,
                content_type: Some("application/json"),
                meta: &[("owner", "ops"), ("Kind", "Test")],
            },
        ),
        (
            "head typed.json",
            Head {
                blob: "typed.json",
                cond: Cond::None,
            },
        ),
        ("get typed.json", get("typed.json", None, Cond::None)),
        ("put empty blob", put("empty", Vec::new(), Cond::None)),
        ("get empty blob", get("empty", None, Cond::None)),
        (
            "head empty blob",
            Head {
                blob: "empty",
                cond: Cond::None,
            },
        ),
        (
            "put 5 MiB + 3",
            put("big.bin", pattern((5 << 20) + 3, 9), Cond::None),
        ),
        ("get 5 MiB + 3 whole", get("big.bin", None, Cond::None)),
        (
            "get 5 MiB + 3 tail",
            get("big.bin", Some((5 << 20, (5 << 20) + 3)), Cond::None),
        ),
        // Conditional requests.
        (
            "get if-match wrong (412)",
            get("a.txt", None, Cond::IfMatchWrong),
        ),
        (
            "get if-match current",
            get("a.txt", Some((0, 4)), Cond::IfMatchCurrent),
        ),
        (
            "get if-none-match current (304)",
            get("a.txt", None, Cond::IfNoneMatchCurrent),
        ),
        (
            "head if-match wrong (412)",
            Head {
                blob: "a.txt",
                cond: Cond::IfMatchWrong,
            },
        ),
        (
            "put if-match wrong (412)",
            put("a.txt", b"x".to_vec(), Cond::IfMatchWrong),
        ),
        (
            "put create-only onto existing (409)",
            put("a.txt", b"x".to_vec(), Cond::CreateOnly),
        ),
        (
            "put create-only new",
            put("fresh.txt", b"fresh".to_vec(), Cond::CreateOnly),
        ),
        (
            "put if-match current",
            put("fresh.txt", b"fresher".to_vec(), Cond::IfMatchCurrent),
        ),
        ("get fresh.txt", get("fresh.txt", None, Cond::None)),
        (
            "delete if-match wrong (412)",
            Delete {
                blob: "fresh.txt",
                cond: Cond::IfMatchWrong,
            },
        ),
        // Listing.
        ("put dir/x", put("dir/x", b"x".to_vec(), Cond::None)),
        (
            "put dir/sub/y",
            put("dir/sub/y", b"yy".to_vec(), Cond::None),
        ),
        (
            "put dir/sub/z",
            put("dir/sub/z", b"zzz".to_vec(), Cond::None),
        ),
        ("put dir2/w", put("dir2/w", b"wwww".to_vec(), Cond::None)),
        ("list all", list(None, None, None)),
        ("list prefix dir", list(Some("dir"), None, None)),
        ("list prefix dir/", list(Some("dir/"), None, None)),
        (
            "list prefix dir/ delimiter /",
            list(Some("dir/"), Some("/"), None),
        ),
        ("list delimiter / at the root", list(None, Some("/"), None)),
        ("list 3 per page", list(None, None, Some(3))),
        (
            "list prefix dir 2 per page",
            list(Some("dir"), None, Some(2)),
        ),
        ("list prefix with no match", list(Some("zzz/"), None, None)),
        // Blocks.
        (
            "put block 1",
            PutBlock {
                blob: "blocks.bin",
                id: B1,
                data: pattern(3000, 1),
            },
        ),
        (
            "put block 2",
            PutBlock {
                blob: "blocks.bin",
                id: B2,
                data: pattern(5000, 2),
            },
        ),
        (
            "block list before commit",
            GetBlockList { blob: "blocks.bin" },
        ),
        (
            "put block list 2,1",
            PutBlockList {
                blob: "blocks.bin",
                ids: &[B2, B1],
            },
        ),
        (
            "block list after commit",
            GetBlockList { blob: "blocks.bin" },
        ),
        ("get blocks.bin", get("blocks.bin", None, Cond::None)),
        (
            "put block list with a missing block (400)",
            PutBlockList {
                blob: "blocks.bin",
                ids: &[B1, B_MISSING],
            },
        ),
        (
            "block list of a missing blob (404)",
            GetBlockList {
                blob: "nothing.bin",
            },
        ),
        // Copy.
        (
            "copy a.txt to copy.txt",
            Copy {
                from: "a.txt",
                to: "copy.txt",
                cond: Cond::None,
            },
        ),
        ("get copy.txt", get("copy.txt", None, Cond::None)),
        (
            "copy create-only onto existing (409)",
            Copy {
                from: "a.txt",
                to: "copy.txt",
                cond: Cond::CreateOnly,
            },
        ),
        (
            "copy a missing source (404)",
            Copy {
                from: "missing",
                to: "copy2.txt",
                cond: Cond::None,
            },
        ),
        // Delete.
        (
            "delete a.txt",
            Delete {
                blob: "a.txt",
                cond: Cond::None,
            },
        ),
        (
            "delete a.txt again (404)",
            Delete {
                blob: "a.txt",
                cond: Cond::None,
            },
        ),
        ("get deleted (404)", get("a.txt", None, Cond::None)),
        ("delete container", DeleteContainer),
        ("delete container again (404)", DeleteContainer),
        (
            "get after container delete (404)",
            get("copy.txt", None, Cond::None),
        ),
    ]
}

/// The fields of a listing: one entry per page.
/// One listing page: (blob name, size) pairs, prefixes, whether a marker follows.
type Page = (Vec<(String, u64)>, Vec<String>, bool);

fn pages_fields(pages: &[Page]) -> Outcome {
    let s = pages
        .iter()
        .map(|(blobs, prefixes, more)| {
            let b: Vec<String> = blobs.iter().map(|(n, s)| format!("{n}:{s}")).collect();
            format!("[blobs {b:?} prefixes {prefixes:?} more {more}]")
        })
        .collect::<Vec<_>>()
        .join(" ");
    ok(&[("pages", s)])
}

// ------------------------------------------------------------------ side 1: the SDK

struct Sdk {
    svc: BlobService,
    container: String,
}

impl Sdk {
    async fn etag(&self, blob: &str) -> String {
        self.svc
            .head_blob(&self.container, blob, &GetOptions::default())
            .await
            .map(|p| p.etag)
            .unwrap_or_else(|e| panic!("SDK: ETag of {blob}: {e}"))
    }

    async fn conditions(&self, blob: &str, c: Cond) -> Conditions {
        match c {
            Cond::None => Conditions::default(),
            Cond::IfMatchWrong => Conditions::if_match("\"0x8D000000BADBAD0\""),
            Cond::IfMatchCurrent => Conditions::if_match(self.etag(blob).await),
            Cond::IfNoneMatchCurrent => Conditions {
                if_none_match: Some(self.etag(blob).await),
                ..Conditions::default()
            },
            Cond::CreateOnly => Conditions::create_only(),
        }
    }

    async fn run(&self, op: &Op) -> Outcome {
        let (svc, c) = (&self.svc, self.container.as_str());
        match op {
            Op::CreateContainer => sdk_outcome(svc.create_container(c).await, |_| ok(&[])),
            Op::CreateNamed(n) => sdk_outcome(svc.create_container(n).await, |_| ok(&[])),
            Op::DeleteContainer => sdk_outcome(svc.delete_container(c).await, |_| ok(&[])),
            Op::Put {
                blob,
                data,
                cond,
                content_type,
                meta,
            } => {
                let o = PutOptions {
                    conditions: self.conditions(blob, *cond).await,
                    content_type: content_type.map(str::to_owned),
                    metadata: meta
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..PutOptions::default()
                };
                sdk_outcome(svc.put_blob(c, blob, data, &o).await, |etag| {
                    ok(&[("etag present", (!etag.is_empty()).to_string())])
                })
            }
            Op::Get { blob, range, cond } => {
                let o = GetOptions {
                    conditions: self.conditions(blob, *cond).await,
                };
                let r = svc.get_blob(c, blob, range.map(|(a, b)| a..b), &o).await;
                sdk_outcome(r, |g| {
                    ok(&[
                        ("body", digest(&g.to_vec().expect("lease"))),
                        ("size", g.properties.size.to_string()),
                        ("content type", format!("{:?}", g.properties.content_type)),
                    ])
                })
            }
            Op::GetMissingContainer => sdk_outcome(
                svc.get_blob("nosuchcontainer", "a.txt", None, &GetOptions::default())
                    .await,
                |_| ok(&[]),
            ),
            Op::Head { blob, cond } => {
                let o = GetOptions {
                    conditions: self.conditions(blob, *cond).await,
                };
                sdk_outcome(svc.head_blob(c, blob, &o).await, |p| {
                    ok(&[
                        ("size", p.size.to_string()),
                        ("content type", format!("{:?}", p.content_type)),
                        ("content md5", format!("{:?}", p.content_md5)),
                        ("metadata", meta_string(&p.metadata)),
                        ("etag present", (!p.etag.is_empty()).to_string()),
                    ])
                })
            }
            Op::List {
                prefix,
                delimiter,
                max,
            } => {
                let mut o = ListOptions {
                    prefix: prefix.map(str::to_owned),
                    delimiter: delimiter.map(str::to_owned),
                    max_results: *max,
                    marker: None,
                };
                let mut pages = Vec::new();
                loop {
                    let p = match svc.list_blobs_page(c, &o).await {
                        Ok(p) => p,
                        Err(e) => return sdk_outcome::<()>(Err(e), |_| unreachable!()),
                    };
                    pages.push((
                        p.blobs.iter().map(|b| (b.name.clone(), b.size)).collect(),
                        p.prefixes.clone(),
                        p.next_marker.is_some(),
                    ));
                    match p.next_marker {
                        Some(m) if pages.len() < 50 => o.marker = Some(m),
                        _ => break,
                    }
                }
                pages_fields(&pages)
            }
            Op::PutBlock { blob, id, data } => {
                sdk_outcome(svc.put_block(c, blob, id, data, false, None).await, |_| {
                    ok(&[])
                })
            }
            Op::PutBlockList { blob, ids } => {
                let refs: Vec<(BlockRef, String)> = ids
                    .iter()
                    .map(|i| (BlockRef::Latest, (*i).to_owned()))
                    .collect();
                sdk_outcome(
                    svc.put_block_list(c, blob, &refs, &PutOptions::default())
                        .await,
                    |etag| ok(&[("etag present", (!etag.is_empty()).to_string())]),
                )
            }
            Op::GetBlockList { blob } => sdk_outcome(svc.get_block_list(c, blob).await, |l| {
                let f = |v: &[blobring::blob::BlockInfo]| {
                    v.iter()
                        .map(|b| format!("{}:{}", b.id, b.size))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                ok(&[
                    ("committed", f(&l.committed)),
                    ("uncommitted", f(&l.uncommitted)),
                ])
            }),
            Op::Copy { from, to, cond } => {
                let cond = self.conditions(to, *cond).await;
                sdk_outcome(svc.copy_blob(c, from, c, to, &cond).await, |status| {
                    ok(&[("copy status", status)])
                })
            }
            Op::Delete { blob, cond } => {
                let cond = self.conditions(blob, *cond).await;
                sdk_outcome(svc.delete_blob(c, blob, &cond).await, |_| ok(&[]))
            }
        }
    }
}

// ------------------------------------------------------------------ side 2: Azurite direct

/// A raw answer.
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, n: &str) -> Option<String> {
        self.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// `Err` for a status ≥ 300 (code from `x-ms-error-code`, else the XML body's `<Code>`).
    fn outcome(&self, fields: impl FnOnce(&Resp) -> Outcome) -> Outcome {
        if self.status < 300 {
            return fields(self);
        }
        let body = String::from_utf8_lossy(&self.body);
        let code = self
            .h("x-ms-error-code")
            .or_else(|| {
                between(&body, "<Code>", "</Code>")
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Outcome::Err {
            status: self.status,
            code,
        }
    }

    /// Blob size: the total of `Content-Range`, else `Content-Length`.
    fn size(&self) -> String {
        self.h("content-range")
            .and_then(|r| r.rsplit('/').next().map(str::to_owned))
            .or_else(|| self.h("content-length"))
            .unwrap_or_default()
    }
}

/// Every text between `open` and `close`.
fn between<'a>(s: &'a str, open: &'a str, close: &'a str) -> impl Iterator<Item = &'a str> {
    s.split(open)
        .skip(1)
        .filter_map(move |x| x.split(close).next())
}

/// Azurite over HTTP: reqwest with SharedKey signing, plus object_store's HTTP client.
struct Direct {
    http: reqwest::Client,
    base: String,
    key: Vec<u8>,
    container: String,
    store: MicrosoftAzure,
}

impl Direct {
    async fn raw(
        &self,
        method: &str,
        container: &str,
        blob: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Resp {
        let path = match blob {
            Some(b) => format!("/{EMULATOR_ACCOUNT}/{container}/{b}"),
            None => format!("/{EMULATOR_ACCOUNT}/{container}"),
        };
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        h.push((
            "x-ms-date".into(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ));
        h.push(("x-ms-version".into(), API_VERSION.into()));
        h.push(("content-length".into(), body.len().to_string()));
        let q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let sts = string_to_sign(method, EMULATOR_ACCOUNT, &path, &q, &h);
        let auth = format!("SharedKey {EMULATOR_ACCOUNT}:{}", sign(&self.key, &sts));
        let mut rb = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .query(&q)
            .header("authorization", auth);
        for (k, v) in &h {
            // Content-Length only where a body goes (hyper sends none for an empty PUT body
            // on its own, and Put Blob needs one).
            if k != "content-length" || method == "PUT" {
                rb = rb.header(k.as_str(), v.as_str());
            }
        }
        if method == "PUT" {
            rb = rb.body(body);
        }
        let r = rb.send().await.expect("HTTP request to Azurite");
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.expect("body").to_vec(),
        }
    }

    async fn etag(&self, blob: &str) -> String {
        let r = self
            .raw("HEAD", &self.container, Some(blob), &[], &[], Vec::new())
            .await;
        assert_eq!(r.status, 200, "direct: ETag of {blob}");
        r.h("etag").expect("etag")
    }

    async fn conditions(&self, blob: &str, c: Cond) -> Vec<(&'static str, String)> {
        match c {
            Cond::None => vec![],
            Cond::IfMatchWrong => vec![("if-match", "\"0x8D000000BADBAD0\"".into())],
            Cond::IfMatchCurrent => vec![("if-match", self.etag(blob).await)],
            Cond::IfNoneMatchCurrent => vec![("if-none-match", self.etag(blob).await)],
            Cond::CreateOnly => vec![("if-none-match", "*".into())],
        }
    }

    async fn run(&self, op: &Op) -> Outcome {
        let c = self.container.as_str();
        let container_q = [("restype", "container")];
        match op {
            Op::CreateContainer | Op::CreateNamed(_) | Op::DeleteContainer => {
                let (m, name) = match op {
                    Op::CreateNamed(n) => ("PUT", *n),
                    Op::CreateContainer => ("PUT", c),
                    _ => ("DELETE", c),
                };
                self.raw(m, name, None, &container_q, &[], Vec::new())
                    .await
                    .outcome(|_| ok(&[]))
            }
            Op::Put {
                blob,
                data,
                cond,
                content_type,
                meta,
            } => {
                let mut h = self.conditions(blob, *cond).await;
                h.push(("x-ms-blob-type", "BlockBlob".into()));
                if let Some(ct) = content_type {
                    h.push(("x-ms-blob-content-type", (*ct).into()));
                }
                let names: Vec<String> =
                    meta.iter().map(|(k, _)| format!("x-ms-meta-{k}")).collect();
                let mut hs: Vec<(&str, String)> = h;
                for (n, (_, v)) in names.iter().zip(meta.iter()) {
                    hs.push((n.as_str(), (*v).into()));
                }
                self.raw("PUT", c, Some(blob), &[], &hs, data.clone())
                    .await
                    .outcome(|r| ok(&[("etag present", r.h("etag").is_some().to_string())]))
            }
            Op::Get { blob, range, cond } => {
                let mut h = self.conditions(blob, *cond).await;
                if let Some((a, b)) = range {
                    h.push(("x-ms-range", format!("bytes={a}-{}", b - 1)));
                }
                self.raw("GET", c, Some(blob), &[], &h, Vec::new())
                    .await
                    .outcome(|r| {
                        ok(&[
                            ("body", digest(&r.body)),
                            ("size", r.size()),
                            ("content type", format!("{:?}", r.h("content-type"))),
                        ])
                    })
            }
            Op::GetMissingContainer => self
                .raw(
                    "GET",
                    "nosuchcontainer",
                    Some("a.txt"),
                    &[],
                    &[],
                    Vec::new(),
                )
                .await
                .outcome(|_| ok(&[])),
            Op::Head { blob, cond } => {
                let h = self.conditions(blob, *cond).await;
                self.raw("HEAD", c, Some(blob), &[], &h, Vec::new())
                    .await
                    .outcome(|r| {
                        let meta: Vec<(String, String)> = r
                            .headers
                            .iter()
                            .filter_map(|(k, v)| {
                                Some((
                                    k.as_str().strip_prefix("x-ms-meta-")?.to_owned(),
                                    v.to_str().ok()?.to_owned(),
                                ))
                            })
                            .collect();
                        ok(&[
                            ("size", r.size()),
                            ("content type", format!("{:?}", r.h("content-type"))),
                            ("content md5", format!("{:?}", r.h("content-md5"))),
                            ("metadata", meta_string(&meta)),
                            ("etag present", r.h("etag").is_some().to_string()),
                        ])
                    })
            }
            Op::List {
                prefix,
                delimiter,
                max,
            } => {
                let mut pages = Vec::new();
                let mut marker = String::new();
                let max = max.unwrap_or(1000).to_string();
                loop {
                    let mut q = vec![("restype", "container"), ("comp", "list")];
                    if let Some(p) = prefix {
                        q.push(("prefix", p));
                    }
                    if let Some(d) = delimiter {
                        q.push(("delimiter", d));
                    }
                    if !marker.is_empty() {
                        q.push(("marker", &marker));
                    }
                    q.push(("maxresults", &max));
                    let r = self.raw("GET", c, None, &q, &[], Vec::new()).await;
                    if r.status >= 300 {
                        return r.outcome(|_| unreachable!());
                    }
                    let xml = String::from_utf8_lossy(&r.body).into_owned();
                    let blobs = between(&xml, "<Blob>", "</Blob>")
                        .map(|b| {
                            let name = between(b, "<Name>", "</Name>").next().unwrap_or("");
                            let size = between(b, "<Content-Length>", "</Content-Length>")
                                .next()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(u64::MAX);
                            (name.to_owned(), size)
                        })
                        .collect();
                    let prefixes = between(&xml, "<BlobPrefix>", "</BlobPrefix>")
                        .filter_map(|p| between(p, "<Name>", "</Name>").next())
                        .map(str::to_owned)
                        .collect();
                    let next = between(&xml, "<NextMarker>", "</NextMarker>")
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    pages.push((blobs, prefixes, !next.is_empty()));
                    if next.is_empty() || pages.len() >= 50 {
                        break;
                    }
                    marker = next;
                }
                pages_fields(&pages)
            }
            Op::PutBlock { blob, id, data } => self
                .raw(
                    "PUT",
                    c,
                    Some(blob),
                    &[("comp", "block"), ("blockid", id)],
                    &[],
                    data.clone(),
                )
                .await
                .outcome(|_| ok(&[])),
            Op::PutBlockList { blob, ids } => {
                let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
                for id in *ids {
                    x.push_str(&format!("<Latest>{id}</Latest>"));
                }
                x.push_str("</BlockList>");
                self.raw(
                    "PUT",
                    c,
                    Some(blob),
                    &[("comp", "blocklist")],
                    &[],
                    x.into_bytes(),
                )
                .await
                .outcome(|r| ok(&[("etag present", r.h("etag").is_some().to_string())]))
            }
            Op::GetBlockList { blob } => self
                .raw(
                    "GET",
                    c,
                    Some(blob),
                    &[("comp", "blocklist"), ("blocklisttype", "all")],
                    &[],
                    Vec::new(),
                )
                .await
                .outcome(|r| {
                    let xml = String::from_utf8_lossy(&r.body).into_owned();
                    let f = |section: &str| {
                        between(&xml, &format!("<{section}>"), &format!("</{section}>"))
                            .next()
                            .map(|s| {
                                between(s, "<Block>", "</Block>")
                                    .map(|b| {
                                        format!(
                                            "{}:{}",
                                            between(b, "<Name>", "</Name>").next().unwrap_or(""),
                                            between(b, "<Size>", "</Size>").next().unwrap_or("")
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default()
                    };
                    ok(&[
                        ("committed", f("CommittedBlocks")),
                        ("uncommitted", f("UncommittedBlocks")),
                    ])
                }),
            Op::Copy { from, to, cond } => {
                let mut h = self.conditions(to, *cond).await;
                h.push((
                    "x-ms-copy-source",
                    format!("{}/{EMULATOR_ACCOUNT}/{c}/{from}", self.base),
                ));
                self.raw("PUT", c, Some(to), &[], &h, Vec::new())
                    .await
                    .outcome(|r| {
                        ok(&[(
                            "copy status",
                            r.h("x-ms-copy-status").unwrap_or_else(|| "success".into()),
                        )])
                    })
            }
            Op::Delete { blob, cond } => {
                let h = self.conditions(blob, *cond).await;
                self.raw("DELETE", c, Some(blob), &[], &h, Vec::new())
                    .await
                    .outcome(|_| ok(&[]))
            }
        }
    }

    /// The same read through object_store's HTTP client, where object_store has it (get,
    /// range, conditional get, head, list by path prefix); errors reduced to object_store's
    /// kinds (see [`os_reduce`]). Writes through object_store: the connector test below.
    async fn object_store(&self, op: &Op) -> Option<Outcome> {
        let s = &self.store;
        Some(match op {
            Op::Get {
                blob,
                range,
                cond: cond @ (Cond::None | Cond::IfMatchWrong | Cond::IfMatchCurrent),
            } => {
                let mut o = object_store::GetOptions::default();
                if let Some((a, b)) = range {
                    o.range = Some((*a..*b).into());
                }
                for (k, v) in self.conditions(blob, *cond).await {
                    if k == "if-match" {
                        o.if_match = Some(v);
                    }
                }
                match s.get_opts(&Path::from(*blob), o).await {
                    Ok(g) => {
                        let size = g.meta.size;
                        let body = g.bytes().await.expect("object_store body");
                        ok(&[("body", digest(&body)), ("size", size.to_string())])
                    }
                    Err(e) => os_err(&e),
                }
            }
            Op::Head {
                blob,
                cond: Cond::None,
            } => match s.head(&Path::from(*blob)).await {
                Ok(m) => ok(&[("size", m.size.to_string())]),
                Err(e) => os_err(&e),
            },
            Op::List {
                prefix: Some(p),
                delimiter: None,
                max: None,
            } if p.ends_with('/') => {
                // object_store lists whole path segments: its prefix "dir" is Azure's "dir/".
                let mut stream = s.list(Some(&Path::from(p.trim_end_matches('/'))));
                let mut blobs = Vec::new();
                while let Some(m) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                    let m = m.expect("object_store list");
                    blobs.push((m.location.to_string(), m.size));
                }
                blobs.sort();
                pages_fields(&[(blobs, Vec::new(), false)])
            }
            _ => return None,
        })
    }
}

/// object_store's error kinds as the statuses they stand for (`code` left empty: object_store
/// does not report Azure codes).
fn os_err(e: &object_store::Error) -> Outcome {
    let status = match e {
        object_store::Error::NotFound { .. } => 404,
        object_store::Error::AlreadyExists { .. } => 409,
        object_store::Error::Precondition { .. } => 412,
        object_store::Error::NotModified { .. } => 304,
        _ => 0,
    };
    Outcome::Err {
        status,
        code: String::new(),
    }
}

/// The SDK's outcome reduced to what object_store's outcome `os` can show: its fields only,
/// errors as object_store's kinds.
fn os_reduce(sdk: &Outcome, os: &Outcome) -> Outcome {
    match (sdk, os) {
        (Outcome::Ok(f), Outcome::Ok(keep)) => Outcome::Ok(
            f.iter()
                .filter(|(k, _)| keep.contains_key(*k))
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        ),
        (Outcome::Err { status, .. }, _) => Outcome::Err {
            status: if matches!(status, 404 | 409 | 412 | 304) {
                *status
            } else {
                0
            },
            code: String::new(),
        },
        (o, _) => o.clone(),
    }
}

fn azure_store(endpoint: &str, container: &str) -> MicrosoftAzureBuilder {
    MicrosoftAzureBuilder::new()
        .with_account(EMULATOR_ACCOUNT)
        .with_access_key(EMULATOR_KEY)
        .with_container_name(container)
        .with_endpoint(endpoint.to_owned())
        .with_allow_http(true)
}

fn direct(az: &Azurite, container: &str) -> Direct {
    let Credentials::SharedKey { key } = AccountConfig::emulator().credentials else {
        unreachable!("the emulator account uses SharedKey")
    };
    Direct {
        http: reqwest::Client::new(),
        base: az.url.clone(),
        key,
        container: container.into(),
        store: azure_store(&az.account_url(), container).build().unwrap(),
    }
}

#[test]
fn sdk_through_passthrough_answers_like_azurite_direct() {
    let az = Azurite::start();
    let dir = scratch();
    let st = stack(dir.path(), &az.account_url());
    let sdk = Sdk {
        svc: BlobService::new(
            Client::connect(&st.daemon.socket).expect("connect to blobringd"),
            AccountConfig::emulator(),
        )
        .with_timeout(Duration::from_secs(30)),
        container: "viabr".into(),
    };
    let d = direct(&az, "direct");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Instant::now();
    let (mismatches, steps, os_checked) = rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let mut out = Vec::new();
            let mut os_checked = 0;
            let steps = scenario();
            for (name, op) in &steps {
                let a = sdk.run(op).await;
                let b = d.run(op).await;
                diff(
                    name,
                    "blobring SDK",
                    &a,
                    "Azurite direct (HTTP)",
                    &b,
                    &mut out,
                );
                // object_store's HTTP client on the direct side, where it has the
                // operation (run after the raw request, so it sees the same state; repeat
                // only reads and writes whose repetition changes nothing observable).
                if matches!(op, Op::Get { .. } | Op::Head { .. } | Op::List { .. })
                    && let Some(c) = d.object_store(op).await
                {
                    os_checked += 1;
                    diff(
                        name,
                        "blobring SDK",
                        &os_reduce(&a, &c),
                        "object_store HTTP direct",
                        &c,
                        &mut out,
                    );
                }
            }
            (out, steps.len(), os_checked)
        })
        .await
        .expect("scenario hung")
    });
    eprintln!(
        "{steps} steps compared ({os_checked} also against object_store) in {:.2?}",
        t.elapsed()
    );
    assert!(
        os_checked >= 15,
        "object_store compared on {os_checked} steps only"
    );
    assert!(
        mismatches.is_empty(),
        "{} differences between blobring (passthrough) and Azurite direct:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Appends a transcript line, also to stderr (shown when the test fails: the last line
/// before a hang names the step that hung).
fn note(t: &mut Vec<String>, line: String) {
    eprintln!("  {line}");
    t.push(line);
}

/// One object_store transcript: puts (plain, create-only, conditional), gets, ranges, heads,
/// listings, copies, multipart, deletes and their errors, without ETags or dates.
async fn object_store_transcript(s: &MicrosoftAzure) -> Vec<String> {
    let mut t = Vec::new();
    fn res<T: std::fmt::Debug>(r: &Result<T, object_store::Error>) -> String {
        match r {
            Ok(v) => format!("Ok({v:?})"),
            Err(e) => format!("Err({:?})", os_err(e)),
        }
    }
    let a = Path::from("a.txt");
    let data = pattern(10_000, 3);
    note(
        &mut t,
        format!(
            "put: {}",
            res(&s.put(&a, data.clone().into()).await.map(|_| ()))
        ),
    );
    let g = s.get(&a).await.unwrap();
    note(&mut t, format!("get meta size: {}", g.meta.size));
    note(
        &mut t,
        format!("get body: {}", digest(&g.bytes().await.unwrap())),
    );
    let r = s.get_range(&a, 100..200).await.map(|b| digest(&b));
    note(&mut t, format!("get_range 100..200: {}", res(&r)));
    let r = s.get_range(&a, 9_990..20_000).await.map(|b| digest(&b));
    note(&mut t, format!("get_range past end: {}", res(&r)));
    let r = s.get_range(&a, 20_000..20_010).await.map(|b| digest(&b));
    note(&mut t, format!("get_range beyond: {}", res(&r)));
    note(
        &mut t,
        format!("head: {}", res(&s.head(&a).await.map(|m| m.size))),
    );
    let r = s.head(&Path::from("missing")).await.map(|m| m.size);
    note(&mut t, format!("head missing: {}", res(&r)));
    let r = s.get(&Path::from("missing")).await.map(|_| ());
    note(&mut t, format!("get missing: {}", res(&r)));
    let r = s
        .put_opts(&a, "x".into(), PutMode::Create.into())
        .await
        .map(|_| ());
    note(&mut t, format!("put create onto existing: {}", res(&r)));
    let etag = s.head(&a).await.unwrap().e_tag.unwrap();
    let o = object_store::GetOptions {
        if_none_match: Some(etag.clone()),
        ..Default::default()
    };
    let r = s.get_opts(&a, o).await.map(|_| ());
    note(&mut t, format!("get if-none-match current: {}", res(&r)));
    let o = object_store::GetOptions {
        if_match: Some("\"0x8D000000BADBAD0\"".into()),
        ..Default::default()
    };
    let r = s.get_opts(&a, o).await.map(|_| ());
    note(&mut t, format!("get if-match wrong: {}", res(&r)));
    let upd = |e: String| {
        PutMode::Update(object_store::UpdateVersion {
            e_tag: Some(e),
            version: None,
        })
    };
    let r = s.put_opts(&a, "v2".into(), upd(etag.clone()).into()).await;
    note(
        &mut t,
        format!("put update current: {}", res(&r.map(|_| ()))),
    );
    let r = s.put_opts(&a, "v3".into(), upd(etag).into()).await;
    note(&mut t, format!("put update stale: {}", res(&r.map(|_| ()))));
    for p in ["dir/x", "dir/sub/y", "dir/sub/z", "dir2/w", "other"] {
        s.put(&Path::from(p), PutPayload::from_static(b"xy"))
            .await
            .unwrap();
    }
    for prefix in [None, Some("dir"), Some("dir/sub"), Some("nothing")] {
        let mut stream = s.list(prefix.map(Path::from).as_ref());
        let mut names = Vec::new();
        while let Some(m) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            let m = m.unwrap();
            names.push(format!("{}:{}", m.location, m.size));
        }
        names.sort();
        note(&mut t, format!("list {prefix:?}: {names:?}"));
    }
    for prefix in [None, Some("dir")] {
        let l = s
            .list_with_delimiter(prefix.map(Path::from).as_ref())
            .await
            .unwrap();
        let objs: Vec<String> = l
            .objects
            .iter()
            .map(|o| format!("{}:{}", o.location, o.size))
            .collect();
        let pre: Vec<String> = l.common_prefixes.iter().map(|p| p.to_string()).collect();
        note(
            &mut t,
            format!("list_with_delimiter {prefix:?}: {objs:?} {pre:?}"),
        );
    }
    let c = Path::from("copy.txt");
    note(&mut t, format!("copy: {}", res(&s.copy(&a, &c).await)));
    let g = get_bytes(s, &c).await;
    note(&mut t, format!("copy body: {}", digest(&g)));
    note(
        &mut t,
        format!(
            "copy_if_not_exists onto existing: {}",
            res(&s.copy_if_not_exists(&a, &c).await)
        ),
    );
    let r = s.copy(&Path::from("missing"), &Path::from("copy2")).await;
    note(&mut t, format!("copy missing source: {}", res(&r)));
    let mut up = s.put_multipart(&Path::from("multi.bin")).await.unwrap();
    up.put_part(pattern(5 << 20, 4).into()).await.unwrap();
    up.put_part(pattern(1000, 5).into()).await.unwrap();
    note(
        &mut t,
        format!("multipart: {}", res(&up.complete().await.map(|_| ()))),
    );
    let g = get_bytes(s, &Path::from("multi.bin")).await;
    note(&mut t, format!("multipart body: {}", digest(&g)));
    note(&mut t, format!("delete: {}", res(&s.delete(&c).await)));
    note(
        &mut t,
        format!("get deleted: {}", res(&s.get(&c).await.map(|_| ()))),
    );
    t
}

#[test]
fn object_store_through_the_connector_answers_like_object_store_direct() {
    let az = Azurite::start();
    let dir = scratch();
    let st = stack(dir.path(), &az.account_url());
    let client = Client::connect(&st.daemon.socket).expect("connect to blobringd");
    // Containers for both sides, created directly on Azurite.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Instant::now();
    let (via, direct_t) = rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            for c in ["osbr", "osdirect"] {
                let r = direct(&az, c)
                    .raw("PUT", c, None, &[("restype", "container")], &[], Vec::new())
                    .await;
                assert_eq!(r.status, 201, "create container {c}");
            }
            // The connector's endpoint is only the Host header blobring-host sees; the host
            // forwards to Azurite.
            let via = azure_store("http://127.0.0.1:10000/devstoreaccount1", "osbr")
                .with_http_connector(BlobringConnector::new(client))
                .build()
                .unwrap();
            let direct_store = azure_store(&az.account_url(), "osdirect").build().unwrap();
            (
                object_store_transcript(&via).await,
                object_store_transcript(&direct_store).await,
            )
        })
        .await
        .expect("transcripts hung")
    });
    eprintln!(
        "{} object_store steps compared in {:.2?}",
        via.len(),
        t.elapsed()
    );
    let diffs: Vec<String> = via
        .iter()
        .zip(&direct_t)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  via blobring:        {a}\n  object_store direct: {b}"))
        .collect();
    assert_eq!(via.len(), direct_t.len(), "{via:#?}\n{direct_t:#?}");
    assert!(
        diffs.is_empty(),
        "object_store through blobring differs from object_store direct:\n{}",
        diffs.join("\n")
    );
    // The transcript is not trivially equal: it saw data and errors.
    assert!(
        via.iter().any(|l| l.contains("Err(Err { status: 404")),
        "{via:#?}"
    );
    assert!(
        via.iter().any(|l| l.contains("Err(Err { status: 412")),
        "{via:#?}"
    );
}
