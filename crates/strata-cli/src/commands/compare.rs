//! Comparing a local file with a vault file without downloading it: each
//! chunk of the local file is hashed under the vault's keys and compared
//! with the blob id the vault holds for that chunk (ids are keyed content
//! addresses). `put --checksum` uses it to find unchanged files, `get` to
//! find how much of a partial download it can keep.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::Arc;

use strata_core::Inode;
use strata_crypto::Keys;

/// How much of a local file matches a vault file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Leading whole chunks that match (bytes: `chunks × chunk size`).
    pub chunks: u64,
    /// The whole local file equals the vault file.
    pub whole: bool,
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Compare `local` with `node` chunk by chunk, stopping at the first
/// difference (blocking: call it off the async threads).
pub fn compare(keys: &Keys, local: &Path, node: &Inode) -> std::io::Result<Match> {
    let mut m = Match {
        chunks: 0,
        whole: false,
    };
    let cs = node.chunk_size as usize;
    if cs == 0 {
        return Ok(m);
    }
    let mut f = File::open(local)?;
    let mut buf = vec![0u8; cs];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        total += n as u64;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let same = match node.chunk(m.chunks) {
            None => data.iter().all(|&b| b == 0),
            Some(c) => c.len as usize == n && c.blob_len == c.len && keys.blob_id(data) == c.id,
        };
        if !same || total > node.size {
            return Ok(m);
        }
        if n < cs {
            // the file's last, short chunk
            m.whole = total == node.size;
            return Ok(m);
        }
        m.chunks += 1;
    }
    m.whole = total == node.size;
    Ok(m)
}

/// [`compare`] on the blocking pool.
pub async fn compare_async(
    keys: Arc<Keys>,
    local: std::path::PathBuf,
    node: Inode,
) -> std::io::Result<Match> {
    tokio::task::spawn_blocking(move || compare(&keys, &local, &node))
        .await
        .map_err(std::io::Error::other)?
}
