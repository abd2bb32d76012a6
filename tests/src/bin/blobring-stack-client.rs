#![forbid(unsafe_code)]
//! A client process for the stack tests (`tests/tests/daemon_stack.rs`): a mixed Blob
//! workload through blobringd, every byte and status checked against the client's own model.
//!
//! `blobring-stack-client SOCKET ID N SEED` — in container `client-<ID>` (created), N requests:
//! Put Blob of random sizes 0–256 KiB over a pool of 24 names, whole and ranged GETs, HEAD,
//! List Blobs, Delete Blob; prints `ok N puts=.. gets=..` or fails with the first mismatch.
//! `blobring-stack-client SOCKET ID loop SEED` — the same workload until killed (prints
//! `running` after the first 20 requests).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use blobring::blob::{AccountConfig, BlobError, BlobService, GetOptions, ListOptions, PutOptions};
use blobring::{Client, block_on};
use blobring_tests::XorShift;

fn body(rng: &mut XorShift) -> Vec<u8> {
    // Mostly small, some up to 256 KiB (mean ≈ 64 KiB).
    let u = rng.below(1 << 20) as f64 / f64::from(1 << 20);
    let len = ((256 << 10) as f64 * u * u * u) as usize;
    XorShift::new(rng.next_u64()).bytes(len)
}

/// The result `r` of a `verb` request on a blob (`what` names it, in messages only), with a 404
/// as `None`: a 404 is right only if the model does not hold the blob (`stored`); any other
/// error fails the run.
fn found<T>(
    r: Result<T, BlobError>,
    stored: bool,
    verb: &str,
    what: impl Fn() -> String,
) -> anyhow::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => {
            ensure!(!stored, "{}: {verb} 404 for a stored blob", what());
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(what())),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(args.len() == 5, "usage: SOCKET ID N|loop SEED");
    let id: u64 = args[2].parse()?;
    let n: Option<u64> = if args[3] == "loop" {
        None
    } else {
        Some(args[3].parse()?)
    };
    let mut rng = XorShift::new(args[4].parse::<u64>()?);
    let client = Client::connect(&args[1]).context("connecting to blobringd")?;
    let svc =
        BlobService::new(client, AccountConfig::emulator()).with_timeout(Duration::from_secs(30));
    let container = format!("client-{id}");
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut counts = [0u64; 6];
    block_on(async {
        svc.create_container(&container)
            .await
            .with_context(|| format!("creating {container}"))?;
        let mut i = 0u64;
        while n.is_none_or(|n| i < n) {
            if n.is_none() && i == 20 {
                println!("running");
            }
            let name = format!("b{}", rng.below(24));
            let op = rng.below(100);
            let what = || format!("request {i}: op {op} on {container}/{name}");
            match op {
                0..30 => {
                    let b = body(&mut rng);
                    svc.put_blob(&container, &name, &b, &PutOptions::default())
                        .await
                        .with_context(what)?;
                    model.insert(name, b);
                    counts[0] += 1;
                }
                30..55 => {
                    let r = svc
                        .get_blob(&container, &name, None, &GetOptions::default())
                        .await;
                    if let Some(g) = found(r, model.contains_key(&name), "GET", what)? {
                        let Some(want) = model.get(&name) else {
                            bail!("{}: GET found a deleted blob", what());
                        };
                        let got = g.to_vec().with_context(what)?;
                        ensure!(
                            got == *want,
                            "{}: GET returned {} bytes, expected {} (or different bytes)",
                            what(),
                            got.len(),
                            want.len()
                        );
                    }
                    counts[1] += 1;
                }
                55..70 => {
                    let Some(want) = model.get(&name).filter(|w| !w.is_empty()) else {
                        continue;
                    };
                    let len = want.len() as u64;
                    let start = rng.below(len);
                    let end = start + 1 + rng.below(len - start);
                    let g = svc
                        .get_range(&container, &name, start..end, &GetOptions::default(), None)
                        .await
                        .with_context(what)?;
                    let got = g.to_vec().with_context(what)?;
                    ensure!(
                        got[..] == want[start as usize..end as usize],
                        "{}: range {start}..{end} returned wrong bytes ({} bytes)",
                        what(),
                        got.len()
                    );
                    ensure!(
                        g.properties.size == len,
                        "{}: size {}",
                        what(),
                        g.properties.size
                    );
                    counts[2] += 1;
                }
                70..80 => {
                    let r = svc
                        .head_blob(&container, &name, &GetOptions::default())
                        .await;
                    if let Some(p) = found(r, model.contains_key(&name), "HEAD", what)? {
                        let Some(want) = model.get(&name) else {
                            bail!("{}: HEAD found a deleted blob", what());
                        };
                        ensure!(
                            p.size == want.len() as u64,
                            "{}: HEAD size {}",
                            what(),
                            p.size
                        );
                    }
                    counts[3] += 1;
                }
                80..85 => {
                    let page = svc
                        .list_blobs(&container, &ListOptions::default())
                        .await
                        .with_context(what)?;
                    let got: BTreeMap<String, u64> = page
                        .blobs
                        .iter()
                        .map(|b| (b.name.clone(), b.size))
                        .collect();
                    let want: BTreeMap<String, u64> = model
                        .iter()
                        .map(|(k, v)| (k.clone(), v.len() as u64))
                        .collect();
                    ensure!(got == want, "{}: list {got:?} != model {want:?}", what());
                    counts[4] += 1;
                }
                _ => {
                    let r = svc
                        .delete_blob(&container, &name, &Default::default())
                        .await;
                    if found(r, model.contains_key(&name), "DELETE", what)?.is_some() {
                        ensure!(
                            model.remove(&name).is_some(),
                            "{}: deleted a blob that should not exist",
                            what()
                        );
                    }
                    counts[5] += 1;
                }
            }
            i += 1;
        }
        println!(
            "ok {i} puts={} gets={} ranges={} heads={} lists={} deletes={}",
            counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]
        );
        anyhow::Ok(())
    })
}
