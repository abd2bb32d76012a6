//! The blob operations on a local store: Get Blob (ranges, body windows, transactional
//! hashes), Put Blob (whole or streamed in blocks), Put Block, Put Block List, Get Block List,
//! blob tags and Copy Blob, with the request decoding and checks only they need. Dispatch, the
//! container operations and the decoding every operation shares stay in the parent module;
//! listing, batch and multi-request bodies have modules of their own.

use std::fmt::Write as _;

use base64::prelude::BASE64_STANDARD;
use base64::{DecodeSliceError, Engine as _};
use bytes::Bytes;
use http::Method;
use md5::{Digest, Md5};
use percent_encoding::percent_decode_str;

use blobring_proto::header::{
    BODY_PART_HEADER, BODY_WINDOW_ETAG_HEADER, BODY_WINDOW_HEADER, CONTENT_LENGTH, CONTENT_MD5,
    X_MS_BLOB_CONTENT_MD5, X_MS_BLOB_CONTENT_TYPE, X_MS_BLOB_TYPE, X_MS_CONTENT_CRC64,
    X_MS_COPY_SOURCE, X_MS_COPY_STATUS, X_MS_RANGE, X_MS_RANGE_GET_CONTENT_CRC64,
    X_MS_RANGE_GET_CONTENT_MD5,
};

use super::{
    BlobAt, Executor, MAX_BLOCK, MAX_HASHED_RANGE, MAX_PUT_BLOB, STREAM_BLOCK, Target,
    check_container_name, conditions, http_date, metadata, unsupported,
};
use crate::request::{AzError, Body, Req, Resp, ResponseHeaders, decode_query};
use crate::store::{
    BlobProps, BlockRef, Conditions, ContentHeaders, NewBlob, ReadConditionFailure, Store,
    StoreError, check_read,
};
use crate::xml::{Leaf, esc, leaves};

impl Executor {
    pub(super) fn get_blob(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let cond = conditions(req)?;
        let reader = st.open(c, b)?;
        let p = reader.props();
        if let Err(f) = check_read(&cond, p) {
            return Err(match f {
                ReadConditionFailure::NotModified => {
                    let mut e = AzError::new(
                        304,
                        "ConditionNotMet",
                        "The condition specified using HTTP conditional header(s) is not met.",
                    );
                    e.headers.push(("etag", p.etag.clone()));
                    let modified = http_date(p.last_modified).to_string();
                    e.headers.push(("last-modified", modified));
                    e
                }
                ReadConditionFailure::Failed => AzError::new(
                    412,
                    "ConditionNotMet",
                    "The condition specified using HTTP conditional header(s) is not met.",
                ),
            });
        }
        let range_hdr = req.header(X_MS_RANGE).or_else(|| req.header("range"));
        let range = match range_hdr {
            Some(r) => parse_range(r),
            None => None,
        };
        let mut r;
        let (offset, len) = match range {
            Some((start, end)) => {
                if start >= p.size {
                    let mut e = AzError::new(
                        416,
                        "InvalidRange",
                        "The range specified is invalid for the current size of the resource.",
                    );
                    e.headers
                        .push(("content-range", format!("bytes */{}", p.size)));
                    return Err(e);
                }
                let end = end.map_or(p.size - 1, |e| e.min(p.size - 1));
                let size = p.size;
                r = Resp::new(206).h("content-range", format_args!("bytes {start}-{end}/{size}"));
                (start, end - start + 1)
            }
            None => {
                r = Resp::new(200);
                (0, p.size)
            }
        };
        let want_md5 = req.header(X_MS_RANGE_GET_CONTENT_MD5) == Some("true");
        let want_crc = req.header(X_MS_RANGE_GET_CONTENT_CRC64) == Some("true");
        if (want_md5 || want_crc) && (range.is_none() || len > MAX_HASHED_RANGE) {
            return Err(AzError::bad(
                "InvalidHeaderValue",
                "x-ms-range-get-content-md5/crc64 needs a range of at most 4 MiB.",
            ));
        }
        blob_headers(&mut r.headers, p);
        if let Some(md5) = &p.content.content_md5 {
            let name = match range {
                None => CONTENT_MD5,
                Some(_) => X_MS_BLOB_CONTENT_MD5,
            };
            r.headers.set(name, md5);
        }
        if req.method == Method::HEAD {
            r.headers.set(CONTENT_LENGTH, p.size);
            r.head_only = true;
            return Ok(r);
        }
        let (offset, len) = match body_window(req, p, len)? {
            None => (offset, len),
            Some((first, n)) => {
                if (want_md5 || want_crc) && n != len {
                    return Err(AzError::bad(
                        "InvalidHeaderValue",
                        "A body window must cover the whole range when \
                         x-ms-range-get-content-md5/crc64 is asked for.",
                    ));
                }
                r.headers
                    .set(BODY_WINDOW_HEADER, format_args!("{first}/{len}"));
                (offset + first, n)
            }
        };
        r.body = Body::Blob {
            reader,
            offset,
            len,
            md5: want_md5,
            crc64: want_crc,
        };
        Ok(r)
    }

    pub(super) fn put_blob(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        if let Some(part) = req.header(BODY_PART_HEADER) {
            return self.put_blob_part(at, req, part);
        }
        check_block_blob(req)?;
        check_length(req, MAX_PUT_BLOB)?;
        let md5 = check_integrity(req)?;
        let cond = conditions(req)?;
        let mut attrs = new_blob(req, true)?;
        let md5 = md5.unwrap_or_else(|| BASE64_STANDARD.encode(Md5::digest(req.body)));
        if attrs.content.content_md5.is_none() {
            attrs.content.content_md5 = Some(md5.clone());
        }
        let p = st.put_blob(c, b, req.body, attrs, &cond)?;
        Ok(put_blob_resp(req, &p, md5))
    }

    /// Put Blob with a body that arrives in pieces (`next` yields them; `Err` if reading
    /// failed), with bounded memory: the body is staged in the store as blocks of
    /// [`STREAM_BLOCK`] bytes under ids of its own and committed with Put Block List — the
    /// conditions checked and the previous version replaced only then, so a failed or cut-off
    /// upload changes nothing visible (its staged blocks are discarded by the next commit of the
    /// blob). Content-Length, Content-MD5 and x-ms-content-crc64 are checked before the commit.
    pub(super) fn put_blob_streamed(
        &self,
        st: &dyn Store,
        req: &Req<'_>,
        next: &mut dyn FnMut() -> Option<Result<Bytes, String>>,
    ) -> Result<Resp, AzError> {
        let Target::Blob(c, b) = self.target(req)? else {
            return Err(unsupported(req));
        };
        check_container_name(&c)?;
        check_block_blob(req)?;
        let cond = conditions(req)?;
        let attrs = new_blob(req, true)?;
        let declared = match req.header(CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                AzError::bad(
                    "InvalidHeaderValue",
                    format!("Content-Length {v} is not a number."),
                )
            })?),
        };
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let (mut md5, mut crc) = (Md5::new(), crc64fast_nvme::Digest::new());
        let mut buf: Vec<u8> = Vec::with_capacity(STREAM_BLOCK);
        let mut refs = Vec::new();
        let mut total = 0u64;
        let stage = |buf: &mut Vec<u8>, refs: &mut Vec<BlockRef>| -> Result<(), AzError> {
            let id = format!("blobring-stream-{tag}-{:08}", refs.len()).into_bytes();
            st.put_block(&c, &b, &id, buf)?;
            refs.push(BlockRef::Uncommitted(id));
            buf.clear();
            Ok(())
        };
        while let Some(piece) = next() {
            let piece = piece.map_err(|e| {
                AzError::bad(
                    "InvalidInput",
                    format!("The request body could not be read: {e}."),
                )
            })?;
            total += piece.len() as u64;
            if total > MAX_PUT_BLOB {
                return Err(AzError::new(
                    413,
                    "RequestBodyTooLarge",
                    "The request body is too large and exceeds the maximum permissible limit.",
                ));
            }
            md5.update(&piece);
            crc.write(&piece);
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let take = rest.len().min(STREAM_BLOCK - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == STREAM_BLOCK {
                    stage(&mut buf, &mut refs)?;
                }
            }
        }
        if !buf.is_empty() {
            stage(&mut buf, &mut refs)?;
        }
        if let Some(n) = declared
            && n != total
        {
            return Err(AzError::bad(
                "InvalidHeaderValue",
                format!("Content-Length {n} does not match the {total} body bytes received."),
            ));
        }
        let at = BlobAt { st, c: &c, b: &b };
        self.commit_staged(at, req, &refs, md5, crc, &cond, attrs)
    }

    /// The end of a Put Blob whose body was staged as the blocks `refs` (streamed, or sent in
    /// parts): the client's Content-MD5 / x-ms-content-crc64 checked against the hashes of the
    /// whole body, then the blocks committed with the Put Blob's conditions and properties (its
    /// Content-MD5 the body's when the client gave none), answered as a Put Blob.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_staged(
        &self,
        BlobAt { st, c, b }: BlobAt<'_>,
        req: &Req<'_>,
        refs: &[BlockRef],
        md5: Md5,
        crc: crc64fast_nvme::Digest,
        cond: &Conditions,
        mut attrs: NewBlob,
    ) -> Result<Resp, AzError> {
        let digest: [u8; 16] = md5.finalize().into();
        let crc = crc.sum64().to_le_bytes();
        let md5 = check_hashes(req, Some(digest), Some(crc))?
            .unwrap_or_else(|| BASE64_STANDARD.encode(digest));
        if attrs.content.content_md5.is_none() {
            attrs.content.content_md5 = Some(md5.clone());
        }
        let p = st.put_block_list(c, b, refs, attrs, cond)?;
        Ok(put_blob_resp(req, &p, md5))
    }

    pub(super) fn put_block(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let mut buf = [0; 96];
        let id = block_id(req.query("blockid").unwrap_or(""), &mut buf)?;
        check_length(req, MAX_BLOCK)?;
        let md5 = check_integrity(req)?;
        st.put_block(c, b, id, req.body)?;
        let mut r = Resp::new(201).h("x-ms-request-server-encrypted", "true");
        if let Some(m) = md5 {
            r = r.h(CONTENT_MD5, m);
        }
        echo_crc(req, &mut r);
        Ok(r)
    }

    pub(super) fn put_block_list(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        check_integrity(req)?;
        let leaves = xml_leaves(req, "BlockList")?;
        let mut refs = Vec::with_capacity(leaves.len());
        let mut buf = [0; 96];
        for (path, text) in leaves {
            if path.len() != 2 {
                continue;
            }
            let id = block_id(text.trim(), &mut buf)?.to_vec();
            refs.push(match path[1].as_str() {
                "Latest" => BlockRef::Latest(id),
                "Committed" => BlockRef::Committed(id),
                "Uncommitted" => BlockRef::Uncommitted(id),
                other => {
                    return Err(AzError::bad(
                        "InvalidXmlNodeValue",
                        format!("Unexpected element {other:?} in BlockList."),
                    ));
                }
            });
        }
        if refs.len() > 50_000 {
            return Err(AzError::bad(
                "BlockListTooLong",
                "The block list may not contain more than 50,000 blocks.",
            ));
        }
        let cond = conditions(req)?;
        let attrs = new_blob(req, false)?;
        let p = st.put_block_list(c, b, &refs, attrs, &cond)?;
        Ok(Resp::new(201)
            .h("etag", &p.etag)
            .h("last-modified", http_date(p.last_modified))
            .h("x-ms-request-server-encrypted", "true"))
    }

    pub(super) fn get_block_list(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let kind = req
            .query("blocklisttype")
            .unwrap_or("committed")
            .to_ascii_lowercase();
        let (with_c, with_u) = match kind.as_str() {
            "committed" => (true, false),
            "uncommitted" => (false, true),
            "all" => (true, true),
            _ => {
                return Err(AzError::bad(
                    "InvalidQueryParameterValue",
                    "blocklisttype must be committed, uncommitted or all.",
                ));
            }
        };
        let l = st.block_list(c, b)?;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        let mut list = |tag: &str, blocks: &[crate::store::BlockInfo]| {
            let _ = write!(x, "<{tag}>");
            for bl in blocks {
                let _ = write!(
                    x,
                    "<Block><Name>{}</Name><Size>{}</Size></Block>",
                    BASE64_STANDARD.encode(&bl.id),
                    bl.size
                );
            }
            let _ = write!(x, "</{tag}>");
        };
        if with_c {
            list("CommittedBlocks", &l.committed);
        }
        if with_u {
            list("UncommittedBlocks", &l.uncommitted);
        }
        x.push_str("</BlockList>");
        let mut r = Resp::new(200).xml(x);
        if let Some(p) = &l.props {
            r = r
                .h("etag", &p.etag)
                .h("last-modified", http_date(p.last_modified))
                .h("x-ms-blob-content-length", p.size.to_string());
        }
        Ok(r)
    }

    pub(super) fn get_tags(&self, BlobAt { st, c, b }: BlobAt<'_>) -> Result<Resp, AzError> {
        let reader = st.open(c, b)?;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><Tags><TagSet>");
        for (k, v) in &reader.props().tags {
            let _ = write!(
                x,
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                esc(k),
                esc(v)
            );
        }
        x.push_str("</TagSet></Tags>");
        Ok(Resp::new(200).xml(x))
    }

    pub(super) fn set_tags(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let leaves = xml_leaves(req, "Tags")?;
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut key: Option<String> = None;
        for (path, text) in leaves {
            match path.last().map(String::as_str) {
                Some("Key") => key = Some(text),
                Some("Value") => {
                    let k = key.take().ok_or_else(|| {
                        AzError::bad("InvalidXmlDocument", "Tag Value without a Key.")
                    })?;
                    tags.push((k, text));
                }
                _ => {}
            }
        }
        validate_tags(&tags)?;
        st.set_tags(c, b, tags, &conditions(req)?)?;
        Ok(Resp::new(204))
    }

    pub(super) fn copy_blob(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let src = req.header(X_MS_COPY_SOURCE).unwrap_or("");
        let (sc, sb) = self.copy_source(src)?;
        let meta = metadata(req);
        let meta = if meta.is_empty() { None } else { Some(meta) };
        let cond = conditions(req)?;
        let p = match st.copy_blob(&sc, &sb, c, b, meta, &cond) {
            Err(StoreError::BlobNotFound(_)) | Err(StoreError::ContainerNotFound(_))
                if st.container(c).is_ok() =>
            {
                return Err(AzError::new(
                    404,
                    "CannotVerifyCopySource",
                    "The specified blob does not exist.",
                ));
            }
            r => r?,
        };
        Ok(Resp::new(202)
            .h("etag", &p.etag)
            .h("last-modified", http_date(p.last_modified))
            .h("x-ms-copy-id", uuid::Uuid::new_v4().to_string())
            .h(X_MS_COPY_STATUS, "success"))
    }

    /// Resolve an `x-ms-copy-source` URL to (container, blob) in this account.
    pub(super) fn copy_source(&self, src: &str) -> Result<(String, String), AzError> {
        let bad = || {
            AzError::bad(
                "CannotVerifyCopySource",
                "x-ms-copy-source must be a URL of a blob in this account.",
            )
        };
        let rest = src.split_once("://").map(|(_, r)| r).ok_or_else(bad)?;
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let path = path.split('?').next().unwrap_or("");
        let path = if let Some(p) = path.strip_prefix(&format!("{}/", self.account)) {
            p
        } else if host.starts_with(&format!("{}.", self.account)) {
            path
        } else {
            return Err(bad());
        };
        let (c, b) = path.split_once('/').ok_or_else(bad)?;
        let dec = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad())
        };
        Ok((dec(c)?, dec(b)?))
    }
}

/// The leaves of the request's XML body, whose root element must be `root`.
fn xml_leaves(req: &Req<'_>, root: &str) -> Result<Vec<Leaf>, AzError> {
    let (found, leaves) = leaves(req.body).map_err(|e| {
        AzError::bad(
            "InvalidXmlDocument",
            format!("XML specified is not syntactically valid: {e}"),
        )
    })?;
    if found != root {
        return Err(AzError::bad(
            "InvalidXmlDocument",
            format!("The root element must be {root}."),
        ));
    }
    Ok(leaves)
}

/// The body window a Get Blob asks for ([`BODY_WINDOW_HEADER`]) of a body of `len` bytes:
/// `(first, length)`, clipped to the body (a window past its end is empty), or `None` when the
/// request asks for none. A window pinned to another ETag than the blob's is 412.
fn body_window(req: &Req<'_>, p: &BlobProps, len: u64) -> Result<Option<(u64, u64)>, AzError> {
    let Some(w) = req.header(BODY_WINDOW_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        AzError::bad(
            "InvalidHeaderValue",
            format!("{BODY_WINDOW_HEADER}: {w} is not <first>-<last> with first <= last."),
        )
    };
    let (a, b) = w.trim().split_once('-').ok_or_else(bad)?;
    let (first, last): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if last < first {
        return Err(bad());
    }
    if let Some(etag) = req.header(BODY_WINDOW_ETAG_HEADER)
        && etag.trim() != p.etag
    {
        return Err(AzError::new(
            412,
            "ConditionNotMet",
            "The blob changed while its body was read in windows (its ETag is no longer the \
             one pinned by x-blobring-body-window-etag); read it again.",
        ));
    }
    let first = first.min(len);
    Ok(Some((first, (last.saturating_add(1)).min(len) - first)))
}

/// Parse `bytes=a-b` / `bytes=a-`; anything else (suffix ranges, lists) means "no range".
fn parse_range(s: &str) -> Option<(u64, Option<u64>)> {
    let r = s.trim().strip_prefix("bytes=")?;
    if r.contains(',') {
        return None;
    }
    let (a, b) = r.split_once('-')?;
    let start = a.trim().parse::<u64>().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        let e = b.trim().parse::<u64>().ok()?;
        if e < start {
            return None;
        }
        Some(e)
    };
    Some((start, end))
}

fn validate_tags(tags: &[(String, String)]) -> Result<(), AzError> {
    if tags.len() > 10 {
        return Err(AzError::bad(
            "InvalidTag",
            "A blob may have at most 10 tags.",
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(AzError::bad(
                "InvalidTag",
                "Tag keys must be 1-128 characters and values at most 256.",
            ));
        }
    }
    Ok(())
}

pub(super) fn new_blob(req: &Req<'_>, put_blob: bool) -> Result<NewBlob, AzError> {
    let h = |ms: &str, plain: &str| {
        req.header(ms)
            .or_else(|| if put_blob { req.header(plain) } else { None })
            .map(str::to_owned)
    };
    let tags = match req.header("x-ms-tags") {
        None => Vec::new(),
        Some(t) => {
            let tags: Vec<(String, String)> = decode_query(t)
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            validate_tags(&tags)?;
            tags
        }
    };
    Ok(NewBlob {
        content: ContentHeaders {
            content_type: h(X_MS_BLOB_CONTENT_TYPE, "content-type"),
            content_encoding: h("x-ms-blob-content-encoding", "content-encoding"),
            content_language: h("x-ms-blob-content-language", "content-language"),
            content_disposition: req
                .header("x-ms-blob-content-disposition")
                .map(str::to_owned),
            cache_control: h("x-ms-blob-cache-control", "cache-control"),
            content_md5: req.header(X_MS_BLOB_CONTENT_MD5).map(str::to_owned),
        },
        metadata: metadata(req),
        tags,
    })
}

/// The block id `s` (Base64 of 1-64 bytes) decoded into `buf`; Base64 too long for `buf` is
/// decoded on the heap only to tell which error it is.
fn block_id<'b>(s: &str, buf: &'b mut [u8; 96]) -> Result<&'b [u8], AzError> {
    let not_base64 = || {
        AzError::bad(
            "InvalidQueryParameterValue",
            "The block id is not valid Base64.",
        )
    };
    let n = match BASE64_STANDARD.decode_slice(s, buf) {
        Ok(n) => n,
        Err(DecodeSliceError::OutputSliceTooSmall) => {
            BASE64_STANDARD.decode(s).map_err(|_| not_base64())?.len()
        }
        Err(DecodeSliceError::DecodeError(_)) => return Err(not_base64()),
    };
    if n == 0 || n > 64 {
        return Err(AzError::bad(
            "InvalidBlockId",
            "The specified block id is invalid: it must be 1-64 bytes before Base64 encoding.",
        ));
    }
    Ok(&buf[..n])
}

/// Put Blob creates block blobs only.
pub(super) fn check_block_blob(req: &Req<'_>) -> Result<(), AzError> {
    match req.header(X_MS_BLOB_TYPE) {
        Some("BlockBlob") => Ok(()),
        Some(other) => Err(AzError::bad(
            "InvalidHeaderValue",
            format!("x-ms-blob-type {other:?} is not supported by this host; only BlockBlob is."),
        )),
        None => Err(AzError::bad(
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type.",
        )),
    }
}

/// Put Blob's answer.
fn put_blob_resp(req: &Req<'_>, p: &BlobProps, md5: String) -> Resp {
    let mut r = Resp::new(201)
        .h("etag", &p.etag)
        .h("last-modified", http_date(p.last_modified))
        .h(CONTENT_MD5, md5)
        .h("x-ms-request-server-encrypted", "true");
    echo_crc(req, &mut r);
    r
}

fn check_length(req: &Req<'_>, max: u64) -> Result<(), AzError> {
    if let Some(cl) = req.header(CONTENT_LENGTH) {
        match cl.trim().parse::<u64>() {
            Ok(n) if n == req.body.len() as u64 => {}
            _ => {
                return Err(AzError::bad(
                    "InvalidHeaderValue",
                    format!(
                        "Content-Length {cl} does not match the {} body bytes received.",
                        req.body.len()
                    ),
                ));
            }
        }
    }
    if req.body.len() as u64 > max {
        return Err(AzError::new(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
        ));
    }
    Ok(())
}

/// Verify `Content-MD5` and `x-ms-content-crc64` against the body; returns the MD5 given.
fn check_integrity(req: &Req<'_>) -> Result<Option<String>, AzError> {
    let md5 = req
        .header(CONTENT_MD5)
        .map(|_| Md5::digest(req.body).into());
    let crc = req.header(X_MS_CONTENT_CRC64).map(|_| crc64(req.body));
    check_hashes(req, md5, crc)
}

/// Compares the body's digests (computed only when the request sent the header) with
/// `Content-MD5` and `x-ms-content-crc64`; returns the request's Content-MD5 if it matched.
fn check_hashes(
    req: &Req<'_>,
    md5: Option<[u8; 16]>,
    crc: Option<[u8; 8]>,
) -> Result<Option<String>, AzError> {
    let md5_out = check_digest(
        req,
        CONTENT_MD5,
        md5.as_ref().map(|d| d.as_slice()),
        (
            "InvalidMd5",
            "The MD5 value specified in the request is invalid: it must be Base64.",
        ),
        (
            "Md5Mismatch",
            "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
        ),
    )?;
    check_digest(
        req,
        X_MS_CONTENT_CRC64,
        crc.as_ref().map(|d| d.as_slice()),
        (
            "InvalidHeaderValue",
            "x-ms-content-crc64 must be Base64 of 8 bytes.",
        ),
        (
            "Crc64Mismatch",
            "The CRC64 value specified in the request did not match with the CRC64 value calculated by the server.",
        ),
    )?;
    Ok(md5_out.map(str::to_owned))
}

/// Compares the Base64 digest in header `name`, if the request sent one, with `computed`:
/// `invalid` when it is not Base64, `mismatch` when it differs. Returns the header's value.
fn check_digest<'r>(
    req: &'r Req<'_>,
    name: &str,
    computed: Option<&[u8]>,
    invalid: (&'static str, &'static str),
    mismatch: (&'static str, &'static str),
) -> Result<Option<&'r str>, AzError> {
    let Some(v) = req.header(name) else {
        return Ok(None);
    };
    let v = v.trim();
    let want = BASE64_STANDARD
        .decode(v)
        .map_err(|_| AzError::bad(invalid.0, invalid.1))?;
    if Some(want.as_slice()) != computed {
        return Err(AzError::bad(mismatch.0, mismatch.1));
    }
    Ok(Some(v))
}

/// Azure's CRC64 (the NVMe polynomial), as the 8 little-endian bytes Azure Base64-encodes.
pub fn crc64(data: &[u8]) -> [u8; 8] {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64().to_le_bytes()
}

fn echo_crc(req: &Req<'_>, r: &mut Resp) {
    if let Some(c) = req.header(X_MS_CONTENT_CRC64) {
        r.headers.set(X_MS_CONTENT_CRC64, c);
    }
}

fn blob_headers(h: &mut ResponseHeaders, p: &BlobProps) {
    h.set("etag", &p.etag);
    h.set("last-modified", http_date(p.last_modified));
    h.set("x-ms-creation-time", http_date(p.created));
    for (name, v) in [
        (X_MS_BLOB_TYPE, "BlockBlob"),
        ("accept-ranges", "bytes"),
        ("x-ms-lease-state", "available"),
        ("x-ms-lease-status", "unlocked"),
        ("x-ms-server-encrypted", "true"),
        ("x-ms-access-tier", "Hot"),
        ("x-ms-access-tier-inferred", "true"),
    ] {
        h.set(name, v);
    }
    let content_type = p.content.content_type.as_deref();
    h.set(
        "content-type",
        content_type.unwrap_or("application/octet-stream"),
    );
    let c = &p.content;
    for (name, v) in [
        ("content-encoding", &c.content_encoding),
        ("content-language", &c.content_language),
        ("content-disposition", &c.content_disposition),
        ("cache-control", &c.cache_control),
    ] {
        if let Some(v) = v {
            h.set(name, v);
        }
    }
    if !p.blocks.is_empty() {
        h.set("x-ms-blob-committed-block-count", p.blocks.len());
    }
    for (k, v) in &p.metadata {
        h.set_named(format_args!("x-ms-meta-{k}"), v);
    }
    if !p.tags.is_empty() {
        h.set("x-ms-tag-count", p.tags.len());
    }
}
