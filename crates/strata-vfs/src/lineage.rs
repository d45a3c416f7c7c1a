//! Which store states the pending work of a cache directory belongs to.
//!
//! The journal and the dirty chunk files are replayed by sequence number and
//! inode number. That is only right if the store's history since this cache
//! last committed is this cache's own: after the writer lease was lost or
//! broken, another writer may have committed records with the same sequence
//! numbers and reused the same inode numbers, and replaying onto that would
//! drop or misplace changes. So `<cache>/heads` lists the chain heads
//! (FORMAT §8) the store may legitimately be at — the committed one and
//! every log sealed but not yet confirmed — written (synced) before any of
//! those logs is sent. At the next read-write mount, pending work is
//! replayed only if the store's head is in that list.
//!
//! The file is a [`strata_core::slotfile`], rewritten in place: a commit
//! on a full cache disk must not need space for a new copy. (`<cache>/lineage`,
//! a plain JSON file written by earlier versions, is read when there is no
//! `heads` file.)

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use strata_core::slotfile::{self, SlotFile};
use strata_core::vault::StagedHeads;
use strata_core::Vault;

const NAME: &str = "heads";
const OLD_NAME: &str = "lineage";

#[derive(Serialize, Deserialize)]
struct Lineage {
    /// (metadata version, chain head as hex)
    heads: Vec<(u64, String)>,
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

fn encode(heads: &[(u64, [u8; 32])]) -> std::io::Result<Vec<u8>> {
    let l = Lineage {
        heads: heads.iter().map(|(v, h)| (*v, hex(h))).collect(),
    };
    serde_json::to_vec(&l).map_err(std::io::Error::other)
}

/// Record the store state a read-write session starts from, and keep the
/// file current as the vault seals logs.
pub(crate) fn start(dir: &Path, vault: &Vault) -> std::io::Result<()> {
    // slots for ~200 heads: only a long backlog of sealed logs grows it
    let mut file = SlotFile::new(path(dir), 16 << 10);
    file.prepare(&encode(&[(vault.version(), vault.head())])?)?;
    let _ = std::fs::remove_file(dir.join(OLD_NAME));
    let file = Mutex::new(file);
    vault.set_stage_hook(Box::new(move |h: &StagedHeads| {
        let mut heads = vec![h.committed];
        heads.extend(h.staged.iter().copied());
        let body = encode(&heads)?;
        file.lock().unwrap_or_else(|e| e.into_inner()).write(&body)
    }));
    Ok(())
}

/// Refuse to replay `pending` journal records and `dirty` chunk files if the
/// store has moved to a state this cache did not write.
pub(crate) fn check(dir: &Path, vault: &Vault, pending: usize, dirty: usize) -> Result<(), String> {
    if pending == 0 && dirty == 0 {
        return Ok(());
    }
    let (p, read) = match slotfile::read(&path(dir)) {
        Ok(None) => (dir.join(OLD_NAME), std::fs::read(dir.join(OLD_NAME))),
        Ok(Some(b)) => (path(dir), Ok(b)),
        Err(e) => (path(dir), Err(e)),
    };
    let bytes = match read {
        Ok(b) => b,
        // a cache from before lineage files: nothing to compare with
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    let l: Lineage =
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is damaged: {e}", p.display()))?;
    let here = (vault.version(), hex(&vault.head()));
    if l.heads.contains(&here) {
        return Ok(());
    }
    Err(format!(
        "the cache directory {d} holds changes that never reached the store ({pending} metadata records, \
         {dirty} chunk files), and since then another writer has changed the vault (it is at metadata \
         version {v}, which this cache did not write: the writer lease was lost, broken or expired). \
         Applying them now could damage files, so this read-write mount is refused. To use the vault, \
         mount with --read-only or with another --cache-dir; the changes stay in {d} (the journal and \
         the chunk files under dirty/, sealed with the vault key). To discard them, delete {d}.",
        d = dir.display(),
        v = here.0
    ))
}

/// Chunk files in the write-back directory.
pub(crate) fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().count())
        .unwrap_or(0)
}
