//! Small XML helpers: escaping for the documents we write, and readers for the two request
//! bodies we accept (Put Block List and Set Blob Tags), built on quick-xml's pull parser.

use quick_xml::Reader;
use quick_xml::events::Event;

/// Escape text for element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Bounds for request documents (a Put Block List may name 50,000 committed + 100,000
/// uncommitted blocks; anything deeper or longer is rejected).
const MAX_ELEMENTS: usize = 200_000;

/// The text an entity reference (`&name;`, `&#N;`, `&#xH;`) stands for.
fn entity(name: &str) -> Result<String, String> {
    Ok(match name {
        "amp" => "&".to_owned(),
        "lt" => "<".to_owned(),
        "gt" => ">".to_owned(),
        "quot" => "\"".to_owned(),
        "apos" => "'".to_owned(),
        other => {
            let ch = other
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| other.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32)
                .ok_or_else(|| format!("unknown entity &{other};"))?;
            ch.to_string()
        }
    })
}

/// The name of element `e`, opened inside `stack`, once the document's bounds (`count`
/// elements so far) and its single root (`root`, set by the first) are checked. An empty
/// element (`<a/>`) counts like any other.
fn open(
    e: &quick_xml::events::BytesStart<'_>,
    stack: &[String],
    root: &mut String,
    count: &mut usize,
) -> Result<String, String> {
    *count += 1;
    if *count > MAX_ELEMENTS || stack.len() > 16 {
        return Err("document too large or too deep".into());
    }
    let name = e.name().as_ref().to_owned();
    if stack.is_empty() {
        if !root.is_empty() {
            return Err("more than one root element".into());
        }
        *root = name.clone();
    }
    Ok(name)
}

/// A text node: the names of its enclosing elements from the root, and its text.
pub(crate) type Leaf = (Vec<String>, String);

/// Parse a document into (path-of-element-names, text) pairs for every leaf text node.
/// Returns the root element name too. Errors are human-readable reasons.
pub(crate) fn leaves(body: &[u8]) -> Result<(String, Vec<Leaf>), String> {
    let mut r = Reader::from_reader(body);
    r.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut root = String::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut count = 0usize;
    // Index of the leaf collecting text for the innermost open element, if any.
    let mut cur: Option<usize> = None;
    loop {
        // The text of a text node, an entity or a CDATA section: appended to the current leaf.
        let text = match r.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let name = open(&e, &stack, &mut root, &mut count)?;
                stack.push(name);
                cur = None;
                None
            }
            Ok(Event::Empty(e)) => {
                let mut path = stack.clone();
                path.push(open(&e, &stack, &mut root, &mut count)?);
                out.push((path, String::new()));
                cur = None;
                None
            }
            Ok(Event::End(_)) => {
                stack.pop();
                cur = None;
                None
            }
            Ok(Event::Text(t)) => Some(t.xml10_content().into_owned()),
            Ok(Event::GeneralRef(e)) => Some(entity(&e)?),
            Ok(Event::CData(t)) => Some(str::to_owned(&t)),
            Ok(Event::Eof) => break,
            Ok(_) => None,
            Err(e) => return Err(e.to_string()),
        };
        if let Some(text) = text {
            match cur {
                Some(i) => out[i].1.push_str(&text),
                None => {
                    cur = Some(out.len());
                    out.push((stack.clone(), text));
                }
            }
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    if root.is_empty() {
        return Err("empty document".into());
    }
    Ok((root, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(esc("I'm a < & weird"), "I&apos;m a &lt; &amp; weird");
    }

    #[test]
    fn leaves_of_block_list() {
        let (root, l) = leaves(
            b"<?xml version=\"1.0\"?>\n<BlockList>\n\t<Uncommitted>QQ==</Uncommitted><Latest>a&amp;b</Latest></BlockList>",
        )
        .unwrap();
        assert_eq!(root, "BlockList");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].0, vec!["BlockList", "Uncommitted"]);
        assert_eq!(l[0].1, "QQ==");
        assert_eq!(l[1].1, "a&b");
        let (_, l) = leaves(b"<BlockList><Uncommitted>QQ==</Uncommitted>\n\t<Uncommitted>Qg==</Uncommitted></BlockList>").unwrap();
        let ids: Vec<_> = l
            .iter()
            .filter(|(p, _)| p.len() == 2)
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(ids, ["QQ==", "Qg=="]);
    }

    #[test]
    fn empty_elements_obey_the_root_and_size_rules() {
        assert_eq!(leaves(b"<Tags/>").unwrap().0, "Tags");
        assert!(leaves(b"<Tags></Tags><Other/>").is_err());
        let many = format!(
            "<BlockList>{}</BlockList>",
            "<Latest/>".repeat(MAX_ELEMENTS)
        );
        assert!(leaves(many.as_bytes()).is_err());
    }
}
