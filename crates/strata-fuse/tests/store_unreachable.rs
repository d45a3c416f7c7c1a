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
#[test]
fn unmount_with_the_store_gone_gives_up_in_bounded_time_and_the_next_mount_uploads() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    let cloud = Cloud::start(&rt, &env, |_| {});
    create_vault(&rt, &cloud.url(""), &env.state);
    let first = cloud.url("");
    let m = env.mount_with(&env.mnt, |o| {
        o.store_url = first.clone();
        o.stall_timeout = Duration::from_secs(5);
    });
    cloud.stop(&rt);
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
    let cloud = Cloud::start(&rt, &env, |_| {});
    let second = cloud.url("");
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
    cloud.stop(&rt);
}

#[test]
fn a_store_that_refuses_the_chunks_blocks_uploads_and_unmount_says_so_at_once() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    // the server takes objects up to 128 KiB and says so only in its 413
    // replies (the profile does not ask it about itself)
    let cloud = Cloud::start(&rt, &env, |c| c.max_object_size = Some(128 << 10));
    let profile = env.root.join("profile.toml");
    fs::write(&profile, "[info]\nurl = \"\"\n").unwrap();
    let url = cloud.url(&format!("&profile={}", profile.display()));
    create_vault(&rt, &url, &env.state);
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
    cloud.stop(&rt);
}
