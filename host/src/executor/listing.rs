//! List Containers and List Blobs: prefixes, delimiters, markers and page sizes, rendered as
//! the service's XML.

use super::*;

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
        let prefix = req.query("prefix").unwrap_or("");
        let delimiter = req.query("delimiter").unwrap_or("");
        let marker = req.query("marker").unwrap_or("");
        let start_from = req.query("startfrom").unwrap_or("");
        let max = max_results(req)?;
        let include = req.query("include").unwrap_or("");
        let with_meta = include.split(',').any(|i| i.trim() == "metadata");
        let with_tags = include.split(',').any(|i| i.trim() == "tags");
        let marker_is_prefix = !delimiter.is_empty() && marker.ends_with(delimiter);
        let from = if !marker.is_empty() {
            marker
        } else {
            start_from
        };

        enum Item {
            Blob(Box<BlobProps>),
            Prefix(String),
        }
        let mut items: Vec<Item> = Vec::new();
        let mut last_prefix: Option<String> = None;
        let mut more = false;
        st.list_blobs(c, prefix, from, &mut |p: &BlobProps| {
            let name = p.name.as_str();
            if !marker.is_empty()
                && (name <= marker || (marker_is_prefix && name.starts_with(marker)))
            {
                return true;
            }
            let item = if delimiter.is_empty() {
                None
            } else {
                name[prefix.len()..]
                    .find(delimiter)
                    .map(|i| name[..prefix.len() + i + delimiter.len()].to_owned())
            };
            match item {
                Some(pre) => {
                    if last_prefix.as_deref() == Some(pre.as_str()) {
                        return true;
                    }
                    if items.len() == max {
                        more = true;
                        return false;
                    }
                    last_prefix = Some(pre.clone());
                    items.push(Item::Prefix(pre));
                }
                None => {
                    if items.len() == max {
                        more = true;
                        return false;
                    }
                    items.push(Item::Blob(Box::new(p.clone())));
                }
            }
            true
        })?;
        let next = if more {
            items.last().map(|i| match i {
                Item::Blob(p) => p.name.clone(),
                Item::Prefix(p) => p.clone(),
            })
        } else {
            None
        };
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{}\" ContainerName=\"{}\">",
            esc(&self.endpoint(req)),
            esc(c)
        );
        if !prefix.is_empty() {
            let _ = write!(x, "<Prefix>{}</Prefix>", esc(prefix));
        }
        if !marker.is_empty() {
            let _ = write!(x, "<Marker>{}</Marker>", esc(marker));
        }
        if req.query("maxresults").is_some() {
            let _ = write!(x, "<MaxResults>{max}</MaxResults>");
        }
        if !delimiter.is_empty() {
            let _ = write!(x, "<Delimiter>{}</Delimiter>", esc(delimiter));
        }
        x.push_str("<Blobs>");
        for i in &items {
            match i {
                Item::Prefix(p) => {
                    let _ = write!(x, "<BlobPrefix><Name>{}</Name></BlobPrefix>", esc(p));
                }
                Item::Blob(p) => {
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
