#![forbid(unsafe_code)]
//! `blobring._blobring`: the native half of the Python package (ARCHITECTURE.md §10).
//!
//! **Owns:** nothing but the translation between Python and the SDK. Every call is one SDK
//! call ([`blobring::blob::BlobService`], [`blobring::transfer`]) run with [`block_on`] while
//! the GIL is released (`py.detach`), so many Python threads share one `blobring.Client` — one
//! connection to `blobringd` — and wait in parallel. Errors become the exception classes of
//! `blobring.exceptions` (the Python half), which subclass the built-in ones a Python user
//! catches (`FileNotFoundError`, `FileExistsError`, `PermissionError`, `ConnectionError`,
//! `TimeoutError`, `ValueError`).
//!
//! **Zero copy:** a read returns a [`pyo3_bytes::PyBytes`] (Python class `Bytes`) made from
//! the SDK's [`blobring::Lease::into_bytes`]: the buffer protocol exports the arena bytes
//! read-only, and the lease returns to the arena when the last Python reference (and every
//! `memoryview`, NumPy array or Arrow buffer made from it) goes. The buffer-protocol export,
//! which needs code the compiler cannot check, lives in pyo3-bytes; this crate forbids such
//! code (`forbid(unsafe_code)`).
//!
//! **Trusts:** what the SDK trusts (the daemon). Python callers are not trusted to pass sane
//! ranges or names: both are checked and refused with `ValueError`-derived exceptions.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use blobring::blob::{
    AccountConfig, BlobError, BlobItem, BlobProperties, BlobService, BlockRef, Conditions,
    GetOptions, GetResult, ListOptions, PutOptions,
};
use blobring::proto::bounded_range_len;
use blobring::proto::header::{CONTENT_LENGTH, X_MS_RANGE};
use blobring::transfer::{Download, TransferOptions};
use blobring::{Client as SdkClient, ClientError, ClientOptions, MAX_REQUEST_DATA, block_on};
use bytes::Bytes;
use futures_util::StreamExt as _;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3_bytes::PyBytes;

/// How to start a daemon, appended to every "daemon unreachable" message.
const START_HINT: &str = "start a local stack with `blobring up --store DIR` and export \
     BLOBRING_SOCKET as it prints (or pass socket= to blobring.connect)";

/// An exception of class `class` (from `blobring.exceptions`) with `msg`, and the service's
/// HTTP `status` and error `code` as attributes.
fn exception(py: Python<'_>, class: &str, msg: String, status: Option<u16>, code: &str) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("blobring.exceptions")?.getattr(class)?;
        let exc = cls.call1((msg.clone(),))?;
        exc.setattr("status", status)?;
        exc.setattr("code", (!code.is_empty()).then_some(code))?;
        Ok(PyErr::from_value(exc))
    })();
    made.unwrap_or_else(|e| e)
}

/// The Python exception for an SDK error.
fn py_err(py: Python<'_>, e: BlobError) -> PyErr {
    let msg = e.to_string();
    match &e {
        BlobError::Service { status, code, .. } => {
            let class = match status {
                404 if code == blobring::proto::code::CONTAINER_NOT_FOUND => "ContainerNotFound",
                404 => "BlobNotFound",
                403 => "AccessDenied",
                412 | 304 => "ConditionNotMet",
                409 => "BlobExists",
                _ if e.is_already_exists() => "BlobExists",
                400 | 416 => "InvalidRequest",
                _ => "ServiceError",
            };
            exception(py, class, msg, Some(*status), code)
        }
        BlobError::Transport(c) => {
            let class = match c {
                ClientError::Connect(_)
                | ClientError::ConnectionReset
                | ClientError::Connection(blobring::Error::DaemonGone) => "DaemonUnavailable",
                ClientError::TimedOut(_) | ClientError::ArenaBusy { .. } => "DeadlineExceeded",
                ClientError::TooLarge { .. } => "InvalidRequest",
                _ => "BlobringError",
            };
            let msg = if class == "DaemonUnavailable" {
                format!("{msg}; {START_HINT}")
            } else {
                msg
            };
            exception(py, class, msg, None, "")
        }
        BlobError::Config(_) => exception(py, "InvalidRequest", msg, None, ""),
        BlobError::Integrity { .. } => exception(py, "IntegrityError", msg, None, ""),
        BlobError::Protocol(_) => exception(py, "BlobringError", msg, None, ""),
        // OSError(errno, text) makes the matching subclass (FileNotFoundError for ENOENT, …).
        BlobError::Io { source, .. } => match source.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, msg)),
            None => PyOSError::new_err(msg),
        },
    }
}

/// Runs `f` with the GIL released and turns its error into a Python exception.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, BlobError> + Send) -> PyResult<T> {
    py.detach(f).map_err(|e| py_err(py, e))
}

fn conditions(if_match: Option<String>, overwrite: bool) -> Conditions {
    Conditions {
        if_match,
        if_none_match: (!overwrite).then(|| "*".to_owned()),
        ..Conditions::default()
    }
}

/// The options of a write: its conditions ([`conditions`]), Content-Type and metadata.
fn put_options(
    if_match: Option<String>,
    overwrite: bool,
    content_type: Option<String>,
    metadata: Option<HashMap<String, String>>,
) -> PutOptions {
    PutOptions {
        conditions: conditions(if_match, overwrite),
        content_type,
        metadata: metadata.unwrap_or_default().into_iter().collect(),
        ..PutOptions::default()
    }
}

fn check_name(what: &str, name: &str) -> PyResult<()> {
    if name.is_empty() {
        return Err(PyValueError::new_err(format!(
            "the {what} name is empty; pass a non-empty name"
        )));
    }
    Ok(())
}

fn check_range(r: (u64, u64)) -> PyResult<Range<u64>> {
    if r.1 < r.0 {
        return Err(PyValueError::new_err(format!(
            "range ({}, {}) ends before it starts; ranges are (start, end) with end exclusive",
            r.0, r.1
        )));
    }
    Ok(r.0..r.1)
}

/// The bytes of any contiguous buffer (`bytes`, `bytearray`, `memoryview`, a NumPy array of
/// any dtype…) without a copy: pyo3-bytes takes byte-format buffers; others are seen through
/// `memoryview(obj).cast("B")`.
fn buffer(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    match obj.extract::<PyBytes>() {
        Ok(b) => Ok(b.into_inner()),
        Err(first) => {
            let py = obj.py();
            let cast = py
                .import("builtins")?
                .getattr("memoryview")?
                .call1((obj,))
                .and_then(|mv| mv.call_method1("cast", ("B",)));
            match cast {
                Ok(mv) => Ok(mv.extract::<PyBytes>()?.into_inner()),
                Err(_) => Err(first),
            }
        }
    }
}

/// A progress callback that calls the Python callable `cb(done, total)` with the GIL; the
/// first exception it raises is kept in `err` (and raised when the transfer ends).
fn progress(cb: Py<PyAny>, err: Arc<Mutex<Option<PyErr>>>) -> TransferOptions {
    TransferOptions::default().with_progress(move |done, total| {
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (done, total)) {
                let mut slot = err.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
            }
        })
    })
}

fn transfer_opts(
    cb: Option<Py<PyAny>>,
    chunk_size: Option<u64>,
    parallelism: Option<usize>,
    err: &Arc<Mutex<Option<PyErr>>>,
) -> TransferOptions {
    let mut o = match cb {
        Some(cb) => progress(cb, err.clone()),
        None => TransferOptions::default(),
    };
    if let Some(c) = chunk_size {
        o.chunk_size = c;
    }
    if let Some(p) = parallelism {
        o.parallelism = p;
    }
    o
}

fn take_err(err: &Arc<Mutex<Option<PyErr>>>) -> PyResult<()> {
    match err.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads of at most this many bytes are copied out of the arena at once.
const COPY_BELOW: usize = 64 << 10;

/// The bytes of a read as Python will hold them: a zero-copy view of the lease, unless the
/// read is small (≤ [`COPY_BELOW`]) or fills less than half its lease (a whole-blob read
/// starts with a 4 MiB buffer): those are copied and the lease returned at once, so holding
/// many small results does not pin the arena.
fn settle(g: GetResult) -> Result<Bytes, BlobError> {
    let cap = g.data.as_ref().map_or(0, |l| l.len());
    if g.len <= COPY_BELOW || cap > 2 * g.len {
        Ok(Bytes::from(g.to_vec()?))
    } else {
        g.into_bytes()
    }
}

/// Properties of a blob (`Client.head`).
#[pyclass(module = "blobring", frozen, get_all)]
#[derive(Clone)]
struct Properties {
    /// Size of the whole blob in bytes.
    size: u64,
    /// ETag (with its quotes), for `if_match=`.
    etag: String,
    /// `Last-Modified` (HTTP date).
    last_modified: String,
    /// `Content-Type`, if set.
    content_type: Option<String>,
    /// The stored MD5 of the whole blob (Base64), if any.
    content_md5: Option<String>,
    /// The user metadata (`x-ms-meta-*`).
    metadata: HashMap<String, String>,
}

impl From<BlobProperties> for Properties {
    fn from(p: BlobProperties) -> Self {
        Self {
            size: p.size,
            etag: p.etag,
            last_modified: p.last_modified,
            content_type: p.content_type,
            content_md5: p.content_md5,
            metadata: p.metadata.into_iter().collect(),
        }
    }
}

#[pymethods]
impl Properties {
    fn __repr__(&self) -> String {
        format!(
            "Properties(size={}, etag={:?}, last_modified={:?}, content_type={:?}, metadata={:?})",
            self.size, self.etag, self.last_modified, self.content_type, self.metadata
        )
    }
}

/// One blob of a listing.
#[pyclass(module = "blobring", frozen, get_all)]
#[derive(Clone)]
struct BlobInfo {
    /// Full blob name.
    name: String,
    /// Size in bytes.
    size: u64,
    /// ETag.
    etag: String,
    /// `Last-Modified` (HTTP date).
    last_modified: String,
}

impl From<BlobItem> for BlobInfo {
    fn from(b: BlobItem) -> Self {
        Self {
            name: b.name,
            size: b.size,
            etag: b.etag,
            last_modified: b.last_modified,
        }
    }
}

#[pymethods]
impl BlobInfo {
    fn __repr__(&self) -> String {
        format!("BlobInfo(name={:?}, size={})", self.name, self.size)
    }
}

/// The result of `Client.list`: the blobs, and the common prefixes ("directories") when
/// listing with a delimiter.
#[pyclass(module = "blobring", frozen, get_all)]
struct Listing {
    /// Blobs, in name order.
    blobs: Vec<BlobInfo>,
    /// Common prefixes (each ending with the delimiter), in name order.
    prefixes: Vec<String>,
}

#[pymethods]
impl Listing {
    fn __repr__(&self) -> String {
        format!(
            "Listing({} blobs, {} prefixes)",
            self.blobs.len(),
            self.prefixes.len()
        )
    }
}

/// A connection to `blobringd` and a storage account: the native API. Thread-safe: share one
/// per process; every call releases the GIL while it waits.
#[pyclass(module = "blobring", frozen)]
struct Client {
    svc: BlobService,
    socket: PathBuf,
}

impl Client {
    /// Bytes one request can carry with this client's arena.
    fn request_limit(&self) -> u64 {
        (self.svc.client().arena_len() / 2).min(MAX_REQUEST_DATA)
    }

    /// Reads `range` (or the whole blob) with a striped download into one buffer: for what
    /// one request cannot carry.
    async fn read_striped(
        &self,
        container: &str,
        name: &str,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, BlobError> {
        let mut d =
            Download::start(&self.svc, container, name, &TransferOptions::default()).await?;
        let start = match range {
            Some(r) => {
                d.restrict(r.clone());
                r.start
            }
            None => 0,
        };
        let mut out = vec![0u8; d.size().saturating_sub(start) as usize];
        while let Some(c) = d.next_chunk().await {
            let c = c?;
            let at = (c.offset - start) as usize;
            c.copy_to(&mut out[at..at + c.len])?;
        }
        Ok(Bytes::from(out))
    }

    /// One range: zero-copy if one request carries it, else striped into a fresh buffer.
    /// `settle_small` applies [`settle`] (callers that hold many results at once pass `false`:
    /// their leases are exactly the ranges' sizes).
    async fn read_range(
        &self,
        container: &str,
        name: &str,
        r: Range<u64>,
        opts: &GetOptions,
        settle_small: bool,
    ) -> Result<Bytes, BlobError> {
        if r.is_empty() {
            return Ok(Bytes::new());
        }
        if r.end - r.start > self.request_limit() {
            return self.read_striped(container, name, Some(r)).await;
        }
        let g = self.svc.get_range(container, name, r, opts, None).await?;
        if settle_small {
            settle(g)
        } else {
            g.into_bytes()
        }
    }
}

#[pymethods]
impl Client {
    fn __repr__(&self) -> String {
        format!(
            "blobring.Client(socket={:?}, account={:?})",
            self.socket.display().to_string(),
            self.svc.account().account
        )
    }

    /// The daemon socket this client talks to.
    #[getter]
    fn socket(&self) -> String {
        self.socket.display().to_string()
    }

    /// The storage account name.
    #[getter]
    fn account(&self) -> String {
        self.svc.account().account.clone()
    }

    /// Bytes of the client's data arena.
    #[getter]
    fn arena_len(&self) -> u64 {
        self.svc.client().arena_len()
    }

    /// Bytes of the data arena free right now (buffers returned by reads hold the rest until
    /// their last reference goes).
    fn arena_free(&self, py: Python<'_>) -> PyResult<u64> {
        run(py, || Ok(self.svc.client().arena_free()?))
    }

    /// `(start address, length)` of the shared memory region mapped for this client: every
    /// zero-copy buffer a read returns lies inside it.
    fn region_span(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        run(py, || Ok(self.svc.client().region_span()?))
    }

    // ------------------------------------------------------------------ containers

    /// Creates a container; `BlobExists` if it exists (unless `exist_ok`).
    #[pyo3(signature = (container, *, exist_ok = false))]
    fn create_container(&self, py: Python<'_>, container: &str, exist_ok: bool) -> PyResult<()> {
        check_name("container", container)?;
        run(py, || {
            match block_on(self.svc.create_container(container)) {
                Err(e) if exist_ok && e.is_already_exists() => Ok(()),
                r => r,
            }
        })
    }

    /// Deletes a container and every blob in it; `ContainerNotFound` if it does not exist
    /// (unless `missing_ok`).
    #[pyo3(signature = (container, *, missing_ok = false))]
    fn delete_container(&self, py: Python<'_>, container: &str, missing_ok: bool) -> PyResult<()> {
        check_name("container", container)?;
        run(py, || {
            match block_on(self.svc.delete_container(container)) {
                Err(e) if missing_ok && e.is_not_found() => Ok(()),
                r => r,
            }
        })
    }

    /// Names of the containers (those starting with `prefix`, if given).
    #[pyo3(signature = (prefix = None))]
    fn list_containers(&self, py: Python<'_>, prefix: Option<&str>) -> PyResult<Vec<String>> {
        run(py, || block_on(self.svc.list_containers(prefix)))
    }

    // ------------------------------------------------------------------ reads

    /// Reads a blob, or the bytes `range=(start, end)` of it (end exclusive), into a read-only
    /// `Bytes` buffer. When one request carries it (up to half the arena) the buffer is the
    /// shared memory itself, without a copy (`memoryview`, `numpy.frombuffer`,
    /// `pyarrow.py_buffer` see it in place; `bytes(b)` copies). Reads of 64 KiB or less, and
    /// whole-blob reads that fill less than half their 4 MiB first buffer, are copied out
    /// instead so that holding many small results never pins the arena. Reads larger than
    /// one request are striped over every queue into a fresh buffer. `if_match` pins the read to an ETag
    /// (`ConditionNotMet` if the blob changed).
    #[pyo3(signature = (container, name, range = None, *, if_match = None))]
    fn get(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        range: Option<(u64, u64)>,
        if_match: Option<String>,
    ) -> PyResult<PyBytes> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let range = range.map(check_range).transpose()?;
        let opts = GetOptions {
            conditions: conditions(if_match, true),
        };
        let b = run(py, || {
            block_on(async {
                match range {
                    Some(r) => self.read_range(container, name, r, &opts, true).await,
                    None => match self.svc.get_blob(container, name, None, &opts).await {
                        // More than one request carries: striped (pinned to one ETag).
                        Err(BlobError::Config(_)) if opts.conditions.if_match.is_none() => {
                            self.read_striped(container, name, None).await
                        }
                        r => settle(r?),
                    },
                }
            })
        })?;
        Ok(PyBytes::new(b))
    }

    /// Reads several `(start, end)` ranges of one blob with every request in flight at once;
    /// adjacent and overlapping ranges are coalesced into one request and each result is a
    /// zero-copy slice of it. Returns one `Bytes` per range, in the order given. When the
    /// ranges together exceed what the arena holds at once, each result is copied out of the
    /// arena as it arrives instead.
    fn get_ranges(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        ranges: Vec<(u64, u64)>,
    ) -> PyResult<Vec<PyBytes>> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let ranges: Vec<Range<u64>> = ranges
            .into_iter()
            .map(check_range)
            .collect::<Result<_, _>>()?;
        let limit = self.request_limit();
        // Coalesce: sort by start, merge ranges that touch or overlap (while one request
        // still carries the merge).
        let mut order: Vec<usize> = (0..ranges.len())
            .filter(|&i| !ranges[i].is_empty())
            .collect();
        order.sort_by_key(|&i| ranges[i].start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        let mut owner = vec![usize::MAX; ranges.len()];
        for i in order {
            let r = &ranges[i];
            match merged.last_mut() {
                Some(m) if r.start <= m.end && r.end.max(m.end) - m.start <= limit => {
                    m.end = m.end.max(r.end);
                }
                _ => merged.push(r.clone()),
            }
            owner[i] = merged.len() - 1;
        }
        let total: u64 = merged.iter().map(|m| m.end - m.start).sum();
        // Zero copy only when every merged range fits the arena at once (with headroom for
        // request heads); otherwise copy each out as it completes so space keeps flowing.
        let zero_copy = total <= self.svc.client().arena_len() / 2;
        let opts = GetOptions::default();
        let got: Vec<Bytes> = run(py, || {
            block_on(async {
                let reads = merged.iter().map(|m| {
                    let opts = &opts;
                    async move {
                        let b = self
                            .read_range(container, name, m.clone(), opts, false)
                            .await?;
                        Ok::<_, BlobError>(if zero_copy {
                            b
                        } else {
                            Bytes::copy_from_slice(&b)
                        })
                    }
                });
                let width = if zero_copy { merged.len().max(1) } else { 8 };
                futures_util::stream::iter(reads)
                    .buffered(width)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
            })
        })?;
        Ok(ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if owner[i] == usize::MAX {
                    return PyBytes::new(Bytes::new());
                }
                let (m, b) = (&merged[owner[i]], &got[owner[i]]);
                let s = ((r.start - m.start) as usize).min(b.len());
                let e = ((r.end - m.start) as usize).min(b.len());
                PyBytes::new(b.slice(s..e))
            })
            .collect())
    }

    /// The blob's properties (size, ETag, content type, metadata); `BlobNotFound` if absent.
    fn head(&self, py: Python<'_>, container: &str, name: &str) -> PyResult<Properties> {
        check_name("container", container)?;
        check_name("blob", name)?;
        run(py, || {
            block_on(self.svc.head_blob(container, name, &GetOptions::default()))
        })
        .map(Properties::from)
    }

    /// The blobs (and, with a `delimiter`, the common prefixes) of a container whose names
    /// start with `prefix`, following every page (or only the first `max_results` entries).
    #[pyo3(signature = (container, prefix = None, delimiter = None, *, max_results = None))]
    fn list(
        &self,
        py: Python<'_>,
        container: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        max_results: Option<u32>,
    ) -> PyResult<Listing> {
        check_name("container", container)?;
        let opts = ListOptions {
            prefix,
            delimiter,
            max_results,
            ..ListOptions::default()
        };
        let page = run(py, || match max_results {
            Some(_) => block_on(self.svc.list_blobs_page(container, &opts)),
            None => block_on(self.svc.list_blobs(container, &opts)),
        })?;
        Ok(Listing {
            blobs: page.blobs.into_iter().map(BlobInfo::from).collect(),
            prefixes: page.prefixes,
        })
    }

    /// Downloads a blob into a local file (striped over every queue, in order); calls
    /// `progress(done, total)` after each chunk. Returns the bytes written.
    #[pyo3(signature = (container, name, path, *, progress = None, chunk_size = None, parallelism = None))]
    #[allow(clippy::too_many_arguments)]
    fn download_file(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        path: PathBuf,
        progress: Option<Py<PyAny>>,
        chunk_size: Option<u64>,
        parallelism: Option<usize>,
    ) -> PyResult<u64> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let err = Arc::new(Mutex::new(None));
        let opts = transfer_opts(progress, chunk_size, parallelism, &err);
        let n = run(py, || {
            block_on(blobring::transfer::download_to_file(
                &self.svc, container, name, &path, &opts,
            ))
        })?;
        take_err(&err)?;
        Ok(n)
    }

    // ------------------------------------------------------------------ writes

    /// Writes `data` (any buffer: bytes, bytearray, memoryview, NumPy array…) as a block
    /// blob; returns its ETag. `overwrite=False` creates only (`BlobExists` if present);
    /// `if_match` replaces only that version (`ConditionNotMet` otherwise). Large data is
    /// staged as blocks in parallel and committed at once. Do not change `data` while this
    /// runs.
    #[pyo3(signature = (container, name, data, *, overwrite = true, if_match = None, content_type = None, metadata = None))]
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        data: &Bound<'_, PyAny>,
        overwrite: bool,
        if_match: Option<String>,
        content_type: Option<String>,
        metadata: Option<HashMap<String, String>>,
    ) -> PyResult<String> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let opts = put_options(if_match, overwrite, content_type, metadata);
        let data = buffer(data)?;
        run(py, || {
            block_on(self.svc.put_blob(container, name, &data, &opts))
        })
    }

    /// Uploads a local file as a block blob (blocks staged in parallel over every queue, then
    /// committed); calls `progress(done, total)` after each block. Returns the ETag.
    #[pyo3(signature = (container, name, path, *, overwrite = true, content_type = None, metadata = None, progress = None, chunk_size = None, parallelism = None))]
    #[allow(clippy::too_many_arguments)]
    fn upload_file(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        path: PathBuf,
        overwrite: bool,
        content_type: Option<String>,
        metadata: Option<HashMap<String, String>>,
        progress: Option<Py<PyAny>>,
        chunk_size: Option<u64>,
        parallelism: Option<usize>,
    ) -> PyResult<String> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let put = put_options(None, overwrite, content_type, metadata);
        let err = Arc::new(Mutex::new(None));
        let opts = transfer_opts(progress, chunk_size, parallelism, &err);
        let etag = run(py, || {
            block_on(blobring::transfer::upload_from_file(
                &self.svc, container, name, &path, &put, &opts,
            ))
        })?;
        take_err(&err)?;
        Ok(etag)
    }

    /// A streaming writer: bytes given to `Writer.write` are packed into blocks staged in
    /// parallel while you write, and `Writer.close` commits them as the blob (nothing is
    /// visible before). Memory stays bounded by the arena whatever the size.
    #[pyo3(signature = (container, name, *, overwrite = true, content_type = None, metadata = None))]
    fn open_writer(
        &self,
        container: &str,
        name: &str,
        overwrite: bool,
        content_type: Option<String>,
        metadata: Option<HashMap<String, String>>,
    ) -> PyResult<Writer> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let put = put_options(None, overwrite, content_type, metadata);
        let (tx, rx): (SyncSender<Item>, Receiver<Item>) = sync_channel(4);
        let (svc, c, b) = (self.svc.clone(), container.to_owned(), name.to_owned());
        let thread = std::thread::Builder::new()
            .name("blobring-writer".into())
            .spawn(move || {
                let items = futures_util::stream::iter(std::iter::from_fn(move || rx.recv().ok()));
                block_on(blobring::transfer::upload_from_stream(
                    &svc,
                    &c,
                    &b,
                    items,
                    None,
                    &put,
                    &TransferOptions::default(),
                ))
            })
            .map_err(|e| PyOSError::new_err(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            state: Mutex::new(WriterState {
                tx: Some(tx),
                thread: Some(thread),
                written: 0,
            }),
            name: format!("{container}/{name}"),
        })
    }

    /// Deletes a blob; `BlobNotFound` if absent. `if_match` deletes only that version.
    #[pyo3(signature = (container, name, *, if_match = None))]
    fn delete(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        if_match: Option<String>,
    ) -> PyResult<()> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let c = conditions(if_match, true);
        run(py, || block_on(self.svc.delete_blob(container, name, &c)))
    }

    /// Server-side copy of a blob within the account; returns the copy status
    /// (`"success"`). `overwrite=False` fails with `BlobExists` if the destination exists.
    #[pyo3(signature = (src_container, src_name, container, name, *, overwrite = true))]
    fn copy(
        &self,
        py: Python<'_>,
        src_container: &str,
        src_name: &str,
        container: &str,
        name: &str,
        overwrite: bool,
    ) -> PyResult<String> {
        for (w, n) in [
            ("container", src_container),
            ("blob", src_name),
            ("container", container),
            ("blob", name),
        ] {
            check_name(w, n)?;
        }
        let c = conditions(None, overwrite);
        run(py, || {
            block_on(
                self.svc
                    .copy_blob(src_container, src_name, container, name, &c),
            )
        })
    }

    /// Replaces the blob's user metadata with `metadata`; returns the new ETag.
    #[pyo3(signature = (container, name, metadata, *, if_match = None))]
    fn set_metadata(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        metadata: HashMap<String, String>,
        if_match: Option<String>,
    ) -> PyResult<String> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let md: Vec<(String, String)> = metadata.into_iter().collect();
        let c = conditions(if_match, true);
        run(py, || {
            block_on(self.svc.set_metadata(container, name, &md, &c))
        })
    }

    /// Sends one HTTP/1.1 Blob request exactly as given (already signed: the azure-core
    /// transport, `blobring.azure`) and returns `(status, reason, headers, body)`. `target`
    /// is the path and query as sent; `recv` the bytes reserved for the response body
    /// (default: a ranged GET's range, else up to one request's limit for GET, 1 MiB for
    /// other methods). A body over one request's limit is refused before anything is sent.
    #[pyo3(signature = (method, target, headers, body = None, *, recv = None))]
    #[allow(clippy::type_complexity)]
    fn send_raw(
        &self,
        py: Python<'_>,
        method: &str,
        target: &str,
        headers: Vec<(String, String)>,
        body: Option<&Bound<'_, PyAny>>,
        recv: Option<u64>,
    ) -> PyResult<(u16, String, Vec<(String, String)>, PyBytes)> {
        check_raw_request(method, target, &headers)?;
        let body = body.map(buffer).transpose()?.unwrap_or_default();
        let limit = self.request_limit();
        if body.len() as u64 > limit {
            return Err(exception(
                py,
                "InvalidRequest",
                format!(
                    "a {}-byte request body is more than one blobring request carries \
                     ({limit}); send smaller blocks (azure-storage-blob: max_single_put_size \
                     and max_block_size) or start blobringd with a larger --arena-size",
                    body.len()
                ),
                None,
                "",
            ));
        }
        let head = raw_head(method, target, &headers, body.len());
        let recv = recv
            .unwrap_or_else(|| default_recv(method, &headers, limit))
            .min(limit);
        let client = self.svc.client();
        let timeout = self.svc.timeout();
        let c = run(py, || {
            let lease = client.alloc((body.len() as u64).max(recv).max(4096))?;
            if !body.is_empty() {
                lease.write(0, &body)?;
            }
            let mut r = blobring::Request::new(head.into_bytes());
            // As the gateway: the request and response heads fit the 64 KiB of page headroom
            // MAX_REQUEST_DATA leaves beside a full-size body.
            r.response_cap = 32 << 10;
            r.data_valid = body.len() as u32;
            r.data = Some(lease);
            r.timeout = Some(timeout);
            Ok(client.execute_blocking(r)?)
        })?;
        let rh = blobring::blob::parse_response_head(&c.head)
            .map_err(|e| py_err(py, BlobError::Transport(e)))?;
        let n = c.data_len();
        let data = match c.data {
            Some(l) if n > COPY_BELOW && n >= l.len() / 2 => l.into_bytes(n),
            Some(l) => l.to_bytes(n),
            None => Ok(Bytes::new()),
        }
        .map_err(|e| py_err(py, BlobError::Transport(e)))?;
        let reason = http::StatusCode::from_u16(rh.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("")
            .to_owned();
        let headers = rh
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok((rh.status, reason, headers, PyBytes::new(data)))
    }

    /// Stages one block of a blob (`Put Block`; `block_id` is Base64, the same length for
    /// every block of the blob). Nothing is visible until `commit_blocks`.
    fn put_block(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        block_id: &str,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let data = buffer(data)?;
        run(py, || {
            block_on(
                self.svc
                    .put_block(container, name, block_id, &data, false, None),
            )
        })
    }

    /// Commits staged blocks, in order, as the blob's content (`Put Block List`); returns
    /// the ETag.
    #[pyo3(signature = (container, name, block_ids, *, overwrite = true, content_type = None, metadata = None))]
    #[allow(clippy::too_many_arguments)]
    fn commit_blocks(
        &self,
        py: Python<'_>,
        container: &str,
        name: &str,
        block_ids: Vec<String>,
        overwrite: bool,
        content_type: Option<String>,
        metadata: Option<HashMap<String, String>>,
    ) -> PyResult<String> {
        check_name("container", container)?;
        check_name("blob", name)?;
        let ids: Vec<(BlockRef, String)> = block_ids
            .into_iter()
            .map(|i| (BlockRef::Uncommitted, i))
            .collect();
        let put = put_options(None, overwrite, content_type, metadata);
        run(py, || {
            block_on(self.svc.put_block_list(container, name, &ids, &put))
        })
    }
}

/// What the writer thread reads: a piece of the blob, or the error that aborts it.
type Item = Result<Bytes, std::io::Error>;

/// Refuses what would not be one well-formed HTTP/1.1 request head: a method or header name
/// that is not a token, a target that is not an absolute path (and query) of visible ASCII,
/// a header value with CR, LF or NUL.
fn check_raw_request(method: &str, target: &str, headers: &[(String, String)]) -> PyResult<()> {
    let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !token(method) || method.contains(['(', ')', '/']) {
        return Err(PyValueError::new_err(format!(
            "invalid HTTP method {method:?}"
        )));
    }
    if !target.starts_with('/') || target.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(PyValueError::new_err(format!(
            "invalid request target {target:?}: a path (and query) starting with '/', \
             percent-encoded"
        )));
    }
    for (k, v) in headers {
        if !token(k) || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(PyValueError::new_err(format!(
                "invalid HTTP header {k:?}: {v:?}"
            )));
        }
    }
    Ok(())
}

/// The request head of [`Client::send_raw`]: the request line, the headers as given, and a
/// `content-length` when the caller gave none and there is a body (or the method is PUT or
/// POST).
fn raw_head(method: &str, target: &str, headers: &[(String, String)], body_len: usize) -> String {
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has(CONTENT_LENGTH) && (body_len > 0 || method == "PUT" || method == "POST") {
        head.push_str(&format!("content-length: {body_len}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The response body bytes [`Client::send_raw`] reserves when the caller names none: a GET's
/// range (`x-ms-range`, else `Range`, as `bytes=a-b`), else `limit`; nothing for HEAD; 1 MiB
/// for other methods.
fn default_recv(method: &str, headers: &[(String, String)], limit: u64) -> u64 {
    let range = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let range_len = range(X_MS_RANGE)
        .or_else(|| range("range"))
        .and_then(bounded_range_len);
    match method {
        "GET" => range_len.unwrap_or(limit),
        "HEAD" => 0,
        _ => 1 << 20,
    }
}

struct WriterState {
    tx: Option<SyncSender<Item>>,
    thread: Option<JoinHandle<Result<String, BlobError>>>,
    written: u64,
}

/// A blob being written (`Client.open_writer`): `write` pieces, then `close` to commit, or
/// `abort` to discard. Also a context manager (commits on success, aborts on an exception).
#[pyclass(module = "blobring", frozen)]
struct Writer {
    state: Mutex<WriterState>,
    name: String,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the stream (with `abort` as its last item, if any) and waits for the upload.
    fn finish(&self, py: Python<'_>, abort: Option<std::io::Error>) -> PyResult<Option<String>> {
        let (tx, thread) = {
            let mut st = self.lock();
            (st.tx.take(), st.thread.take())
        };
        let Some(thread) = thread else {
            return Ok(None);
        };
        let r = py.detach(move || {
            if let (Some(tx), Some(e)) = (&tx, abort) {
                let _ = tx.send(Err(e));
            }
            drop(tx);
            thread.join()
        });
        match r {
            Ok(Ok(etag)) => Ok(Some(etag)),
            Ok(Err(e)) => Err(py_err(py, e)),
            Err(_) => Err(PyOSError::new_err(format!(
                "the writer thread of {} panicked; the blob was not committed",
                self.name
            ))),
        }
    }
}

#[pymethods]
impl Writer {
    /// Appends `data` (any buffer; copied, so it may be reused at once); returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let b = Bytes::copy_from_slice(&buffer(data)?);
        let n = b.len();
        let tx = self.lock().tx.clone();
        let Some(tx) = tx else {
            return Err(PyValueError::new_err(format!(
                "the writer of {} is closed; open a new one",
                self.name
            )));
        };
        if py.detach(move || tx.send(Ok(b))).is_err() {
            // The upload ended early: its error says why.
            self.finish(py, None)?;
            return Err(PyOSError::new_err(format!(
                "the upload of {} ended before all data was written",
                self.name
            )));
        }
        self.lock().written += n as u64;
        Ok(n)
    }

    /// Bytes written so far.
    #[getter]
    fn written(&self) -> u64 {
        self.lock().written
    }

    /// Commits what was written as the blob; returns its ETag (`None` if already closed).
    fn close(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.finish(py, None)
    }

    /// Discards what was written: nothing is committed.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        match self.finish(py, Some(std::io::Error::other("aborted by the caller"))) {
            Ok(_) => Ok(()),
            // The abort itself is reported as the upload's failure: expected.
            Err(_) => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.abort(py)?;
        } else {
            self.close(py)?;
        }
        Ok(false)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropped without close(): abort, never commit half a blob.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = st.tx.take() {
            let _ = tx.send(Err(std::io::Error::other("writer dropped without close()")));
        }
    }
}

/// Connects to `blobringd` and returns a [`Client`].
///
/// `socket`: the daemon's socket (default `BLOBRING_SOCKET`, else the default path);
/// `connection_string`: the storage account (default `AZURE_STORAGE_CONNECTION_STRING`,
/// else the emulator account `devstoreaccount1` that `blobring up` serves); `timeout`:
/// seconds each request may take (default 60).
#[pyfunction]
#[pyo3(signature = (socket = None, connection_string = None, *, timeout = None))]
fn connect(
    py: Python<'_>,
    socket: Option<PathBuf>,
    connection_string: Option<String>,
    timeout: Option<f64>,
) -> PyResult<Client> {
    let account = match connection_string {
        Some(s) => AccountConfig::from_connection_string(&s),
        None => AccountConfig::from_env(),
    }
    .map_err(|e| py_err(py, e))?;
    let timeout = match timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(PyValueError::new_err(format!(
                "timeout must be a positive number of seconds, not {t}"
            )));
        }
        Some(t) => Duration::from_secs_f64(t),
        None => Duration::from_secs(60),
    };
    let opts = ClientOptions {
        socket: socket.unwrap_or_else(blobring::default_socket_path),
        default_timeout: timeout,
        arena_wait: timeout,
        ..ClientOptions::default()
    };
    let path = opts.socket.clone();
    let client = py
        .detach(|| SdkClient::connect_with(opts))
        .map_err(|e| py_err(py, BlobError::Transport(e)))?;
    Ok(Client {
        svc: BlobService::new(client, account).with_timeout(timeout),
        socket: path,
    })
}

/// The native module.
#[pymodule]
fn _blobring(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_class::<Client>()?;
    m.add_class::<Writer>()?;
    m.add_class::<Properties>()?;
    m.add_class::<BlobInfo>()?;
    m.add_class::<Listing>()?;
    m.add_class::<PyBytes>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
