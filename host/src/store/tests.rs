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
        s.put_block_list(
            "con1",
            "m",
            &[
                BlockRef::Uncommitted(b"2".to_vec()),
                BlockRef::Latest(b"1".to_vec()),
            ],
            NewBlob::default(),
            &none,
        )
        .unwrap();
        assert_eq!(read_all(s, "con1", "m"), b"bbAA");
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
        s.put_block_list(
            "con1",
            "m",
            &[BlockRef::Committed(b"1".to_vec())],
            NewBlob::default(),
            &none,
        )
        .unwrap();
        assert_eq!(read_all(s, "con1", "m"), b"AA");

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
fn open_store_specs() {
    assert!(open_store("mem").is_ok());
    assert!(matches!(open_store("s3:x"), Err(StoreError::BadSpec(_))));
    assert!(matches!(open_store("fs:"), Err(StoreError::BadSpec(_))));
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(&format!("fs:{}", dir.path().display())).unwrap();
    assert!(s.describe().starts_with("fs:"));
}

#[test]
fn etags_are_unique_and_increasing() {
    let a = new_etag();
    let b = new_etag();
    assert_ne!(a, b);
    assert!(a.starts_with("\"0x") && a.ends_with('"'));
}
