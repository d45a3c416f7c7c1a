//! Metadata objects: logs (a batch of records, hash-chained) and checkpoint
//! parts (a snapshot of the tree, split to fit the store's object size).
//!
//! ```text
//! object    = magic(8) ‖ nonce(12) ‖ AES-256-GCM(meta key, plaintext, ad) ‖ tag(16)
//! plaintext = body_len (u32 BE) ‖ body (postcard) ‖ zero padding (Padmé)
//! log ad    = "STRLOG01" ‖ vault_id(16) ‖ version (u64 BE)
//! ckpt ad   = "STRCKP01" ‖ vault_id(16) ‖ version (u64 BE) ‖ part (u32 BE) ‖ count (u32 BE)
//! ```
//! The hash of a log is BLAKE3 of its whole stored object; each log body
//! carries the hash of the previous log (the checkpoint body carries the hash
//! of the log it covers up to), so dropping, reordering or replaying logs
//! breaks the chain.

use serde::{Deserialize, Serialize};
use strata_crypto::{padme, Keys, NONCE_LEN, TAG_LEN};

use crate::error::{VaultError, VaultResult};
use crate::record::{Record, Ts};
use crate::tree::{PackEntry, PackTableRef, TreeImage, TreeImageRef};

pub const LOG_MAGIC: &[u8; 8] = b"STRLOG01";
pub const CKPT_MAGIC: &[u8; 8] = b"STRCKP01";
/// Bytes an object adds around its body.
pub const OVERHEAD: u64 = 8 + NONCE_LEN as u64 + TAG_LEN as u64 + 4;

/// Body of a log object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBody {
    /// Hash of the previous log object (or the checkpoint's head hash).
    pub prev: [u8; 32],
    /// Sequence number of the last record in this log (records are numbered
    /// in the order the writer applied them, across sessions).
    pub writer_seq: u64,
    pub time: Ts,
    pub records: Vec<Record>,
}

/// Body of a checkpoint (before splitting into parts).
#[derive(Serialize, Deserialize)]
pub struct CheckpointBody {
    pub version: u64,
    /// Hash of log `version` (for version 0: the genesis hash).
    pub head: [u8; 32],
    /// Sequence number of the last record the checkpoint covers.
    pub writer_seq: u64,
    pub time: Ts,
    pub tree: TreeImage,
}

/// [`CheckpointBody`] borrowing the tree: the same bytes, no copy of it.
#[derive(Serialize)]
pub struct CheckpointBodyRef<'a> {
    pub version: u64,
    pub head: [u8; 32],
    pub writer_seq: u64,
    pub time: Ts,
    pub tree: TreeImageRef<'a>,
}

/// The encoding of a checkpoint body and its pack table (to seal with
/// [`seal_checkpoint_bytes`]).
pub fn encode_checkpoint(
    body: &CheckpointBodyRef<'_>,
    packs: &PackTableRef<'_>,
) -> VaultResult<Vec<u8>> {
    encode_checkpoint_window(body, packs, 0..usize::MAX).map(|(bytes, _)| bytes)
}

/// Bytes `range` of the encoding of a checkpoint body and its pack table
/// (the body of one part, say), and the length of the whole encoding: a
/// checkpoint of a big tree is encoded once to measure it, then once per
/// part, and never held whole.
pub fn encode_checkpoint_window(
    body: &CheckpointBodyRef<'_>,
    packs: &PackTableRef<'_>,
    range: std::ops::Range<usize>,
) -> VaultResult<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let len = encode_into(body, packs, range, false, &mut out)?;
    Ok((out, len))
}

/// Bytes `range` of the encoding, like [`encode_checkpoint_window`], but
/// the encoding stops where the range ends (the whole length is not
/// measured): the later parts of a checkpoint cost less to encode.
pub fn encode_checkpoint_part(
    body: &CheckpointBodyRef<'_>,
    packs: &PackTableRef<'_>,
    range: std::ops::Range<usize>,
) -> VaultResult<Vec<u8>> {
    let mut out = Vec::with_capacity(range.len().min(CHECKPOINT_PART_MAX));
    encode_into(body, packs, range, true, &mut out)?;
    Ok(out)
}

fn encode_into(
    body: &CheckpointBodyRef<'_>,
    packs: &PackTableRef<'_>,
    range: std::ops::Range<usize>,
    stop: bool,
    out: &mut Vec<u8>,
) -> VaultResult<usize> {
    let end = range.end;
    let err = |e: postcard::Error| VaultError::Invalid(format!("checkpoint encoding: {e}"));
    let mut pos = 0;
    let mut w = Window {
        pos: &mut pos,
        range,
        stop,
        out,
    };
    let mut r = postcard::serialize_with_flavor(body, &mut w);
    if r.is_ok() && !packs.is_empty() {
        r = postcard::serialize_with_flavor(packs, &mut w);
    }
    match r {
        Ok(()) => Ok(pos),
        // stopped at the end of the window: the window is complete
        Err(postcard::Error::SerializeBufferFull) if stop && pos >= end => Ok(pos),
        Err(e) => Err(err(e)),
    }
}

/// A postcard output keeping only the bytes in `range` of what is
/// written; with `stop`, failing once past the range (to end early).
struct Window<'a> {
    pos: &'a mut usize,
    range: std::ops::Range<usize>,
    stop: bool,
    out: &'a mut Vec<u8>,
}

impl postcard::ser_flavors::Flavor for &mut Window<'_> {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.try_extend(&[b])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let pos = *self.pos;
        if self.stop && pos >= self.range.end {
            return Err(postcard::Error::SerializeBufferFull);
        }
        let end = pos + data.len();
        let a = self.range.start.clamp(pos, end) - pos;
        let b = self.range.end.clamp(pos, end) - pos;
        self.out.extend_from_slice(&data[a..b]);
        *self.pos = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Hash of a stored log object (the chain link).
pub fn object_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Head hash of a new vault.
pub fn genesis_hash(vault_id: &[u8; 16]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"strata genesis v1");
    h.update(vault_id);
    *h.finalize().as_bytes()
}

fn log_ad(vault_id: &[u8; 16], version: u64) -> Vec<u8> {
    let mut ad = LOG_MAGIC.to_vec();
    ad.extend_from_slice(vault_id);
    ad.extend_from_slice(&version.to_be_bytes());
    ad
}

fn ckpt_ad(vault_id: &[u8; 16], version: u64, part: u32, count: u32) -> Vec<u8> {
    let mut ad = CKPT_MAGIC.to_vec();
    ad.extend_from_slice(vault_id);
    ad.extend_from_slice(&version.to_be_bytes());
    ad.extend_from_slice(&part.to_be_bytes());
    ad.extend_from_slice(&count.to_be_bytes());
    ad
}

/// Largest body that fits in one object of at most `max` bytes.
pub fn max_body(max: Option<u64>) -> u64 {
    match max {
        Some(m) => m.saturating_sub(OVERHEAD).min(u64::from(u32::MAX)),
        None => 64 << 20,
    }
}

fn seal_object(
    keys: &Keys,
    magic: &[u8; 8],
    ad: &[u8],
    body: &[u8],
    max: Option<u64>,
) -> VaultResult<Vec<u8>> {
    seal_owned(keys, magic, ad, body.to_vec(), max)
}

/// [`seal_object`] of a body it may reuse: the length prefix, padding,
/// tag and magic are added in place (a checkpoint body can be tens of MiB,
/// and each copy of it would count).
fn seal_owned(
    keys: &Keys,
    magic: &[u8; 8],
    ad: &[u8],
    mut body: Vec<u8>,
    max: Option<u64>,
) -> VaultResult<Vec<u8>> {
    let want = padme(body.len() as u64 + OVERHEAD);
    let total = match max {
        Some(m) if want > m => m.max(body.len() as u64 + OVERHEAD),
        _ => want,
    };
    let plain_len = (total - OVERHEAD + 4) as usize;
    let len = u32::try_from(body.len())
        .map_err(|_| VaultError::Invalid("metadata object too large".into()))?;
    // room for the nonce, tag and magic too: no reallocation on the way
    body.reserve_exact((plain_len + 64).saturating_sub(body.len()));
    body.splice(0..0, len.to_be_bytes());
    body.resize(plain_len, 0);
    let mut out = keys.seal_meta(ad, body)?;
    out.splice(0..0, magic.iter().copied());
    Ok(out)
}

fn open_object(
    keys: &Keys,
    magic: &[u8; 8],
    ad: &[u8],
    bytes: &[u8],
    object: &str,
) -> VaultResult<Vec<u8>> {
    let (plain, body) = open_object_in_place(keys, magic, ad, bytes, object)?;
    Ok(plain[body].to_vec())
}

/// [`open_object`] without copying the body out: the plaintext, and where
/// the body is in it.
fn open_object_in_place(
    keys: &Keys,
    magic: &[u8; 8],
    ad: &[u8],
    bytes: &[u8],
    object: &str,
) -> VaultResult<(Vec<u8>, std::ops::Range<usize>)> {
    if bytes.len() < OVERHEAD as usize || &bytes[..8] != magic {
        return Err(VaultError::corrupt(
            object,
            "not a Strata metadata object (bad magic or truncated)",
        ));
    }
    let plain = keys.open_meta(ad, &bytes[8..]).map_err(|_| {
        VaultError::corrupt(
            object,
            "authentication failed: the object was modified, renamed, or belongs to another vault",
        )
    })?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&plain[..4]);
    let len = u32::from_be_bytes(len) as usize;
    if 4 + len > plain.len() {
        return Err(VaultError::corrupt(object, "body length out of range"));
    }
    Ok((plain, 4..4 + len))
}

/// Encode the records of one log body (to measure and split batches).
pub fn encode_log(body: &LogBody) -> VaultResult<Vec<u8>> {
    postcard::to_stdvec(body).map_err(|e| VaultError::Invalid(format!("log encoding: {e}")))
}

pub fn seal_log(
    keys: &Keys,
    vault_id: &[u8; 16],
    version: u64,
    body: &[u8],
    max: Option<u64>,
) -> VaultResult<Vec<u8>> {
    seal_object(keys, LOG_MAGIC, &log_ad(vault_id, version), body, max)
}

pub fn open_log(
    keys: &Keys,
    vault_id: &[u8; 16],
    version: u64,
    bytes: &[u8],
    object: &str,
) -> VaultResult<LogBody> {
    let body = open_object(keys, LOG_MAGIC, &log_ad(vault_id, version), bytes, object)?;
    postcard::from_bytes(&body)
        .map_err(|e| VaultError::corrupt(object, format!("undecodable log body: {e}")))
}

/// Seal a checkpoint into parts, each ≤ `max` bytes.
pub fn seal_checkpoint(
    keys: &Keys,
    vault_id: &[u8; 16],
    body: &CheckpointBody,
    max: Option<u64>,
) -> VaultResult<Vec<Vec<u8>>> {
    let mut bytes = postcard::to_stdvec(body)
        .map_err(|e| VaultError::Invalid(format!("checkpoint encoding: {e}")))?;
    append_pack_table(&mut bytes, &body.tree.packs)?;
    seal_checkpoint_bytes(keys, vault_id, body.version, bytes, max)
}

/// Format version 2: the pack table follows the body (none: nothing, so a
/// checkpoint of a vault without packs is a version-1 checkpoint).
fn append_pack_table(bytes: &mut Vec<u8>, packs: &[PackEntry]) -> VaultResult<()> {
    if !packs.is_empty() {
        bytes.extend(
            postcard::to_stdvec(packs)
                .map_err(|e| VaultError::Invalid(format!("checkpoint encoding: {e}")))?,
        );
    }
    Ok(())
}

/// Seal an encoded checkpoint body of `version` into parts, each ≤ `max`.
pub fn seal_checkpoint_bytes(
    keys: &Keys,
    vault_id: &[u8; 16],
    version: u64,
    bytes: Vec<u8>,
    max: Option<u64>,
) -> VaultResult<Vec<Vec<u8>>> {
    let per = checkpoint_part_len(max);
    let count = bytes.len().div_ceil(per).max(1);
    let count32 = u32::try_from(count)
        .ok()
        .filter(|c| *c <= 0xffff)
        .ok_or_else(|| {
            VaultError::Invalid(
                "checkpoint needs more than 65535 parts; raise max-object-size".into(),
            )
        })?;
    if count == 1 {
        let ad = ckpt_ad(vault_id, version, 0, 1);
        return Ok(vec![seal_owned(keys, CKPT_MAGIC, &ad, bytes, max)?]);
    }
    let mut parts = Vec::with_capacity(count);
    for i in 0..count {
        let slice = &bytes[(i * per).min(bytes.len())..((i + 1) * per).min(bytes.len())];
        let ad = ckpt_ad(vault_id, version, i as u32, count32);
        parts.push(seal_object(keys, CKPT_MAGIC, &ad, slice, max)?);
    }
    Ok(parts)
}

/// Longest body of a checkpoint part a writer makes, whatever the store
/// takes: a part is encoded and sealed in memory beside the tree, so
/// small parts keep that from adding much to a big tree's footprint
/// (readers join parts of any length, §7).
pub const CHECKPOINT_PART_MAX: usize = 4 << 20;

/// Bodies per checkpoint part for objects of at most `max` bytes.
pub fn checkpoint_part_len(max: Option<u64>) -> usize {
    usize::try_from(max_body(max))
        .unwrap_or(usize::MAX)
        .clamp(1, CHECKPOINT_PART_MAX)
}

/// Seal part `part` of `count` of checkpoint `version`: `body` is that
/// slice of the encoded checkpoint (see [`encode_checkpoint_window`]).
pub fn seal_checkpoint_part(
    keys: &Keys,
    vault_id: &[u8; 16],
    version: u64,
    (part, count): (u32, u32),
    body: Vec<u8>,
    max: Option<u64>,
) -> VaultResult<Vec<u8>> {
    if count > 0xffff {
        return Err(VaultError::Invalid(
            "checkpoint needs more than 65535 parts; raise max-object-size".into(),
        ));
    }
    let ad = ckpt_ad(vault_id, version, part, count);
    seal_owned(keys, CKPT_MAGIC, &ad, body, max)
}

/// Open checkpoint parts (in order) and decode the body. The parts are
/// decoded as one stream, each decrypted when the decoder reaches it and
/// dropped once read: loading a big tree never holds its whole plaintext
/// encoding beside the tree being built.
pub fn open_checkpoint(
    keys: &Keys,
    vault_id: &[u8; 16],
    version: u64,
    parts: Vec<(String, Vec<u8>)>,
) -> VaultResult<CheckpointBody> {
    let count =
        u32::try_from(parts.len()).map_err(|_| VaultError::Invalid("too many parts".into()))?;
    let first = parts
        .first()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| "checkpoint".into());
    let first = first.as_str();
    let failed = std::cell::RefCell::new(None);
    let parts = Parts {
        keys,
        vault_id,
        version,
        count,
        index: 0,
        parts: parts.into(),
        plain: Vec::new(),
        pos: 0,
        end: 0,
        failed: &failed,
    };
    // a part that does not open is the error, not the decoder's view of it
    let fail = |what: &str, e: postcard::Error| {
        failed
            .borrow_mut()
            .take()
            .unwrap_or_else(|| VaultError::corrupt(first, format!("undecodable {what}: {e}")))
    };
    let mut de = postcard::Deserializer::from_flavor(parts);
    let mut body = CheckpointBody::deserialize(&mut de).map_err(|e| fail("checkpoint", e))?;
    let mut parts = de.finalize().map_err(|e| fail("checkpoint", e))?;
    if !parts.at_end().map_err(|e| fail("checkpoint", e))? {
        let mut de = postcard::Deserializer::from_flavor(parts);
        body.tree.packs =
            Vec::<PackEntry>::deserialize(&mut de).map_err(|e| fail("checkpoint pack table", e))?;
        parts = de.finalize().map_err(|e| fail("checkpoint", e))?;
        if !parts.at_end().map_err(|e| fail("checkpoint", e))? {
            return Err(VaultError::corrupt(
                first,
                "trailing bytes after the checkpoint",
            ));
        }
    }
    if body.version != version {
        return Err(VaultError::corrupt(
            first,
            "checkpoint version does not match its name",
        ));
    }
    Ok(body)
}

/// A checkpoint's parts read as one stream by the decoder: part `index` is
/// opened when the previous one is used up, and its ciphertext dropped.
struct Parts<'k> {
    keys: &'k Keys,
    vault_id: &'k [u8; 16],
    version: u64,
    count: u32,
    index: u32,
    parts: std::collections::VecDeque<(String, Vec<u8>)>,
    /// Plaintext of the current part; its body is `pos..end`.
    plain: Vec<u8>,
    pos: usize,
    end: usize,
    /// Why a part could not be opened (the decoder only sees "end").
    failed: &'k std::cell::RefCell<Option<VaultError>>,
}

impl Parts<'_> {
    /// Every part read to its end?
    fn at_end(&mut self) -> postcard::Result<bool> {
        self.fill()?;
        Ok(self.pos == self.end)
    }

    /// Open parts until one has body bytes left, or none is left.
    fn fill(&mut self) -> postcard::Result<()> {
        while self.pos == self.end {
            let Some((name, bytes)) = self.parts.pop_front() else {
                return Ok(());
            };
            let ad = ckpt_ad(self.vault_id, self.version, self.index, self.count);
            self.index += 1;
            self.plain = Vec::new(); // the previous part goes first
            match open_object_in_place(self.keys, CKPT_MAGIC, &ad, &bytes, &name) {
                Ok((plain, body)) => {
                    self.plain = plain;
                    (self.pos, self.end) = (body.start, body.end);
                }
                Err(e) => {
                    *self.failed.borrow_mut() = Some(e);
                    return Err(postcard::Error::DeserializeUnexpectedEnd);
                }
            }
        }
        Ok(())
    }
}

impl<'k> postcard::de_flavors::Flavor<'k> for Parts<'k> {
    type Remainder = Parts<'k>;
    type Source = ();

    fn pop(&mut self) -> postcard::Result<u8> {
        self.fill()?;
        let b = *self
            .plain
            .get(self.pos)
            .filter(|_| self.pos < self.end)
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    fn try_take_n(&mut self, _ct: usize) -> postcard::Result<&'k [u8]> {
        // nothing in a checkpoint borrows from its encoding
        Err(postcard::Error::DeserializeUnexpectedEnd)
    }

    fn try_take_n_temp<'a>(&'a mut self, ct: usize) -> postcard::Result<&'a [u8]>
    where
        'k: 'a,
    {
        self.fill()?;
        // within one part only (no type of a checkpoint needs more)
        if self.end - self.pos < ct {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let s = &self.plain[self.pos..self.pos + ct];
        self.pos += ct;
        Ok(s)
    }

    fn finalize(self) -> postcard::Result<Parts<'k>> {
        Ok(self)
    }
}
