//! object_store's own integration suite (the same functions its `azure_blob_test` runs against
//! Azurite) against the real `blobring-host` binary, once with the `mem` store and once with
//! the `fs` store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blobring_host::EMULATOR_ACCOUNT;
use common::{Host, azurite_suite, header};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::buffered::BufWriter;
use object_store::integration::*;
use object_store::path::Path;
use object_store::{ObjectStore, TagSet};
use tokio::io::AsyncWriteExt;

/// The whole suite must finish within this bound.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

fn store_for(host: &Host) -> MicrosoftAzure {
    common::azure(&host.account_url(), "test")
}

/// object_store's private `signing` check: a SAS URL from `signed_url` must GET the object,
/// and a tampered one is rejected.
async fn signing(store: &MicrosoftAzure, host: &Host) {
    let pq = common::sas_get(store, &host.url).await;
    let bad = pq.replace("sp=r", "sp=rw");
    let (status, _, _) = common::unsigned_get(&host.url, &bad);
    assert_eq!(status, 403);
}

/// object_store's private `tagging` check, reading tags back with Get Blob Tags.
async fn tagging(store: Arc<dyn ObjectStore>, host: &Host) {
    let tags = [
        ("foo.com=bar/s", "bananas/foo.com-_"),
        ("namespace/key.foo", "value with a space"),
    ];
    let mut tag_set = TagSet::default();
    for (k, v) in tags {
        tag_set.push(k, v);
    }
    let path = Path::from("tag_test");
    store
        .put_opts(&path, "test".into(), tag_set.clone().into())
        .await
        .unwrap();
    let multi_path = Path::from("tag_test_multi");
    let mut write = store
        .put_multipart_opts(&multi_path, tag_set.clone().into())
        .await
        .unwrap();
    write.put_part("foo".into()).await.unwrap();
    write.complete().await.unwrap();
    let buf_path = Path::from("tag_test_buf");
    let mut buf = BufWriter::new(Arc::clone(&store), buf_path.clone()).with_tags(tag_set);
    buf.write_all(b"foo").await.unwrap();
    buf.shutdown().await.unwrap();

    for p in [path, multi_path, buf_path] {
        let (status, h, body) = host.request(
            "GET",
            &format!("/{EMULATOR_ACCOUNT}/test/{p}?comp=tags"),
            &[],
            &[],
        );
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-type"), Some("application/xml"));
        let body = String::from_utf8(body).unwrap();
        for (k, v) in tags {
            let k = k.replace('&', "&amp;");
            assert!(
                body.contains(&format!("<Tag><Key>{k}</Key><Value>{v}</Value></Tag>")),
                "{p}: {body}"
            );
        }
    }
}

async fn run_suite(host: &Host) {
    let integration = store_for(host);
    azurite_suite(&integration).await;
    copy_rename_nonexistent_object(&integration).await;
    signing(&integration, host).await;
    tagging(Arc::new(store_for(host)), host).await;
    // object_store skips this against Azurite ("doesn't support attributes properly"); we
    // follow the real service, so run it.
    put_get_attributes(&integration).await;
    let err = get_nonexistent_object(&integration, None)
        .await
        .unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_suite_mem() {
    let host = Host::start("mem", &[]);
    tokio::time::timeout(SUITE_TIMEOUT, run_suite(&host))
        .await
        .expect("suite timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_suite_fs() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&format!("fs:{}", dir.path().display()), &[]);
    tokio::time::timeout(SUITE_TIMEOUT, run_suite(&host))
        .await
        .expect("suite timed out");
}

/// Set in the child process of [`object_store_suite_emulator_mode`].
const CHILD_ENV: &str = "BLOBRING_SUITE_EMULATOR_CHILD";

/// The same suite with `with_use_emulator(true)`, exactly as object_store runs it against
/// Azurite. The emulator endpoint can only come from `AZURITE_BLOB_STORAGE_URL`, and setting
/// the environment of a running multi-threaded test process is unsound, so the test re-runs
/// itself in a child process with the variable set.
#[test]
fn object_store_suite_emulator_mode() {
    if std::env::var_os(CHILD_ENV).is_some() {
        emulator_mode_child();
        return;
    }
    let host = Host::start("mem", &[]);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "object_store_suite_emulator_mode",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("AZURITE_BLOB_STORAGE_URL", &host.url)
        .env("BLOBRING_SUITE_HOST_URL", &host.url)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + SUITE_TIMEOUT + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("emulator-mode suite child timed out");
    assert!(status.success(), "emulator-mode suite failed: {status}");
}

/// The child's side of [`object_store_suite_emulator_mode`]: the suite through the emulator
/// settings against the host at `BLOBRING_SUITE_HOST_URL`.
#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn emulator_mode_child() {
    let url = std::env::var("BLOBRING_SUITE_HOST_URL").unwrap();
    let host = common::HostRef::new(url);
    let integration = MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_container_name("test")
        .with_http_connector(MarkerHttpConnector::default())
        .build()
        .unwrap();
    tokio::time::timeout(SUITE_TIMEOUT, async {
        azurite_suite(&integration).await;
        signing_url_works(&integration, &host).await;
    })
    .await
    .expect("suite timed out");
}

async fn signing_url_works(store: &MicrosoftAzure, host: &common::HostRef) {
    common::sas_get(store, &host.url).await;
}
