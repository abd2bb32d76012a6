//! Zero-copy and streaming paths of the SDK through a real `blobringd` and `blobring-host`:
//! `Bytes` built from leases without a copy (and the arena space they hold), `Download` as a
//! stream, `upload_from_stream`, and object_store `get()` of a blob far larger than one
//! request through the connector with the daemon's default arena.

mod common;

use std::time::{Duration, Instant};

use blobring::blob::{AccountConfig, BlobService, GetOptions, PutOptions};
use blobring::transfer::{self, Download, TransferOptions};
use blobring::{Client, block_on};
use blobring_tests::{HostStack, scratch};
use bytes::Bytes;
use common::get_bytes;
use futures_util::{StreamExt, TryStreamExt};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");

fn service(s: &HostStack) -> BlobService {
    let client = Client::connect(&s.daemon.socket).expect("connect");
    BlobService::new(client, AccountConfig::emulator()).with_timeout(Duration::from_secs(60))
}

/// Deterministic pseudo-random bytes `[at, at + n)` of stream `seed`.
fn fill(buf: &mut [u8], seed: u64, at: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let mut x = (at + i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        x ^= x >> 29;
        *b = x.wrapping_mul(0xbf58_476d_1ce4_e5b9).wrapping_shr(56) as u8;
    }
}

/// The stream of `total` bytes cut into items of sizes cycling through `cuts`.
fn items(total: u64, seed: u64, cuts: &[usize]) -> Vec<Bytes> {
    let (mut v, mut at, mut i) = (Vec::new(), 0u64, 0usize);
    while at < total {
        let n = (cuts[i % cuts.len()] as u64).min(total - at) as usize;
        let mut b = vec![0u8; n];
        fill(&mut b, seed, at);
        v.push(Bytes::from(b));
        at += n as u64;
        i += 1;
    }
    v
}

fn wait_free(client: &Client, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.arena_free().unwrap() != want {
        assert!(
            Instant::now() < deadline,
            "arena free {} != {want}",
            client.arena_free().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn zero_copy_bytes_hold_the_arena_until_the_last_clone_drops() {
    let dir = scratch();
    let s = HostStack::start(DAEMON, dir.path(), &[], &[]);
    let svc = service(&s);
    let client = svc.client().clone();
    block_on(svc.create_container("zcopy")).unwrap();
    let data = items(3 << 20, 1, &[3 << 20]).remove(0);
    block_on(svc.put_blob("zcopy", "x", &data, &PutOptions::default())).unwrap();
    let idle = client.arena_free().unwrap();

    let g = block_on(svc.get_blob("zcopy", "x", None, &GetOptions::default())).unwrap();
    let b = g.into_bytes().unwrap();
    assert_eq!(b, data);
    let held = client.arena_free().unwrap();
    assert!(
        held <= idle - (3 << 20),
        "the Bytes holds its buffer: {held} of {idle} free"
    );
    let clone = b.slice(1000..2000);
    drop(b);
    assert_eq!(
        client.arena_free().unwrap(),
        held,
        "a clone still holds the buffer"
    );
    assert_eq!(&clone[..], &data[1000..2000]);
    drop(clone);
    wait_free(&client, idle);

    // The same for a lease written by hand, and a zero-length view.
    let l = client.alloc(8192).unwrap();
    l.write(0, b"lease bytes").unwrap();
    let b = l.into_bytes(11).unwrap();
    assert_eq!(&b[..], b"lease bytes");
    assert!(client.arena_free().unwrap() < idle);
    drop(b);
    wait_free(&client, idle);
    assert!(client.alloc(10).unwrap().into_bytes(0).unwrap().is_empty());
    assert!(
        client.alloc(10).unwrap().into_bytes(11).is_err(),
        "longer than the lease"
    );
    wait_free(&client, idle);
}

#[test]
fn stream_upload_and_download_random_sizes() {
    let dir = scratch();
    let s = HostStack::start(DAEMON, dir.path(), &[], &["--arena-size", "67108864"]);
    let svc = service(&s);
    block_on(svc.create_container("strm")).unwrap();
    let chunk = 1u64 << 20;
    let opts = TransferOptions {
        chunk_size: chunk,
        parallelism: 4,
        ..Default::default()
    };
    let sizes = [
        0u64,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        3 * chunk - 1,
        3 * chunk + 1,
        (37 << 20) + 12_345,
    ];
    // Odd item sizes, including empty items and items larger than a block.
    let cuts = [1usize, 0, 4095, 65_536, 777_777, 2 * chunk as usize + 3];
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("s{n}");
        let parts = items(n, i as u64, &cuts);
        let want = blobring::blob::crc64(&parts.concat());
        let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
        block_on(transfer::upload_from_stream(
            &svc,
            "strm",
            &name,
            stream,
            Some(n),
            &PutOptions::default(),
            &opts,
        ))
        .unwrap_or_else(|e| panic!("upload {n}: {e}"));
        let props = block_on(svc.head_blob("strm", &name, &Default::default())).unwrap();
        assert_eq!(props.size, n);

        let mut d = block_on(Download::start(&svc, "strm", &name, &opts)).unwrap();
        let mut digest = crc64fast_nvme::Digest::new();
        let (mut got, mut items_seen) = (0u64, 0usize);
        while let Some(b) = block_on(d.try_next()).unwrap_or_else(|e| panic!("download {n}: {e}")) {
            assert!(b.len() as u64 <= chunk);
            digest.write(&b);
            got += b.len() as u64;
            items_seen += 1;
        }
        assert_eq!(got, n);
        assert_eq!(items_seen as u64, n.div_ceil(chunk));
        assert_eq!(digest.sum64(), want, "size {n}");
    }

    // A failing stream aborts the upload with an error naming the stream; nothing committed.
    let bad = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(std::io::Error::other("source broke")),
    ]);
    let e = block_on(transfer::upload_from_stream(
        &svc,
        "strm",
        "bad",
        bad,
        None,
        &PutOptions::default(),
        &opts,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("source broke"), "{e}");
    assert!(
        block_on(svc.head_blob("strm", "bad", &Default::default()))
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn connector_gets_a_one_gib_object_with_the_default_arena() {
    use object_store::azure::MicrosoftAzureBuilder;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt};
    let dir = scratch();
    // The daemon's default arena (16 MiB): one request carries at most 8 MiB of body here.
    let s = HostStack::start(DAEMON, dir.path(), &["--container", "big"], &[]);
    let svc = service(&s);
    const SIZE: u64 = 1 << 30;
    let part = 8 << 20;
    let stream = futures_util::stream::iter(0..SIZE / part).map(move |i| {
        let mut b = vec![0u8; part as usize];
        fill(&mut b, 9, i * part);
        Ok::<_, std::io::Error>(Bytes::from(b))
    });
    let mut want = crc64fast_nvme::Digest::new();
    for i in 0..SIZE / part {
        let mut b = vec![0u8; part as usize];
        fill(&mut b, 9, i * part);
        want.write(&b);
    }
    block_on(transfer::upload_from_stream(
        &svc,
        "big",
        "g.bin",
        stream,
        Some(SIZE),
        &PutOptions::default(),
        &TransferOptions::default(),
    ))
    .unwrap();

    let builder = |c: blobring::connector::BlobringConnector| {
        MicrosoftAzureBuilder::new()
            .with_account(blobring::blob::EMULATOR_ACCOUNT)
            .with_access_key(blobring::blob::EMULATOR_KEY)
            .with_container_name("big")
            .with_endpoint("http://127.0.0.1:10000/devstoreaccount1".into())
            .with_allow_http(true)
            .with_http_connector(c)
            .build()
            .unwrap()
    };
    let client = svc.client().clone();
    let store = builder(
        blobring::connector::BlobringConnector::new(client.clone())
            .with_account(AccountConfig::emulator()),
    );
    let plain = builder(blobring::connector::BlobringConnector::new(client.clone()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), async {
            let path = Path::from("g.bin");
            let r = store.get(&path).await.unwrap();
            assert_eq!(r.meta.size, SIZE);
            let mut body = r.into_stream();
            let mut got = crc64fast_nvme::Digest::new();
            let mut n = 0u64;
            while let Some(b) = body.next().await {
                let b = b.unwrap();
                n += b.len() as u64;
                got.write(&b);
            }
            assert_eq!(n, SIZE);
            assert_eq!(got.sum64(), want.sum64());
            // Ranges larger than one request are streamed too (bounded and offset; object_store's
            // Azure client sends no suffix ranges).
            let expect = |a: u64, b: u64| {
                let mut v = vec![0u8; (b - a) as usize];
                fill(&mut v, 9, a);
                v
            };
            let (a, b) = (100u64, 100 + (40 << 20) + 7);
            let got = store.get_range(&path, a..b).await.unwrap();
            assert!(got == expect(a, b), "bounded range");
            for (range, a) in [(
                object_store::GetRange::Offset(SIZE - (20 << 20)),
                SIZE - (20 << 20),
            )] {
                let opts = object_store::GetOptions {
                    range: Some(range),
                    ..Default::default()
                };
                let r = store.get_opts(&path, opts).await.unwrap();
                assert_eq!(r.range, a..SIZE);
                let got = r.bytes().await.unwrap();
                assert!(got == expect(a, SIZE), "range from {a}");
            }
            // Small objects still take the one-request path, and without the account a large
            // GET fails saying how to fix it.
            store
                .put(&Path::from("small"), b"tiny".to_vec().into())
                .await
                .unwrap();
            let b = get_bytes(&store, &Path::from("small")).await;
            assert_eq!(&b[..], b"tiny");
            let e = plain.get(&path).await.unwrap_err().to_string();
            assert!(e.contains("with_account"), "{e}");
        })
        .await
        .expect("connector GET hung");
    });
}

/// Fills the arena with leases, then frees `holes` non-adjacent `hole`-byte gaps and four
/// 64 KiB gaps (for request heads); returns the leases still held.
fn fragment(client: &Client, hole: u64, holes: usize) -> Vec<blobring::Lease> {
    let fill = |size: u64, v: &mut Vec<blobring::Lease>| {
        while let Some(l) = client.try_alloc(size).unwrap() {
            v.push(l);
        }
    };
    let mut big = Vec::new();
    fill(hole, &mut big);
    assert!(
        big.len() > 2 * holes + 1,
        "the arena holds {} × {hole} bytes",
        big.len()
    );
    // The last big lease becomes small ones, every other one freed.
    drop(big.pop());
    let mut small = Vec::new();
    fill(64 << 10, &mut small);
    let small: Vec<_> = small
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1 || *i >= 8)
        .map(|(_, l)| l)
        .collect();
    let big: Vec<_> = big
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1 || *i >= 2 * holes)
        .map(|(_, l)| l)
        .collect();
    big.into_iter().chain(small).collect()
}

/// A download (or upload) whose own buffers fill the space it can use must reuse them, not
/// wait for space only it can free. Regression: a soak run in CI stalled 60 s in
/// `download_to_vec` — the next range waited (blocking) for arena space while the chunk just
/// completed, which that very call would have freed, was still held.
#[test]
fn transfers_reuse_their_own_space_in_a_fragmented_arena() {
    let dir = scratch();
    let s = HostStack::start(DAEMON, dir.path(), &[], &[]);
    // A short arena wait, so that a transfer waiting on itself fails fast instead of stalling.
    let client = Client::connect_with(blobring::ClientOptions {
        socket: s.daemon.socket.clone(),
        arena_wait: Duration::from_secs(3),
        ..Default::default()
    })
    .expect("connect");
    let svc = BlobService::new(client.clone(), AccountConfig::emulator())
        .with_timeout(Duration::from_secs(10));
    block_on(svc.create_container("frag")).unwrap();
    let data = items(5 << 20, 9, &[5 << 20]).remove(0);
    block_on(svc.put_blob("frag", "x", &data, &PutOptions::default())).unwrap();
    let opts = TransferOptions {
        chunk_size: 1 << 20,
        parallelism: 2,
        ..Default::default()
    };
    // Room for one range only: each next one must go where the one before was.
    let held = fragment(&client, 1 << 20, 1);
    let t = Instant::now();
    let got = block_on(transfer::download_to_vec(&svc, "frag", "x", &opts));
    let took = t.elapsed();
    assert_eq!(got.map(Bytes::from).expect("download"), data);
    assert!(took < Duration::from_secs(2), "download took {took:?}");
    let t = Instant::now();
    let up = block_on(transfer::upload_from_slice(
        &svc,
        "frag",
        "y",
        &data,
        &PutOptions::default(),
        &opts,
    ));
    let took = t.elapsed();
    up.expect("upload");
    assert!(took < Duration::from_secs(2), "upload took {took:?}");
    drop(held);
    let back = block_on(svc.get_blob("frag", "y", None, &GetOptions::default())).unwrap();
    assert_eq!(back.to_vec().unwrap(), data);
}
