//! The store engine shared by `mem` and `fs`: an in-memory index of containers, committed
//! blobs and staged blocks, over a [`Backend`] that holds the bytes (and, for `fs`, makes every
//! index change durable before it becomes visible).
//!
//! Locking: one `RwLock` over the index, held only for lookups and single map updates, never
//! across I/O. Writers to the same blob are serialised by a striped per-blob mutex (`stripe`):
//! under it, a write checks its conditions against the current version (read lock), makes the
//! new version durable (data, then record: `fs` fsyncs here), and only then swaps it into the
//! index (write lock). So readers never wait for a writer's fsync, conditional writes stay
//! linearisable, and a version is visible only once durable. A block-list commit holds its
//! blob's stripe from resolving the list to the swap, so the staged blocks it copies cannot be
//! replaced or discarded meanwhile (only writers of that blob touch them).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use super::{
    BlobProps, BlobReader, BlockInfo, BlockListing, BlockRef, BodySink, Conditions, ContainerProps,
    ListVisitor, NewBlob, StoreError, check_write, new_etag,
};

/// A piece of new blob content.
pub(crate) enum Part<'a, D> {
    /// Bytes supplied by the request.
    Bytes(&'a [u8]),
    /// `len` bytes at `offset` of existing data (a staged block or the committed blob).
    Range(&'a D, u64, u64),
}

/// Random-access reads of a data object. A GET copies it to its destination once: straight
/// from the object's bytes when they are in memory ([`ReadAt::bytes`]), with one positional
/// read into the destination when it is a file and the destination can take that
/// ([`ReadAt::file`]), else through a bounce buffer filled by `read_at` ([`read_to`]).
pub(crate) trait ReadAt: Send {
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), StoreError>;
    /// The object's bytes, when it is held in memory.
    fn bytes(&self) -> Option<&[u8]> {
        None
    }
    /// The object's file and its path (for errors), when it is one.
    fn file(&self) -> Option<(&File, &Path)> {
        None
    }
}

/// `len` bytes at `offset` of `data` into `sink` at `at` (see [`ReadAt`]).
fn read_to(
    data: &dyn ReadAt,
    offset: u64,
    len: u64,
    sink: &mut dyn BodySink,
    at: u64,
) -> Result<(), StoreError> {
    if let Some(bytes) = data.bytes() {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|s| Some(s..s.checked_add(usize::try_from(len).ok()?)?));
        let src = range
            .and_then(|r| bytes.get(r))
            .ok_or(StoreError::OutOfRange {
                offset,
                len,
                size: bytes.len() as u64,
            })?;
        return sink.write_at(at, src).map_err(StoreError::Destination);
    }
    if let Some((file, path)) = data.file() {
        match sink.fill_from_file(at, file, offset, len) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("data file shorter than {} bytes", offset + len),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(StoreError::Destination(e));
            }
            Err(e) => return Err(StoreError::io(path, e)),
        }
    }
    // Through a bounce buffer of at most 1 MiB.
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; len.min(CHUNK) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        data.read_at(offset + done, &mut buf[..n])?;
        sink.write_at(at + done, &buf[..n])
            .map_err(StoreError::Destination)?;
        done += n as u64;
    }
    Ok(())
}

/// Where the bytes live. Every method may block.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Handle of one data object (a blob version or a staged block).
    type Data: Clone + Send + Sync + 'static;

    fn describe(&self) -> String;
    /// Assemble a new, invisible data object for `container` from `parts`.
    fn write_data(
        &self,
        container: &str,
        parts: &[Part<'_, Self::Data>],
    ) -> Result<Self::Data, StoreError>;
    /// A new data object with the same bytes as `src` (Copy Blob), cheap where possible.
    fn clone_data(&self, container: &str, src: &Self::Data) -> Result<Self::Data, StoreError>;
    /// Open `data` for reading (called under the index read lock, so `data` is alive).
    fn reader(&self, data: &Self::Data) -> Result<Box<dyn ReadAt>, StoreError>;
    /// Release a data object that is no longer referenced (best effort).
    fn drop_data(&self, data: &Self::Data);
    /// Durably record that `props.name` now points at `data` (called under the write lock).
    fn publish_blob(
        &self,
        container: &str,
        props: &BlobProps,
        data: &Self::Data,
    ) -> Result<(), StoreError>;
    /// Durably forget blob `name` (called under the write lock).
    fn unpublish_blob(&self, container: &str, name: &str) -> Result<(), StoreError>;
    /// Durably stage a block.
    fn stage_block(
        &self,
        container: &str,
        blob: &str,
        id: &[u8],
        bytes: &[u8],
    ) -> Result<Self::Data, StoreError>;
    /// Release a staged block and its record (best effort).
    fn drop_block(&self, data: &Self::Data);
    /// Durably create a container.
    fn create_container(&self, props: &ContainerProps) -> Result<(), StoreError>;
    /// Durably delete a container and all its data.
    fn delete_container(&self, name: &str) -> Result<(), StoreError>;
}

#[derive(Clone)]
pub(crate) struct Entry<D> {
    pub props: Arc<BlobProps>,
    pub data: D,
}

#[derive(Clone)]
pub(crate) struct Staged<D> {
    pub id: Vec<u8>,
    pub size: u64,
    pub data: D,
}

pub(crate) struct Container<D> {
    pub props: ContainerProps,
    pub blobs: BTreeMap<String, Entry<D>>,
    pub staged: HashMap<String, Vec<Staged<D>>>,
}

impl<D> Container<D> {
    pub(crate) fn new(props: ContainerProps) -> Self {
        Container {
            props,
            blobs: BTreeMap::new(),
            staged: HashMap::new(),
        }
    }
}

pub(crate) struct State<D> {
    pub containers: BTreeMap<String, Container<D>>,
}

impl<D> State<D> {
    /// The container `name`, or `ContainerNotFound`.
    fn container(&self, name: &str) -> Result<&Container<D>, StoreError> {
        self.containers
            .get(name)
            .ok_or_else(|| StoreError::ContainerNotFound(name.to_owned()))
    }

    /// The committed blob `blob` of `container`, or `ContainerNotFound` / `BlobNotFound`.
    fn blob(&self, container: &str, blob: &str) -> Result<&Entry<D>, StoreError> {
        self.container(container)?
            .blobs
            .get(blob)
            .ok_or_else(|| StoreError::BlobNotFound(blob.to_owned()))
    }
}

impl<D> Default for State<D> {
    fn default() -> Self {
        State {
            containers: BTreeMap::new(),
        }
    }
}

/// Most uncommitted blocks per blob (Azure's limit).
const MAX_STAGED: usize = 100_000;

pub(crate) struct Engine<B: Backend> {
    backend: B,
    state: RwLock<State<B::Data>>,
    stripes: Vec<Mutex<()>>,
}

/// Number of per-blob writer stripes.
const STRIPES: usize = 64;

struct Reader {
    props: Arc<BlobProps>,
    inner: Box<dyn ReadAt>,
}

impl BlobReader for Reader {
    fn props(&self) -> &BlobProps {
        &self.props
    }
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), StoreError> {
        let len = dst.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.props.size => self.inner.read_at(offset, dst),
            _ => Err(StoreError::OutOfRange {
                offset,
                len,
                size: self.props.size,
            }),
        }
    }
    fn read_to(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn BodySink,
        sink_offset: u64,
    ) -> Result<(), StoreError> {
        let out_of_range = || StoreError::OutOfRange {
            offset,
            len,
            size: self.props.size,
        };
        match offset.checked_add(len) {
            Some(end) if end <= self.props.size => {}
            _ => return Err(out_of_range()),
        }
        match sink_offset.checked_add(len) {
            Some(end) if end <= sink.capacity() => {}
            _ => {
                return Err(StoreError::Destination(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "destination too small",
                )));
            }
        }
        read_to(&*self.inner, offset, len, sink, sink_offset)
    }
}

impl<B: Backend> Engine<B> {
    pub(crate) fn new(backend: B, state: State<B::Data>) -> Self {
        Engine {
            backend,
            state: RwLock::new(state),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    // A panic while holding the lock leaves the index consistent (every mutation is a single
    // map operation after the fallible steps), so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, State<B::Data>> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, State<B::Data>> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialise writers of one blob.
    fn stripe(&self, container: &str, blob: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (container, blob).hash(&mut h);
        self.stripes[(h.finish() as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn require_container(&self, name: &str) -> Result<(), StoreError> {
        if self.read().containers.contains_key(name) {
            Ok(())
        } else {
            Err(StoreError::ContainerNotFound(name.to_owned()))
        }
    }

    pub(crate) fn describe(&self) -> String {
        self.backend.describe()
    }

    pub(crate) fn create_container(
        &self,
        name: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<ContainerProps, StoreError> {
        if !super::valid_container_name(name) {
            return Err(StoreError::InvalidContainerName(name.to_owned()));
        }
        let mut st = self.write();
        if st.containers.contains_key(name) {
            return Err(StoreError::ContainerAlreadyExists(name.to_owned()));
        }
        let props = ContainerProps {
            name: name.to_owned(),
            etag: new_etag(),
            last_modified: SystemTime::now(),
            metadata,
        };
        self.backend.create_container(&props)?;
        st.containers
            .insert(name.to_owned(), Container::new(props.clone()));
        Ok(props)
    }

    pub(crate) fn delete_container(&self, name: &str) -> Result<(), StoreError> {
        let removed = {
            let mut st = self.write();
            if !st.containers.contains_key(name) {
                return Err(StoreError::ContainerNotFound(name.to_owned()));
            }
            self.backend.delete_container(name)?;
            st.containers.remove(name)
        };
        drop(removed);
        Ok(())
    }

    pub(crate) fn container(&self, name: &str) -> Result<ContainerProps, StoreError> {
        self.read()
            .containers
            .get(name)
            .map(|c| c.props.clone())
            .ok_or_else(|| StoreError::ContainerNotFound(name.to_owned()))
    }

    pub(crate) fn list_containers(&self, prefix: &str) -> Vec<ContainerProps> {
        self.read()
            .containers
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, c)| c.props.clone())
            .collect()
    }

    pub(crate) fn open(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Box<dyn BlobReader>, StoreError> {
        let st = self.read();
        let e = st.blob(container, blob)?;
        let inner = self.backend.reader(&e.data)?;
        Ok(Box::new(Reader {
            props: Arc::clone(&e.props),
            inner,
        }))
    }

    pub(crate) fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        from: &str,
        visit: ListVisitor<'_>,
    ) -> Result<(), StoreError> {
        let st = self.read();
        let c = st.container(container)?;
        let start = if from > prefix { from } else { prefix };
        for (name, e) in c.blobs.range(start.to_owned()..) {
            if !name.starts_with(prefix) {
                break;
            }
            if !visit(&e.props) {
                break;
            }
        }
        Ok(())
    }

    /// Publish `data` as the new version of `blob` if `cond` holds. The caller holds the
    /// blob's stripe. On failure `data` is released. `make` builds the props from the previous
    /// version.
    fn publish(
        &self,
        container: &str,
        blob: &str,
        data: B::Data,
        cond: &Conditions,
        clear_staged: bool,
        make: impl FnOnce(Option<&BlobProps>) -> BlobProps,
    ) -> Result<Arc<BlobProps>, StoreError> {
        let res = (|| {
            let props = {
                let st = self.read();
                let c = st.container(container)?;
                let existing = c.blobs.get(blob).map(|e| &*e.props);
                check_write(cond, blob, existing)?;
                Arc::new(make(existing))
            };
            // Durable before visible; no index lock held during the fsyncs.
            self.backend.publish_blob(container, &props, &data)?;
            let mut st = self.write();
            let c = st
                .containers
                .get_mut(container)
                .ok_or_else(|| StoreError::ContainerNotFound(container.to_owned()))?;
            let old = c.blobs.insert(
                blob.to_owned(),
                Entry {
                    props: Arc::clone(&props),
                    data: data.clone(),
                },
            );
            let staged = if clear_staged {
                c.staged.remove(blob)
            } else {
                None
            };
            Ok((props, old, staged))
        })();
        match res {
            Ok((props, old, staged)) => {
                if let Some(old) = old {
                    self.backend.drop_data(&old.data);
                }
                for s in staged.into_iter().flatten() {
                    self.backend.drop_block(&s.data);
                }
                Ok(props)
            }
            Err(e) => {
                self.backend.drop_data(&data);
                Err(e)
            }
        }
    }

    pub(crate) fn put_blob(
        &self,
        container: &str,
        blob: &str,
        bytes: &[u8],
        attrs: NewBlob,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError> {
        self.require_container(container)?;
        let data = self.backend.write_data(container, &[Part::Bytes(bytes)])?;
        let size = bytes.len() as u64;
        let _stripe = self.stripe(container, blob);
        self.publish(container, blob, data, cond, true, |old| {
            new_props(blob, size, attrs, old, Vec::new())
        })
    }

    pub(crate) fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &[u8],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.require_container(container)?;
        let data = self.backend.stage_block(container, blob, id, bytes)?;
        let _stripe = self.stripe(container, blob);
        let replaced = {
            let mut st = self.write();
            let Some(c) = st.containers.get_mut(container) else {
                drop(st);
                self.backend.drop_block(&data);
                return Err(StoreError::ContainerNotFound(container.to_owned()));
            };
            let list = c.staged.entry(blob.to_owned()).or_default();
            if list.len() >= MAX_STAGED && !list.iter().any(|s| s.id == id) {
                drop(st);
                self.backend.drop_block(&data);
                return Err(StoreError::BlockCountExceedsLimit(blob.to_owned()));
            }
            let staged = Staged {
                id: id.to_vec(),
                size: bytes.len() as u64,
                data,
            };
            match list.iter_mut().find(|s| s.id == id) {
                Some(slot) => Some(std::mem::replace(slot, staged)),
                None => {
                    list.push(staged);
                    None
                }
            }
        };
        if let Some(r) = replaced {
            self.backend.drop_block(&r.data);
        }
        Ok(())
    }

    pub(crate) fn put_block_list(
        &self,
        container: &str,
        blob: &str,
        refs: &[BlockRef],
        attrs: NewBlob,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError> {
        let _stripe = self.stripe(container, blob);
        // Snapshot what the list may refer to.
        let (committed, staged) = {
            let st = self.read();
            let c = st.container(container)?;
            (
                c.blobs.get(blob).cloned(),
                c.staged.get(blob).cloned().unwrap_or_default(),
            )
        };
        // Committed block id -> (offset, size) in the committed data.
        let mut committed_at: HashMap<&[u8], (u64, u64)> = HashMap::new();
        if let Some(e) = &committed {
            let mut off = 0u64;
            for b in &e.props.blocks {
                committed_at.entry(&b.id).or_insert((off, b.size));
                off += b.size;
            }
        }
        let find_staged = |id: &[u8]| staged.iter().rev().find(|s| s.id == id);
        let mut parts = Vec::with_capacity(refs.len());
        let mut blocks = Vec::with_capacity(refs.len());
        for r in refs {
            let (id, part) = match r {
                BlockRef::Uncommitted(id) => (
                    id,
                    find_staged(id).map(|s| (Part::Range(&s.data, 0, s.size), s.size)),
                ),
                BlockRef::Committed(id) => (id, committed_part(&committed, &committed_at, id)),
                BlockRef::Latest(id) => (
                    id,
                    find_staged(id)
                        .map(|s| (Part::Range(&s.data, 0, s.size), s.size))
                        .or_else(|| committed_part(&committed, &committed_at, id)),
                ),
            };
            let Some((part, size)) = part else {
                return Err(StoreError::InvalidBlockList(format!(
                    "block {} of {:?} is not in the {} list",
                    hex(id),
                    blob,
                    match r {
                        BlockRef::Uncommitted(_) => "uncommitted",
                        BlockRef::Committed(_) => "committed",
                        BlockRef::Latest(_) => "uncommitted or committed",
                    }
                )));
            };
            parts.push(part);
            blocks.push(BlockInfo {
                id: id.clone(),
                size,
            });
        }
        let size = blocks.iter().map(|b| b.size).sum();
        let data = self.backend.write_data(container, &parts)?;
        drop(parts);
        self.publish(container, blob, data, cond, true, |old| {
            new_props(blob, size, attrs, old, blocks)
        })
    }

    pub(crate) fn block_list(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<BlockListing, StoreError> {
        let st = self.read();
        let c = st.container(container)?;
        let entry = c.blobs.get(blob);
        let staged = c.staged.get(blob);
        if entry.is_none() && staged.is_none_or(|s| s.is_empty()) {
            return Err(StoreError::BlobNotFound(blob.to_owned()));
        }
        Ok(BlockListing {
            committed: entry.map(|e| e.props.blocks.clone()).unwrap_or_default(),
            uncommitted: staged
                .map(|s| {
                    s.iter()
                        .map(|s| BlockInfo {
                            id: s.id.clone(),
                            size: s.size,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            props: entry.map(|e| Arc::clone(&e.props)),
        })
    }

    pub(crate) fn delete_blob(
        &self,
        container: &str,
        blob: &str,
        cond: &Conditions,
    ) -> Result<(), StoreError> {
        let _stripe = self.stripe(container, blob);
        {
            let st = self.read();
            let c = st.container(container)?;
            let Some(e) = c.blobs.get(blob) else {
                return Err(StoreError::BlobNotFound(blob.to_owned()));
            };
            check_write(cond, blob, Some(&e.props))?;
        }
        self.backend.unpublish_blob(container, blob)?;
        let (old, staged) = {
            let mut st = self.write();
            match st.containers.get_mut(container) {
                Some(c) => (c.blobs.remove(blob), c.staged.remove(blob)),
                None => (None, None),
            }
        };
        if let Some(old) = old {
            self.backend.drop_data(&old.data);
        }
        for s in staged.into_iter().flatten() {
            self.backend.drop_block(&s.data);
        }
        Ok(())
    }

    pub(crate) fn copy_blob(
        &self,
        src_container: &str,
        src_blob: &str,
        dst_container: &str,
        dst_blob: &str,
        metadata: Option<Vec<(String, String)>>,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError> {
        self.require_container(dst_container)?;
        let (src_props, data) = {
            let st = self.read();
            let e = st.blob(src_container, src_blob)?;
            // Cloned under the read lock so the source data cannot be released meanwhile.
            (
                Arc::clone(&e.props),
                self.backend.clone_data(dst_container, &e.data)?,
            )
        };
        let _stripe = self.stripe(dst_container, dst_blob);
        self.publish(dst_container, dst_blob, data, cond, false, |old| {
            let now = SystemTime::now();
            BlobProps {
                name: dst_blob.to_owned(),
                size: src_props.size,
                etag: new_etag(),
                last_modified: now,
                created: old.map(|o| o.created).unwrap_or(now),
                content: src_props.content.clone(),
                metadata: metadata.unwrap_or_else(|| src_props.metadata.clone()),
                tags: Vec::new(),
                blocks: src_props.blocks.clone(),
            }
        })
    }

    fn update_props(
        &self,
        container: &str,
        blob: &str,
        cond: &Conditions,
        f: impl FnOnce(&mut BlobProps),
    ) -> Result<Arc<BlobProps>, StoreError> {
        let _stripe = self.stripe(container, blob);
        let (props, data) = {
            let st = self.read();
            let e = st.blob(container, blob)?;
            check_write(cond, blob, Some(&e.props))?;
            let mut p = (*e.props).clone();
            f(&mut p);
            (Arc::new(p), e.data.clone())
        };
        self.backend.publish_blob(container, &props, &data)?;
        let mut st = self.write();
        if let Some(e) = st
            .containers
            .get_mut(container)
            .and_then(|c| c.blobs.get_mut(blob))
        {
            e.props = Arc::clone(&props);
        }
        Ok(props)
    }

    pub(crate) fn set_tags(
        &self,
        container: &str,
        blob: &str,
        tags: Vec<(String, String)>,
        cond: &Conditions,
    ) -> Result<(), StoreError> {
        self.update_props(container, blob, cond, |p| p.tags = tags)
            .map(|_| ())
    }

    pub(crate) fn set_content_headers(
        &self,
        container: &str,
        blob: &str,
        content: super::ContentHeaders,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError> {
        self.update_props(container, blob, cond, |p| {
            p.content = content;
            p.etag = new_etag();
            p.last_modified = SystemTime::now();
        })
    }

    pub(crate) fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: Vec<(String, String)>,
        cond: &Conditions,
    ) -> Result<Arc<BlobProps>, StoreError> {
        self.update_props(container, blob, cond, |p| {
            p.metadata = metadata;
            p.etag = new_etag();
            p.last_modified = SystemTime::now();
        })
    }
}

fn committed_part<'a, D>(
    committed: &'a Option<Entry<D>>,
    at: &HashMap<&[u8], (u64, u64)>,
    id: &[u8],
) -> Option<(Part<'a, D>, u64)> {
    let e = committed.as_ref()?;
    let &(off, size) = at.get(id)?;
    Some((Part::Range(&e.data, off, size), size))
}

fn new_props(
    blob: &str,
    size: u64,
    attrs: NewBlob,
    old: Option<&BlobProps>,
    blocks: Vec<BlockInfo>,
) -> BlobProps {
    let now = SystemTime::now();
    BlobProps {
        name: blob.to_owned(),
        size,
        etag: new_etag(),
        last_modified: now,
        created: old.map(|o| o.created).unwrap_or(now),
        content: attrs.content,
        metadata: attrs.metadata,
        tags: attrs.tags,
        blocks,
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Implement [`super::Store`] for a wrapper type that derefs to an `Engine`.
macro_rules! impl_store_via_engine {
    ($ty:ty) => {
        impl $crate::store::Store for $ty {
            fn describe(&self) -> String {
                self.engine.describe()
            }
            fn create_container(
                &self,
                name: &str,
                metadata: Vec<(String, String)>,
            ) -> Result<$crate::store::ContainerProps, $crate::store::StoreError> {
                self.engine.create_container(name, metadata)
            }
            fn delete_container(&self, name: &str) -> Result<(), $crate::store::StoreError> {
                self.engine.delete_container(name)
            }
            fn container(
                &self,
                name: &str,
            ) -> Result<$crate::store::ContainerProps, $crate::store::StoreError> {
                self.engine.container(name)
            }
            fn list_containers(
                &self,
                prefix: &str,
            ) -> Result<Vec<$crate::store::ContainerProps>, $crate::store::StoreError> {
                Ok(self.engine.list_containers(prefix))
            }
            fn open(
                &self,
                container: &str,
                blob: &str,
            ) -> Result<Box<dyn $crate::store::BlobReader>, $crate::store::StoreError> {
                self.engine.open(container, blob)
            }
            fn list_blobs(
                &self,
                container: &str,
                prefix: &str,
                from: &str,
                visit: $crate::store::ListVisitor<'_>,
            ) -> Result<(), $crate::store::StoreError> {
                self.engine.list_blobs(container, prefix, from, visit)
            }
            fn put_blob(
                &self,
                container: &str,
                blob: &str,
                data: &[u8],
                attrs: $crate::store::NewBlob,
                cond: &$crate::store::Conditions,
            ) -> Result<std::sync::Arc<$crate::store::BlobProps>, $crate::store::StoreError> {
                self.engine.put_blob(container, blob, data, attrs, cond)
            }
            fn put_block(
                &self,
                container: &str,
                blob: &str,
                id: &[u8],
                data: &[u8],
            ) -> Result<(), $crate::store::StoreError> {
                self.engine.put_block(container, blob, id, data)
            }
            fn put_block_list(
                &self,
                container: &str,
                blob: &str,
                blocks: &[$crate::store::BlockRef],
                attrs: $crate::store::NewBlob,
                cond: &$crate::store::Conditions,
            ) -> Result<std::sync::Arc<$crate::store::BlobProps>, $crate::store::StoreError> {
                self.engine
                    .put_block_list(container, blob, blocks, attrs, cond)
            }
            fn block_list(
                &self,
                container: &str,
                blob: &str,
            ) -> Result<$crate::store::BlockListing, $crate::store::StoreError> {
                self.engine.block_list(container, blob)
            }
            fn delete_blob(
                &self,
                container: &str,
                blob: &str,
                cond: &$crate::store::Conditions,
            ) -> Result<(), $crate::store::StoreError> {
                self.engine.delete_blob(container, blob, cond)
            }
            fn copy_blob(
                &self,
                src_container: &str,
                src_blob: &str,
                dst_container: &str,
                dst_blob: &str,
                metadata: Option<Vec<(String, String)>>,
                cond: &$crate::store::Conditions,
            ) -> Result<std::sync::Arc<$crate::store::BlobProps>, $crate::store::StoreError> {
                self.engine.copy_blob(
                    src_container,
                    src_blob,
                    dst_container,
                    dst_blob,
                    metadata,
                    cond,
                )
            }
            fn set_tags(
                &self,
                container: &str,
                blob: &str,
                tags: Vec<(String, String)>,
                cond: &$crate::store::Conditions,
            ) -> Result<(), $crate::store::StoreError> {
                self.engine.set_tags(container, blob, tags, cond)
            }
            fn set_content_headers(
                &self,
                container: &str,
                blob: &str,
                content: $crate::store::ContentHeaders,
                cond: &$crate::store::Conditions,
            ) -> Result<std::sync::Arc<$crate::store::BlobProps>, $crate::store::StoreError> {
                self.engine
                    .set_content_headers(container, blob, content, cond)
            }
            fn set_metadata(
                &self,
                container: &str,
                blob: &str,
                metadata: Vec<(String, String)>,
                cond: &$crate::store::Conditions,
            ) -> Result<std::sync::Arc<$crate::store::BlobProps>, $crate::store::StoreError> {
                self.engine.set_metadata(container, blob, metadata, cond)
            }
        }
    };
}
pub(crate) use impl_store_via_engine;
