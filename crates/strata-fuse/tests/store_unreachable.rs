//! Unmount while the store is gone or refuses the data (needs root): a
//! mount of the bundled server with data pending, then the server stopped
//! (or refusing every chunk as too large), then unmount. It must give up
//! within a bounded time (at once when the store refuses), unmount, say
//! what stays pending and where, and the next mount (store back) uploads
//! it.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use strata_server::{ServerConfig, ServerHandle};

fn serve(rt: &tokio::runtime::Runtime, root: &std::path::Path, token: &str) -> ServerHandle {
    rt.block_on(strata_server::spawn(ServerConfig::new(
        root.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        token.into(),
    )))
    .unwrap()
}

#[test]
fn unmount_with_the_store_gone_gives_up_in_bounded_time_and_the_next_mount_uploads() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = "unreachable-test-token";
    let token_file = env.root.join("token");
    fs::write(&token_file, token).unwrap();
    let objects = env.root.join("cloud");
    let url = |s: &ServerHandle| {
        format!(
            "basic+http://{}/?token-file={}",
            s.addr,
            token_file.display()
        )
    };
    let server = serve(&rt, &objects, token);
    rt.block_on(async {
        let (s, _) = strata_store::open_url(&url(&server)).unwrap();
        let c = strata_core::CreateOptions {
            kdf: strata_crypto::KdfParams::insecure_for_tests(),
            chunk_size: CHUNK,
        };
        let o = strata_core::OpenOptions {
            state_dir: Some(env.state.clone()),
            ..strata_core::OpenOptions::default()
        };
        strata_core::Vault::create(s, PASSWORD, c, o).await.unwrap();
    });
    let first = url(&server);
    let m = env.mount_with(&env.mnt, |o| {
        o.store_url = first.clone();
        o.stall_timeout = Duration::from_secs(5);
    });
    rt.block_on(server.shutdown());
    let data: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut f = fs::File::create(env.mnt.join("pending")).unwrap();
    f.write_all(&data).unwrap();
    drop(f); // closed: durable in the cache, not in the store
    let t = Instant::now();
    let err = m
        .stop()
        .expect_err("unmount reported success with the store gone");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(90), "unmount took {took:?}");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("stay in the local cache") && msg.contains(&env.cache.display().to_string()),
        "the message does not say what stays where: {msg}"
    );
    let note = fs::read_to_string(env.cache.join(strata_fuse::control::UNFLUSHED_NOTE))
        .expect("no note for `strata unmount`");
    assert!(note.contains("metadata records"), "{note}");
    // the store is back (on another port): the next mount uploads it
    let server = serve(&rt, &objects, token);
    let second = url(&server);
    let m = env.mount_with(&env.mnt, |o| o.store_url = second.clone());
    m.stop().expect("the next mount uploads what was pending");
    assert!(!env
        .cache
        .join(strata_fuse::control::UNFLUSHED_NOTE)
        .exists());
    let m = env.mount_with(&env.mnt, |o| {
        o.store_url = second.clone();
        o.cache_dir = Some(env.root.join("fresh-cache"));
    });
    assert_eq!(fs::read(env.mnt.join("pending")).unwrap(), data);
    m.stop().unwrap();
    rt.block_on(server.shutdown());
}

#[test]
fn a_store_that_refuses_the_chunks_blocks_uploads_and_unmount_says_so_at_once() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = "refusing-test-token";
    let token_file = env.root.join("token");
    fs::write(&token_file, token).unwrap();
    // the server takes objects up to 128 KiB and says so only in its 413
    // replies (the profile does not ask it about itself)
    let mut cfg = ServerConfig::new(
        env.root.join("cloud"),
        "127.0.0.1:0".parse().unwrap(),
        token.into(),
    );
    cfg.max_object_size = Some(128 << 10);
    let server = rt.block_on(strata_server::spawn(cfg)).unwrap();
    let profile = env.root.join("profile.toml");
    fs::write(&profile, "[info]\nurl = \"\"\n").unwrap();
    let url = format!(
        "basic+http://{}/?token-file={}&profile={}",
        server.addr,
        token_file.display(),
        profile.display()
    );
    rt.block_on(async {
        let (s, _) = strata_store::open_url(&url).unwrap();
        let c = strata_core::CreateOptions {
            kdf: strata_crypto::KdfParams::insecure_for_tests(),
            chunk_size: CHUNK,
        };
        let o = strata_core::OpenOptions {
            state_dir: Some(env.state.clone()),
            ..strata_core::OpenOptions::default()
        };
        strata_core::Vault::create(s, PASSWORD, c, o).await.unwrap();
    });
    let m = env.mount_with(&env.mnt, |o| o.store_url = url.clone());
    let data = vec![7u8; 1 << 20];
    fs::write(env.mnt.join("big"), &data).unwrap();
    let t = Instant::now();
    let err = m
        .stop()
        .expect_err("unmount reported success with every chunk refused");
    let took = t.elapsed();
    let msg = format!("{err:#}");
    assert!(
        took < Duration::from_secs(30),
        "unmount waited {took:?} on a store that refuses the chunks"
    );
    assert!(
        msg.contains("blocked: the store refuses") && msg.contains("max-object-size"),
        "{msg}"
    );
    assert!(msg.contains("stay in the local cache"), "{msg}");
    rt.block_on(server.shutdown());
}
