//! The few XML documents of the Blob API (parsed with quick-xml's pull reader).

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{BlobError, BlobItem, BlockInfo, BlockList, ListPage};

/// Walks `xml`, calling `f(path, text)` for every text node with the element path (`a/b/c`)
/// and `f(path, "")` on every start tag.
fn walk(xml: &[u8], mut f: impl FnMut(&str, Option<&str>)) -> Result<(), BlobError> {
    let mut r = Reader::from_reader(xml);
    let mut path: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let ev = r
            .read_event_into(&mut buf)
            .map_err(|e| BlobError::Protocol(format!("bad XML from the service: {e}")))?;
        match ev {
            Event::Start(s) => {
                path.push(s.name().into_inner().to_owned());
                f(&path.join("/"), None);
            }
            Event::Empty(s) => {
                path.push(s.name().into_inner().to_owned());
                let p = path.join("/");
                f(&p, None);
                f(&p, Some(""));
                path.pop();
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let raw = t.into_inner().into_owned();
                let text = quick_xml::escape::unescape(&raw)
                    .map(|c| c.into_owned())
                    .unwrap_or(raw);
                f(&path.join("/"), Some(&text));
            }
            Event::GeneralRef(g) => {
                let name = g.into_inner().into_owned();
                let ch = match name.as_str() {
                    "amp" => "&".to_owned(),
                    "lt" => "<".to_owned(),
                    "gt" => ">".to_owned(),
                    "quot" => "\"".to_owned(),
                    "apos" => "'".to_owned(),
                    n => n
                        .strip_prefix("#x")
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .or_else(|| n.strip_prefix('#').and_then(|d| d.parse().ok()))
                        .and_then(char::from_u32)
                        .map(String::from)
                        .unwrap_or_default(),
                };
                f(&path.join("/"), Some(&ch));
            }
            Event::CData(t) => f(&path.join("/"), Some(&t.into_inner())),
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

/// `Error/Code` and `Error/Message`.
pub fn parse_error(xml: &[u8]) -> (Option<String>, Option<String>) {
    let (mut code, mut msg) = (None::<String>, None::<String>);
    let _ = walk(xml, |p, t| match (p, t) {
        ("Error/Code", Some(t)) => code.get_or_insert_with(String::new).push_str(t),
        ("Error/Message", Some(t)) => msg.get_or_insert_with(String::new).push_str(t),
        _ => {}
    });
    (code, msg)
}

/// An `EnumerationResults` document.
pub fn parse_list(xml: &[u8]) -> Result<ListPage, BlobError> {
    let mut page = ListPage::default();
    let mut marker = String::new();
    walk(xml, |p, t| {
        let Some(t) = t else {
            match p {
                "EnumerationResults/Blobs/Blob" => page.blobs.push(BlobItem::default()),
                "EnumerationResults/Blobs/BlobPrefix" => page.prefixes.push(String::new()),
                _ => {}
            }
            return;
        };
        match p {
            "EnumerationResults/Blobs/Blob/Name" => {
                if let Some(b) = page.blobs.last_mut() {
                    b.name.push_str(t)
                }
            }
            "EnumerationResults/Blobs/Blob/Properties/Content-Length" => {
                if let Some(b) = page.blobs.last_mut() {
                    b.size = t.trim().parse().unwrap_or(0)
                }
            }
            "EnumerationResults/Blobs/Blob/Properties/Etag" => {
                if let Some(b) = page.blobs.last_mut() {
                    b.etag.push_str(t)
                }
            }
            "EnumerationResults/Blobs/Blob/Properties/Last-Modified" => {
                if let Some(b) = page.blobs.last_mut() {
                    b.last_modified.push_str(t)
                }
            }
            "EnumerationResults/Blobs/BlobPrefix/Name" => {
                if let Some(b) = page.prefixes.last_mut() {
                    b.push_str(t)
                }
            }
            "EnumerationResults/NextMarker" => marker.push_str(t),
            _ => {}
        }
    })?;
    page.next_marker = (!marker.is_empty()).then_some(marker);
    Ok(page)
}

/// The container names and `NextMarker` of a List Containers document.
pub fn parse_container_list(xml: &[u8]) -> Result<(Vec<String>, Option<String>), BlobError> {
    let (mut names, mut marker) = (Vec::new(), String::new());
    walk(xml, |p, t| match (p, t) {
        ("EnumerationResults/Containers/Container", None) => names.push(String::new()),
        ("EnumerationResults/Containers/Container/Name", Some(t)) => {
            if let Some(n) = names.last_mut() {
                n.push_str(t)
            }
        }
        ("EnumerationResults/NextMarker", Some(t)) => marker.push_str(t),
        _ => {}
    })?;
    Ok((names, (!marker.is_empty()).then_some(marker)))
}

/// A `BlockList` document (Get Block List).
pub fn parse_block_list(xml: &[u8]) -> Result<BlockList, BlobError> {
    let mut bl = BlockList::default();
    walk(xml, |p, t| {
        let (list, rest) = if let Some(r) = p.strip_prefix("BlockList/CommittedBlocks/Block") {
            (&mut bl.committed, r)
        } else if let Some(r) = p.strip_prefix("BlockList/UncommittedBlocks/Block") {
            (&mut bl.uncommitted, r)
        } else {
            return;
        };
        match (rest, t) {
            ("", None) => list.push(BlockInfo::default()),
            ("/Name", Some(t)) => {
                if let Some(b) = list.last_mut() {
                    b.id.push_str(t)
                }
            }
            ("/Size", Some(t)) => {
                if let Some(b) = list.last_mut() {
                    b.size = t.trim().parse().unwrap_or(0)
                }
            }
            _ => {}
        }
    })?;
    Ok(bl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_errors_parse() {
        let x = br#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Prefix>a/</Prefix><Blobs><Blob><Name>a/x&amp;y</Name><Properties><Content-Length>12</Content-Length><Etag>"0x1"</Etag></Properties></Blob><BlobPrefix><Name>a/d/</Name></BlobPrefix></Blobs><NextMarker>m2</NextMarker></EnumerationResults>"#;
        let p = parse_list(x).unwrap();
        assert_eq!(p.blobs.len(), 1);
        assert_eq!(p.blobs[0].name, "a/x&y");
        assert_eq!(p.blobs[0].size, 12);
        assert_eq!(p.prefixes, vec!["a/d/".to_string()]);
        assert_eq!(p.next_marker.as_deref(), Some("m2"));
        let (c, m) = parse_error(b"<?xml version=\"1.0\"?><Error><Code>BlobNotFound</Code><Message>nope</Message></Error>");
        assert_eq!(c.as_deref(), Some("BlobNotFound"));
        assert_eq!(m.as_deref(), Some("nope"));
        let b = parse_block_list(b"<BlockList><CommittedBlocks><Block><Name>QQ==</Name><Size>5</Size></Block></CommittedBlocks><UncommittedBlocks/></BlockList>").unwrap();
        assert_eq!(b.committed.len(), 1);
        assert_eq!(b.committed[0].size, 5);
        assert!(b.uncommitted.is_empty());
    }

    #[test]
    fn container_list_parses() {
        let x = br#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="http://h/"><Prefix></Prefix><Containers><Container><Name>a&amp;b</Name><Properties><Etag>"0x1"</Etag></Properties></Container><Container><Name>c</Name></Container></Containers><NextMarker>c</NextMarker></EnumerationResults>"#;
        let (names, next) = parse_container_list(x).unwrap();
        assert_eq!(names, vec!["a&b".to_string(), "c".to_string()]);
        assert_eq!(next.as_deref(), Some("c"));
        let (names, next) = parse_container_list(
            b"<EnumerationResults><Containers/><NextMarker/></EnumerationResults>",
        )
        .unwrap();
        assert!(names.is_empty() && next.is_none());
    }
}
