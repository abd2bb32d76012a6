//! List Containers and List Blobs: prefixes, delimiters, markers and page sizes, rendered as
//! the service's XML.

use std::fmt::Write as _;

use super::{Executor, http_date};
use crate::request::{AzError, Req, Resp};
use crate::store::{BlobProps, Store};
use crate::xml::esc;

impl Executor {
    pub(super) fn list_containers(&self, st: &dyn Store, req: &Req<'_>) -> Result<Resp, AzError> {
        let prefix = req.query("prefix").unwrap_or("");
        let marker = req.query("marker").unwrap_or("");
        let max = max_results(req)?;
        let all = st.list_containers(prefix)?;
        let mut items: Vec<_> = all
            .into_iter()
            .filter(|c| marker.is_empty() || c.name.as_str() > marker)
            .collect();
        let next = if items.len() > max {
            items.truncate(max);
            items.last().map(|c| c.name.clone())
        } else {
            None
        };
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{}\"><Prefix>{}</Prefix><Marker>{}</Marker><MaxResults>{max}</MaxResults><Containers>",
            esc(&self.endpoint(req)),
            esc(prefix),
            esc(marker)
        );
        for c in items {
            let _ = write!(
                x,
                "<Container><Name>{}</Name><Properties><Last-Modified>{}</Last-Modified><Etag>{}</Etag><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><HasImmutabilityPolicy>false</HasImmutabilityPolicy><HasLegalHold>false</HasLegalHold></Properties></Container>",
                esc(&c.name),
                http_date(c.last_modified),
                esc(&c.etag)
            );
        }
        let _ = write!(
            x,
            "</Containers><NextMarker>{}</NextMarker></EnumerationResults>",
            esc(next.as_deref().unwrap_or(""))
        );
        Ok(Resp::new(200).xml(x))
    }

    pub(super) fn endpoint(&self, req: &Req<'_>) -> String {
        let host = req.header("host").unwrap_or("127.0.0.1");
        if req.path_has_account {
            format!("http://{host}/{}/", self.account)
        } else {
            format!("http://{host}/")
        }
    }

    pub(super) fn list_blobs(
        &self,
        st: &dyn Store,
        req: &Req<'_>,
        c: &str,
    ) -> Result<Resp, AzError> {
        let q = BlobQuery::of(req)?;
        let (items, next) = q.page(st, c)?;
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{}\" ContainerName=\"{}\">",
            esc(&self.endpoint(req)),
            esc(c)
        );
        if !q.prefix.is_empty() {
            let _ = write!(x, "<Prefix>{}</Prefix>", esc(q.prefix));
        }
        if !q.marker.is_empty() {
            let _ = write!(x, "<Marker>{}</Marker>", esc(q.marker));
        }
        if req.query("maxresults").is_some() {
            let _ = write!(x, "<MaxResults>{}</MaxResults>", q.max);
        }
        if !q.delimiter.is_empty() {
            let _ = write!(x, "<Delimiter>{}</Delimiter>", esc(q.delimiter));
        }
        x.push_str("<Blobs>");
        for i in &items {
            match i {
                Item::Prefix(p) => {
                    let _ = write!(x, "<BlobPrefix><Name>{}</Name></BlobPrefix>", esc(p));
                }
                Item::Blob(p) => write_blob(&mut x, p, q.with_meta, q.with_tags),
            }
        }
        let _ = write!(
            x,
            "</Blobs><NextMarker>{}</NextMarker></EnumerationResults>",
            esc(next.as_deref().unwrap_or(""))
        );
        Ok(Resp::new(200).xml(x))
    }
}

/// One entry of a List Blobs page.
enum Item {
    Blob(Box<BlobProps>),
    Prefix(String),
}

/// The query of a List Blobs request.
struct BlobQuery<'a> {
    prefix: &'a str,
    delimiter: &'a str,
    marker: &'a str,
    /// Where the listing starts: the marker, else `startFrom`.
    from: &'a str,
    max: usize,
    with_meta: bool,
    with_tags: bool,
}

impl<'a> BlobQuery<'a> {
    fn of(req: &'a Req<'_>) -> Result<Self, AzError> {
        let marker = req.query("marker").unwrap_or("");
        let include = req.query("include").unwrap_or("");
        let included = |what: &str| include.split(',').any(|i| i.trim() == what);
        Ok(BlobQuery {
            prefix: req.query("prefix").unwrap_or(""),
            delimiter: req.query("delimiter").unwrap_or(""),
            marker,
            from: if marker.is_empty() {
                req.query("startfrom").unwrap_or("")
            } else {
                marker
            },
            max: max_results(req)?,
            with_meta: included("metadata"),
            with_tags: included("tags"),
        })
    }

    /// The page of blobs and prefixes after the marker, and the next marker if there is more.
    fn page(&self, st: &dyn Store, c: &str) -> Result<(Vec<Item>, Option<String>), AzError> {
        let (prefix, delimiter, marker, max) = (self.prefix, self.delimiter, self.marker, self.max);
        let marker_is_prefix = !delimiter.is_empty() && marker.ends_with(delimiter);
        let mut items: Vec<Item> = Vec::new();
        let mut last_prefix: Option<String> = None;
        let mut more = false;
        st.list_blobs(c, prefix, self.from, &mut |p: &BlobProps| {
            let name = p.name.as_str();
            if !marker.is_empty()
                && (name <= marker || (marker_is_prefix && name.starts_with(marker)))
            {
                return true;
            }
            let pre = if delimiter.is_empty() {
                None
            } else {
                name[prefix.len()..]
                    .find(delimiter)
                    .map(|i| &name[..prefix.len() + i + delimiter.len()])
            };
            if pre.is_some() && last_prefix.as_deref() == pre {
                return true;
            }
            if items.len() == max {
                more = true;
                return false;
            }
            items.push(match pre {
                Some(pre) => {
                    last_prefix = Some(pre.to_owned());
                    Item::Prefix(pre.to_owned())
                }
                None => Item::Blob(Box::new(p.clone())),
            });
            true
        })?;
        let next = more.then(|| items.last()).flatten().map(|i| match i {
            Item::Blob(p) => p.name.clone(),
            Item::Prefix(p) => p.clone(),
        });
        Ok((items, next))
    }
}

/// One `<Blob>` of a List Blobs page.
fn write_blob(x: &mut String, p: &BlobProps, with_meta: bool, with_tags: bool) {
    let ct = &p.content;
    let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let _ = write!(
        x,
        "<Blob><Name>{}</Name><Properties><Creation-Time>{}</Creation-Time><Last-Modified>{}</Last-Modified><Etag>{}</Etag><Content-Length>{}</Content-Length><Content-Type>{}</Content-Type><Content-Encoding>{}</Content-Encoding><Content-Language>{}</Content-Language><Content-CRC64 /><Content-MD5>{}</Content-MD5><Cache-Control>{}</Cache-Control><Content-Disposition>{}</Content-Disposition><BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted>",
        esc(&p.name),
        http_date(p.created),
        http_date(p.last_modified),
        esc(p.etag.trim_matches('"')),
        p.size,
        esc(ct
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream")),
        opt(&ct.content_encoding),
        opt(&ct.content_language),
        opt(&ct.content_md5),
        opt(&ct.cache_control),
        opt(&ct.content_disposition),
    );
    if !p.tags.is_empty() {
        let _ = write!(x, "<TagCount>{}</TagCount>", p.tags.len());
    }
    x.push_str("</Properties>");
    if with_meta {
        x.push_str("<Metadata>");
        for (k, v) in &p.metadata {
            let _ = write!(x, "<{k}>{}</{k}>", esc(v));
        }
        x.push_str("</Metadata>");
    }
    if with_tags && !p.tags.is_empty() {
        x.push_str("<Tags><TagSet>");
        for (k, v) in &p.tags {
            let _ = write!(
                x,
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                esc(k),
                esc(v)
            );
        }
        x.push_str("</TagSet></Tags>");
    }
    x.push_str("</Blob>");
}

fn max_results(req: &Req<'_>) -> Result<usize, AzError> {
    match req.query("maxresults") {
        None => Ok(5000),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Ok((n as usize).min(5000)),
            _ => Err(AzError::bad(
                "OutOfRangeQueryParameterValue",
                "maxresults must be a positive integer.",
            )),
        },
    }
}
