//! Known vectors: spelled out by hand from the Shared Key documentation (moved here from the
//! host's executor tests), the documentation's own canonical-resource example, and
//! signatures the SDK's signer produced before the two sides shared this code.

use super::*;
use crate::{EMULATOR_ACCOUNT, EMULATOR_KEY};

const DATE: &str = "Tue, 24 Nov 2026 04:00:00 GMT";

type Pairs<'a> = &'a [(&'a str, &'a str)];

/// Headers given as text (`Some` value) and the query as it is.
type FromPairs<'a> = Canonical<
    'a,
    std::iter::Map<
        std::slice::Iter<'a, (&'a str, &'a str)>,
        fn(&(&'a str, &'a str)) -> (&'a str, Option<&'a str>),
    >,
    std::iter::Copied<std::slice::Iter<'a, (&'a str, &'a str)>>,
>;

fn canonical<'a>(
    method: &'a str,
    account: &'a str,
    path: &'a str,
    headers: Pairs<'a>,
    query: Pairs<'a>,
) -> FromPairs<'a> {
    Canonical {
        method,
        account,
        path,
        date: None,
        headers: headers.iter().map(|&(k, v)| (k, Some(v))),
        query: query.iter().copied(),
    }
}

/// The host's `string_to_sign_layout` vector: a Put Block against the emulator, signed with an
/// empty `Date` line.
#[test]
fn put_block_layout() {
    let mut c = canonical(
        "PUT",
        EMULATOR_ACCOUNT,
        "/devstoreaccount1/test/x",
        &[
            ("content-length", "5"),
            ("x-ms-version", "2023-11-03"),
            ("x-ms-date", DATE),
        ],
        &[("comp", "block"), ("blockid", "QQ==")],
    );
    c.date = Some("");
    assert_eq!(
        c.render(),
        "PUT\n\n\n5\n\n\n\n\n\n\n\n\nx-ms-date:Tue, 24 Nov 2026 04:00:00 GMT\nx-ms-version:2023-11-03\n/devstoreaccount1/devstoreaccount1/test/x\nblockid:QQ==\ncomp:block"
    );
}

/// "Authorize with Shared Key", canonicalized resource string: `GET
/// https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=list&include=snapshots&include=metadata&include=uncommittedblobs`
/// gives `/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container`.
#[test]
fn documented_canonical_resource() {
    let c = canonical(
        "GET",
        "myaccount",
        "/mycontainer",
        &[
            ("x-ms-date", "Sun, 11 Oct 2009 21:49:13 GMT"),
            ("x-ms-version", "2009-09-19"),
        ],
        &[
            ("restype", "container"),
            ("comp", "list"),
            ("include", "snapshots"),
            ("include", "metadata"),
            ("include", "uncommittedblobs"),
        ],
    );
    assert_eq!(
        c.render(),
        "GET\n\n\n\n\n\n\n\n\n\n\n\n\
         x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-version:2009-09-19\n\
         /myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
    );
}

/// Every standard header in its place; `Content-Length: 0` signs empty; names compared without
/// case; a `Date` override.
#[test]
fn standard_headers_in_order() {
    let headers = [
        ("Range", "bytes=0-1"),
        ("content-encoding", "gzip"),
        ("Content-Length", "0"),
        ("If-Unmodified-Since", "d4"),
        ("content-language", "en"),
        ("content-md5", "md5"),
        ("if-none-match", "*"),
        ("content-type", "text/plain"),
        ("date", "d1"),
        ("if-modified-since", "d2"),
        ("if-match", "\"e\""),
        ("range", "second, ignored"),
    ];
    let mut c = canonical("GET", "a", "/c/b", &headers, &[]);
    assert_eq!(
        c.render(),
        "GET\ngzip\nen\n\nmd5\ntext/plain\nd1\nd2\n\"e\"\n*\nd4\nbytes=0-1\n/a/c/b"
    );
    c.date = Some("");
    assert!(c.render().contains("text/plain\n\nd2\n"));
}

/// `x-ms-*` names lower-cased and sorted, values of one name trimmed and joined in order, a
/// value that is not text left out (its name still listed); other headers ignored.
#[test]
fn x_ms_headers_merge_and_sort() {
    let headers = [
        ("X-Ms-Meta-B", " 1 "),
        ("x-ms-meta-a", "2"),
        ("x-msnot", "x"),
        ("x-ms-meta-b", "3"),
        ("x-blobring-body-window", "0-1"),
    ];
    let c = canonical("GET", "a", "/c", &headers, &[]);
    assert!(
        c.render()
            .ends_with("\nx-ms-meta-a:2\nx-ms-meta-b:1,3\n/a/c"),
        "{}",
        c.render()
    );
    let render = |headers: &[(&'static str, Option<&'static str>)]| {
        Canonical {
            method: "GET",
            account: "a",
            path: "/c",
            date: None,
            headers: headers.iter().copied(),
            query: std::iter::empty(),
        }
        .render()
    };
    let h = [
        ("x-ms-z", None),
        ("x-ms-y", Some("v")),
        ("x-ms-z", Some("w")),
    ];
    assert!(render(&h).ends_with("\nx-ms-y:v\nx-ms-z:w\n/a/c"));
    assert!(render(&[("x-ms-z", None)]).ends_with("\nx-ms-z:\n/a/c"));
}

/// Query names lower-cased (Unicode, as `str::to_lowercase`) and sorted; values of one name
/// sorted, repeated ones kept; empty names and values kept.
#[test]
fn query_sorted_with_repeats() {
    let q = [
        ("Comp", "x"),
        ("comp", "a"),
        ("b", "2"),
        ("b", "1"),
        ("b", "2"),
        ("", "e"),
        ("Ü", ""),
    ];
    let c = canonical("GET", "a", "/c", &[], &q);
    assert!(
        c.render().ends_with("/a/c\n:e\nb:1,2,2\ncomp:a,x\nü:"),
        "{}",
        c.render()
    );
}

/// Signatures the SDK produced with the emulator key before signer and verifier shared this
/// code (its `render_head` for a Create Container and a Put Block).
#[test]
fn known_signatures() {
    let key = SigningKey::from_base64(EMULATOR_KEY).unwrap();
    let c = canonical(
        "PUT",
        EMULATOR_ACCOUNT,
        "/devstoreaccount1/c",
        &[
            ("x-ms-date", DATE),
            ("x-ms-version", "2023-11-03"),
            ("content-length", "0"),
        ],
        &[("restype", "container")],
    );
    assert_eq!(
        key.sign(&c).as_str(),
        "WozCuWyyvdzZjghLCURcq95mWE+FarNnuk6rtS36RCg="
    );
    assert_eq!(key.sign_str(&c.render()), key.sign(&c));
    let c = canonical(
        "PUT",
        EMULATOR_ACCOUNT,
        "/devstoreaccount1/c/a%20b",
        &[
            ("x-ms-date", DATE),
            ("X-Ms-Meta-Foo", " bar "),
            ("x-ms-content-crc64", "AAAAAAAAAAA="),
            ("If-Match", "\"e\""),
            ("x-ms-version", "2023-11-03"),
            ("content-length", "5"),
        ],
        &[("comp", "block"), ("blockid", "QQ==")],
    );
    let sig = key.sign(&c);
    assert_eq!(
        sig.to_string(),
        "tIOzz2gPsRJenu9tgVr8qWq3GNPz6z2KoP01OL18EtY="
    );
    let raw = B64.decode(sig.as_str()).unwrap();
    assert!(key.verify_str(&c.render(), &raw));
    assert!(!key.verify_str(&c.render().replace("bar", "baz"), &raw));
    assert!(!SigningKey::new(&[1; 64]).verify_str(&c.render(), &raw));
}
