//! Hostile store input: a real vault's objects (header, logs, checkpoint
//! parts, blobs, lease) mutated — flipped bits, truncations, random bytes,
//! huge length fields, swapped and deleted objects, header fields set to
//! huge values — and then opened, listed, read and checked. Every outcome
//! must be a result (success, or an error that says what is wrong and names
//! something), never a panic, and within 30 s. proptest drives the
//! mutations (a failing case is shrunk and printed).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use strata_core::data::FileMeta;
use strata_core::lease::LeaseOptions;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::{open_url, Bytes, DynStore};

const PW: &[u8] = b"pw";
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn fresh_store() -> (String, DynStore) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let url = format!("memory://hostile-{}-{n}", std::process::id());
    let (store, _) = open_url(&url).unwrap();
    (url, store)
}

fn opts(state: &std::path::Path, lease: bool) -> OpenOptions {
    OpenOptions {
        state_dir: Some(state.to_path_buf()),
        // Checkpoint often, so that the mutated vault has checkpoint parts.
        checkpoint_records: 4,
        lease: lease.then(|| LeaseOptions::new("hostile test")),
        ..Default::default()
    }
}

const FILES: &[(&str, usize)] = &[
    ("/a", 10),
    ("/dir/b", 200_000),
    ("/dir/c", 70_000),
    ("/d", 1),
];

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The objects of a small vault: several commits (logs), a checkpoint,
/// multi-segment and multi-chunk blobs, a lease.
fn base_vault() -> &'static BTreeMap<String, Vec<u8>> {
    static BASE: std::sync::OnceLock<BTreeMap<String, Vec<u8>>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (_, store) = fresh_store();
            let state = tempfile::tempdir().unwrap();
            let v = Vault::create(
                store.clone(),
                PW,
                CreateOptions {
                    kdf: KdfParams::insecure_for_tests(),
                    chunk_size: 128 << 10,
                },
                opts(state.path(), true),
            )
            .await
            .unwrap();
            v.mkdir("/dir", 0o755, false).unwrap();
            for (i, (path, len)) in FILES.iter().enumerate() {
                v.write_file(
                    path,
                    Box::new(Cursor::new(content(*len, i as u8))),
                    FileMeta::default(),
                    true,
                    None,
                )
                .await
                .unwrap();
                v.commit().await.unwrap();
            }
            v.checkpoint().await.unwrap();
            v.write_file(
                "/e",
                Box::new(Cursor::new(content(5000, 9))),
                FileMeta::default(),
                true,
                None,
            )
            .await
            .unwrap();
            v.commit().await.unwrap();
            let mut m = BTreeMap::new();
            for o in store.list("").await.unwrap() {
                m.insert(o.key.clone(), store.get(&o.key).await.unwrap().to_vec());
            }
            // Keep the lease object as the writer left it (not released).
            std::mem::forget(v);
            m
        })
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { obj: usize, pos: usize, bit: u8 },
    Truncate { obj: usize, keep: usize },
    Random { obj: usize, len: usize, seed: u64 },
    HugeLen { obj: usize, pos: usize },
    Swap { a: usize, b: usize },
    Delete { obj: usize },
    Header { field: usize, value: u64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(obj, pos, bit)| Mutation::Flip {
            obj,
            pos,
            bit
        }),
        (any::<usize>(), any::<usize>()).prop_map(|(obj, keep)| Mutation::Truncate { obj, keep }),
        (any::<usize>(), 0usize..5000, any::<u64>())
            .prop_map(|(obj, len, seed)| Mutation::Random { obj, len, seed }),
        (any::<usize>(), any::<usize>()).prop_map(|(obj, pos)| Mutation::HugeLen { obj, pos }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap { a, b }),
        any::<usize>().prop_map(|obj| Mutation::Delete { obj }),
        (
            0usize..8,
            prop_oneof![
                Just(u64::MAX),
                Just(u64::from(u32::MAX)),
                Just(0u64),
                Just(1u64 << 40),
                any::<u64>()
            ]
        )
            .prop_map(|(field, value)| Mutation::Header { field, value }),
    ]
}

/// Apply `m` to a copy of the base objects; returns them and what was done.
fn mutate(m: &Mutation) -> (BTreeMap<String, Vec<u8>>, String) {
    let mut objs = base_vault().clone();
    let keys: Vec<String> = objs.keys().cloned().collect();
    let key = |i: usize| keys[i % keys.len()].clone();
    let what = match m {
        Mutation::Flip { obj, pos, bit } => {
            let k = key(*obj);
            let v = objs.get_mut(&k).unwrap();
            if !v.is_empty() {
                let p = pos % v.len();
                v[p] ^= 1 << bit;
            }
            format!("flipped a bit of {k}")
        }
        Mutation::Truncate { obj, keep } => {
            let k = key(*obj);
            let v = objs.get_mut(&k).unwrap();
            let n = keep % (v.len().max(1));
            v.truncate(n);
            format!("truncated {k} to {n} bytes")
        }
        Mutation::Random { obj, len, seed } => {
            let k = key(*obj);
            let mut x = *seed | 1;
            let bytes = (0..*len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            objs.insert(k.clone(), bytes);
            format!("replaced {k} with {len} random bytes")
        }
        Mutation::HugeLen { obj, pos } => {
            let k = key(*obj);
            let v = objs.get_mut(&k).unwrap();
            if !v.is_empty() {
                let p = pos % v.len();
                for b in v.iter_mut().skip(p).take(8) {
                    *b = 0xff;
                }
            }
            format!("wrote 0xff×8 into {k}")
        }
        Mutation::Swap { a, b } => {
            let (ka, kb) = (key(*a), key(*b));
            let va = objs[&ka].clone();
            let vb = objs[&kb].clone();
            objs.insert(ka.clone(), vb);
            objs.insert(kb.clone(), va);
            format!("swapped {ka} and {kb}")
        }
        Mutation::Delete { obj } => {
            let k = key(*obj);
            objs.remove(&k);
            format!("deleted {k}")
        }
        Mutation::Header { field, value } => {
            let h = objs.get_mut("strata.vault").unwrap();
            let mut j: serde_json::Value = serde_json::from_slice(h).unwrap();
            let v = serde_json::Value::from(*value);
            let name = match field {
                0 => {
                    j["chunk_size"] = v;
                    "chunk_size"
                }
                1 => {
                    j["kdf"]["m_kib"] = v;
                    "kdf.m_kib"
                }
                2 => {
                    j["kdf"]["t"] = v;
                    "kdf.t"
                }
                3 => {
                    j["kdf"]["p"] = v;
                    "kdf.p"
                }
                4 => {
                    j["version"] = v;
                    "version"
                }
                5 => {
                    j["kdf"]["m_kib"] = serde_json::Value::from(1u64 << 22);
                    j["kdf"]["t"] = serde_json::Value::from(64);
                    "kdf.m_kib+t (4 GiB × 64)"
                }
                6 => {
                    j["vault_id"] = serde_json::Value::from("zz".repeat(16));
                    "vault_id"
                }
                _ => {
                    j["wrapped_key"] = serde_json::Value::from("00");
                    "wrapped_key"
                }
            };
            *h = serde_json::to_vec(&j).unwrap();
            format!("set header {name} to {value}")
        }
    };
    (objs, what)
}

/// Open the vault on `objs` and do everything a user would: list, read
/// every file (whole and a range), check with data. Errors are fine;
/// returns them as text.
async fn exercise(objs: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let (_, store) = fresh_store();
    for (k, v) in objs {
        store.put(k, Bytes::from(v.clone())).await.unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();
    let v = match Vault::open(store, PW, opts(state.path(), false)).await {
        Ok(v) => v,
        Err(e) => {
            errors.push(e.to_string());
            return errors;
        }
    };
    if let Err(e) = v.list_dir("/") {
        errors.push(e.to_string());
    }
    for path in FILES.iter().map(|f| f.0).chain(["/e"]) {
        let node = match v.stat_path(path) {
            Ok(n) => n,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let mut out = Vec::new();
        if let Err(e) = v.export(&node, &mut out, None).await {
            errors.push(e.to_string());
        }
        if let Err(e) = v.read_at(&node, 65_000, 70_000).await {
            errors.push(e.to_string());
        }
    }
    match v.check(true, None).await {
        Ok(r) => {
            for d in r.damaged {
                assert!(!d.object.is_empty(), "damage without an object name");
                errors.push(format!("{}: {}", d.object, d.problem));
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    errors
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn mutated_store_objects_never_panic_or_hang(m in mutation()) {
        let (objs, what) = mutate(&m);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let started = Instant::now();
        let errors = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), exercise(&objs)).await
        });
        let errors = match errors {
            Ok(e) => e,
            Err(_) => panic!("{what}: took more than 30 s"),
        };
        prop_assert!(started.elapsed() < Duration::from_secs(30), "{}", what);
        for e in &errors {
            // Every error says what it is about: an object, the header, a
            // path or the vault's state.
            prop_assert!(!e.trim().is_empty(), "{}: empty error", what);
            let names_something = ["meta/", "data/", "strata.vault", "lease/", "memory://", "/"]
                .iter()
                .any(|n| e.contains(n));
            prop_assert!(names_something, "{}: error names nothing: {}", what, e);
        }
    }
}

#[test]
fn a_header_asking_for_a_huge_kdf_is_refused_at_once() {
    let mut objs = base_vault().clone();
    let h = objs.get_mut("strata.vault").unwrap();
    let mut j: serde_json::Value = serde_json::from_slice(h).unwrap();
    j["kdf"]["m_kib"] = serde_json::Value::from(4u64 << 20);
    j["kdf"]["t"] = serde_json::Value::from(64);
    *h = serde_json::to_vec(&j).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let errors = rt.block_on(exercise(&objs));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("strata.vault"), "{}", errors[0]);
    assert!(
        errors[0].contains("memory") || errors[0].contains("KiB"),
        "{}",
        errors[0]
    );
}

#[test]
fn the_unmutated_vault_reads_back() {
    let objs = base_vault().clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let errors = rt.block_on(exercise(&objs));
    assert!(errors.is_empty(), "{errors:?}");
    let _ = VaultError::NotFound { path: "/".into() };
}
