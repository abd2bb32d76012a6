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
        let (s, h, _) = host.request(
            "PUT",
            "/devstoreaccount1/test/dir/blob.bin",
            &[
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-meta-colour", "blue"),
                ("x-ms-blob-content-type", "application/x-test"),
            ],
            &body,
        );
        assert_eq!(s, 201);
        // A block list blob and one staged block that is never committed.
        for (id, data) in [(&id_a, b"AAAA".as_slice()), (&id_b, b"BB".as_slice())] {
            let (s, _, _) = host.request(
                "PUT",
                &format!(
                    "/devstoreaccount1/test/blocks?comp=block&blockid={}",
                    urlenc(id)
                ),
                &[],
                data,
            );
            assert_eq!(s, 201);
        }
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>{id_a}</Latest></BlockList>"
        );
        let (s, _, _) = host.request(
            "PUT",
            "/devstoreaccount1/test/blocks?comp=blocklist",
            &[],
            xml.as_bytes(),
        );
        assert_eq!(s, 201);
        let (s, _, _) = host.request(
            "PUT",
            &format!(
                "/devstoreaccount1/test/staged?comp=block&blockid={}",
                urlenc(&id_b)
            ),
            &[],
            b"staged",
        );
        assert_eq!(s, 201);
        host.stop();
        header(&h, "etag").unwrap().to_owned()
    };

    let host = Host::start(&spec, &[]);
    let (s, h, got) = host.request("GET", "/devstoreaccount1/test/dir/blob.bin", &[], &[]);
    assert_eq!(s, 200);
    assert_eq!(got, body);
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    assert_eq!(header(&h, "x-ms-meta-colour"), Some("blue"));
    assert_eq!(header(&h, "content-type"), Some("application/x-test"));

    let (s, _, got) = host.request("GET", "/devstoreaccount1/test/blocks", &[], &[]);
    assert_eq!(s, 200);
    assert_eq!(got, b"AAAA");
    let (s, _, xml) = host.request(
        "GET",
        "/devstoreaccount1/test/blocks?comp=blocklist&blocklisttype=all",
        &[],
        &[],
    );
    assert_eq!(s, 200);
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
    let (s, _, xml) = host.request(
        "GET",
        "/devstoreaccount1/test/staged?comp=blocklist&blocklisttype=uncommitted",
        &[],
        &[],
    );
    assert_eq!(s, 200);
    assert!(String::from_utf8(xml).unwrap().contains(&id_b));
    let xml = format!("<BlockList><Uncommitted>{id_b}</Uncommitted></BlockList>");
    let (s, _, _) = host.request(
        "PUT",
        "/devstoreaccount1/test/staged?comp=blocklist",
        &[],
        xml.as_bytes(),
    );
    assert_eq!(s, 201);
    let (s, _, got) = host.request("GET", "/devstoreaccount1/test/staged", &[], &[]);
    assert_eq!(s, 200);
    assert_eq!(got, b"staged");

    // Listing works from the reloaded index.
    let (s, _, xml) = host.request(
        "GET",
        "/devstoreaccount1/test?restype=container&comp=list",
        &[],
        &[],
    );
    assert_eq!(s, 200);
    let xml = String::from_utf8(xml).unwrap();
    for name in ["blocks", "dir/blob.bin", "staged"] {
        assert!(xml.contains(&format!("<Name>{name}</Name>")), "{xml}");
    }
}

fn urlenc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
