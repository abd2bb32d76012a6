//! The five read paths, as run inside a worker process. Each delivers a blob's bytes in order
//! into one xxh3 stream (whole-blob reads) or checks every 4 KiB block (ranged reads), the
//! same way on every path.
//!
//! Choices (the same for (b), (c) and (d), so the comparison is of transports, not shapes):
//! streaming reads use `chunk`-byte ranged GETs (default 4 MiB, Azure's per-range CRC limit)
//! with `parallel` in flight (default 8) per client, delivered in order. For object_store that
//! is `get_range` futures in a `buffered(parallel)` stream — what object_store users do for a
//! large object (`get_ranges` would coalesce adjacent ranges into one GET); for the SDK it is
//! [`blobring::transfer::Download`]. The synchronous path (e) sends one signed ranged GET of
//! `sync_chunk` bytes at a time with [`Client::execute_blocking`], as the seed's driver did
//! (one ioctl per request).
//!
//! Bytes from blobring arrive in an arena lease; (d), (e) and the native ranged reads hash them
//! in place through [`blobring::Lease::into_bytes`] (a zero-copy view of a lease the daemon
//! and host no longer hold), so the one copy of the body is the host's store → arena copy, as
//! with `pread`. (c) gets what the connector hands object_store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use blobring::blob::{
    AccountConfig, BlobService, Credentials, GetOptions, PutOptions, parse_response_head, sign,
    string_to_sign,
};
use blobring::transfer::{Download, TransferOptions, upload_from_slice};
use blobring::{Client, Request, block_on};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use rand::{Rng, SeedableRng};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::data::{BLOCK, BlobRef, connect, service};
use crate::stack::CONTAINER;
use crate::worker::{Job, Outcome, PathKind, Work, WriteSpec, encode_histogram};

/// xxh3 of a blob's store file read with `pread` in `buf.len()`-byte calls.
pub fn pread_blob(b: &BlobRef, buf: &mut [u8]) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&b.file).with_context(|| format!("open {}", b.file.display()))?;
    let mut h = Xxh3::new();
    let mut off = 0u64;
    while off < b.size {
        let n = (buf.len() as u64).min(b.size - off) as usize;
        f.read_exact_at(&mut buf[..n], off)
            .with_context(|| format!("pread {} at {off}", b.file.display()))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.digest())
}

/// A worker's connection for one path.
pub enum Reader {
    /// (a): nothing to set up.
    Pread,
    /// (b) and (c): an object_store client on a current-thread tokio runtime.
    Object {
        /// The runtime.
        rt: tokio::runtime::Runtime,
        /// The store.
        store: Arc<dyn ObjectStore>,
    },
    /// (d): the Blob API over a client.
    Native(BlobService),
    /// (m): files in the mount point.
    Mount(std::path::PathBuf),
    /// (e): a client plus what signing needs.
    Sync {
        /// The client.
        client: Client,
        /// The account (key, name).
        account: AccountConfig,
        /// `Host` header value.
        host: String,
    },
}

impl Reader {
    /// Connects for `job.path`.
    pub fn new(job: &Job) -> Result<Reader> {
        let ep = &job.endpoint;
        Ok(match job.path {
            PathKind::Pread => Reader::Pread,
            PathKind::Http | PathKind::Https | PathKind::Gateway | PathKind::Connector => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("build a tokio runtime")?;
                let endpoint = match job.path {
                    PathKind::Https => ep.https.clone(),
                    PathKind::Gateway => ep
                        .gateway
                        .clone()
                        .context("the gateway path needs a stack with a gateway")?,
                    _ => ep.http.clone(),
                };
                let mut b = MicrosoftAzureBuilder::new()
                    .with_account(blobring::blob::EMULATOR_ACCOUNT)
                    .with_access_key(blobring::blob::EMULATOR_KEY)
                    .with_container_name(CONTAINER)
                    .with_endpoint(endpoint)
                    .with_allow_http(true);
                if job.path == PathKind::Https {
                    let pem = std::fs::read(&ep.cert).with_context(|| {
                        format!("read the host's certificate {}", ep.cert.display())
                    })?;
                    let cert = object_store::Certificate::from_pem(&pem)
                        .context("parse the host's certificate")?;
                    b = b.with_client_options(
                        object_store::ClientOptions::new()
                            .with_no_system_certificates(true)
                            .with_root_certificate(cert),
                    );
                }
                if job.path == PathKind::Connector {
                    let client = connect(&ep.socket, job.tuning.arena)?;
                    b = b.with_http_connector(blobring::connector::BlobringConnector::new(client));
                }
                let store: Arc<dyn ObjectStore> =
                    Arc::new(b.build().context("build the object_store Azure client")?);
                Reader::Object { rt, store }
            }
            PathKind::Native => Reader::Native(service(connect(&ep.socket, job.tuning.arena)?)),
            PathKind::Mount => Reader::Mount(
                ep.mount
                    .clone()
                    .context("the mount path needs a mounted container (blobring-bench mount)")?,
            ),
            PathKind::Sync => {
                let client = connect(&ep.socket, job.tuning.arena)?;
                let host = ep
                    .http
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or("127.0.0.1")
                    .to_owned();
                Reader::Sync {
                    client,
                    account: AccountConfig::emulator(),
                    host,
                }
            }
        })
    }

    /// Runs the job's work.
    pub fn run(&mut self, job: &Job) -> Result<Outcome> {
        match &job.work {
            Work::Stream { blobs, first } => {
                let mut buf = vec![0u8; job.tuning.chunk.max(job.tuning.sync_chunk) as usize];
                let mut o = Outcome::default();
                for k in 0..blobs.len() {
                    let b = &blobs[(first + k) % blobs.len()];
                    let (sum, requests) = self.read_blob(job, b, &mut buf)?;
                    if sum != b.xxh3 {
                        bail!(
                            "checksum mismatch on path {}: {} read as xxh3 {sum:016x}, written \
                             as {:016x}",
                            job.path.name(),
                            b.name,
                            b.xxh3
                        );
                    }
                    o.bytes += b.size;
                    o.requests += requests;
                    o.verified += 1;
                }
                Ok(o)
            }
            Work::Write { .. } => bail!("write jobs are run by Reader::write"),
            Work::Ranges {
                blob,
                len,
                depth,
                millis,
                max,
                seed,
            } => {
                let spec = RangeSpec {
                    blob,
                    len: *len,
                    depth: *depth,
                    budget: Duration::from_millis(*millis),
                    max: *max,
                    seed: *seed,
                };
                let name = ObjPath::from(blob.name.as_str());
                match self {
                    Reader::Object { rt, store } => rt.block_on(spec.run(|off| {
                        let (s, n) = (store.clone(), name.clone());
                        async move { Ok(s.get_range(&n, off..off + *len).await?) }
                    })),
                    Reader::Native(svc) => block_on(spec.run(|off| {
                        let svc = svc.clone();
                        async move {
                            let g = svc
                                .get_range(
                                    CONTAINER,
                                    &blob.name,
                                    off..off + *len,
                                    &GetOptions::default(),
                                    None,
                                )
                                .await?;
                            Ok(g.into_bytes()?)
                        }
                    })),
                    Reader::Mount(dir) => {
                        use std::os::unix::fs::FileExt;
                        use std::os::unix::fs::OpenOptionsExt;
                        let path = dir.join(&blob.name);
                        // O_DIRECT: each pread reaches the mount (a ranged GET of the size
                        // asked), instead of the page cache that the kernel's readahead would
                        // fill around the first few reads.
                        let f = std::fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
                            .open(&path)
                            .with_context(|| format!("open {} (O_DIRECT)", path.display()))?;
                        // One synchronous pread per request: depth 1 whatever is asked.
                        let (f, path) = (&f, &path);
                        // The pread runs when the future is polled, inside the timed window.
                        block_on(spec.run(|off| async move {
                            let mut b = vec![0u8; *len as usize];
                            f.read_exact_at(&mut b, off)
                                .map(|()| b)
                                .with_context(|| format!("pread {} at {off}", path.display()))
                        }))
                    }
                    _ => bail!(
                        "ranged reads are measured on http, connector, native and mount only, \
                         not {}",
                        job.path.name()
                    ),
                }
            }
        }
    }

    /// Uploads `blobs` (their bytes in `data`) one after another, each in chunks of
    /// `tuning.chunk` with `tuning.parallel` in flight: object_store's multipart upload (Put
    /// Block + Put Block List) on (b), (g) and (c), the SDK's striped upload on (d).
    pub fn write(&mut self, job: &Job, blobs: &[WriteSpec], data: &[Vec<u8>]) -> Result<Outcome> {
        let t = &job.tuning;
        let mut o = Outcome::default();
        for (b, d) in blobs.iter().zip(data) {
            let blocks = b.size.div_ceil(t.chunk);
            match self {
                Reader::Object { rt, store } => rt.block_on(async {
                    let path = ObjPath::from(b.name.as_str());
                    let up = store
                        .put_multipart(&path)
                        .await
                        .with_context(|| format!("start uploading {}", b.name))?;
                    let mut w = WriteMultipart::new_with_chunk_size(up, t.chunk as usize);
                    for piece in d.chunks(t.chunk as usize) {
                        w.wait_for_capacity(t.parallel.max(1)).await?;
                        w.write(piece);
                    }
                    w.finish()
                        .await
                        .with_context(|| format!("finish uploading {}", b.name))?;
                    anyhow::Ok(())
                })?,
                Reader::Native(svc) => {
                    let opts = TransferOptions {
                        chunk_size: t.chunk,
                        parallelism: t.parallel,
                        ..TransferOptions::default()
                    };
                    block_on(upload_from_slice(
                        svc,
                        CONTAINER,
                        &b.name,
                        d,
                        &PutOptions::default(),
                        &opts,
                    ))
                    .with_context(|| format!("upload {}", b.name))?;
                }
                _ => bail!(
                    "writes are measured on http, https, gateway, connector and native, not {}",
                    job.path.name()
                ),
            }
            o.bytes += b.size;
            // The blocks and the block list.
            o.requests += blocks + 1;
        }
        Ok(o)
    }

    /// Reads one blob in full; returns its xxh3 and the requests made.
    fn read_blob(&mut self, job: &Job, b: &BlobRef, buf: &mut [u8]) -> Result<(u64, u64)> {
        let t = &job.tuning;
        let chunks = b.size.div_ceil(t.chunk);
        match self {
            Reader::Pread => Ok((pread_blob(b, &mut buf[..t.chunk as usize])?, chunks)),
            Reader::Mount(dir) => {
                use std::io::Read;
                let path = dir.join(&b.name);
                let mut f = std::fs::File::open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                let n = (1usize << 20).min(buf.len());
                let buf = &mut buf[..n];
                let (mut h, mut n) = (Xxh3::new(), 0u64);
                loop {
                    let k = f
                        .read(buf)
                        .with_context(|| format!("read {}", path.display()))?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += 1;
                }
                Ok((h.digest(), n))
            }
            Reader::Object { rt, store } => {
                let path = ObjPath::from(b.name.as_str());
                let sum = rt.block_on(async {
                    let mut h = Xxh3::new();
                    let ranges = (0..chunks).map(|i| i * t.chunk..((i + 1) * t.chunk).min(b.size));
                    let mut s = futures_util::stream::iter(ranges)
                        .map(|r| store.get_range(&path, r))
                        .buffered(t.parallel.max(1));
                    while let Some(bytes) = s.next().await {
                        h.update(&bytes.with_context(|| format!("GET a range of {}", b.name))?);
                    }
                    anyhow::Ok(h.digest())
                })?;
                Ok((sum, chunks))
            }
            Reader::Native(svc) => {
                let sum = block_on(async {
                    let opts = TransferOptions {
                        chunk_size: t.chunk,
                        parallelism: t.parallel,
                        ..TransferOptions::default()
                    };
                    let mut d = Download::start(svc, CONTAINER, &b.name, &opts)
                        .await
                        .with_context(|| format!("start downloading {}", b.name))?;
                    let mut h = Xxh3::new();
                    while let Some(c) = d.next_chunk().await {
                        let c = c.with_context(|| format!("download {}", b.name))?;
                        // In place: the lease viewed as Bytes, no copy.
                        h.update(&c.into_bytes()?);
                    }
                    anyhow::Ok(h.digest())
                })?;
                // One HEAD, then the ranges.
                Ok((sum, chunks + 1))
            }
            Reader::Sync {
                client,
                account,
                host,
            } => {
                let mut h = Xxh3::new();
                let mut n = 0;
                let mut off = 0;
                while off < b.size {
                    let len = t.sync_chunk.min(b.size - off);
                    h.update(&sync_get(client, account, host, &b.name, off, len)?);
                    off += len;
                    n += 1;
                }
                Ok((h.digest(), n))
            }
        }
    }
}

/// One signed ranged GET through [`Client::execute_blocking`] into a fresh lease; returns the
/// body as a zero-copy view of the lease.
fn sync_get(
    client: &Client,
    account: &AccountConfig,
    host: &str,
    blob: &str,
    off: u64,
    len: u64,
) -> Result<bytes::Bytes> {
    let path = format!("/{}/{CONTAINER}/{blob}", account.account);
    let headers = vec![
        (
            "x-ms-date".to_owned(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ),
        (
            "x-ms-version".to_owned(),
            blobring::blob::API_VERSION.to_owned(),
        ),
        (
            "x-ms-range".to_owned(),
            format!("bytes={off}-{}", off + len - 1),
        ),
    ];
    let Credentials::SharedKey { key } = &account.credentials else {
        bail!("the sync path signs with the emulator's shared key");
    };
    let sts = string_to_sign("GET", &account.account, &path, &[], &headers);
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "authorization: SharedKey {}:{}\r\n\r\n",
        account.account,
        sign(key, &sts)
    ));
    let mut req = Request::new(head.into_bytes());
    req.data = Some(client.alloc(len)?);
    req.timeout = Some(Duration::from_secs(60));
    let c = client
        .execute_blocking(req)
        .with_context(|| format!("GET {blob} bytes {off}+{len} through blobringd"))?;
    let rh = parse_response_head(&c.head)?;
    ensure!(
        rh.status == 206 || rh.status == 200,
        "GET {blob} bytes {off}+{len}: HTTP {}",
        rh.status
    );
    ensure!(
        c.data_len() as u64 == len,
        "GET {blob} bytes {off}+{len}: {} bytes came back",
        c.data_len()
    );
    Ok(c.data.context("no data lease")?.into_bytes(len as usize)?)
}

struct RangeSpec<'a> {
    blob: &'a BlobRef,
    len: u64,
    depth: usize,
    budget: Duration,
    max: u64,
    seed: u64,
}

impl RangeSpec<'_> {
    /// Keeps `depth` ranged reads in flight until the time or request budget is spent; checks
    /// every block of every answer; records each request's latency (ns).
    async fn run<F, Fut, B>(&self, fetch: F) -> Result<Outcome>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<B>>,
        B: AsRef<[u8]>,
    {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.seed);
        let slots = (self.blob.size / self.len).max(1);
        let deadline = Instant::now() + self.budget;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
        let mut inflight = FuturesUnordered::new();
        let mut o = Outcome::default();
        let mut issued = 0u64;
        // The first fifth of the time budget (at most 1 s) warms up connections, pools and
        // caches: requests completing in it are checked but not counted.
        let warm_until = Instant::now() + (self.budget / 5).min(Duration::from_secs(1));
        let mut window: Option<(Instant, u64)> = None;
        let mut skipped = 0u64;
        loop {
            while inflight.len() < self.depth.max(1)
                && issued < self.max
                && (issued == 0 || Instant::now() < deadline)
            {
                let off = rng.random_range(0..slots) * self.len;
                let f = fetch(off);
                inflight.push(async move {
                    let t = Instant::now();
                    let r = f.await;
                    (off, t.elapsed(), r)
                });
                issued += 1;
            }
            let Some((off, took, r)) = inflight.next().await else {
                break;
            };
            let data = r.with_context(|| format!("ranged GET at {off}"))?;
            self.verify(off, data.as_ref())?;
            o.requests_total += 1;
            let now = Instant::now();
            if now < warm_until && skipped < self.max / 2 {
                skipped += 1;
                continue;
            }
            window.get_or_insert_with(|| (now, crate::worker::epoch_ns()));
            hist.saturating_record(took.as_nanos() as u64);
            o.bytes += self.len;
            o.requests += 1;
            o.verified += 1;
        }
        o.wall_s = window.map_or(0.0, |w| w.0.elapsed().as_secs_f64());
        o.window_ns = window.map(|w| (w.1, crate::worker::epoch_ns()));
        o.hist = Some(encode_histogram(&hist)?);
        Ok(o)
    }

    fn verify(&self, off: u64, data: &[u8]) -> Result<()> {
        ensure!(
            data.len() as u64 == self.len,
            "{} bytes at {off}: {} came back",
            self.len,
            data.len()
        );
        for (j, blk) in data.chunks(BLOCK as usize).enumerate() {
            let i = (off / BLOCK) as usize + j;
            let want = self.blob.blocks.get(i).copied();
            ensure!(
                want == Some(xxh3_64(blk)),
                "checksum mismatch in {} block {i} (offset {})",
                self.blob.name,
                i as u64 * BLOCK
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{checksum, fill};
    use crate::worker::{Endpoint, Tuning};

    fn blob(data: &[u8], file: std::path::PathBuf) -> BlobRef {
        BlobRef {
            name: "b".into(),
            size: data.len() as u64,
            file,
            xxh3: checksum(data),
            blocks: data.chunks(BLOCK as usize).map(xxh3_64).collect(),
        }
    }

    #[test]
    fn ranged_verify_rejects_a_flipped_bit_and_a_short_answer() {
        let mut data = vec![0u8; 16 << 10];
        fill(&mut data, 7);
        let b = blob(&data, Default::default());
        let spec = RangeSpec {
            blob: &b,
            len: 8192,
            depth: 1,
            budget: Duration::ZERO,
            max: 1,
            seed: 0,
        };
        spec.verify(4096, &data[4096..12288]).expect("good range");
        let mut bad = data[4096..12288].to_vec();
        bad[5000] ^= 1;
        let e = spec
            .verify(4096, &bad)
            .expect_err("flipped bit")
            .to_string();
        assert!(e.contains("checksum mismatch in b block 2"), "{e}");
        assert!(
            spec.verify(4096, &data[4096..8192]).is_err(),
            "short answer"
        );
        // Right bytes from the wrong offset.
        assert!(spec.verify(0, &data[4096..12288]).is_err(), "wrong offset");
    }

    #[test]
    fn stream_read_of_a_corrupt_file_is_a_hard_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data");
        let mut data = vec![0u8; 3 << 20];
        fill(&mut data, 11);
        std::fs::write(&file, &data).expect("write");
        let b = blob(&data, file.clone());
        let job = Job {
            path: PathKind::Pread,
            endpoint: Endpoint {
                socket: dir.path().join("unused.sock"),
                http: "http://127.0.0.1:1/devstoreaccount1".into(),
                https: "https://127.0.0.1:1/devstoreaccount1".into(),
                cert: dir.path().join("unused.pem"),
                gateway: None,
                mount: None,
            },
            tuning: Tuning {
                chunk: 1 << 20,
                parallel: 1,
                sync_chunk: 1 << 20,
                arena: 1 << 20,
            },
            work: Work::Stream {
                blobs: vec![b],
                first: 0,
            },
        };
        let mut r = Reader::new(&job).expect("reader");
        let o = r.run(&job).expect("intact file verifies");
        assert_eq!((o.bytes, o.verified, o.requests), (3 << 20, 1, 3));
        data[(2 << 20) + 17] ^= 0x80;
        std::fs::write(&file, &data).expect("corrupt");
        let e = r.run(&job).expect_err("corrupt file").to_string();
        assert!(e.contains("checksum mismatch on path pread"), "{e}");
    }
}
