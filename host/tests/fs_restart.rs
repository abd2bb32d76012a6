//! The `fs` store survives a host restart: committed blobs (bytes, properties, metadata,
//! committed block list) and staged blocks are all there after the process is restarted.

mod common;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use common::{Host, header};

#[test]
fn fs_store_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("fs:{}", dir.path().display());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let id_a = BASE64_STANDARD.encode("block-a");
    let id_b = BASE64_STANDARD.encode("block-b");

    let etag = {
        let host = Host::start(&spec, &[]);
        let (h, _) = host.expect(
            201,
            "PUT",
            &at("/dir/blob.bin"),
            &[
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-meta-colour", "blue"),
                ("x-ms-blob-content-type", "application/x-test"),
            ],
            &body,
        );
        // A block list blob and one staged block that is never committed.
        for (id, data) in [(&id_a, b"AAAA".as_slice()), (&id_b, b"BB".as_slice())] {
            host.expect(
                201,
                "PUT",
                &at(&format!("/blocks?comp=block&blockid={}", urlenc(id))),
                &[],
                data,
            );
        }
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>{id_a}</Latest></BlockList>"
        );
        host.expect(
            201,
            "PUT",
            &at("/blocks?comp=blocklist"),
            &[],
            xml.as_bytes(),
        );
        host.expect(
            201,
            "PUT",
            &at(&format!("/staged?comp=block&blockid={}", urlenc(&id_b))),
            &[],
            b"staged",
        );
        host.stop();
        header(&h, "etag").unwrap().to_owned()
    };

    let host = Host::start(&spec, &[]);
    let (h, got) = host.expect(200, "GET", &at("/dir/blob.bin"), &[], &[]);
    assert_eq!(got, body);
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    assert_eq!(header(&h, "x-ms-meta-colour"), Some("blue"));
    assert_eq!(header(&h, "content-type"), Some("application/x-test"));

    let (_, got) = host.expect(200, "GET", &at("/blocks"), &[], &[]);
    assert_eq!(got, b"AAAA");
    let (_, xml) = host.expect(
        200,
        "GET",
        &at("/blocks?comp=blocklist&blocklisttype=all"),
        &[],
        &[],
    );
    let xml = String::from_utf8(xml).unwrap();
    assert!(
        xml.contains(&format!(
            "<CommittedBlocks><Block><Name>{id_a}</Name><Size>4</Size></Block></CommittedBlocks>"
        )),
        "{xml}"
    );
    // Committing the block list discarded the other staged block of that blob.
    assert!(
        xml.contains("<UncommittedBlocks></UncommittedBlocks>"),
        "{xml}"
    );

    // The staged block of another blob survived and can be committed now.
    let (_, xml) = host.expect(
        200,
        "GET",
        &at("/staged?comp=blocklist&blocklisttype=uncommitted"),
        &[],
        &[],
    );
    assert!(String::from_utf8(xml).unwrap().contains(&id_b));
    let xml = format!("<BlockList><Uncommitted>{id_b}</Uncommitted></BlockList>");
    host.expect(
        201,
        "PUT",
        &at("/staged?comp=blocklist"),
        &[],
        xml.as_bytes(),
    );
    let (_, got) = host.expect(200, "GET", &at("/staged"), &[], &[]);
    assert_eq!(got, b"staged");

    // Listing works from the reloaded index.
    let (_, xml) = host.expect(200, "GET", &at("?restype=container&comp=list"), &[], &[]);
    let xml = String::from_utf8(xml).unwrap();
    for name in ["blocks", "dir/blob.bin", "staged"] {
        assert!(xml.contains(&format!("<Name>{name}</Name>")), "{xml}");
    }
}

/// The path of `rel` (`/blob` or `?query`) in the container `test`.
fn at(rel: &str) -> String {
    format!("/devstoreaccount1/test{rel}")
}

fn urlenc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
