//! The bytes every mode reads: deterministic pseudo-random blobs written through the native
//! SDK, their xxh3 checksums, and where the fs store keeps each one (for `pread`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use blobring::blob::{AccountConfig, BlobService, PutOptions};
use blobring::transfer::{TransferOptions, upload_from_slice};
use blobring::{Client, ClientOptions, ConnectOptions, block_on};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::stack::{CONTAINER, Stack};

/// Granularity of the per-block checksums used by ranged reads.
pub const BLOCK: u64 = 4096;

/// One blob as the readers see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobRef {
    /// Name in the container.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The fs store's data file holding it.
    pub file: PathBuf,
    /// xxh3-64 of the whole blob.
    pub xxh3: u64,
    /// xxh3-64 of every [`BLOCK`]-byte block (only for blobs read by ranges).
    #[serde(default)]
    pub blocks: Vec<u64>,
}

/// Fills `buf` with the xorshift stream of `seed` (fast, incompressible, reproducible).
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

/// xxh3 of a whole buffer, the way every path computes it (streaming in order).
pub fn checksum(data: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(data);
    h.digest()
}

/// A client of the stack with an arena of `arena` bytes (a burst of hundreds of clients
/// starting at once is absorbed by the SDK, which retries handshakes the daemon sheds).
pub fn connect(socket: &Path, arena: u64) -> Result<Client> {
    let opts = ClientOptions {
        socket: socket.to_path_buf(),
        connect: ConnectOptions {
            arena_len: arena,
            ..ConnectOptions::default()
        },
        ..ClientOptions::default()
    };
    Client::connect_with(opts)
        .with_context(|| format!("connect to blobringd at {}", socket.display()))
}

/// The Blob API over `client` for the host's (emulator) account.
pub fn service(client: Client) -> BlobService {
    BlobService::new(client, AccountConfig::emulator()).with_timeout(Duration::from_secs(120))
}

/// Writes `count` blobs of `size` bytes named `{prefix}-{i:04}` and returns them (with
/// per-block checksums if `blocks`), located in the store and read back once with `pread`
/// (which warms the page cache and checks the store holds what was written).
pub fn write_blobs(
    stack: &Stack,
    prefix: &str,
    count: usize,
    size: u64,
    blocks: bool,
    mut progress: impl FnMut(u64),
) -> Result<Vec<BlobRef>> {
    let client = connect(&stack.socket, 128 << 20)?;
    let svc = service(client);
    let mut buf = vec![0u8; size as usize];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i:04}");
        fill(
            &mut buf,
            0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) << 20) ^ size,
        );
        block_on(upload_from_slice(
            &svc,
            CONTAINER,
            &name,
            &buf,
            &PutOptions::default(),
            &TransferOptions::default(),
        ))
        .with_context(|| format!("upload {name} ({size} bytes) through blobringd"))?;
        let file = data_file(stack.store_dir(), CONTAINER, &name)?;
        let blocks = if blocks {
            buf.chunks(BLOCK as usize).map(xxh3_64).collect()
        } else {
            Vec::new()
        };
        let b = BlobRef {
            name,
            size,
            file,
            xxh3: checksum(&buf),
            blocks,
        };
        warm(&b)?;
        out.push(b);
        progress(size);
    }
    Ok(out)
}

/// Reads the blob's file once and checks its checksum (page-cache warm-up).
pub fn warm(b: &BlobRef) -> Result<()> {
    let got = crate::paths::pread_blob(b, &mut vec![0u8; 4 << 20])?;
    ensure!(
        got == b.xxh3,
        "the store's file {} for {} does not hold the bytes written",
        b.file.display(),
        b.name
    );
    Ok(())
}

/// The data file of `blob` in an fs store (layout in host/src/store/fs.rs:
/// `containers/<c>/meta/<sha256(blob)>.json` names `containers/<c>/data/<file>`).
pub fn data_file(store: &Path, container: &str, blob: &str) -> Result<PathBuf> {
    let cdir = store.join("containers").join(container);
    let key: String = Sha256::digest(blob.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let meta = cdir.join("meta").join(format!("{key}.json"));
    let text = std::fs::read_to_string(&meta)
        .with_context(|| format!("read the fs store record {}", meta.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parse the fs store record {}", meta.display()))?;
    let Some(data) = v["data"].as_str() else {
        bail!("{} has no `data` field", meta.display());
    };
    let file = cdir.join("data").join(data);
    std::fs::metadata(&file).with_context(|| format!("stat {}", file.display()))?;
    Ok(file)
}
