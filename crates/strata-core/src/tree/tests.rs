//! Tests of the tree: records applied, refcounts, images.

use super::*;

fn file_attr(t: Ts) -> NewInode {
    NewInode {
        kind: Kind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        time: t,
        target: None,
        chunk_size: 4,
    }
}

fn cref(b: u8, len: u32) -> ChunkRef {
    ChunkRef {
        id: BlobId([b; 32]),
        blob_len: 4,
        len,
    }
}

#[test]
fn borrowed_image_encodes_like_the_copy() {
    let mut t = Tree::new_root(0, 0, 0);
    for i in 0..20u8 {
        let f = t.alloc_ino();
        t.apply(&Record::Create {
            ino: f,
            parent: ROOT_INO,
            name: vec![b'a' + i],
            attr: file_attr(i64::from(i)),
        })
        .unwrap();
        t.apply(&Record::SetChunks {
            ino: f,
            first: 0,
            chunks: vec![Some(cref(i, 4)), None],
            size: 6,
            mtime: 2,
        })
        .unwrap();
    }
    let owned = postcard::to_stdvec(&t.to_image()).unwrap();
    let borrowed = postcard::to_stdvec(&t.image_ref()).unwrap();
    assert_eq!(owned, borrowed);
}

#[test]
fn create_link_unlink_refcounts() {
    let mut t = Tree::new_root(0, 0, 0);
    let f = t.alloc_ino();
    t.apply(&Record::Create {
        ino: f,
        parent: ROOT_INO,
        name: b"a".to_vec(),
        attr: file_attr(1),
    })
    .unwrap();
    t.apply(&Record::SetChunks {
        ino: f,
        first: 0,
        chunks: vec![Some(cref(1, 4)), Some(cref(1, 2))],
        size: 6,
        mtime: 2,
    })
    .unwrap();
    assert_eq!(t.blob_refs(&BlobId([1; 32])), 2);
    t.apply(&Record::Link {
        ino: f,
        parent: ROOT_INO,
        name: b"b".to_vec(),
        time: 2,
    })
    .unwrap();
    assert_eq!(t.get(f).unwrap().nlink, 2);
    let freed = t
        .apply(&Record::Unlink {
            parent: ROOT_INO,
            name: b"a".to_vec(),
            keep_orphan: false,
            time: 3,
        })
        .unwrap();
    assert!(freed.is_empty());
    let freed = t
        .apply(&Record::Unlink {
            parent: ROOT_INO,
            name: b"b".to_vec(),
            keep_orphan: false,
            time: 3,
        })
        .unwrap();
    assert_eq!(freed, vec![BlobId([1; 32])]);
    assert!(t.get(f).is_none());
}

#[test]
fn truncate_clamps_partial_chunk() {
    let mut t = Tree::new_root(0, 0, 0);
    let f = t.alloc_ino();
    t.apply(&Record::Create {
        ino: f,
        parent: ROOT_INO,
        name: b"a".to_vec(),
        attr: file_attr(1),
    })
    .unwrap();
    t.apply(&Record::SetChunks {
        ino: f,
        first: 0,
        chunks: vec![Some(cref(1, 4)), Some(cref(2, 4))],
        size: 8,
        mtime: 2,
    })
    .unwrap();
    let freed = t
        .apply(&Record::SetAttr {
            ino: f,
            perm: None,
            uid: None,
            gid: None,
            size: Some(3),
            atime: None,
            mtime: None,
            ctime: 3,
        })
        .unwrap();
    assert_eq!(freed, vec![BlobId([2; 32])]);
    assert_eq!(t.get(f).unwrap().chunks(), &[Some(cref(1, 3))]);
}

#[test]
fn truncate_into_a_trailing_hole_keeps_earlier_chunks() {
    let mut t = Tree::new_root(0, 0, 0);
    let f = t.alloc_ino();
    t.apply(&Record::Create {
        ino: f,
        parent: ROOT_INO,
        name: b"a".to_vec(),
        attr: file_attr(1),
    })
    .unwrap();
    // one stored chunk, then a hole up to 10 bytes
    t.apply(&Record::SetChunks {
        ino: f,
        first: 0,
        chunks: vec![Some(cref(1, 4))],
        size: 10,
        mtime: 2,
    })
    .unwrap();
    t.apply(&Record::SetAttr {
        ino: f,
        perm: None,
        uid: None,
        gid: None,
        size: Some(6),
        atime: None,
        mtime: None,
        ctime: 3,
    })
    .unwrap();
    assert_eq!(
        t.get(f).unwrap().chunks(),
        &[Some(cref(1, 4))],
        "chunk 0 untouched"
    );
}

#[test]
fn rename_rules() {
    let mut t = Tree::new_root(0, 0, 0);
    let d = t.alloc_ino();
    let mut dir = file_attr(1);
    dir.kind = Kind::Dir;
    t.apply(&Record::Create {
        ino: d,
        parent: ROOT_INO,
        name: b"d".to_vec(),
        attr: dir.clone(),
    })
    .unwrap();
    let e = t.alloc_ino();
    t.apply(&Record::Create {
        ino: e,
        parent: d,
        name: b"e".to_vec(),
        attr: dir,
    })
    .unwrap();
    // moving a directory into its own subdirectory is invalid
    let r = Record::Rename {
        parent: ROOT_INO,
        name: b"d".to_vec(),
        new_parent: e,
        new_name: b"x".to_vec(),
        flags: 0,
        time: 2,
    };
    assert_eq!(t.apply(&r), Err(ApplyError::Invalid));
    assert_eq!(t.get(ROOT_INO).unwrap().nlink, 3);
    let r = Record::Rename {
        parent: d,
        name: b"e".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"e".to_vec(),
        flags: 0,
        time: 2,
    };
    t.apply(&r).unwrap();
    assert_eq!(t.get(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(t.get(d).unwrap().nlink, 2);
    assert_eq!(t.get(e).unwrap().parent, ROOT_INO);
}

/// One step of a random history over a few files and packs.
#[derive(Debug, Clone)]
enum Step {
    /// (Re)create file `f` (unlinking what was there).
    Create(u8),
    /// Give file `f` chunks of blobs `ids` from slot `first`.
    Chunks(u8, u64, Vec<Option<u8>>),
    /// Truncate file `f` to `size` bytes.
    Truncate(u8, u64),
    Unlink(u8),
    /// Place blobs in pack `p` at offsets.
    Pack(u8, Vec<(u8, u32)>),
    Xattr(u8, u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let blob = prop_oneof![1 => Just(None), 4 => (0u8..12).prop_map(Some)];
    prop_oneof![
        (0u8..6).prop_map(Step::Create),
        (0u8..6, 0u64..4, proptest::collection::vec(blob, 0..4))
            .prop_map(|(f, first, ids)| Step::Chunks(f, first, ids)),
        (0u8..6, 0u64..20).prop_map(|(f, s)| Step::Truncate(f, s)),
        (0u8..6).prop_map(Step::Unlink),
        (
            0u8..3,
            proptest::collection::vec((0u8..12, 8u32..200), 1..5)
        )
            .prop_map(|(p, items)| Step::Pack(p, items)),
        (0u8..6, 0u8..3).prop_map(|(f, x)| Step::Xattr(f, x)),
    ]
}

fn record_of(t: &mut Tree, s: &Step) -> Option<Record> {
    let name = |f: u8| vec![b'f', b'0' + f];
    let ino = |t: &Tree, f: u8| t.lookup(ROOT_INO, &name(f));
    Some(match s {
        Step::Create(f) => {
            if ino(t, *f).is_some() {
                t.apply(&Record::Unlink {
                    parent: ROOT_INO,
                    name: name(*f),
                    keep_orphan: false,
                    time: 1,
                })
                .ok()?;
            }
            Record::Create {
                ino: t.alloc_ino(),
                parent: ROOT_INO,
                name: name(*f),
                attr: file_attr(2),
            }
        }
        Step::Chunks(f, first, ids) => Record::SetChunks {
            ino: ino(t, *f)?,
            first: *first,
            chunks: ids.iter().map(|b| b.map(|b| cref(b, 4))).collect(),
            size: (first + ids.len() as u64) * 4,
            mtime: 3,
        },
        Step::Truncate(f, size) => Record::SetAttr {
            ino: ino(t, *f)?,
            perm: None,
            uid: None,
            gid: None,
            size: Some(*size),
            atime: None,
            mtime: None,
            ctime: 4,
        },
        Step::Unlink(f) => Record::Unlink {
            parent: ROOT_INO,
            name: name(*f),
            keep_orphan: false,
            time: 5,
        },
        Step::Pack(p, items) => Record::Pack {
            pack: BlobId([100 + p; 32]),
            items: items
                .iter()
                .map(|&(b, offset)| PackItem {
                    id: BlobId([b; 32]),
                    offset,
                    blob_len: 4,
                })
                .collect(),
        },
        Step::Xattr(f, x) => Record::SetXattr {
            ino: ino(t, *f)?,
            name: vec![b'x', *x],
            value: vec![*x; 3],
            time: 6,
        },
    })
}

/// What the blob table must say, counted from the inodes themselves.
fn check_blob_table(t: &Tree) {
    let mut counted: HashMap<BlobId, u64> = HashMap::new();
    for n in t.inodes() {
        for c in n.chunks().iter().flatten() {
            *counted.entry(c.id).or_default() += 1;
        }
    }
    assert_eq!(t.blob_count(), counted.len());
    for (id, n) in &counted {
        assert_eq!(t.blob_refs(id), *n);
    }
    let table = t.pack_table();
    assert_eq!(t.packed_count(), table.len());
    let mut uses: HashMap<BlobId, PackUse> = HashMap::new();
    for (id, l) in &table {
        assert!(counted.contains_key(id), "only referenced blobs are placed");
        assert_eq!(t.packed(id), Some(*l));
        let u = uses.entry(l.pack).or_default();
        u.items += 1;
        u.bytes += crate::format::pack::item_len(u64::from(l.blob_len));
    }
    assert_eq!(t.packs(), &uses);
}

proptest::proptest! {
    /// Whatever records are applied, the blob table agrees with the chunk
    /// lists, and a checkpoint of the tree (encoded from the tree itself,
    /// whole or in windows) decodes to the same tree.
    #[test]
    fn blob_table_and_checkpoints_follow_the_records(steps in proptest::collection::vec(step(), 1..60)) {
        use crate::format::meta;
        let mut t = Tree::new_root(0, 0, 0);
        for s in &steps {
            if let Some(r) = record_of(&mut t, s) {
                let _ = t.apply(&r);
            }
            check_blob_table(&t);
        }
        let body = meta::CheckpointBodyRef {
            version: 7,
            head: [1; 32],
            writer_seq: 9,
            time: 11,
            tree: t.image_ref(),
        };
        let packs = t.pack_table_ref();
        let bytes = meta::encode_checkpoint(&body, &packs).unwrap();
        // the same from the tree put in checkpoint order
        let mut sorted = t.clone();
        sorted.sort_for_image();
        proptest::prop_assert_eq!(&sorted, &t);
        let sorted_body = meta::CheckpointBodyRef {
            version: 7,
            head: [1; 32],
            writer_seq: 9,
            time: 11,
            tree: sorted.image_ref(),
        };
        proptest::prop_assert_eq!(&meta::encode_checkpoint(&sorted_body, &sorted.pack_table_ref()).unwrap(), &bytes);
        check_blob_table(&sorted);
        // the owned image (pack table as a Vec) encodes the same
        let owned = meta::CheckpointBody {
            version: 7,
            head: [1; 32],
            writer_seq: 9,
            time: 11,
            tree: t.to_image(),
        };
        let mut plain = postcard::to_stdvec(&owned).unwrap();
        if !owned.tree.packs.is_empty() {
            plain.extend(postcard::to_stdvec(&owned.tree.packs).unwrap());
        }
        proptest::prop_assert_eq!(&bytes, &plain);
        for e in &owned.tree.packs {
            proptest::prop_assert!(e.items.windows(2).all(|w| (w[0].offset, w[0].id) <= (w[1].offset, w[1].id)));
        }
        proptest::prop_assert!(owned.tree.packs.windows(2).all(|w| w[0].pack < w[1].pack));
        // windows of any size put together give the whole
        for per in [1usize, 7, 64] {
            let mut joined = Vec::new();
            let mut start = 0;
            loop {
                let (part, len) = meta::encode_checkpoint_window(&body, &packs, start..start + per).unwrap();
                proptest::prop_assert_eq!(len, bytes.len());
                // a window encoded only up to its end is the same
                proptest::prop_assert_eq!(&meta::encode_checkpoint_part(&body, &packs, start..start + per).unwrap(), &part);
                joined.extend(part);
                start += per;
                if start >= len {
                    break;
                }
            }
            proptest::prop_assert_eq!(&joined, &bytes);
        }
        // and it decodes to the same tree
        let (mut back, rest): (meta::CheckpointBody, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
        if !rest.is_empty() {
            back.tree.packs = postcard::from_bytes(rest).unwrap();
        }
        let back = Tree::from_image(back.tree).unwrap();
        proptest::prop_assert_eq!(&back, &t);
    }
}

/// The checkpoint of a fixed tree is byte for byte what the tree encoded
/// before its in-memory form was compacted (hash taken then): the format
/// did not move.
#[test]
fn checkpoint_bytes_did_not_change() {
    let mut t = sample_tree();
    // encoded through an index of the tree, then from the tree put in order
    for sorted in [false, true] {
        if sorted {
            t.sort_for_image();
            assert!(matches!(t.image_ref().inodes, image::InodesRef::Sorted(_)));
            assert!(t.pack_table_ref().order.is_none());
        } else {
            assert!(matches!(t.image_ref().inodes, image::InodesRef::Index(_)));
            assert!(t.pack_table_ref().order.is_some());
        }
        let body = crate::format::meta::CheckpointBodyRef {
            version: 3,
            head: [2; 32],
            writer_seq: 5,
            time: 1_700_000_000_000_000_000,
            tree: t.image_ref(),
        };
        let bytes = crate::format::meta::encode_checkpoint(&body, &t.pack_table_ref()).unwrap();
        assert_eq!(bytes.len(), SAMPLE_LEN);
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), SAMPLE_HASH);
    }
    // and the sorted tree is the same tree
    assert_eq!(t, sample_tree());
    assert_eq!(
        t.lookup(ROOT_INO, b"dir1")
            .and_then(|d| t.get(d))
            .map(|d| d.entries().len()),
        Some(11)
    );
}

const SAMPLE_LEN: usize = 3374;
const SAMPLE_HASH: &str = "1461eecaadd388af19a2b5ac2467a3d2c11f62a8be00356f953d4d5b7b566c6e";

/// Directories, files with one chunk, several chunks and holes, packed
/// and unpacked blobs, a hard link, a symlink, xattrs.
fn sample_tree() -> Tree {
    let mut t = Tree::new_root(10, 1000, 1000);
    let mut dirs = vec![ROOT_INO];
    for d in 0..3u8 {
        let ino = t.alloc_ino();
        let mut a = file_attr(20 + i64::from(d));
        a.kind = Kind::Dir;
        a.perm = 0o750;
        t.apply(&Record::Create {
            ino,
            parent: ROOT_INO,
            name: format!("dir{d}").into_bytes(),
            attr: a,
        })
        .unwrap();
        dirs.push(ino);
    }
    for i in 0..40u8 {
        let ino = t.alloc_ino();
        let parent = dirs[usize::from(i) % dirs.len()];
        t.apply(&Record::Create {
            ino,
            parent,
            name: format!("file-{i:03}.txt").into_bytes(),
            attr: file_attr(1_000 + i64::from(i)),
        })
        .unwrap();
        let chunks = match i % 4 {
            0 => vec![Some(cref(i, 4))],
            1 => vec![Some(cref(i, 4)), None, Some(cref(i / 2, 3))],
            2 => vec![None, Some(cref(200, 4))],
            _ => vec![],
        };
        let size = chunks.len() as u64 * 4;
        t.apply(&Record::SetChunks {
            ino,
            first: 0,
            chunks,
            size,
            mtime: -5 + i64::from(i),
        })
        .unwrap();
        if i % 5 == 0 {
            t.apply(&Record::SetXattr {
                ino,
                name: b"user.tag".to_vec(),
                value: vec![i; 5],
                time: 77,
            })
            .unwrap();
        }
        if i % 3 == 0 {
            t.apply(&Record::Pack {
                pack: BlobId([250 - i % 2; 32]),
                items: vec![PackItem {
                    id: BlobId([i; 32]),
                    offset: 8 + u32::from(i) * 50,
                    blob_len: 4,
                }],
            })
            .unwrap();
        }
    }
    t.apply(&Record::Link {
        ino: 5,
        parent: dirs[2],
        name: b"hard".to_vec(),
        time: 88,
    })
    .unwrap();
    let ino = t.alloc_ino();
    let mut a = file_attr(99);
    a.kind = Kind::Symlink;
    a.target = Some(b"../dir0/file-000.txt".to_vec());
    t.apply(&Record::Create {
        ino,
        parent: dirs[1],
        name: b"link".to_vec(),
        attr: a,
    })
    .unwrap();
    t.apply(&Record::Unlink {
        parent: dirs[1],
        name: b"file-005.txt".to_vec(),
        keep_orphan: false,
        time: 90,
    })
    .unwrap();
    t
}

/// A checkpoint sealed in many small parts opens to the same tree, read
/// part by part; a part that does not open is reported as such, and a
/// missing last part as an undecodable checkpoint.
#[test]
fn checkpoint_parts_open_as_one_stream() {
    use crate::format::meta;
    use strata_crypto::{Keys, MasterKey};
    let keys = Keys::derive(&MasterKey::generate().unwrap()).unwrap();
    let id = [9u8; 16];
    let t = sample_tree();
    let body = meta::CheckpointBody {
        version: 4,
        head: [3; 32],
        writer_seq: 8,
        time: -1,
        tree: t.to_image(),
    };
    for max in [None, Some(300), Some(1000)] {
        let parts = meta::seal_checkpoint(&keys, &id, &body, max).unwrap();
        assert_eq!(parts.len() > 1, max.is_some());
        let named = |parts: &[Vec<u8>]| -> Vec<(String, Vec<u8>)> {
            let n = parts.len() as u32;
            (0..n)
                .map(|i| {
                    (
                        crate::format::checkpoint_key(4, i, n),
                        parts[i as usize].clone(),
                    )
                })
                .collect()
        };
        let back = meta::open_checkpoint(&keys, &id, 4, named(&parts)).unwrap();
        assert_eq!(
            (back.version, back.head, back.writer_seq, back.time),
            (4, [3; 32], 8, -1)
        );
        assert_eq!(Tree::from_image(back.tree).unwrap(), t);
        if parts.len() > 1 {
            let mut bad = parts.clone();
            let last = bad.len() - 1;
            bad[last][50] ^= 1;
            let Err(e) = meta::open_checkpoint(&keys, &id, 4, named(&bad)) else {
                panic!("a changed part opened");
            };
            assert!(e.to_string().contains("authentication failed"), "{e}");
            // the last part missing: the count in the names is one less,
            // so the parts do not open either (their AD names the count)
            let Err(e) = meta::open_checkpoint(&keys, &id, 4, named(&parts[..last])) else {
                panic!("a checkpoint without its last part opened");
            };
            assert!(e.to_string().contains("authentication failed"), "{e}");
        }
        assert!(meta::open_checkpoint(&keys, &id, 5, named(&parts)).is_err());
    }
}
