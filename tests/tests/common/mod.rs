//! Pieces shared by several test files (included with `mod common;`): what needs the tests'
//! dev-dependencies, which the fixtures library (`blobring_tests`) does not have, or names the
//! tests' binaries (`CARGO_BIN_EXE_*`, which only tests can name).

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

use blobring_tests::{HostStack, scratch, shm_scratch};
use tempfile::TempDir;

/// The tests' copy of blobringd.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");

/// A [`HostStack`] of [`DAEMON`] (`host_args` and `daemon_args` extra) in a fresh [`scratch`]
/// directory, returned with it: bind both (`let (dir, s) = …`), so the stack is dropped first.
pub fn scratch_stack(host_args: &[&str], daemon_args: &[&str]) -> (TempDir, HostStack) {
    stack_in(scratch(), host_args, daemon_args)
}

/// [`scratch_stack`] in `/dev/shm` ([`shm_scratch`]): the host's store is in memory.
pub fn shm_stack(host_args: &[&str], daemon_args: &[&str]) -> (TempDir, HostStack) {
    stack_in(shm_scratch(), host_args, daemon_args)
}

fn stack_in(dir: TempDir, host_args: &[&str], daemon_args: &[&str]) -> (TempDir, HostStack) {
    let s = HostStack::start(DAEMON, dir.path(), host_args, daemon_args);
    (dir, s)
}

/// The whole body of `path` in `store`: a GET, then all its bytes (an error fails the test).
pub async fn get_bytes<S: object_store::ObjectStore + ?Sized>(
    store: &S,
    path: &object_store::path::Path,
) -> bytes::Bytes {
    use object_store::ObjectStoreExt as _;
    store.get(path).await.unwrap().bytes().await.unwrap()
}

/// object_store's own integration suite against the Azure `store` (the read, write, list, copy
/// and multipart cases blobring supports), on `rt`, bounded at 5 minutes; `what` names the
/// path in the failure message.
pub fn object_store_suite(
    rt: &tokio::runtime::Runtime,
    store: &object_store::azure::MicrosoftAzure,
    what: &str,
) {
    use object_store::integration::*;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), async {
            put_get_delete_list(store).await;
            list_with_offset_exclusivity(store).await;
            get_opts(store).await;
            list_uses_directories_correctly(store).await;
            list_with_delimiter(store).await;
            rename_and_copy(store).await;
            copy_if_not_exists(store).await;
            copy_rename_nonexistent_object(store).await;
            stream_get(store).await;
            put_opts(store, true).await;
            multipart(store, store).await;
            multipart_put_part_out_of_order(store, store).await;
            multipart_race_condition(store, false).await;
            multipart_out_of_order(store).await;
            list_paginated(store, store).await;
        })
        .await
        .unwrap_or_else(|_| panic!("object_store suite {what}hung"));
    });
}
