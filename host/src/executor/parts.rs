//! Put Blob bodies larger than one request, carried as *body parts*
//! ([`BODY_PART_HEADER`]): a peer that holds no account key (`blobring gateway`) cannot turn a
//! client's single Put Blob into Put Block calls of its own (those would need new signatures),
//! so it sends the client's signed head once per part, each with the next slice of the body.
//!
//! Each part is admitted (signature, faults) like any request, then staged in the store as an
//! uncommitted block of the target blob; its bytes feed the upload's running MD5 and CRC-64.
//! The last part commits the blocks with Put Block List semantics — after the body's length
//! and the client's `Content-MD5` / `x-ms-content-crc64` are checked over the whole body, and
//! with the conditions and properties of the signed head — and gets the Put Blob's answer.
//! Until then nothing is visible; an abandoned upload's staged blocks are dropped by the next
//! commit of the blob, and its state here after [`IDLE`].
//!
//! Bounds: at most [`MAX_UPLOADS`] uploads in progress (more: 503 `ServerBusy`), parts in
//! order (anything else: 400, the upload forgotten), and the Put Blob limit of 5000 MiB.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blobring_proto::header::{BODY_PART_HEADER, BODY_PART_ID_HEADER, CONTENT_LENGTH};
use md5::{Digest, Md5};

use super::blob::{check_block_blob, new_blob};
use super::{AzError, BlobAt, Executor, MAX_PUT_BLOB, Req, Resp, conditions};
use crate::store::BlockRef;

/// Uploads in progress at once.
pub(super) const MAX_UPLOADS: usize = 1024;
/// An upload with no part for this long is forgotten.
pub(super) const IDLE: Duration = Duration::from_secs(600);

/// The uploads in progress, by id.
#[derive(Default)]
pub(super) struct PartUploads {
    map: Mutex<HashMap<String, Upload>>,
}

struct Upload {
    container: String,
    blob: String,
    total: u64,
    /// The next body offset expected.
    next: u64,
    md5: Md5,
    crc: crc64fast_nvme::Digest,
    refs: Vec<BlockRef>,
    touched: Instant,
}

fn bad(message: String) -> AzError {
    AzError::bad("InvalidHeaderValue", message)
}

/// `<first>/<total>`.
fn parse_part(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().split_once('/')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn valid_id(id: &str) -> bool {
    (1..=40).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

impl PartUploads {
    /// Takes the upload `id` out of the table (to work on it without the lock), starting it
    /// when `first` is 0; forgets idle uploads on the way.
    fn take(
        &self,
        id: &str,
        start: impl FnOnce() -> Upload,
        first: u64,
    ) -> Result<Upload, AzError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, u| u.touched.elapsed() < IDLE);
        if first == 0 {
            if map.len() >= MAX_UPLOADS && !map.contains_key(id) {
                return Err(AzError::new(
                    503,
                    "ServerBusy",
                    "Too many uploads in parts are in progress on this host; retry later.",
                ));
            }
            map.remove(id);
            return Ok(start());
        }
        map.remove(id).ok_or_else(|| {
            bad(format!(
                "No upload {id} is in progress (it was finished, abandoned for {}s, or never \
                 started with part 0/…): start again from the first part.",
                IDLE.as_secs()
            ))
        })
    }

    fn put_back(&self, id: String, u: Upload) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id, u);
    }
}

impl Executor {
    /// One part of a Put Blob sent in parts (`part`: the [`BODY_PART_HEADER`] value).
    pub(super) fn put_blob_part(
        &self,
        at: BlobAt<'_>,
        req: &Req<'_>,
        part: &str,
    ) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        check_block_blob(req)?;
        let (first, total) = parse_part(part).ok_or_else(|| {
            bad(format!(
                "{BODY_PART_HEADER}: {part} is not <first>/<total>."
            ))
        })?;
        let id = req.header(BODY_PART_ID_HEADER).unwrap_or("");
        if !valid_id(id) {
            return Err(bad(format!(
                "{BODY_PART_ID_HEADER}: {id:?} must be 1-40 letters, digits or hyphens."
            )));
        }
        if req.header(CONTENT_LENGTH).map(str::trim) != Some(&*total.to_string()) {
            return Err(bad(format!(
                "A Put Blob in parts must be signed with the whole body's Content-Length \
                 ({total})."
            )));
        }
        if total > MAX_PUT_BLOB {
            return Err(AzError::new(
                413,
                "RequestBodyTooLarge",
                "The request body is too large and exceeds the maximum permissible limit.",
            ));
        }
        let n = req.body.len() as u64;
        if first.checked_add(n).is_none_or(|end| end > total) || (n == 0 && first < total) {
            return Err(bad(format!(
                "Part {first}/{total} carries {n} bytes: parts are non-empty and end at most at \
                 the body's end."
            )));
        }
        let start = || Upload {
            container: c.to_owned(),
            blob: b.to_owned(),
            total,
            next: 0,
            md5: Md5::new(),
            crc: crc64fast_nvme::Digest::new(),
            refs: Vec::new(),
            touched: Instant::now(),
        };
        let mut u = self.parts.take(id, start, first)?;
        if (u.container.as_str(), u.blob.as_str(), u.total, u.next) != (c, b, total, first) {
            return Err(bad(format!(
                "Part {first}/{total} of {c}/{b} does not continue upload {id} (of {}/{}, next \
                 offset {} of {}): the upload is abandoned; start again from part 0.",
                u.container, u.blob, u.next, u.total
            )));
        }
        if n > 0 {
            let block = format!("blobring-part-{id}-{:08}", u.refs.len()).into_bytes();
            st.put_block(c, b, &block, req.body)?;
            u.refs.push(BlockRef::Uncommitted(block));
            u.md5.update(req.body);
            u.crc.write(req.body);
        }
        u.next = first + n;
        u.touched = Instant::now();
        if u.next < total {
            let next = u.next;
            self.parts.put_back(id.to_owned(), u);
            return Ok(Resp::new(202).h(BODY_PART_HEADER, format_args!("{next}/{total}")));
        }
        // The last part: check the whole body, then commit.
        let cond = conditions(req)?;
        let attrs = new_blob(req, true)?;
        self.commit_staged(at, req, &u.refs, u.md5, u.crc, &cond, attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_headers_parse() {
        assert_eq!(parse_part("0/10"), Some((0, 10)));
        assert_eq!(parse_part(" 5 / 10 "), Some((5, 10)));
        assert_eq!(parse_part("5-10"), None);
        assert!(valid_id("0f3c-9a"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(41)));
    }
}
