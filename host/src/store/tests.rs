//! One conformance suite run against every store, plus fs-specific durability checks.

use std::sync::Arc;

use super::*;

fn stores() -> Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Store> = Arc::new(FsStore::open(dir.path()).unwrap());
    vec![(Arc::new(MemStore::new()), None), (fs, Some(dir))]
}

fn read_all(s: &dyn Store, c: &str, b: &str) -> Vec<u8> {
    let r = s.open(c, b).unwrap();
    let mut v = vec![0; r.props().size as usize];
    r.read_at(0, &mut v).unwrap();
    v
}

/// Put Block List of `refs` onto `c/b` (no properties, no conditions); returns the blob's bytes.
fn commit_and_read(s: &dyn Store, c: &str, b: &str, refs: &[BlockRef]) -> Vec<u8> {
    s.put_block_list(c, b, refs, NewBlob::default(), &Conditions::default())
        .unwrap();
    read_all(s, c, b)
}

#[test]
fn conformance() {
    for (s, _dir) in stores() {
        let s = &*s;
        let none = Conditions::default();
        assert!(matches!(
            s.put_blob("con1", "b", b"x", NewBlob::default(), &none),
            Err(StoreError::ContainerNotFound(_))
        ));
        assert!(matches!(
            s.create_container("../escape", vec![]),
            Err(StoreError::InvalidContainerName(_))
        ));
        s.create_container("con1", vec![]).unwrap();
        assert!(matches!(
            s.create_container("con1", vec![]),
            Err(StoreError::ContainerAlreadyExists(_))
        ));
        let p1 = s
            .put_blob("con1", "b", b"one", NewBlob::default(), &none)
            .unwrap();
        // A reader is a snapshot: it keeps the version it opened.
        let r = s.open("con1", "b").unwrap();
        let p2 = s
            .put_blob("con1", "b", b"two!", NewBlob::default(), &none)
            .unwrap();
        assert_ne!(p1.etag, p2.etag);
        assert_eq!(p2.created, p1.created);
        let mut v = [0u8; 3];
        r.read_at(0, &mut v).unwrap();
        assert_eq!(&v, b"one");
        assert!(matches!(
            r.read_at(1, &mut v),
            Err(StoreError::OutOfRange { .. })
        ));
        assert_eq!(read_all(s, "con1", "b"), b"two!");
        let mut dst = [0u8; 2];
        assert_eq!(s.read_into("con1", "b", 2, &mut dst).unwrap().size, 4);
        assert_eq!(&dst, b"o!");

        // Conditions are checked atomically with the write.
        let stale = Conditions {
            if_match: Some(p1.etag.clone()),
            ..Default::default()
        };
        assert!(matches!(
            s.put_blob("con1", "b", b"x", NewBlob::default(), &stale),
            Err(StoreError::ConditionNotMet)
        ));
        let create = Conditions {
            if_none_match: Some("*".into()),
            ..Default::default()
        };
        assert!(matches!(
            s.put_blob("con1", "b", b"x", NewBlob::default(), &create),
            Err(StoreError::BlobAlreadyExists(_))
        ));

        // Blocks: staged, committed in list order, the rest discarded.
        s.put_block("con1", "m", b"1", b"aa").unwrap();
        s.put_block("con1", "m", b"2", b"bb").unwrap();
        s.put_block("con1", "m", b"1", b"AA").unwrap(); // replaces staged "1"
        assert!(matches!(
            s.open("con1", "m"),
            Err(StoreError::BlobNotFound(_))
        ));
        let l = s.block_list("con1", "m").unwrap();
        assert_eq!(l.uncommitted.len(), 2);
        let refs = [
            BlockRef::Uncommitted(b"2".to_vec()),
            BlockRef::Latest(b"1".to_vec()),
        ];
        assert_eq!(commit_and_read(s, "con1", "m", &refs), b"bbAA");
        let l = s.block_list("con1", "m").unwrap();
        assert_eq!(l.committed.len(), 2);
        assert!(l.uncommitted.is_empty());
        assert!(matches!(
            s.put_block_list(
                "con1",
                "m",
                &[BlockRef::Uncommitted(b"2".to_vec())],
                NewBlob::default(),
                &none
            ),
            Err(StoreError::InvalidBlockList(_))
        ));
        let refs = [BlockRef::Committed(b"1".to_vec())];
        assert_eq!(commit_and_read(s, "con1", "m", &refs), b"AA");

        // Copy, list, tags, delete.
        s.copy_blob("con1", "m", "con1", "z/copy", None, &none)
            .unwrap();
        assert_eq!(read_all(s, "con1", "z/copy"), b"AA");
        let mut names = Vec::new();
        s.list_blobs("con1", "", "", &mut |p| {
            names.push(p.name.clone());
            true
        })
        .unwrap();
        assert_eq!(names, ["b", "m", "z/copy"]);
        let mut names = Vec::new();
        s.list_blobs("con1", "", "m", &mut |p| {
            names.push(p.name.clone());
            true
        })
        .unwrap();
        assert_eq!(names, ["m", "z/copy"]);
        let before = s.open("con1", "m").unwrap().props().etag.clone();
        s.set_tags("con1", "m", vec![("k".into(), "v".into())], &none)
            .unwrap();
        let after = s.open("con1", "m").unwrap().props().clone();
        assert_eq!(after.etag, before);
        assert_eq!(after.tags, [("k".to_owned(), "v".to_owned())]);
        s.delete_blob("con1", "m", &none).unwrap();
        assert!(matches!(
            s.delete_blob("con1", "m", &none),
            Err(StoreError::BlobNotFound(_))
        ));
        assert_eq!(read_all(s, "con1", "z/copy"), b"AA");
        s.delete_container("con1").unwrap();
        assert!(matches!(
            s.open("con1", "b"),
            Err(StoreError::ContainerNotFound(_))
        ));
    }
}

/// Concurrent conditional increments lose no update (the object_store `put_opts` race).
#[test]
fn conditional_writes_are_linearisable() {
    for (s, _dir) in stores() {
        s.create_container("con", vec![]).unwrap();
        s.put_blob("con", "n", b"0", NewBlob::default(), &Conditions::default())
            .unwrap();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let s = &s;
                scope.spawn(move || {
                    for _ in 0..10 {
                        loop {
                            let r = s.open("con", "n").unwrap();
                            let mut v = vec![0; r.props().size as usize];
                            r.read_at(0, &mut v).unwrap();
                            let n: u32 = std::str::from_utf8(&v).unwrap().parse().unwrap();
                            let cond = Conditions {
                                if_match: Some(r.props().etag.clone()),
                                ..Default::default()
                            };
                            let next = (n + 1).to_string();
                            match s.put_blob("con", "n", next.as_bytes(), NewBlob::default(), &cond)
                            {
                                Ok(_) => break,
                                Err(StoreError::ConditionNotMet) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(read_all(&*s, "con", "n"), b"40");
    }
}

#[test]
fn fs_reopen_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path()).unwrap();
        s.create_container("con", vec![("m".into(), "1".into())])
            .unwrap();
        s.put_blob(
            "con",
            "a/b",
            b"durable",
            NewBlob::default(),
            &Conditions::default(),
        )
        .unwrap();
        s.put_block("con", "staged", b"id", b"blk").unwrap();
        s.put_blob(
            "con",
            "gone",
            b"x",
            NewBlob::default(),
            &Conditions::default(),
        )
        .unwrap();
        s.delete_blob("con", "gone", &Conditions::default())
            .unwrap();
    }
    // Leftovers of an interrupted write: an unreferenced data file and a tmp file.
    std::fs::write(dir.path().join("containers/con/data/orphan"), b"junk").unwrap();
    std::fs::write(dir.path().join("tmp/partial"), b"junk").unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    assert_eq!(read_all(&s, "con", "a/b"), b"durable");
    assert_eq!(
        s.container("con").unwrap().metadata,
        [("m".to_owned(), "1".to_owned())]
    );
    assert!(matches!(
        s.open("con", "gone"),
        Err(StoreError::BlobNotFound(_))
    ));
    assert_eq!(s.block_list("con", "staged").unwrap().uncommitted.len(), 1);
    assert!(!dir.path().join("containers/con/data/orphan").exists());
    assert!(!dir.path().join("tmp/partial").exists());
    // A corrupt record is reported with its path, not skipped.
    let meta = std::fs::read_dir(dir.path().join("containers/con/meta"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    drop(s);
    std::fs::write(&meta, b"{not json").unwrap();
    match FsStore::open(dir.path()) {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, meta),
        other => panic!("{other:?}"),
    }
}

#[test]
fn etags_are_unique_and_increasing() {
    let a = new_etag();
    let b = new_etag();
    assert_ne!(a, b);
    assert!(a.starts_with("\"0x") && a.ends_with('"'));
}

/// Descriptors of this process open on files under `dir` (deleted ones included: their
/// `/proc/self/fd` link reads `<path> (deleted)`).
fn fds_under(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

/// An `fs` store in a fresh temp dir, keeping up to `open_files` files open, with container
/// `con`.
fn fs_with_container(open_files: usize) -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open_with(dir.path(), open_files).unwrap();
    s.create_container("con", vec![]).unwrap();
    (dir, s)
}

/// Bytes of version `v` of blob `i`: every byte says which blob and version it belongs to.
fn version_bytes(i: usize, v: usize, len: usize) -> Vec<u8> {
    let tag = (i * 31 + v * 7) as u8;
    let mut b = vec![tag; len + v];
    b[0] = i as u8;
    b
}

fn read_via_sink(s: &dyn Store, c: &str, b: &str) -> Vec<u8> {
    let r = s.open(c, b).unwrap();
    let mut v = vec![0; r.props().size as usize];
    let len = v.len() as u64;
    r.read_to(0, len, &mut SliceSink(&mut v), 0).unwrap();
    v
}

/// Put Blob of `data` as `con/<b>` (no properties, no conditions).
fn put(s: &dyn Store, b: &str, data: &[u8]) {
    s.put_blob("con", b, data, NewBlob::default(), &Conditions::default())
        .unwrap();
}

/// Every write path that replaces a cached blob (Put Blob, Put Block List, Copy Blob onto it)
/// is seen by the next read: the cache never serves the file of a replaced version.
#[test]
fn fs_open_files_read_after_overwrite_is_fresh() {
    let (dir, s) = fs_with_container(16);
    let none = Conditions::default();
    put(&s, "b", b"one");
    assert_eq!(read_all(&s, "con", "b"), b"one");
    assert_eq!(s.cached_open_files(), 1);

    put(&s, "b", b"two!");
    assert_eq!(read_all(&s, "con", "b"), b"two!");
    assert_eq!(read_via_sink(&s, "con", "b"), b"two!");
    // The replaced version's file left the cache with it.
    assert_eq!(s.cached_open_files(), 1);

    s.put_block("con", "b", b"i1", b"block-").unwrap();
    s.put_block("con", "b", b"i2", b"list").unwrap();
    let refs = [
        BlockRef::Uncommitted(b"i1".to_vec()),
        BlockRef::Latest(b"i2".to_vec()),
    ];
    assert_eq!(commit_and_read(&s, "con", "b", &refs), b"block-list");
    // A list that reuses a committed block reads the old data while writing the new.
    s.put_block("con", "b", b"i3", b"!").unwrap();
    let refs = [
        BlockRef::Committed(b"i2".to_vec()),
        BlockRef::Uncommitted(b"i3".to_vec()),
    ];
    assert_eq!(commit_and_read(&s, "con", "b", &refs), b"list!");

    put(&s, "src", b"copied bytes");
    assert_eq!(read_all(&s, "con", "src"), b"copied bytes");
    s.copy_blob("con", "src", "con", "b", None, &none).unwrap();
    assert_eq!(read_all(&s, "con", "b"), b"copied bytes");
    // The copy's source is still readable after the copy was overwritten (hard link).
    put(&s, "b", b"last");
    assert_eq!(read_all(&s, "con", "b"), b"last");
    assert_eq!(read_all(&s, "con", "src"), b"copied bytes");
    // Property updates keep the same data file, so it stays cached.
    s.set_metadata("con", "b", vec![("k".into(), "v".into())], &none)
        .unwrap();
    assert_eq!(read_all(&s, "con", "b"), b"last");
    assert_eq!(s.cached_open_files(), 2);
    assert_eq!(fds_under(dir.path()), 2);

    // The index survives a restart and the new store's cache starts empty.
    drop(s);
    assert_eq!(fds_under(dir.path()), 0);
    let s = FsStore::open_with(dir.path(), 16).unwrap();
    assert_eq!(s.cached_open_files(), 0);
    assert_eq!(read_all(&s, "con", "b"), b"last");
}

/// Deleting a blob (or its container) closes its cached file, so the disk space is freed; a
/// reader opened before the delete still reads its snapshot.
#[test]
fn fs_open_files_delete_closes_the_file() {
    let (dir, s) = fs_with_container(16);
    let none = Conditions::default();
    put(&s, "b", b"doomed");
    let early = s.open("con", "b").unwrap();
    assert_eq!(s.cached_open_files(), 1);
    assert_eq!(fds_under(dir.path()), 1, "reader and cache share one fd");

    s.delete_blob("con", "b", &none).unwrap();
    assert!(matches!(
        s.open("con", "b"),
        Err(StoreError::BlobNotFound(_))
    ));
    assert_eq!(s.cached_open_files(), 0);
    let mut v = [0u8; 6];
    early.read_at(0, &mut v).unwrap();
    assert_eq!(&v, b"doomed");
    drop(early);
    assert_eq!(
        fds_under(dir.path()),
        0,
        "a deleted blob's file is still open"
    );

    // Overwrite: the old version's file is closed as well.
    put(&s, "c", b"v1");
    assert_eq!(read_all(&s, "con", "c"), b"v1");
    put(&s, "c", b"v2");
    assert_eq!(fds_under(dir.path()), 0);
    assert_eq!(read_all(&s, "con", "c"), b"v2");
    assert_eq!(fds_under(dir.path()), 1);

    // Deleting the container closes every cached file in it, and only those.
    s.create_container("other", vec![]).unwrap();
    s.put_blob("other", "d", b"kept", NewBlob::default(), &none)
        .unwrap();
    for i in 0..5 {
        let name = format!("x{i}");
        s.put_blob("con", &name, b"x", NewBlob::default(), &none)
            .unwrap();
        assert_eq!(read_all(&s, "con", &name), b"x");
    }
    assert_eq!(read_all(&s, "other", "d"), b"kept");
    assert_eq!(s.cached_open_files(), 7);
    s.delete_container("con").unwrap();
    assert_eq!(s.cached_open_files(), 1);
    assert_eq!(fds_under(dir.path()), 1);
    assert!(matches!(
        s.open("con", "c"),
        Err(StoreError::ContainerNotFound(_))
    ));
    // A new container of the same name starts clean.
    s.create_container("con", vec![]).unwrap();
    put(&s, "c", b"new");
    assert_eq!(read_all(&s, "con", "c"), b"new");
    assert_eq!(read_all(&s, "other", "d"), b"kept");
}

/// The cache never holds more files than its bound, and a bound of 0 holds none.
#[test]
fn fs_open_files_bound_is_kept() {
    for bound in [0, 1, 8] {
        let (dir, s) = fs_with_container(bound);
        for round in 0..2 {
            for i in 0..40 {
                let name = format!("b{i}");
                if round == 0 {
                    let bytes = version_bytes(i, 0, 100);
                    s.put_blob(
                        "con",
                        &name,
                        &bytes,
                        NewBlob::default(),
                        &Conditions::default(),
                    )
                    .unwrap();
                }
                assert_eq!(read_all(&s, "con", &name), version_bytes(i, 0, 100));
                assert!(s.cached_open_files() <= bound);
                assert!(fds_under(dir.path()) <= bound);
            }
            assert_eq!(s.cached_open_files(), bound, "bound {bound}");
        }
        // The most recently read files are the ones kept: reading them opens nothing new.
        if bound == 8 {
            let before = fds_under(dir.path());
            for i in 32..40 {
                let r = s.open("con", &format!("b{i}")).unwrap();
                assert_eq!(fds_under(dir.path()), before, "b{i} was evicted");
                drop(r);
            }
        }
    }
}

/// Readers on several threads share the cached descriptors (a bound smaller than the working
/// set forces evictions while other threads hold the evicted files) and always read a whole,
/// correct version, while a writer keeps replacing blobs.
#[test]
fn fs_open_files_concurrent_readers() {
    const BLOBS: usize = 12;
    const LEN: usize = 4096;
    let (_dir, s) = fs_with_container(4);
    for i in 0..BLOBS {
        s.put_blob(
            "con",
            &format!("b{i}"),
            &version_bytes(i, 0, LEN),
            NewBlob::default(),
            &Conditions::default(),
        )
        .unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let s = &s;
        let stop = &stop;
        let writer = scope.spawn(move || {
            for v in 1..=30 {
                let i = v % BLOBS;
                let bytes = version_bytes(i, v, LEN);
                s.put_blob(
                    "con",
                    &format!("b{i}"),
                    &bytes,
                    NewBlob::default(),
                    &Conditions::default(),
                )
                .unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let readers: Vec<_> = (0..6)
            .map(|t| {
                scope.spawn(move || {
                    let mut reads = 0usize;
                    let mut k = t;
                    while reads < 300 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        k = (k * 7 + 3) % BLOBS;
                        let r = s.open("con", &format!("b{k}")).unwrap();
                        let size = r.props().size as usize;
                        let mut v = vec![0u8; size];
                        if reads.is_multiple_of(2) {
                            r.read_at(0, &mut v).unwrap();
                        } else {
                            r.read_to(0, size as u64, &mut SliceSink(&mut v), 0)
                                .unwrap();
                        }
                        // The size names the version; every byte must belong to it.
                        let version = size - LEN;
                        assert_eq!(v, version_bytes(k, version, LEN), "b{k} v{version}");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            assert!(r.join().unwrap() >= 300);
        }
    });
    assert!(s.cached_open_files() <= 4);
    for i in 0..BLOBS {
        let r = s.open("con", &format!("b{i}")).unwrap();
        assert_eq!(
            r.props().size as usize - LEN,
            (1..=30).filter(|v| v % BLOBS == i).max().unwrap_or(0)
        );
    }
}
