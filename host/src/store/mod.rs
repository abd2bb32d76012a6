//! Blob stores: where the executor keeps containers, blobs and staged blocks.
//!
//! The [`Store`] trait is synchronous and object-safe so that a thread-per-channel VSP worker
//! can call it directly; the async REST front end calls it through `spawn_blocking`.
//!
//! **Invariants every store keeps:**
//! - a blob is never visible partially written: new content becomes visible in one step (an
//!   index swap, and for `fs` a rename) after all of its bytes are stored;
//! - write conditions ([`check_write`]) are evaluated under the same lock that
//!   publishes the new version, so conditional writes are linearisable (no lost updates);
//! - a [`BlobReader`] is a snapshot: it keeps reading the version it opened even if the blob is
//!   replaced or deleted meanwhile;
//! - committing a block list discards every other staged block of that blob (as Azure does),
//!   so a second, racing commit that names discarded blocks fails with `InvalidBlockList`.
//!
//! Two stores live here: [`MemStore`] (`mem`) and [`FsStore`] (`fs:<dir>`), both built on one
//! generic engine over a small data backend. A `passthrough:<url>` upstream is not a store: it
//! forwards whole requests, and the executor picks it instead of a store at the top of its
//! dispatch ([`crate::Backend`]; see the `passthrough` module).

mod engine;
mod fs;
mod mem;
mod open_files;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use blobring_proto::Conditions;
pub use fs::FsStore;
pub use mem::MemStore;
pub use open_files::DEFAULT_OPEN_FILES;

/// Errors a store reports. Each maps to one Azure error code in the executor.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The container does not exist.
    #[error("Container {0:?} does not exist; create it first (PUT ?restype=container)")]
    ContainerNotFound(String),
    /// The container already exists.
    #[error("Container {0:?} already exists")]
    ContainerAlreadyExists(String),
    /// The blob does not exist (or has only uncommitted blocks).
    #[error("Blob {0:?} does not exist")]
    BlobNotFound(String),
    /// A create-only write (`If-None-Match: *`) found an existing blob.
    #[error("Blob {0:?} already exists and the request asked for create-only")]
    BlobAlreadyExists(String),
    /// An `If-*` condition did not hold.
    #[error("A condition specified with a conditional header was not met")]
    ConditionNotMet,
    /// A block list names a block that is not staged or committed.
    #[error("The block list is invalid: {0}")]
    InvalidBlockList(String),
    /// Too many uncommitted blocks for one blob.
    #[error("Blob {0:?} already has 100,000 uncommitted blocks; commit or delete some first")]
    BlockCountExceedsLimit(String),
    /// An I/O operation of the `fs` store failed.
    #[error(
        "Store I/O on {path}: {source}; check the store directory's permissions and free space"
    )]
    Io {
        /// File or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Persisted store state could not be decoded.
    #[error(
        "Store file {path} is corrupt: {reason}; remove it or restore the directory from a backup"
    )]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A read asked for bytes outside the blob (an executor bug, ranges are checked first).
    #[error("Read of {len} bytes at {offset} is outside the blob ({size} bytes)")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Blob size.
        size: u64,
    },
    /// Writing the body into the destination buffer failed (e.g. guest memory went away).
    #[error("Writing the response body into the destination buffer failed: {0}")]
    Destination(#[source] std::io::Error),
    /// A container name that Azure would reject (and that could escape the store directory).
    #[error(
        "Container name {0:?} is invalid: use 3-63 lower-case letters, digits and single hyphens"
    )]
    InvalidContainerName(String),
    /// The store spec given on the command line is not understood.
    #[error("Unknown store {0:?}; use `mem`, `fs:<dir>` or `passthrough:<url>`")]
    BadSpec(String),
    /// The URL of a `passthrough:<url>` backend is unusable.
    #[error(
        "Passthrough URL {url:?} is unusable: {reason}; use e.g. passthrough:http://127.0.0.1:10000/devstoreaccount1"
    )]
    BadUpstream {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The upstream of a passthrough could not be reached (or the connection failed).
    #[error("Cannot reach upstream at {url}: {reason}; is Azurite/the endpoint running?")]
    UpstreamUnreachable {
        /// The upstream URL.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The upstream of a passthrough did not answer in time.
    #[error(
        "Upstream at {url} did not answer in time: {reason}; check that the endpoint is healthy and reachable"
    )]
    UpstreamTimeout {
        /// The upstream URL.
        url: String,
        /// The timeout error.
        reason: String,
    },
    /// The upstream answered a request of the host itself with an unexpected status.
    #[error("Upstream at {url} answered {status} {code} when {what}")]
    UpstreamStatus {
        /// The upstream URL.
        url: String,
        /// What the host was doing.
        what: String,
        /// HTTP status.
        status: u16,
        /// `x-ms-error-code`, if any.
        code: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Standard content headers stored with a blob and returned on GET/HEAD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentHeaders {
    /// `Content-Type` (from `x-ms-blob-content-type`, or the Put Blob `Content-Type`).
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// Base64 MD5 of the whole blob, when known.
    pub content_md5: Option<String>,
}

/// A committed block of a block blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Raw block id (the Base64-decoded form).
    pub id: Vec<u8>,
    /// Block size in bytes.
    pub size: u64,
}

/// Everything known about one committed blob version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobProps {
    /// Blob name (decoded, `/`-separated).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Quoted strong ETag, e.g. `"0x8DD0C3A1B2C3D4E"`.
    pub etag: String,
    /// Last modification (content or properties).
    pub last_modified: SystemTime,
    /// Creation time of the blob (kept across overwrites).
    pub created: SystemTime,
    /// Content headers.
    pub content: ContentHeaders,
    /// User metadata (`x-ms-meta-*`), names lower-cased.
    pub metadata: Vec<(String, String)>,
    /// Blob index tags.
    pub tags: Vec<(String, String)>,
    /// Committed block list, in blob order (empty for a blob written by Put Blob, which Azure
    /// also reports as having no committed blocks).
    pub blocks: Vec<BlockInfo>,
}

/// Properties of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerProps {
    /// Container name.
    pub name: String,
    /// Quoted ETag.
    pub etag: String,
    /// Last modification.
    pub last_modified: SystemTime,
    /// User metadata.
    pub metadata: Vec<(String, String)>,
}

/// Attributes of a blob being written (Put Blob, Put Block List, Copy Blob).
#[derive(Debug, Clone, Default)]
pub struct NewBlob {
    /// Content headers to store.
    pub content: ContentHeaders,
    /// User metadata.
    pub metadata: Vec<(String, String)>,
    /// Tags (an overwrite replaces the tags, as in Azure).
    pub tags: Vec<(String, String)>,
}

/// One entry of a Put Block List body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRef {
    /// Search the staged blocks, then the committed ones.
    Latest(Vec<u8>),
    /// A block of the current committed list.
    Committed(Vec<u8>),
    /// A staged (uncommitted) block.
    Uncommitted(Vec<u8>),
}

/// Result of Get Block List.
#[derive(Debug, Clone, Default)]
pub struct BlockListing {
    /// Committed blocks in blob order, with the committed blob's props when it exists.
    pub committed: Vec<BlockInfo>,
    /// Staged blocks in staging order.
    pub uncommitted: Vec<BlockInfo>,
    /// Props of the committed blob, if any.
    pub props: Option<Arc<BlobProps>>,
}

/// Outcome of a failed read condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConditionFailure {
    /// 304: If-None-Match matched or the blob was not modified since.
    NotModified,
    /// 412: If-Match / If-Unmodified-Since failed.
    Failed,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.trim_matches('"') == etag.trim_matches('"'))
}

/// Checks `cond` for a write of blob `name` against its current version (`None` = no blob).
///
/// `If-None-Match: *` on an existing blob is `BlobAlreadyExists` (409, as Azurite and
/// object_store's create-only copy expect); every other failure is `ConditionNotMet` (412).
pub fn check_write(
    cond: &Conditions,
    name: &str,
    existing: Option<&BlobProps>,
) -> Result<(), StoreError> {
    let Some(p) = existing else {
        return if cond.if_match.is_some() {
            Err(StoreError::ConditionNotMet)
        } else {
            Ok(())
        };
    };
    if let Some(m) = &cond.if_match
        && !etag_matches(m, &p.etag)
    {
        return Err(StoreError::ConditionNotMet);
    }
    if let Some(m) = &cond.if_none_match {
        if m.trim() == "*" {
            return Err(StoreError::BlobAlreadyExists(name.to_owned()));
        }
        if etag_matches(m, &p.etag) {
            return Err(StoreError::ConditionNotMet);
        }
    }
    if let Some(t) = cond.if_modified_since
        && secs(p.last_modified) <= secs(t)
    {
        return Err(StoreError::ConditionNotMet);
    }
    if let Some(t) = cond.if_unmodified_since
        && secs(p.last_modified) > secs(t)
    {
        return Err(StoreError::ConditionNotMet);
    }
    Ok(())
}

/// Checks `cond` for a read (GET/HEAD) of an existing blob.
pub fn check_read(cond: &Conditions, p: &BlobProps) -> Result<(), ReadConditionFailure> {
    if let Some(m) = &cond.if_match
        && !etag_matches(m, &p.etag)
    {
        return Err(ReadConditionFailure::Failed);
    }
    if let Some(t) = cond.if_unmodified_since
        && secs(p.last_modified) > secs(t)
    {
        return Err(ReadConditionFailure::Failed);
    }
    if let Some(m) = &cond.if_none_match
        && etag_matches(m, &p.etag)
    {
        return Err(ReadConditionFailure::NotModified);
    }
    if let Some(t) = cond.if_modified_since
        && secs(p.last_modified) <= secs(t)
    {
        return Err(ReadConditionFailure::NotModified);
    }
    Ok(())
}

/// Destination of a response body: the data buffer of a VMBus request (guest memory, reached
/// through the transport's bounds-checked accessor) or a plain host buffer.
///
/// Peer memory is never handed out as a Rust reference; the store writes into it through these
/// calls only.
pub trait BodySink {
    /// Bytes the destination can hold.
    fn capacity(&self) -> u64;
    /// Copy `src` to `offset..offset + src.len()` of the destination.
    fn write_at(&mut self, offset: u64, src: &[u8]) -> std::io::Result<()>;
    /// Fast path for file-backed stores: fill `len` bytes at `offset` straight from `file` at
    /// `file_offset` (e.g. `pread` into the destination), so the body is copied once. Return
    /// `Ok(false)` when not supported; the caller then copies through a bounce buffer.
    fn fill_from_file(
        &mut self,
        offset: u64,
        file: &std::fs::File,
        file_offset: u64,
        len: u64,
    ) -> std::io::Result<bool> {
        let _ = (offset, file, file_offset, len);
        Ok(false)
    }
}

/// A [`BodySink`] over a host byte slice.
#[derive(Debug)]
pub struct SliceSink<'a>(pub &'a mut [u8]);

impl SliceSink<'_> {
    fn range(&mut self, offset: u64, len: u64) -> std::io::Result<&mut [u8]> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(len).ok()?));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.0.len() => Ok(&mut self.0[s..e]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} exceed the {}-byte buffer",
                    self.0.len()
                ),
            )),
        }
    }
}

impl BodySink for SliceSink<'_> {
    fn capacity(&self) -> u64 {
        self.0.len() as u64
    }
    fn write_at(&mut self, offset: u64, src: &[u8]) -> std::io::Result<()> {
        self.range(offset, src.len() as u64)?.copy_from_slice(src);
        Ok(())
    }
    fn fill_from_file(
        &mut self,
        offset: u64,
        file: &std::fs::File,
        file_offset: u64,
        len: u64,
    ) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(self.range(offset, len)?, file_offset)?;
        Ok(true)
    }
}

/// A consistent snapshot of one blob version, opened for reading.
pub trait BlobReader: Send {
    /// Properties of the version being read.
    fn props(&self) -> &BlobProps;
    /// Fill `dst` with the bytes at `offset..offset + dst.len()`; the range must be inside the
    /// blob.
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), StoreError>;
    /// Write `len` bytes at `offset` of the blob into `sink` at `sink_offset`. This is the one
    /// copy of a GET: straight from the store into the destination.
    fn read_to(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn BodySink,
        sink_offset: u64,
    ) -> Result<(), StoreError>;
}

/// Visitor result for [`Store::list_blobs`].
pub type ListVisitor<'a> = &'a mut dyn FnMut(&BlobProps) -> bool;

/// A blob store. Synchronous and object-safe; every method may block on I/O.
pub trait Store: Send + Sync + fmt::Debug {
    /// Short description for logs, e.g. `fs:/var/lib/blobring`.
    fn describe(&self) -> String;

    /// Create a container.
    fn create_container(
        &self,
        name: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<ContainerProps, StoreError>;
    /// Delete a container and everything in it.
    fn delete_container(&self, name: &str) -> Result<(), StoreError>;
    /// Properties of a container.
    fn container(&self, name: &str) -> Result<ContainerProps, StoreError>;
    /// All containers whose name starts with `prefix`, in name order.
    fn list_containers(&self, prefix: &str) -> Result<Vec<ContainerProps>, StoreError>;

    /// Open a committed blob for reading.
    fn open(&self, container: &str, blob: &str) -> Result<Box<dyn BlobReader>, StoreError>;
    /// Visit committed blobs whose name starts with `prefix` and is `>= from`, in name order,
    /// until the visitor returns false. Runs under the store's read lock: keep the visitor cheap.
    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        from: &str,
        visit: ListVisitor<'_>,
    ) -> Result<(), StoreError>;

    /// Put Blob: replace the blob with `data` if `cond` holds.
    fn put_blob(
        &self,
        container: &str,
        blob: &str,
        data: &[u8],
        attrs: NewBlob,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError>;
    /// Put Block: stage a block (replacing a staged block with the same id).
    fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &[u8],
        data: &[u8],
    ) -> Result<(), StoreError>;
    /// Put Block List: commit `blocks` in order if `cond` holds; discards the other staged
    /// blocks of the blob.
    fn put_block_list(
        &self,
        container: &str,
        blob: &str,
        blocks: &[BlockRef],
        attrs: NewBlob,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError>;
    /// Get Block List.
    fn block_list(&self, container: &str, blob: &str) -> Result<BlockListing, StoreError>;
    /// Delete a blob (and its staged blocks) if `cond` holds.
    fn delete_blob(&self, container: &str, blob: &str, cond: &Conditions)
    -> Result<(), StoreError>;
    /// Copy a committed blob inside the store. `metadata`, when given, replaces the source's;
    /// tags are not copied.
    #[allow(clippy::too_many_arguments)]
    fn copy_blob(
        &self,
        src_container: &str,
        src_blob: &str,
        dst_container: &str,
        dst_blob: &str,
        metadata: Option<Vec<(String, String)>>,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError>;
    /// Replace the tags of a blob (does not change its ETag).
    fn set_tags(
        &self,
        container: &str,
        blob: &str,
        tags: Vec<(String, String)>,
        cond: &Conditions,
    ) -> Result<(), StoreError>;
    /// Replace the content headers (Set Blob Properties; changes the ETag).
    fn set_content_headers(
        &self,
        container: &str,
        blob: &str,
        content: ContentHeaders,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError>;
    /// Replace user metadata (Set Blob Metadata; changes the ETag).
    fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: Vec<(String, String)>,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError>;

    /// Convenience: read `dst.len()` bytes at `offset` of the current version into `dst`.
    fn read_into(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<BlobProps, StoreError> {
        let r = self.open(container, blob)?;
        r.read_at(offset, dst)?;
        Ok(r.props().clone())
    }
}

/// Whether `c` is a valid container name (3-63 lower-case letters, digits and single hyphens,
/// starting and ending with a letter or digit), or `$root`.
pub fn valid_container_name(c: &str) -> bool {
    let ok = (3..=63).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !c.starts_with('-')
        && !c.ends_with('-')
        && !c.contains("--");
    ok || c == "$root"
}

/// Tuning of a store opened by [`crate::open_store_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// `fs` store: most data files kept open between reads (`--open-files`; least recently
    /// read closed first; 0 opens the data file on every read). Ignored by other stores.
    pub open_files: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            open_files: DEFAULT_OPEN_FILES,
        }
    }
}

/// A fresh, strictly increasing ETag in Azure's `"0x…"` form.
pub(crate) fn new_etag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 / 100)
        .unwrap_or(0);
    // Relaxed is enough: only uniqueness and monotonicity of this one counter matter.
    let mut prev = LAST.load(Ordering::Relaxed);
    let v = loop {
        let next = now.max(prev.wrapping_add(1));
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(p) => prev = p,
        }
    };
    format!(
        "\"0x{:X}\"",
        0x8D0_0000_0000_0000u64 | (v & 0x000F_FFFF_FFFF_FFFF)
    )
}

#[cfg(test)]
mod tests;
