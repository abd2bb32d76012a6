//! The FUSE filesystem: inodes for the paths the kernel has seen, the metadata cache, directory
//! listings, and the dispatch of each operation to the read path, the write path or a Blob
//! request. Every operation that talks to the service blocks its FUSE thread (there are
//! `--threads` of them) for at most the SDK's deadline and retries; failures are `EIO`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use blobring::blob::{BlobError, BlobService, Conditions, ListOptions};
use blobring::block_on;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::read::{Budget, Pinned, ReadError, ReadHandle};
use crate::stats::Stats;
use crate::write::{Upload, WriteError};

/// The value of a `Result<_, Errno>`, or, on an error, the handler answers the kernel with
/// that errno and returns: a FUSE handler answers through its `reply` and returns nothing, so
/// `?` does not apply.
macro_rules! or_reply {
    ($reply:ident, $result:expr) => {
        match $result {
            Ok(v) => v,
            Err(errno) => return $reply.error(errno),
        }
    };
}

/// Largest write the kernel sends in one request (and `st_blksize`, which `cp` uses as its
/// buffer size).
pub(crate) const MAX_WRITE: u32 = 1 << 20;
/// Entries per List Blobs page of a readdir.
const LIST_PAGE: u32 = 1000;
/// Metadata cache entries kept before expired ones are swept.
const CACHE_SWEEP: usize = 100_000;

/// What the filesystem presents (from the command line).
#[derive(Debug, Clone)]
pub(crate) struct FsOptions {
    pub container: String,
    /// Blob name prefix of the mount's root: empty or ending with `/`.
    pub prefix: String,
    pub ttl: Duration,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub read_only: bool,
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meta {
    Dir,
    File {
        size: u64,
        mtime: SystemTime,
        etag: String,
    },
}

struct Node {
    path: String,
    dir: bool,
    lookups: u64,
}

/// Inode numbers of the paths the kernel knows. Numbers are never reused within a mount.
struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Inodes {
    fn new() -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            1,
            Node {
                path: String::new(),
                dir: true,
                lookups: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), 1);
        Self {
            by_ino,
            by_path,
            next: 2,
        }
    }

    fn get_or_insert(&mut self, path: &str, dir: bool, lookup: bool) -> u64 {
        let ino = match self.by_path.get(path) {
            Some(&i) => i,
            None => {
                let i = self.next;
                self.next += 1;
                self.by_path.insert(path.to_owned(), i);
                self.by_ino.insert(
                    i,
                    Node {
                        path: path.to_owned(),
                        dir,
                        lookups: 0,
                    },
                );
                i
            }
        };
        let n = self.by_ino.get_mut(&ino).expect("both maps agree");
        n.dir = dir;
        if lookup {
            n.lookups += 1;
        }
        ino
    }

    fn path(&self, ino: u64) -> Option<(String, bool)> {
        self.by_ino.get(&ino).map(|n| (n.path.clone(), n.dir))
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                let path = node.path.clone();
                self.by_ino.remove(&ino);
                if self.by_path.get(&path) == Some(&ino) {
                    self.by_path.remove(&path);
                }
            }
        }
    }

    /// `from` is now called `to` (a file rename): its inode moves with it.
    fn rename(&mut self, from: &str, to: &str) {
        if let Some(old) = self.by_path.remove(to) {
            self.by_ino.remove(&old);
        }
        if let Some(ino) = self.by_path.remove(from) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.path = to.to_owned();
            }
            self.by_path.insert(to.to_owned(), ino);
        }
    }
}

/// An open handle.
enum Handle {
    Read(Arc<ReadHandle>),
    /// A blob being written, and the process (thread group) that opened it.
    Write(Arc<Upload>, u32),
    Dir(Arc<Mutex<DirHandle>>),
}

/// An open directory: the entries listed so far (`.` and `..` first) and where the listing
/// continues. Entries are fetched a page at a time as the kernel asks for them.
struct DirHandle {
    path: String,
    ino: u64,
    entries: Vec<(String, bool)>,
    seen: HashSet<String>,
    marker: Option<String>,
    listed: bool,
}

/// The filesystem.
pub(crate) struct BlobFs {
    svc: BlobService,
    o: FsOptions,
    started: SystemTime,
    inodes: Mutex<Inodes>,
    /// Path → what it is (`None`: known absent), with when it was learnt.
    cache: Mutex<HashMap<String, (Option<Meta>, Instant)>>,
    /// Directories made with mkdir that have no blob under them yet (this mount only).
    local_dirs: Mutex<HashSet<String>>,
    /// Blobs being written through this mount, by path.
    writing: Mutex<HashMap<String, Arc<Upload>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The thread group (process) of the thread `pid`, from `/proc` (`pid` itself if unknown).
fn tgid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

fn parse_mtime(s: &str) -> SystemTime {
    httpdate::parse_http_date(s).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl BlobFs {
    pub(crate) fn new(
        svc: BlobService,
        o: FsOptions,
        budget: Arc<Budget>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            svc,
            o,
            started: SystemTime::now(),
            inodes: Mutex::new(Inodes::new()),
            cache: Mutex::new(HashMap::new()),
            local_dirs: Mutex::new(HashSet::new()),
            writing: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            budget,
            stats,
        }
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.o.prefix)
    }

    /// The List Blobs prefix of a directory's children.
    fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.o.prefix.clone()
        } else {
            format!("{}{path}/", self.o.prefix)
        }
    }

    /// Logs a failed Blob request and gives the errno the caller sees.
    fn eio(&self, what: &str, path: &str, e: &BlobError) -> Errno {
        Stats::add(&self.stats.io_errors, 1);
        tracing::warn!("{what} {path:?} failed: {e}");
        Errno::EIO
    }

    /// Logs (one line) and counts an operation the mount does not do.
    fn refuse(&self, op: &str, path: &str, errno: Errno, why: &str) -> Errno {
        Stats::add(&self.stats.refused, 1);
        tracing::warn!("refused {op} of {path:?} ({errno:?}): {why}");
        errno
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let (dir, is_dir) = lock(&self.inodes).path(parent.0).ok_or(Errno::ENOENT)?;
        if !is_dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(join(&dir, name))
    }

    fn path_of(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes)
            .path(ino.0)
            .map(|p| p.0)
            .ok_or(Errno::ENOENT)
    }

    fn remember(&self, path: &str, meta: Option<Meta>) {
        let mut c = lock(&self.cache);
        if c.len() >= CACHE_SWEEP {
            let ttl = self.o.ttl;
            c.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        c.insert(path.to_owned(), (meta, Instant::now()));
    }

    fn forget_meta(&self, path: &str) {
        lock(&self.cache).remove(path);
    }

    /// What `path` is: this mount's own state first (a blob being written, a directory made
    /// here), then the cache within its TTL, else one HEAD of the blob and one List Blobs of
    /// `path/` with at most one result, concurrently (a directory wins over a blob of the same
    /// name).
    fn resolve(&self, path: &str) -> Result<Option<Meta>, Errno> {
        if path.is_empty() {
            return Ok(Some(Meta::Dir));
        }
        if let Some(u) = lock(&self.writing).get(path) {
            return Ok(Some(Meta::File {
                size: u.written(),
                mtime: SystemTime::now(),
                etag: String::new(),
            }));
        }
        if lock(&self.local_dirs).contains(path) {
            return Ok(Some(Meta::Dir));
        }
        if let Some((m, at)) = lock(&self.cache).get(path)
            && at.elapsed() < self.o.ttl
        {
            Stats::add(&self.stats.meta_hits, 1);
            return Ok(m.clone());
        }
        Stats::add(&self.stats.meta_misses, 1);
        let key = self.key(path);
        let list_opts = ListOptions {
            prefix: Some(format!("{key}/")),
            delimiter: Some("/".into()),
            marker: None,
            max_results: Some(1),
        };
        let (head, list) = block_on(futures_util::future::join(
            self.svc
                .head_blob(&self.o.container, &key, &Default::default()),
            self.svc.list_blobs_page(&self.o.container, &list_opts),
        ));
        let meta = match list {
            Ok(p) if !p.blobs.is_empty() || !p.prefixes.is_empty() => Some(Meta::Dir),
            Ok(_) => match head {
                Ok(props) => Some(Meta::File {
                    size: props.size,
                    mtime: parse_mtime(&props.last_modified),
                    etag: props.etag,
                }),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(self.eio("looking up", path, &e)),
            },
            Err(e) => return Err(self.eio("listing", path, &e)),
        };
        self.remember(path, meta.clone());
        Ok(meta)
    }

    /// `EBUSY` (a refusal: logged and counted) while `path` is being written through this
    /// mount: a blob under upload is not deleted or renamed before its writer closes it.
    fn not_being_written(&self, op: &str, path: &str) -> Result<(), Errno> {
        if lock(&self.writing).contains_key(path) {
            return Err(self.refuse(
                op,
                path,
                Errno::EBUSY,
                "it is being written through this mount; close it first",
            ));
        }
        Ok(())
    }

    /// What `path` is, `ENOENT` where nothing is.
    fn existing(&self, path: &str) -> Result<Meta, Errno> {
        self.resolve(path)?.ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, meta: &Meta) -> FileAttr {
        let (kind, size, mtime, perm, nlink) = match meta {
            Meta::Dir => (FileType::Directory, 0, self.started, self.o.dir_mode, 2),
            Meta::File { size, mtime, .. } => {
                (FileType::RegularFile, *size, *mtime, self.o.file_mode, 1)
            }
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: self.o.uid,
            gid: self.o.gid,
            rdev: 0,
            blksize: MAX_WRITE,
            flags: 0,
        }
    }

    /// Kernel cache time of an attribute: none while the file is being written here (its
    /// size changes), else the metadata TTL.
    fn ttl_for(&self, path: &str) -> Duration {
        if lock(&self.writing).contains_key(path) {
            Duration::ZERO
        } else {
            self.o.ttl
        }
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// Starts writing `path` (a new blob, or the replacement of one).
    fn start_upload(&self, path: &str) -> Result<Arc<Upload>, Errno> {
        let mut w = lock(&self.writing);
        if w.contains_key(path) {
            return Err(self.refuse(
                "open for writing",
                path,
                Errno::EBUSY,
                "another handle of this mount is writing it",
            ));
        }
        let u = Upload::start(
            &self.svc,
            &self.o.container,
            &self.key(path),
            path.to_owned(),
            self.stats.clone(),
        )
        .map_err(|e| {
            tracing::warn!("cannot start the upload of {path:?}: {e}");
            Errno::EIO
        })?;
        w.insert(path.to_owned(), u.clone());
        Stats::add(&self.stats.open_files, 1);
        Ok(u)
    }

    /// Commits `u` (close, flush, fsync): on success the blob is in the cache with its size.
    fn commit(&self, u: &Upload) -> Result<(), Errno> {
        let r = u.commit();
        let mut w = lock(&self.writing);
        if w.get(&u.path)
            .is_some_and(|x| std::ptr::eq(Arc::as_ptr(x), u))
        {
            w.remove(&u.path);
            match &r {
                Ok(etag) => self.remember(
                    &u.path,
                    Some(Meta::File {
                        size: u.written(),
                        mtime: SystemTime::now(),
                        etag: etag.clone(),
                    }),
                ),
                Err(_) => self.forget_meta(&u.path),
            }
        }
        drop(w);
        match r {
            Ok(_) => Ok(()),
            Err(WriteError::Failed(why)) => {
                Stats::add(&self.stats.io_errors, 1);
                tracing::warn!("upload of {:?} failed, nothing committed: {why}", u.path);
                Err(Errno::EIO)
            }
            Err(e) => {
                tracing::warn!("commit of {:?}: {e:?}", u.path);
                Err(Errno::EIO)
            }
        }
    }

    /// Fetches the next page of a directory listing into `d` (or, once the service has no
    /// more, adds this mount's own directories and blobs being written under it).
    fn fill(&self, d: &mut DirHandle) -> Result<(), Errno> {
        if d.listed {
            return Ok(());
        }
        let prefix = self.dir_prefix(&d.path);
        let opts = ListOptions {
            prefix: Some(prefix.clone()).filter(|p| !p.is_empty()),
            delimiter: Some("/".into()),
            marker: d.marker.clone(),
            max_results: Some(LIST_PAGE),
        };
        let page = block_on(self.svc.list_blobs_page(&self.o.container, &opts))
            .map_err(|e| self.eio("listing", &d.path, &e))?;
        Stats::add(&self.stats.list_pages, 1);
        let add = |d: &mut DirHandle, name: &str, dir: bool| {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return;
            }
            if d.seen.insert(name.to_owned()) {
                d.entries.push((name.to_owned(), dir));
            }
        };
        for p in &page.prefixes {
            let Some(name) = p.strip_prefix(&prefix) else {
                continue;
            };
            let name = name.trim_end_matches('/');
            add(d, name, true);
            if !name.is_empty() && !name.contains('/') {
                self.remember(&join(&d.path, name), Some(Meta::Dir));
            }
        }
        for b in &page.blobs {
            let Some(name) = b.name.strip_prefix(&prefix) else {
                continue;
            };
            // A directory listed on this page shadows a blob of the same name.
            if d.seen.contains(name) {
                continue;
            }
            add(d, name, false);
            if !name.is_empty() && !name.contains('/') {
                self.remember(
                    &join(&d.path, name),
                    Some(Meta::File {
                        size: b.size,
                        mtime: parse_mtime(&b.last_modified),
                        etag: b.etag.clone(),
                    }),
                );
            }
        }
        d.marker = page.next_marker;
        if d.marker.is_none() {
            d.listed = true;
            let mine: Vec<(String, bool)> = lock(&self.local_dirs)
                .iter()
                .filter(|p| parent_of(p) == d.path && !p.is_empty())
                .map(|p| (p.clone(), true))
                .chain(
                    lock(&self.writing)
                        .keys()
                        .filter(|p| parent_of(p) == d.path)
                        .map(|p| (p.clone(), false)),
                )
                .collect();
            for (p, dir) in mine {
                let name = p.rsplit('/').next().unwrap_or(&p).to_owned();
                add(d, &name, dir);
            }
        }
        Ok(())
    }

    fn handle(&self, fh: FileHandle) -> Option<HandleRef> {
        lock(&self.handles).get(&fh.0).map(|h| match h {
            Handle::Read(r) => HandleRef::Read(r.clone()),
            Handle::Write(w, tgid) => HandleRef::Write(w.clone(), *tgid),
            Handle::Dir(d) => HandleRef::Dir(d.clone()),
        })
    }
}

/// A handle taken out of the table (so the table's lock is not held during I/O).
enum HandleRef {
    Read(Arc<ReadHandle>),
    Write(Arc<Upload>, u32),
    Dir(Arc<Mutex<DirHandle>>),
}

impl Filesystem for BlobFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open() instead of as a separate truncate (so "replace this
        // blob" is one decision), and directory operations may run in parallel.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = or_reply!(reply, self.child(parent, name));
        let m = or_reply!(reply, self.existing(&path));
        let ino = lock(&self.inodes).get_or_insert(&path, m == Meta::Dir, true);
        reply.entry(&self.ttl_for(&path), &self.attr(ino, &m), Generation(0));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let path = or_reply!(reply, self.path_of(ino));
        let m = or_reply!(reply, self.existing(&path));
        reply.attr(&self.ttl_for(&path), &self.attr(ino.0, &m));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let path = or_reply!(reply, self.path_of(ino));
        let (is_dir, writing) = (
            lock(&self.inodes).path(ino.0).is_some_and(|p| p.1),
            lock(&self.writing).contains_key(&path),
        );
        let perm = if is_dir && !writing {
            self.o.dir_mode
        } else {
            self.o.file_mode
        };
        // Setting what is already there (`cp -p`, `mv` across filesystems, `tar x`) is a
        // no-op; a change is refused.
        let changes = mode.is_some_and(|m| m & 0o7777 != u32::from(perm))
            || uid.is_some_and(|u| u != self.o.uid)
            || gid.is_some_and(|g| g != self.o.gid);
        if changes {
            return reply.error(self.refuse(
                "chmod/chown",
                &path,
                Errno::EPERM,
                "ownership and modes are the mount's (--uid/--gid/--file-mode/--dir-mode)",
            ));
        }
        if let Some(size) = size {
            // Only a no-op truncate of a blob being written here (at its current size).
            let ok = lock(&self.writing)
                .get(&path)
                .is_some_and(|u| u.written() == size);
            if !ok {
                return reply.error(self.refuse(
                    "truncate",
                    &path,
                    Errno::EPERM,
                    "a blob cannot be resized in place; open it with O_TRUNC to replace it",
                ));
            }
        }
        // Times are the blob's Last-Modified: setting them is accepted and has no effect. The
        // reply is the attributes as they stand.
        self.getattr(req, ino, None, reply)
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let path = self.child(parent, name).unwrap_or_default();
        reply.error(self.refuse(
            "mknod",
            &path,
            Errno::EPERM,
            "only regular files and directories exist in a container",
        ));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = or_reply!(reply, self.child(parent, name));
        if or_reply!(reply, self.resolve(&path)).is_some() {
            return reply.error(Errno::EEXIST);
        }
        lock(&self.local_dirs).insert(path.clone());
        self.forget_meta(&path);
        let ino = lock(&self.inodes).get_or_insert(&path, true, true);
        reply.entry(&Duration::ZERO, &self.attr(ino, &Meta::Dir), Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = or_reply!(reply, self.child(parent, name));
        or_reply!(reply, self.not_being_written("unlink", &path));
        if or_reply!(reply, self.existing(&path)) == Meta::Dir {
            return reply.error(Errno::EISDIR);
        }
        let r = block_on(self.svc.delete_blob(
            &self.o.container,
            &self.key(&path),
            &Conditions::default(),
        ));
        match r {
            Ok(()) => {
                self.remember(&path, None);
                reply.ok()
            }
            Err(e) if e.is_not_found() => {
                self.remember(&path, None);
                reply.error(Errno::ENOENT)
            }
            Err(e) => reply.error(self.eio("deleting", &path, &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = or_reply!(reply, self.child(parent, name));
        let here_below = |p: &String| p.starts_with(&format!("{path}/"));
        if lock(&self.writing).keys().any(here_below)
            || lock(&self.local_dirs).iter().any(here_below)
        {
            return reply.error(Errno::ENOTEMPTY);
        }
        let opts = ListOptions {
            prefix: Some(self.dir_prefix(&path)),
            delimiter: Some("/".into()),
            marker: None,
            max_results: Some(2),
        };
        let page = or_reply!(
            reply,
            block_on(self.svc.list_blobs_page(&self.o.container, &opts))
                .map_err(|e| self.eio("listing", &path, &e))
        );
        let marker = format!("{}/", self.key(&path));
        // A zero-length `dir/` marker blob (left by other tools) does not make it non-empty.
        let remote = page.prefixes.len() + page.blobs.iter().filter(|b| b.name != marker).count();
        if remote > 0 {
            return reply.error(Errno::ENOTEMPTY);
        }
        let was_local = lock(&self.local_dirs).remove(&path);
        if !was_local && page.blobs.is_empty() {
            return reply.error(Errno::ENOENT);
        }
        if !page.blobs.is_empty()
            && let Err(e) = block_on(self.svc.delete_blob(
                &self.o.container,
                &marker,
                &Conditions::default(),
            ))
            && !e.is_not_found()
        {
            return reply.error(self.eio("deleting the marker of", &path, &e));
        }
        self.remember(&path, None);
        reply.ok()
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let path = self.child(parent, link_name).unwrap_or_default();
        reply.error(self.refuse("symlink", &path, Errno::EPERM, "a container has no links"));
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let path = self.path_of(ino).unwrap_or_default();
        reply.error(self.refuse("link", &path, Errno::EPERM, "a container has no links"));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let from = or_reply!(reply, self.child(parent, name));
        let to = or_reply!(reply, self.child(newparent, newname));
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(self.refuse(
                "rename (exchange)",
                &from,
                Errno::EINVAL,
                "two blobs cannot be swapped atomically",
            ));
        }
        or_reply!(reply, self.not_being_written("rename", &from));
        or_reply!(reply, self.not_being_written("rename", &to));
        if or_reply!(reply, self.existing(&from)) == Meta::Dir {
            return reply.error(self.refuse(
                "rename",
                &from,
                Errno::EXDEV,
                "a directory is a prefix of many blobs: renaming it is not one operation \
                 (mv falls back to copying)",
            ));
        }
        match or_reply!(reply, self.resolve(&to)) {
            Some(Meta::Dir) => return reply.error(Errno::EISDIR),
            Some(_) if flags.contains(RenameFlags::RENAME_NOREPLACE) => {
                return reply.error(Errno::EEXIST);
            }
            _ => {}
        }
        // Copy Blob, then Delete Blob: not atomic (between the two, both names exist).
        let (c, fk, tk) = (&self.o.container, self.key(&from), self.key(&to));
        if let Err(e) = block_on(self.svc.copy_blob(c, &fk, c, &tk, &Conditions::default())) {
            return reply.error(self.eio("copying (rename)", &from, &e));
        }
        self.forget_meta(&to);
        if let Err(e) = block_on(self.svc.delete_blob(c, &fk, &Conditions::default()))
            && !e.is_not_found()
        {
            return reply.error(self.eio("deleting (rename)", &from, &e));
        }
        self.remember(&from, None);
        lock(&self.inodes).rename(&from, &to);
        reply.ok()
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = or_reply!(reply, self.path_of(ino));
        let f = flags.0;
        let acc = f & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            if f & libc::O_APPEND != 0 {
                return reply.error(self.refuse(
                    "open for appending",
                    &path,
                    Errno::EPERM,
                    "an existing blob cannot be appended to",
                ));
            }
            if f & libc::O_TRUNC == 0 {
                return reply.error(self.refuse(
                    "open for writing",
                    &path,
                    Errno::EPERM,
                    "an existing blob cannot be modified in place; open it with O_TRUNC to \
                     replace it",
                ));
            }
            if self.o.read_only {
                return reply.error(Errno::EROFS);
            }
            let u = or_reply!(reply, self.start_upload(&path));
            let fh = self.new_fh(Handle::Write(u, tgid_of(req.pid())));
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        if lock(&self.writing).contains_key(&path) {
            return reply.error(self.refuse(
                "open for reading",
                &path,
                Errno::EBUSY,
                "it is being written through this mount and not committed yet",
            ));
        }
        match or_reply!(reply, self.existing(&path)) {
            Meta::File { size, etag, .. } => {
                let blob = Pinned::new(self.o.container.clone(), self.key(&path), etag, size);
                let h = ReadHandle::new(
                    self.svc.clone(),
                    blob,
                    self.budget.clone(),
                    self.stats.clone(),
                );
                Stats::add(&self.stats.open_files, 1);
                let fh = self.new_fh(Handle::Read(Arc::new(h)));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Meta::Dir => reply.error(Errno::EISDIR),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = or_reply!(reply, self.child(parent, name));
        if flags & libc::O_APPEND != 0 {
            return reply.error(self.refuse(
                "create for appending",
                &path,
                Errno::EPERM,
                "O_APPEND is not supported; write new blobs sequentially",
            ));
        }
        match or_reply!(reply, self.resolve(&path)) {
            Some(Meta::Dir) => return reply.error(Errno::EISDIR),
            Some(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
            _ => {}
        }
        let u = or_reply!(reply, self.start_upload(&path));
        self.forget_meta(&path);
        let ino = lock(&self.inodes).get_or_insert(&path, false, true);
        let attr = self.attr(
            ino,
            &Meta::File {
                size: 0,
                mtime: SystemTime::now(),
                etag: String::new(),
            },
        );
        let fh = self.new_fh(Handle::Write(u, tgid_of(req.pid())));
        reply.created(
            &Duration::ZERO,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        )
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let h = match self.handle(fh) {
            Some(HandleRef::Read(h)) => h,
            Some(HandleRef::Write(u, _)) => {
                return reply.error(self.refuse(
                    "read",
                    &u.path,
                    Errno::EBADF,
                    "a handle writing a new blob cannot read it back before it is committed",
                ));
            }
            _ => return reply.error(Errno::EBADF),
        };
        match h.read(offset, size) {
            Ok(b) => reply.data(&b),
            Err(ReadError::Changed) => {
                Stats::add(&self.stats.io_errors, 1);
                tracing::warn!("a blob changed while open for reading (ETag no longer matches)");
                reply.error(Errno::EIO)
            }
            Err(ReadError::Io(e)) => {
                Stats::add(&self.stats.io_errors, 1);
                tracing::warn!("read failed: {e}");
                reply.error(Errno::EIO)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let u = match self.handle(fh) {
            Some(HandleRef::Write(u, _)) => u,
            _ => return reply.error(Errno::EBADF),
        };
        match u.write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(WriteError::NotSequential { expected }) => reply.error(self.refuse(
                "write",
                &u.path,
                Errno::EINVAL,
                &format!(
                    "out-of-order write at {offset} (the next byte is {expected}): new blobs are \
                     written sequentially"
                ),
            )),
            Err(WriteError::Committed) => reply.error(self.refuse(
                "write",
                &u.path,
                Errno::EINVAL,
                "this handle's data was already committed (fsync or close)",
            )),
            Err(WriteError::Failed(why)) => {
                Stats::add(&self.stats.io_errors, 1);
                tracing::warn!("writing {:?} failed: {why}", u.path);
                reply.error(Errno::EIO)
            }
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh) {
            // A close by the process that opened the file commits (so close() reports the
            // outcome). Other processes' closes of the same open file are ignored: a child
            // that inherited the descriptor closes it at exec or exit, long before the writer
            // is done. The last close (release) commits in any case.
            Some(HandleRef::Write(u, opener)) if tgid_of(req.pid()) == opener => {
                match self.commit(&u) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                }
            }
            _ => reply.ok(),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh) {
            Some(HandleRef::Write(u, _)) => match self.commit(&u) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = lock(&self.handles).remove(&fh.0);
        match h {
            Some(Handle::Write(u, _)) => {
                let _ = self.commit(&u);
                self.stats.open_files.fetch_sub(1, Ordering::Relaxed);
            }
            Some(Handle::Read(_)) => {
                self.stats.open_files.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = or_reply!(reply, self.path_of(ino));
        let d = DirHandle {
            path,
            ino: ino.0,
            entries: vec![(".".into(), true), ("..".into(), true)],
            seen: HashSet::new(),
            marker: None,
            listed: false,
        };
        let fh = self.new_fh(Handle::Dir(Arc::new(Mutex::new(d))));
        reply.opened(FileHandle(fh), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let d = match self.handle(fh) {
            Some(HandleRef::Dir(d)) => d,
            _ => return reply.error(Errno::EBADF),
        };
        let mut d = lock(&d);
        let mut i = offset as usize;
        loop {
            while i >= d.entries.len() && !d.listed {
                or_reply!(reply, self.fill(&mut d));
            }
            let Some((name, dir)) = d.entries.get(i).cloned() else {
                break;
            };
            let ino = match name.as_str() {
                "." => d.ino,
                ".." => 1,
                _ => lock(&self.inodes).get_or_insert(&join(&d.path, &name), dir, false),
            };
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
            i += 1;
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A container has no fixed capacity: report a large, constant one.
        const BLOCKS: u64 = 1 << 40;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 30, 1 << 30, 4096, 1024, 4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_stable_per_path_and_freed_when_the_kernel_forgets_them() {
        let mut i = Inodes::new();
        assert_eq!(i.path(1), Some((String::new(), true)));
        let a = i.get_or_insert("a", true, true);
        let f = i.get_or_insert("a/f", false, true);
        assert_eq!(
            i.get_or_insert("a/f", false, true),
            f,
            "same path, same inode"
        );
        assert_ne!(a, f);
        // Listed by readdir only (no lookup): known, not counted.
        let g = i.get_or_insert("a/g", false, false);
        i.forget(f, 1);
        assert_eq!(i.path(f), Some(("a/f".into(), false)), "one lookup left");
        i.forget(f, 1);
        assert_eq!(i.path(f), None);
        let f2 = i.get_or_insert("a/f", false, true);
        assert!(f2 > g, "numbers are never reused");
        i.forget(1, 100);
        assert!(i.path(1).is_some(), "the root is never forgotten");
    }

    #[test]
    fn a_renamed_file_keeps_its_inode_and_replaces_the_target() {
        let mut i = Inodes::new();
        let x = i.get_or_insert("x", false, true);
        let y = i.get_or_insert("d/y", false, true);
        i.rename("x", "d/y");
        assert_eq!(i.path(x), Some(("d/y".into(), false)));
        assert_eq!(i.path(y), None);
        assert_eq!(i.get_or_insert("d/y", false, false), x);
        assert_ne!(i.get_or_insert("x", false, false), x);
    }

    #[test]
    fn paths_join_and_split() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(parent_of("a/b/c"), "a/b");
        assert_eq!(parent_of("a"), "");
        assert_eq!(
            parse_mtime("Fri, 04 Dec 2026 23:38:40 GMT"),
            httpdate::parse_http_date("Fri, 04 Dec 2026 23:38:40 GMT").unwrap()
        );
        assert_eq!(parse_mtime("garbage"), SystemTime::UNIX_EPOCH);
    }
}
