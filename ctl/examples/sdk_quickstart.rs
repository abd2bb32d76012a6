#![forbid(unsafe_code)]
//! The README's quick start for the blobring SDK: write a blob, read it whole and as a range,
//! list a prefix, and move a file up and down with striped transfers and a progress callback.
//!
//! Needs a running stack (`blobring up` prints the `BLOBRING_SOCKET` to export):
//! `cargo run --release -p blobring-ctl --example sdk_quickstart -- <some local file>`.

use blobring::blob::{AccountConfig, BlobService, ListOptions};
use blobring::transfer::{self, TransferOptions};
use blobring::{Client, block_on};

fn main() -> anyhow::Result<()> {
    // blobringd from $BLOBRING_SOCKET (else the default path); the account from
    // $AZURE_STORAGE_CONNECTION_STRING (unset: the emulator account `blobring up` serves).
    let svc = BlobService::new(Client::connect_default()?, AccountConfig::from_env()?);
    let file = std::env::args().nth(1);
    block_on(async {
        match svc.create_container("demo").await {
            Err(e) if !e.is_already_exists() => return Err(e.into()),
            _ => {}
        }
        svc.put_blob(
            "demo",
            "notes/hello.txt",
            b"hello, blobring",
            &Default::default(),
        )
        .await?;
        let whole = svc
            .get_blob("demo", "notes/hello.txt", None, &Default::default())
            .await?;
        let part = svc
            .get_blob("demo", "notes/hello.txt", Some(0..5), &Default::default())
            .await?;
        println!(
            "{:?} (first 5 bytes: {:?})",
            String::from_utf8_lossy(&whole.to_vec()?),
            String::from_utf8_lossy(&part.to_vec()?)
        );
        let listing = ListOptions {
            prefix: Some("notes/".into()),
            ..Default::default()
        };
        for b in svc.list_blobs("demo", &listing).await?.blobs {
            println!("{:>10}  {}", b.size, b.name);
        }
        if let Some(path) = file {
            // Large files: parallel Put Block + Put Block List up, parallel ranged GETs down.
            let opts = TransferOptions::default()
                .with_progress(|done, total| eprintln!("{done} of {total} bytes"));
            let path = std::path::Path::new(&path);
            transfer::upload_from_file(&svc, "demo", "big.bin", path, &Default::default(), &opts)
                .await?;
            let back = std::env::temp_dir().join("blobring-quickstart.bin");
            let n = transfer::download_to_file(&svc, "demo", "big.bin", &back, &opts).await?;
            println!("{n} bytes round-tripped to {}", back.display());
        }
        Ok(())
    })
}
