//! Shared by the store test files: the conformance suite every backend must
//! pass and a many-objects listing check.

// Each test file uses a different subset of these.
#![allow(dead_code)]

use std::ops::Range;

use futures::stream::{self, StreamExt, TryStreamExt};
use strata_store::{Bytes, DynStore, ObjectMeta, StoreErrorKind};

pub fn bytes_of(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

pub fn keys(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Conformance: the same semantics on every backend
// ---------------------------------------------------------------------------

/// What a backend under [`conformance_with`] is expected to support.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// `put_if_absent` is enforced (else it must fail as `Unsupported`).
    pub conditional_create: bool,
    /// `capabilities().range_reads` (`get_range` must work either way).
    pub range_reads: bool,
}

impl Expect {
    /// Everything: what `memory://` and `file://` do.
    pub const FULL: Expect = Expect {
        conditional_create: true,
        range_reads: true,
    };
}

/// Runs against an empty store that supports everything.
pub async fn conformance(store: DynStore) {
    conformance_with(store, Expect::FULL).await
}

/// Runs against an empty store.
pub async fn conformance_with(store: DynStore, expect: Expect) {
    let d = store.describe();
    assert!(store.list("").await.unwrap().is_empty(), "{d}: not empty");

    // Missing objects.
    assert_eq!(store.stat("a/b/c").await.unwrap(), None);
    let e = store.get("a/b/c").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    assert_eq!(e.op, "get");
    assert!(e.to_string().contains("a/b/c"), "{e}");
    assert!(
        e.to_string().starts_with(&format!("store {d}: get a/b/c")),
        "{e}"
    );
    let e = store.get_range("a/b/c", 0..4).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    store
        .delete("a/b/c")
        .await
        .expect("deleting a missing object is ok");

    // Put / get / stat / overwrite.
    let v1 = bytes_of(1000, 1);
    store.put("a/b/c", v1.clone()).await.unwrap();
    assert_eq!(store.get("a/b/c").await.unwrap(), v1);
    assert_eq!(
        store.stat("a/b/c").await.unwrap(),
        Some(ObjectMeta {
            key: "a/b/c".into(),
            size: 1000
        })
    );
    let v2 = bytes_of(300, 2);
    store.put("a/b/c", v2.clone()).await.unwrap();
    assert_eq!(store.get("a/b/c").await.unwrap(), v2, "overwrite replaces");
    assert_eq!(store.stat("a/b/c").await.unwrap().unwrap().size, 300);
    // A "directory" is not an object.
    assert_eq!(store.stat("a/b").await.unwrap(), None);
    assert_eq!(
        store.get("a/b").await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );

    // Ranges, clamped to the end.
    let r = |range: Range<u64>| {
        let store = store.clone();
        async move { store.get_range("a/b/c", range).await.unwrap() }
    };
    assert_eq!(r(0..10).await, v2.slice(0..10));
    assert_eq!(r(100..200).await, v2.slice(100..200));
    assert_eq!(r(290..400).await, v2.slice(290..300));
    assert_eq!(r(0..u64::MAX).await, v2);
    assert!(r(300..310).await.is_empty());
    assert!(r(1000..2000).await.is_empty());
    assert!(r(5..5).await.is_empty());
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 7..3;
    assert!(r(backwards).await.is_empty());

    // Empty objects.
    store.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(store.get("empty").await.unwrap(), Bytes::new());
    assert_eq!(store.stat("empty").await.unwrap().unwrap().size, 0);
    assert!(store.get_range("empty", 0..10).await.unwrap().is_empty());
    store.put("a/b/c", Bytes::new()).await.unwrap();
    assert!(
        store.get("a/b/c").await.unwrap().is_empty(),
        "overwrite with empty"
    );

    // Listing: recursive, relative, sorted, files only, with sizes.
    for (k, n) in [
        ("data/ab/2", 2),
        ("data/aa/1", 1),
        ("data/ab/1", 3),
        ("data/aa/x/deep/1", 4),
        ("datafile", 5),
        ("meta/config", 6),
    ] {
        store.put(k, bytes_of(n, 0)).await.unwrap();
    }
    let all = store.list("").await.unwrap();
    assert_eq!(
        keys(&all),
        [
            "a/b/c",
            "data/aa/1",
            "data/aa/x/deep/1",
            "data/ab/1",
            "data/ab/2",
            "datafile",
            "empty",
            "meta/config"
        ]
    );
    assert_eq!(all[0].size, 0);
    assert_eq!(all[2].size, 4);
    assert_eq!(all[5].size, 5);
    assert_eq!(
        keys(&store.list("data/").await.unwrap()),
        ["data/aa/1", "data/aa/x/deep/1", "data/ab/1", "data/ab/2"]
    );
    assert_eq!(
        keys(&store.list("data").await.unwrap()),
        [
            "data/aa/1",
            "data/aa/x/deep/1",
            "data/ab/1",
            "data/ab/2",
            "datafile"
        ]
    );
    assert_eq!(
        keys(&store.list("data/a").await.unwrap()),
        ["data/aa/1", "data/aa/x/deep/1", "data/ab/1", "data/ab/2"]
    );
    assert_eq!(
        keys(&store.list("data/aa/").await.unwrap()),
        ["data/aa/1", "data/aa/x/deep/1"]
    );
    assert_eq!(keys(&store.list("data/ab/1").await.unwrap()), ["data/ab/1"]);
    assert!(store.list("nope/").await.unwrap().is_empty());
    assert!(store.list("nope/deeper/").await.unwrap().is_empty());
    assert!(store.list("data/zz").await.unwrap().is_empty());

    // Delete.
    store.delete("data/ab/1").await.unwrap();
    assert_eq!(store.stat("data/ab/1").await.unwrap(), None);
    assert_eq!(
        store.get("data/ab/1").await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(keys(&store.list("data/ab/").await.unwrap()), ["data/ab/2"]);
    store.delete("data/ab/1").await.unwrap();

    // Conditional create.
    if expect.conditional_create {
        conditional_create(&store).await;
    } else {
        assert!(!store.capabilities().conditional_create, "{d}");
        let e = store
            .put_if_absent("lock/x", bytes_of(10, 1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Unsupported, "{e}");
        assert_eq!(store.stat("lock/x").await.unwrap(), None, "nothing written");
    }

    // Invalid keys are refused, not mapped somewhere surprising.
    for bad in [
        "",
        "/abs",
        "../escape",
        "a/../../b",
        "a//b",
        "trailing/",
        "sp ace",
    ] {
        assert!(
            store.put(bad, Bytes::from_static(b"x")).await.is_err(),
            "{bad:?}"
        );
        assert!(store.get(bad).await.is_err(), "{bad:?}");
    }
    assert!(store.list("/x").await.is_err());

    assert_eq!(store.capabilities().range_reads, expect.range_reads, "{d}");

    names_and_large_objects(&store).await;
}

/// Keys with every allowed character, and an object large enough to cross
/// the multipart / chunked-transfer thresholds of HTTP backends.
async fn names_and_large_objects(store: &DynStore) {
    let names = [
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ/abcdefghijklmnopqrstuvwxyz/0123456789",
        "x/.leading-dot",
        "x/-leading-dash",
        "x/_leading_underscore",
        "x/dots.in.the.middle..twice",
        "x/a-b_c.d/E-F_G.H",
        "x/..name",
    ];
    for (i, k) in names.iter().enumerate() {
        store.put(k, bytes_of(i + 1, i as u8)).await.unwrap();
    }
    for (i, k) in names.iter().enumerate() {
        assert_eq!(store.get(k).await.unwrap(), bytes_of(i + 1, i as u8), "{k}");
    }
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort();
    let listed: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .filter(|k| sorted.contains(&k.as_str()))
        .collect();
    assert_eq!(listed, sorted);
    for k in names {
        store.delete(k).await.unwrap();
    }

    let big = bytes_of(24 << 20, 9);
    store.put("big/object", big.clone()).await.unwrap();
    assert_eq!(
        store.stat("big/object").await.unwrap().unwrap().size,
        24 << 20
    );
    let got = store.get("big/object").await.unwrap();
    assert!(got == big, "24 MiB object round trip");
    let mid = (13 << 20) + 12345u64;
    assert_eq!(
        store
            .get_range("big/object", mid..mid + 70000)
            .await
            .unwrap(),
        big.slice(mid as usize..mid as usize + 70000)
    );
    store.delete("big/object").await.unwrap();
    assert_eq!(store.stat("big/object").await.unwrap(), None);
}

/// `put_if_absent` is enforced, also against racing creators.
async fn conditional_create(store: &DynStore) {
    let d = store.describe();
    assert!(store.capabilities().conditional_create, "{d}");
    assert!(store
        .put_if_absent("lock/x", bytes_of(10, 1))
        .await
        .unwrap());
    assert!(!store
        .put_if_absent("lock/x", bytes_of(20, 2))
        .await
        .unwrap());
    assert_eq!(
        store.get("lock/x").await.unwrap(),
        bytes_of(10, 1),
        "loser wrote nothing"
    );
    store.delete("lock/x").await.unwrap();
    assert!(store
        .put_if_absent("lock/x", bytes_of(30, 3))
        .await
        .unwrap());
    assert_eq!(store.get("lock/x").await.unwrap(), bytes_of(30, 3));
    assert!(store
        .put_if_absent("lock/empty", Bytes::new())
        .await
        .unwrap());
    assert!(!store
        .put_if_absent("lock/empty", bytes_of(1, 1))
        .await
        .unwrap());
    // Racing creators: exactly one wins and its data is what's stored.
    let results: Vec<(u8, bool)> = stream::iter(0..12u8)
        .map(|i| {
            let store = store.clone();
            async move {
                (
                    i,
                    store
                        .put_if_absent("lock/race", bytes_of(64, i))
                        .await
                        .unwrap(),
                )
            }
        })
        .buffer_unordered(12)
        .collect()
        .await;
    let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(
        store.get("lock/race").await.unwrap(),
        bytes_of(64, winners[0])
    );
}

/// Thousands of objects in a fan-out tree list completely and in order.
pub async fn many_objects(store: DynStore, n: usize) {
    let expected: Vec<String> = (0..n)
        .map(|i| format!("chunks/{:02x}/{:08x}", i % 97, i * 7919))
        .collect();
    stream::iter(expected.iter().cloned().enumerate())
        .map(|(i, k)| {
            let store = store.clone();
            async move { store.put(&k, bytes_of(i % 50, i as u8)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    store
        .put("other/x", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mut sorted = expected.clone();
    sorted.sort();
    let listed = store.list("chunks/").await.unwrap();
    assert_eq!(listed.len(), n);
    assert_eq!(
        keys(&listed),
        sorted.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for m in &listed {
        let i = expected.iter().position(|k| *k == m.key).unwrap();
        assert_eq!(m.size, (i % 50) as u64, "{}", m.key);
    }
    let sub = store.list("chunks/0a/").await.unwrap();
    assert_eq!(
        sub.len(),
        sorted
            .iter()
            .filter(|k| k.starts_with("chunks/0a/"))
            .count()
    );
    assert!(!sub.is_empty());
    assert_eq!(store.list("").await.unwrap().len(), n + 1);
}
