//! The `fs:<dir>` store: durable blobs on a local filesystem; survives host restarts.
//!
//! Layout under `<dir>`:
//!
//! ```text
//! containers/<name>/container.json          container properties
//! containers/<name>/meta/<sha256(blob)>.json blob properties + the name of its data file
//! containers/<name>/data/<uuid>             blob bytes (one file per blob version)
//! containers/<name>/blocks/<uuid>.blk/.json staged block bytes and its record
//! tmp/                                       temporary files (same filesystem, for rename)
//! trash/                                     containers being deleted
//! ```
//!
//! Durability protocol: new bytes go to a fresh `data/<uuid>` file that nothing references,
//! which is fsynced; then the blob's `meta/*.json` is written to `tmp/`, fsynced and renamed
//! over the old record, and the directory is fsynced. The rename is the commit point, so a
//! blob is never visible partially written, and a crash leaves either the old or the new
//! version. Unreferenced data files, block files without a record and leftovers in `tmp/` and
//! `trash/` are removed when the store is opened. Copy Blob hard-links the data file.
//!
//! Data files are immutable once written: no write path opens an existing one for writing. So
//! the store keeps up to `open_files` of them open between reads (an LRU cache, `--open-files`
//! on the host's command line, [`super::DEFAULT_OPEN_FILES`] by default, 0 to open the file on
//! every read); a data file leaves the cache when it is removed (overwrite, delete, container
//! delete), so deleted blobs do not keep disk space pinned.
//!
//! Trust: the directory is ours; a record that cannot be decoded stops the open with an error
//! naming the file rather than silently dropping blobs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::engine::impl_store_via_engine;
use super::engine::{Backend, Container, Engine, Entry, Part, ReadAt, Staged, State, hex};
use super::open_files::{DEFAULT_OPEN_FILES, OpenFiles};
use super::{BlobProps, ContainerProps, StoreError};

/// Durable filesystem store (`--store fs:<dir>`).
pub struct FsStore {
    engine: Engine<FsBackend>,
}

impl std::fmt::Debug for FsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FsStore({})", self.engine.backend().root.display())
    }
}

impl_store_via_engine!(FsStore);

impl FsStore {
    /// Data files currently held open by the open-file cache (at most the `open_files` bound).
    pub fn cached_open_files(&self) -> usize {
        self.engine.backend().open_files.len()
    }
}

#[derive(Serialize, Deserialize)]
struct MetaRecord {
    props: BlobProps,
    data: String,
}

#[derive(Serialize, Deserialize)]
struct BlockRecord {
    blob: String,
    id: String,
    size: u64,
    seq: u64,
}

/// Handle of a data file.
#[derive(Clone, Debug)]
pub(crate) struct FsData {
    path: Arc<Path>,
    seq: u64,
}

impl FsData {
    /// The data file `path`, numbered `seq`, if writing it succeeded (`res`); if not, the file
    /// is removed so that nothing half-written stays behind.
    fn written(path: PathBuf, seq: u64, res: Result<(), StoreError>) -> Result<FsData, StoreError> {
        match res {
            Ok(()) => Ok(FsData {
                path: path.into(),
                seq,
            }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

pub(crate) struct FsBackend {
    root: PathBuf,
    seq: AtomicU64,
    /// Committed data files kept open for reads.
    open_files: OpenFiles,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::io(path, e)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

fn uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn blob_key(name: &str) -> String {
    hex(&Sha256::digest(name.as_bytes()))
}

impl FsStore {
    /// Open (creating if needed) a store rooted at `dir`, loading its index and removing
    /// leftovers of interrupted writes. Keeps up to [`DEFAULT_OPEN_FILES`] data files open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_OPEN_FILES)
    }

    /// [`FsStore::open`], keeping up to `open_files` data files open between reads (least
    /// recently read closed first; 0 opens the data file on every read).
    pub fn open_with(dir: impl AsRef<Path>, open_files: usize) -> Result<Self, StoreError> {
        let root = dir.as_ref().to_path_buf();
        for sub in ["containers", "tmp", "trash"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        for sub in ["tmp", "trash"] {
            let p = root.join(sub);
            for e in fs::read_dir(&p).map_err(io_at(&p))? {
                let e = e.map_err(io_at(&p))?;
                let path = e.path();
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
        let backend = FsBackend {
            root,
            seq: AtomicU64::new(0),
            open_files: OpenFiles::new(open_files),
        };
        let state = backend.load()?;
        Ok(FsStore {
            engine: Engine::new(backend, state),
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl FsBackend {
    fn cdir(&self, container: &str) -> PathBuf {
        self.root.join("containers").join(container)
    }

    fn next_seq(&self) -> u64 {
        // Relaxed: a unique, increasing number is all that is needed.
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Write `bytes` to `dst` atomically: tmp file, fsync, rename, fsync the directory.
    fn write_atomic(&self, dst: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp").join(uuid());
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(bytes).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        drop(f);
        fs::rename(&tmp, dst).map_err(io_at(dst))?;
        if let Some(parent) = dst.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn new_data_file(&self, container: &str) -> Result<(PathBuf, File, u64), StoreError> {
        let path = self.cdir(container).join("data").join(uuid());
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_at(&path))?;
        Ok((path, f, self.next_seq()))
    }

    fn load(&self) -> Result<State<FsData>, StoreError> {
        let mut state = State::default();
        let croot = self.root.join("containers");
        let mut max_seq = 0u64;
        for ce in fs::read_dir(&croot).map_err(io_at(&croot))? {
            let ce = ce.map_err(io_at(&croot))?;
            let cdir = ce.path();
            let props: ContainerProps = read_json(&cdir.join("container.json"))?;
            let mut c = Container::new(props.clone());
            let mut referenced = std::collections::HashSet::new();
            let meta_dir = cdir.join("meta");
            for me in fs::read_dir(&meta_dir).map_err(io_at(&meta_dir))? {
                let path = me.map_err(io_at(&meta_dir))?.path();
                let rec: MetaRecord = read_json(&path)?;
                let data = cdir.join("data").join(&rec.data);
                if !data.exists() {
                    return Err(StoreError::Corrupt {
                        path,
                        reason: format!("its data file {} is missing", data.display()),
                    });
                }
                referenced.insert(rec.data.clone());
                c.blobs.insert(
                    rec.props.name.clone(),
                    Entry {
                        props: Arc::new(rec.props),
                        data: FsData {
                            path: data.into(),
                            seq: 0,
                        },
                    },
                );
            }
            let data_dir = cdir.join("data");
            for de in fs::read_dir(&data_dir).map_err(io_at(&data_dir))? {
                let de = de.map_err(io_at(&data_dir))?;
                if !referenced.contains(de.file_name().to_string_lossy().as_ref()) {
                    let _ = fs::remove_file(de.path());
                }
            }
            let blocks_dir = cdir.join("blocks");
            let mut staged: Vec<(String, Staged<FsData>)> = Vec::new();
            let mut with_record = std::collections::HashSet::new();
            for be in fs::read_dir(&blocks_dir).map_err(io_at(&blocks_dir))? {
                let path = be.map_err(io_at(&blocks_dir))?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let rec: BlockRecord = read_json(&path)?;
                    let blk = path.with_extension("blk");
                    if !blk.exists() {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    let id = BASE64_STANDARD
                        .decode(&rec.id)
                        .map_err(|e| StoreError::Corrupt {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    max_seq = max_seq.max(rec.seq);
                    with_record.insert(blk.clone());
                    staged.push((
                        rec.blob,
                        Staged {
                            id,
                            size: rec.size,
                            data: FsData {
                                path: blk.into(),
                                seq: rec.seq,
                            },
                        },
                    ));
                }
            }
            for be in fs::read_dir(&blocks_dir).map_err(io_at(&blocks_dir))? {
                let path = be.map_err(io_at(&blocks_dir))?.path();
                if path.extension().is_some_and(|e| e == "blk") && !with_record.contains(&path) {
                    let _ = fs::remove_file(&path);
                }
            }
            staged.sort_by_key(|(_, s)| s.data.seq);
            for (blob, s) in staged {
                let list = c.staged.entry(blob).or_default();
                // A later record for the same id replaced the earlier one before a crash.
                if let Some(i) = list.iter().position(|x| x.id == s.id) {
                    let old = list.remove(i);
                    self.drop_block(&old.data);
                }
                list.push(s);
            }
            state.containers.insert(props.name.clone(), c);
        }
        self.seq.store(max_seq, Ordering::Relaxed);
        Ok(state)
    }
}

/// A data file being read: one descriptor shared with the cache and other readers, read with
/// positional reads only.
struct FileReader(Arc<File>, Arc<Path>);

impl ReadAt for FileReader {
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), StoreError> {
        self.0.read_exact_at(dst, offset).map_err(io_at(&self.1))
    }
    fn file(&self) -> Option<(&File, &Path)> {
        Some((&self.0, &self.1))
    }
}

impl Backend for FsBackend {
    type Data = FsData;

    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }

    fn write_data(
        &self,
        container: &str,
        parts: &[Part<'_, FsData>],
    ) -> Result<FsData, StoreError> {
        let (path, mut out, seq) = self.new_data_file(container)?;
        let res = (|| {
            for p in parts {
                match p {
                    Part::Bytes(b) => out.write_all(b).map_err(io_at(&path))?,
                    Part::Range(d, off, len) => {
                        let mut src = File::open(&d.path).map_err(io_at(&d.path))?;
                        src.seek(SeekFrom::Start(*off)).map_err(io_at(&d.path))?;
                        let n = io::copy(&mut src.take(*len), &mut out).map_err(io_at(&path))?;
                        if n != *len {
                            return Err(StoreError::Corrupt {
                                path: d.path.to_path_buf(),
                                reason: format!("expected {len} bytes at {off}, found {n}"),
                            });
                        }
                    }
                }
            }
            out.sync_all().map_err(io_at(&path))?;
            // The directory entry must be durable before a record can point at it.
            sync_dir(&self.cdir(container).join("data"))
        })();
        FsData::written(path, seq, res)
    }

    fn clone_data(&self, container: &str, src: &FsData) -> Result<FsData, StoreError> {
        let path = self.cdir(container).join("data").join(uuid());
        if fs::hard_link(&src.path, &path).is_err() {
            fs::copy(&src.path, &path).map_err(io_at(&path))?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_at(&path))?;
        }
        sync_dir(&self.cdir(container).join("data"))?;
        Ok(FsData {
            path: path.into(),
            seq: self.next_seq(),
        })
    }

    fn reader(&self, data: &FsData) -> Result<Box<dyn ReadAt>, StoreError> {
        let f = self
            .open_files
            .open(&data.path)
            .map_err(io_at(&data.path))?;
        Ok(Box::new(FileReader(f, Arc::clone(&data.path))))
    }

    fn drop_data(&self, data: &FsData) {
        let _ = fs::remove_file(&data.path);
        // After the unlink: the engine no longer references `data`, so nothing re-caches it.
        self.open_files.forget(&data.path);
    }

    fn publish_blob(
        &self,
        container: &str,
        props: &BlobProps,
        data: &FsData,
    ) -> Result<(), StoreError> {
        let rec = MetaRecord {
            props: props.clone(),
            data: data
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let json = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt {
            path: data.path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let dst = self
            .cdir(container)
            .join("meta")
            .join(format!("{}.json", blob_key(&props.name)));
        self.write_atomic(&dst, &json)
    }

    fn unpublish_blob(&self, container: &str, name: &str) -> Result<(), StoreError> {
        let meta = self.cdir(container).join("meta");
        let path = meta.join(format!("{}.json", blob_key(name)));
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    fn stage_block(
        &self,
        container: &str,
        blob: &str,
        id: &[u8],
        bytes: &[u8],
    ) -> Result<FsData, StoreError> {
        let dir = self.cdir(container).join("blocks");
        let name = uuid();
        let blk = dir.join(format!("{name}.blk"));
        let seq = self.next_seq();
        let res = (|| {
            let mut f = File::create(&blk).map_err(io_at(&blk))?;
            f.write_all(bytes).map_err(io_at(&blk))?;
            f.sync_all().map_err(io_at(&blk))?;
            let rec = BlockRecord {
                blob: blob.to_owned(),
                id: BASE64_STANDARD.encode(id),
                size: bytes.len() as u64,
                seq,
            };
            let json = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt {
                path: blk.clone(),
                reason: e.to_string(),
            })?;
            self.write_atomic(&dir.join(format!("{name}.json")), &json)
        })();
        FsData::written(blk, seq, res)
    }

    fn drop_block(&self, data: &FsData) {
        let _ = fs::remove_file(data.path.with_extension("json"));
        let _ = fs::remove_file(&data.path);
    }

    fn create_container(&self, props: &ContainerProps) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp").join(uuid());
        for sub in ["meta", "data", "blocks"] {
            let p = tmp.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let json = serde_json::to_vec(props).map_err(|e| StoreError::Corrupt {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        let cj = tmp.join("container.json");
        let mut f = File::create(&cj).map_err(io_at(&cj))?;
        f.write_all(&json).map_err(io_at(&cj))?;
        f.sync_all().map_err(io_at(&cj))?;
        sync_dir(&tmp)?;
        let dst = self.cdir(&props.name);
        fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
        sync_dir(&self.root.join("containers"))
    }

    fn delete_container(&self, name: &str) -> Result<(), StoreError> {
        let src = self.cdir(name);
        let trash = self.root.join("trash").join(uuid());
        fs::rename(&src, &trash).map_err(io_at(&src))?;
        // Its data files are gone from `src`: close them so removing the trash frees the space.
        self.open_files.forget_under(&src);
        sync_dir(&self.root.join("containers"))?;
        let _ = fs::remove_dir_all(&trash);
        Ok(())
    }
}
