//! Pieces shared by several test files (included with `mod common;`): what needs the tests'
//! dev-dependencies, which the fixtures library (`blobring_tests`) does not have.

use std::time::Duration;

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
