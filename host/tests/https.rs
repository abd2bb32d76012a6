//! The REST front end over HTTPS (`--https`): object_store, trusting only the host's
//! certificate, runs object_store's own basic suite over TLS, with a generated certificate and
//! with one given by `--tls-cert`/`--tls-key`; plain HTTP on the TLS port gets no answer; a
//! bad key file stops the host with an error that names it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use blobring_host::{EMULATOR_ACCOUNT, EMULATOR_KEY};
use common::Host;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::integration::*;
use object_store::{Certificate, ClientOptions};

/// A host serving HTTPS only (killed on drop), its `https://` URL and certificate path.
struct TlsHost {
    url: String,
    cert: std::path::PathBuf,
    _host: Host,
}

fn start(extra: &[&str]) -> TlsHost {
    let args = [
        "--store",
        "mem",
        "--https",
        "127.0.0.1:0",
        "--container",
        "test",
    ];
    let host = Host::spawn(&[&args[..], extra].concat());
    assert!(host.url.starts_with("https://127.0.0.1:"), "{}", host.url);
    let line = host.next_line();
    let cert = line
        .strip_prefix("tls certificate ")
        .unwrap_or_else(|| panic!("expected the certificate line, got {line:?}"));
    TlsHost {
        url: host.url.clone(),
        cert: cert.trim().into(),
        _host: host,
    }
}

fn store(host: &TlsHost) -> object_store::azure::MicrosoftAzure {
    let pem = std::fs::read(&host.cert).expect("read the host's certificate");
    let opts = ClientOptions::new()
        .with_no_system_certificates(true)
        .with_root_certificate(Certificate::from_pem(&pem).expect("a PEM certificate"));
    MicrosoftAzureBuilder::new()
        .with_account(EMULATOR_ACCOUNT)
        .with_access_key(EMULATOR_KEY)
        .with_container_name("test")
        .with_endpoint(format!("{}/{EMULATOR_ACCOUNT}", host.url))
        .with_client_options(opts)
        .build()
        .expect("object_store builder")
}

fn suite(host: &TlsHost) {
    let s = store(host);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(120), async {
                put_get_delete_list(&s).await;
                get_opts(&s).await;
                list_with_delimiter(&s).await;
                stream_get(&s).await;
            })
            .await
            .expect("the suite over HTTPS hung")
        });
}

#[test]
fn object_store_over_https_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.pem");
    let host = start(&["--tls-cert-out", out.to_str().unwrap()]);
    assert_eq!(host.cert, out);
    suite(&host);
    // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
    let addr = host.url.trim_start_matches("https://");
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /devstoreaccount1/test HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn object_store_over_https_with_a_given_certificate_and_bad_key_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let host = start(&["--tls-cert", c, "--tls-key", k]);
    assert_eq!(host.cert, cert);
    suite(&host);
    // A key file that holds no key: the host exits at once and names the file.
    std::fs::write(&key, "not a key").unwrap();
    let err = common::host_fails(&[
        "--store",
        "mem",
        "--https",
        "127.0.0.1:0",
        "--tls-cert",
        c,
        "--tls-key",
        k,
    ]);
    assert!(err.contains("k.pem") && err.contains("--tls-key"), "{err}");
}
