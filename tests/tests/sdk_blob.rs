//! The client SDK end to end: Blob API, striped transfers, concurrency, the object_store
//! connector and the CLI, through a real `blobringd` and a real `blobring-host --socket` with
//! an `fs` store.

mod common;

use std::time::{Duration, Instant};

use blobring::blob::{
    AccountConfig, BlobError, BlobService, BlockRef, Conditions, GetOptions, ListOptions,
    PutOptions, block_id,
};
use blobring::transfer::{self, TransferOptions};
use blobring::{Client, ClientError, block_on};
use blobring_tests::{HostStack, XorShift, scratch};
use common::{DAEMON, scratch_stack};

const CLI: &str = env!("CARGO_BIN_EXE_blobring-test-cli");

/// Daemon arena big enough for 8 × 4 MiB stripes plus small requests.
const ARENA: &str = "134217728";

fn stack(dir: &std::path::Path) -> HostStack {
    HostStack::start(DAEMON, dir, &[], &["--arena-size", ARENA])
}

fn service(s: &HostStack) -> BlobService {
    let client = Client::connect(&s.daemon.socket).expect("connect");
    BlobService::new(client, AccountConfig::emulator()).with_timeout(Duration::from_secs(30))
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    XorShift::new(seed).bytes(n)
}

fn status(e: &BlobError) -> (u16, String) {
    (e.status().unwrap_or(0), e.code().unwrap_or("").to_owned())
}

#[test]
fn every_blob_operation_and_typed_errors() {
    let dir = scratch();
    let s = stack(dir.path());
    let svc = service(&s);
    block_on(async {
        svc.create_container("data").await.unwrap();
        let e = svc.create_container("data").await.unwrap_err();
        assert_eq!(status(&e), (409, "ContainerAlreadyExists".into()), "{e}");
        assert!(e.is_already_exists());
        let e = svc.create_container("no").await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");

        // put / get / head / range
        const BLOB: &str = "dir/a b+c.bin";
        // A GET of `name` in "data" (`range`: its bytes) without conditions.
        let get = |name: &'static str, range: Option<std::ops::Range<u64>>| {
            let svc = &svc;
            async move {
                svc.get_blob("data", name, range, &GetOptions::default())
                    .await
            }
        };
        // A PUT of "x" over BLOB under `conditions`.
        let put_x_if = |conditions: Conditions| {
            let svc = &svc;
            async move {
                let opts = PutOptions {
                    conditions,
                    ..Default::default()
                };
                svc.put_blob("data", BLOB, b"x", &opts).await
            }
        };
        let body = pattern(100_000, 1);
        let etag = svc
            .put_blob(
                "data",
                BLOB,
                &body,
                &PutOptions {
                    crc64: true,
                    md5: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!etag.is_empty());
        let g = get(BLOB, None).await.unwrap();
        assert_eq!(g.to_vec().unwrap(), body);
        assert_eq!(g.properties.etag, etag);
        let p = svc
            .head_blob("data", BLOB, &GetOptions::default())
            .await
            .unwrap();
        assert_eq!(p.size, 100_000);
        let r = get(BLOB, Some(10..20)).await.unwrap();
        assert_eq!(r.to_vec().unwrap(), &body[10..20]);
        assert_eq!(r.properties.size, 100_000);
        let mut buf = vec![0u8; 1000];
        svc.get_range_into("data", BLOB, 5000, &mut buf, &GetOptions::default())
            .await
            .unwrap();
        assert_eq!(buf, &body[5000..6000]);

        // 404 blob, 404 container, 416 range, 412 / 304 conditions
        let e = get("missing", None).await.unwrap_err();
        assert_eq!(status(&e), (404, "BlobNotFound".into()), "{e}");
        assert!(e.is_not_found());
        let e = svc
            .head_blob("data", "missing", &GetOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        let e = svc
            .put_blob("nocontainer", "x", b"1", &PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(status(&e), (404, "ContainerNotFound".into()), "{e}");
        let e = get(BLOB, Some(200_000..200_010)).await.unwrap_err();
        assert_eq!(status(&e), (416, "InvalidRange".into()), "{e}");
        let e = put_x_if(Conditions::if_match("\"nope\""))
            .await
            .unwrap_err();
        assert_eq!(status(&e), (412, "ConditionNotMet".into()), "{e}");
        assert!(e.is_condition_not_met());
        let e = put_x_if(Conditions::create_only()).await.unwrap_err();
        assert!(e.is_already_exists() || e.status() == Some(412), "{e}");
        let e = svc
            .get_blob(
                "data",
                BLOB,
                Some(0..1),
                &GetOptions {
                    conditions: Conditions {
                        if_none_match: Some(etag.clone()),
                        ..Default::default()
                    },
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(304), "{e}");
        // If-Match with the right ETag succeeds.
        svc.put_blob(
            "data",
            BLOB,
            &body,
            &PutOptions {
                conditions: Conditions::if_match(etag.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

        // empty blob
        svc.put_blob("data", "empty", b"", &PutOptions::default())
            .await
            .unwrap();
        let g = get("empty", None).await.unwrap();
        assert_eq!(g.len, 0);
        assert_eq!(g.properties.size, 0);

        // copy
        let st = svc
            .copy_blob("data", BLOB, "data", "copy/x.bin", &Conditions::default())
            .await
            .unwrap();
        assert_eq!(st, "success");
        let g = get("copy/x.bin", None).await.unwrap();
        assert_eq!(g.to_vec().unwrap(), body);

        // blocks
        let ids: Vec<String> = (0..3).map(|i| block_id("up", i)).collect();
        for (i, id) in ids.iter().enumerate() {
            svc.put_block(
                "data",
                "blocks",
                id,
                &pattern(1000 + i, i as u64),
                true,
                None,
            )
            .await
            .unwrap();
        }
        let bl = svc.get_block_list("data", "blocks").await;
        // Before commit the blob may not exist (404) or list the uncommitted blocks.
        if let Ok(bl) = &bl {
            assert_eq!(bl.uncommitted.len(), 3);
        }
        let list: Vec<(BlockRef, String)> = ids
            .iter()
            .map(|i| (BlockRef::Uncommitted, i.clone()))
            .collect();
        svc.put_block_list("data", "blocks", &list, &PutOptions::default())
            .await
            .unwrap();
        let bl = svc.get_block_list("data", "blocks").await.unwrap();
        assert_eq!(
            bl.committed.iter().map(|b| b.size).collect::<Vec<_>>(),
            vec![1000, 1001, 1002]
        );
        assert_eq!(bl.committed[0].id, ids[0]);
        let g = svc
            .get_blob("data", "blocks", None, &GetOptions::default())
            .await
            .unwrap();
        let mut want = Vec::new();
        for i in 0..3 {
            want.extend(pattern(1000 + i, i as u64));
        }
        assert_eq!(g.to_vec().unwrap(), want);
        let e = svc
            .put_block_list(
                "data",
                "blocks",
                &[(BlockRef::Uncommitted, block_id("zz", 9))],
                &PutOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&e), (400, "InvalidBlockList".into()), "{e}");

        // listing: prefix, delimiter, pagination
        for i in 0..7 {
            svc.put_blob("data", &format!("p/{i}"), b"x", &PutOptions::default())
                .await
                .unwrap();
        }
        let all = svc
            .list_blobs("data", &ListOptions::default())
            .await
            .unwrap();
        let names: Vec<&str> = all.blobs.iter().map(|b| b.name.as_str()).collect();
        assert!(
            names.contains(&"dir/a b+c.bin") && names.contains(&"p/6"),
            "{names:?}"
        );
        let d = svc
            .list_blobs(
                "data",
                &ListOptions {
                    delimiter: Some("/".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(
            d.prefixes.contains(&"p/".to_string()) && d.prefixes.contains(&"dir/".to_string()),
            "{:?}",
            d.prefixes
        );
        assert!(d.blobs.iter().all(|b| !b.name.contains('/')));
        let by_three = ListOptions {
            prefix: Some("p/".into()),
            max_results: Some(3),
            ..Default::default()
        };
        let page = svc.list_blobs_page("data", &by_three).await.unwrap();
        assert_eq!(page.blobs.len(), 3);
        assert!(page.next_marker.is_some());
        let paged = svc.list_blobs("data", &by_three).await.unwrap();
        assert_eq!(paged.blobs.len(), 7);

        // delete
        svc.delete_blob("data", "p/0", &Conditions::default())
            .await
            .unwrap();
        let e = svc
            .delete_blob("data", "p/0", &Conditions::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        let e = svc.delete_container("nope-nope").await.unwrap_err();
        assert_eq!(status(&e), (404, "ContainerNotFound".into()), "{e}");

        // Two metadata keys differing only in case are one x-ms-meta-* header name: the SDK
        // signs them as the host verifies them, one comma-joined line (was two lines: 403).
        let meta = [
            ("k".to_owned(), "a".to_owned()),
            ("K".to_owned(), "b".to_owned()),
        ];
        svc.set_metadata("data", "p/1", &meta, &Conditions::default())
            .await
            .unwrap();
        svc.delete_container("data").await.unwrap();
    });
}

#[test]
fn random_sizes_round_trip_with_crc64() {
    let dir = scratch();
    let s = stack(dir.path());
    let svc = service(&s);
    block_on(svc.create_container("rtrip")).unwrap();
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        65_537,
        1 << 20,
        (4 << 20) + 3,
        9_999_999,
        33 << 20,
        64 << 20,
    ];
    let mut progress_calls = 0u64;
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(n, i as u64 + 7);
        let name = format!("obj-{n}");
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c2 = calls.clone();
        let opts = TransferOptions {
            verify: true,
            ..Default::default()
        }
        .with_progress(move |_, _| {
            c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        block_on(transfer::upload_from_slice(
            &svc,
            "rtrip",
            &name,
            &data,
            &PutOptions::default(),
            &opts,
        ))
        .unwrap_or_else(|e| panic!("upload {n}: {e}"));
        let got = block_on(transfer::download_to_vec(&svc, "rtrip", &name, &opts))
            .unwrap_or_else(|e| panic!("download {n}: {e}"));
        assert_eq!(got.len(), n);
        assert_eq!(
            blobring::blob::crc64(&got),
            blobring::blob::crc64(&data),
            "size {n}"
        );
        progress_calls += calls.load(std::sync::atomic::Ordering::Relaxed);
    }
    assert!(
        progress_calls >= 2 * 16,
        "progress called {progress_calls} times"
    );
}

#[test]
fn sixty_four_concurrent_tasks_of_mixed_operations() {
    let dir = scratch();
    let s = stack(dir.path());
    let svc = service(&s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        svc.create_container("mix").await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..10u64 {
                    let name = format!("t{t}/r{round}");
                    let data = pattern(
                        ((t * 7919 + round * 104_729) % 300_000) as usize + 1,
                        t * 100 + round,
                    );
                    svc.put_blob("mix", &name, &data, &PutOptions::default())
                        .await?;
                    let g = svc
                        .get_blob("mix", &name, None, &GetOptions::default())
                        .await?;
                    assert_eq!(g.to_vec()?, data, "{name}");
                    let p = svc.head_blob("mix", &name, &GetOptions::default()).await?;
                    assert_eq!(p.size, data.len() as u64);
                    if round % 3 == 0 {
                        svc.delete_blob("mix", &name, &Conditions::default())
                            .await?;
                        let e = svc
                            .head_blob("mix", &name, &GetOptions::default())
                            .await
                            .unwrap_err();
                        assert!(e.is_not_found(), "{e}");
                    }
                }
                let l = svc
                    .list_blobs(
                        "mix",
                        &ListOptions {
                            prefix: Some(format!("t{t}/")),
                            ..Default::default()
                        },
                    )
                    .await?;
                assert_eq!(l.blobs.len(), 6);
                Ok::<_, BlobError>(())
            }));
        }
        let deadline = Duration::from_secs(120);
        for t in tasks {
            tokio::time::timeout(deadline, t)
                .await
                .expect("task hung")
                .unwrap()
                .unwrap();
        }
    });
}

/// One signed ranged GET through [`Client::execute_blocking`] (the blocking path, where the
/// waiting caller reaps completions itself); returns the body.
fn blocking_get(client: &Client, blob: &str, off: u64, len: u64) -> Vec<u8> {
    let account = AccountConfig::emulator();
    let blobring::blob::Credentials::SharedKey { key } = &account.credentials else {
        panic!("the emulator account signs with a shared key");
    };
    let path = format!("/{}/blocking/{blob}", account.account);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let range = format!("bytes={off}-{}", off + len - 1);
    let version = blobring::blob::API_VERSION;
    let headers = [("x-ms-date", &date), ("x-ms-range", &range)]
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .into_iter()
        .chain([("x-ms-version".to_owned(), version.to_owned())])
        .collect::<Vec<_>>();
    let sts = blobring::blob::string_to_sign("GET", &account.account, &path, &[], &headers);
    let auth = blobring::blob::sign(key, &sts);
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-ms-date: {date}\r\nx-ms-range: {range}\r\n\
         x-ms-version: {version}\r\nauthorization: SharedKey {}:{auth}\r\n\r\n",
        account.account
    );
    let mut req = blobring::Request::new(head.into_bytes());
    req.data = Some(client.alloc(len).expect("alloc"));
    req.timeout = Some(Duration::from_secs(30));
    let c = client.execute_blocking(req).expect("blocking GET");
    let rh = blobring::blob::parse_response_head(&c.head).expect("response head");
    assert_eq!(rh.status, 206, "GET {blob} bytes {off}+{len}");
    assert_eq!(c.data_len() as u64, len);
    c.data.expect("data lease").to_vec(len as usize).unwrap()
}

/// Many threads blocked on their own requests at once, beside async tasks on the reaper
/// thread: the reaping role passes between callers (and back to the reaper thread) without a
/// lost wake-up, and every byte of every range comes back right.
#[test]
fn many_concurrent_blocking_callers_reap_for_each_other() {
    let dir = scratch();
    let s = stack(dir.path());
    let svc = service(&s);
    let blobs: Vec<(String, Vec<u8>)> = (0..8u64)
        .map(|i| {
            (
                format!("b{i}"),
                pattern(256 * 1024 + i as usize * 4099, 900 + i),
            )
        })
        .collect();
    block_on(async {
        svc.create_container("blocking").await?;
        for (name, data) in &blobs {
            svc.put_blob("blocking", name, data, &PutOptions::default())
                .await?;
        }
        Ok::<_, BlobError>(())
    })
    .unwrap();
    let blobs = std::sync::Arc::new(blobs);
    std::thread::scope(|scope| {
        for t in 0..24u64 {
            let (client, blobs) = (svc.client().clone(), blobs.clone());
            scope.spawn(move || {
                let mut rng = XorShift::new(7 + t);
                for _ in 0..60 {
                    let (name, data) = &blobs[(rng.next_u64() % blobs.len() as u64) as usize];
                    let len = 1 + rng.next_u64() % 65_536;
                    let off = rng.next_u64() % (data.len() as u64 - len);
                    let got = blocking_get(&client, name, off, len);
                    assert!(
                        got == data[off as usize..(off + len) as usize],
                        "{name} bytes {off}+{len} differ"
                    );
                }
            });
        }
        // Async callers at the same time: their completions are reaped by whichever thread
        // holds the role.
        for t in 0..4usize {
            let (svc, blobs) = (svc.clone(), blobs.clone());
            scope.spawn(move || {
                for round in 0..30 {
                    let (name, data) = &blobs[(t + round) % blobs.len()];
                    let g = block_on(svc.get_blob("blocking", name, None, &GetOptions::default()))
                        .expect("async GET");
                    assert!(g.to_vec().unwrap() == *data, "{name} differs");
                }
            });
        }
    });
}

#[test]
fn daemon_restart_fails_in_flight_and_reconnects() {
    let dir = scratch();
    let mut s = stack(dir.path());
    let svc = service(&s);
    block_on(svc.create_container("recon")).unwrap();
    block_on(svc.put_blob("recon", "x", b"before", &PutOptions::default())).unwrap();
    s.daemon.signal(rustix::process::Signal::KILL);
    s.daemon.wait();
    let e = block_on(svc.get_blob("recon", "x", None, &GetOptions::default())).unwrap_err();
    assert!(
        matches!(
            &e,
            BlobError::Transport(
                ClientError::ConnectionReset | ClientError::Connect(_) | ClientError::Connection(_)
            )
        ),
        "{e}"
    );
    let _ = std::fs::remove_file(&s.daemon.socket);
    let _ = std::fs::remove_file(&s.daemon.ctl);
    s.restart_daemon(DAEMON, dir.path(), &["--arena-size", ARENA]);
    let g =
        block_on(svc.get_blob("recon", "x", None, &GetOptions::default())).expect("reconnected");
    assert_eq!(g.to_vec().unwrap(), b"before");
}

#[test]
fn object_store_integration_suite_through_the_connector() {
    use object_store::azure::MicrosoftAzureBuilder;
    let (_dir, s) = scratch_stack(&["--container", "test"], &["--arena-size", ARENA]);
    let client = Client::connect(&s.daemon.socket).unwrap();
    let store = MicrosoftAzureBuilder::new()
        .with_account(blobring::blob::EMULATOR_ACCOUNT)
        .with_access_key(blobring::blob::EMULATOR_KEY)
        .with_container_name("test")
        .with_endpoint("http://127.0.0.1:10000/devstoreaccount1".into())
        .with_allow_http(true)
        .with_http_connector(blobring::connector::BlobringConnector::new(client))
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    common::object_store_suite(&rt, &store, "");
}

fn sha_of_file(p: &std::path::Path) -> u64 {
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap();
    let mut d = crc64fast_nvme::Digest::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return d.sum64();
        }
        d.write(&buf[..n]);
    }
}

#[test]
fn cli_cp_one_gib_up_and_down_and_errors() {
    use std::io::Write;
    let dir = scratch();
    let s = stack(dir.path());
    let run = |args: &[&str]| {
        std::process::Command::new(CLI)
            .args(args)
            .env("BLOBRING_SOCKET", &s.daemon.socket)
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .output()
            .expect("run cli")
    };
    assert!(run(&["mb", "blob://big"]).status.success());
    let src = dir.path().join("src.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        for i in 0..256u64 {
            f.write_all(&pattern(4 << 20, i)).unwrap();
        }
    }
    let t = Instant::now();
    let up = run(&["cp", src.to_str().unwrap(), "blob://big/one.bin"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("/s)"),
        "throughput line"
    );
    let dst = dir.path().join("dst.bin");
    let down = run(&["cp", "blob://big/one.bin", dst.to_str().unwrap()]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    eprintln!("1 GiB up + down via the CLI: {:.2?}", t.elapsed());
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 1 << 30);
    assert_eq!(sha_of_file(&src), sha_of_file(&dst));
    std::fs::remove_file(&src).unwrap();
    std::fs::remove_file(&dst).unwrap();
    let ls = run(&["ls", "blob://big"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("1073741824  blob://big/one.bin"));
    // errors: missing blob, bad URL
    let e = run(&["cat", "blob://big/missing"]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("BlobNotFound"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    let e = run(&["rm", "nota/url"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("blob://"));
    assert!(run(&["rm", "blob://big/one.bin"]).status.success());
    assert!(run(&["rb", "blob://big"]).status.success());
}
