//! Blob data commands: `cp`, `ls`, `cat`, `rm`, `mb`, `rb` over the SDK.
//!
//! Blobs are named `blob://<container>/<path>`. The account comes from
//! `AZURE_STORAGE_CONNECTION_STRING` (else the emulator account), the daemon from
//! `--socket` / `BLOBRING_SOCKET`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blobring::blob::{AccountConfig, BlobService, ListOptions, PutOptions};
use blobring::transfer::{self, TransferOptions};
use blobring::{Client, ClientOptions, block_on};
use clap::{Args, Subcommand};

/// Data commands (flattened into the CLI's subcommands).
#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Copy local ↔ blob or blob ↔ blob (`-r` for directories / prefixes).
    Cp {
        /// Source: a local path or blob://container/path.
        src: String,
        /// Destination: a local path or blob://container/path.
        dst: String,
        /// Copy a directory tree / every blob under a prefix.
        #[arg(short, long)]
        recursive: bool,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// List blobs under blob://container[/prefix].
    Ls {
        /// blob://container[/prefix].
        url: String,
        /// List every blob under the prefix (no `/` grouping).
        #[arg(short, long)]
        recursive: bool,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// Write a blob to standard output.
    Cat {
        /// blob://container/path.
        url: String,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// Delete a blob (or, with -r, every blob under a prefix).
    Rm {
        /// blob://container/path.
        url: String,
        /// Delete every blob under the prefix.
        #[arg(short, long)]
        recursive: bool,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// Create a container.
    Mb {
        /// blob://container.
        url: String,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// Delete a container.
    Rb {
        /// blob://container.
        url: String,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
}

/// Options shared by data commands.
#[derive(Debug, Args)]
pub struct Common {
    /// blobringd's client socket (default: $BLOBRING_SOCKET or the standard path).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Transfer chunk size in MiB.
    #[arg(long, default_value_t = 4)]
    chunk_mib: u64,
    /// Requests in flight per transfer.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Verify transfers with CRC64.
    #[arg(long)]
    verify: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// A parsed `blob://container/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUrl {
    /// Container.
    pub container: String,
    /// Path inside it (may be empty).
    pub path: String,
}

/// Parses `blob://container[/path]`; `None` for a local path.
pub fn parse_blob_url(s: &str) -> Result<Option<BlobUrl>> {
    let Some(rest) = s.strip_prefix("blob://") else {
        return Ok(None);
    };
    let (c, p) = rest.split_once('/').unwrap_or((rest, ""));
    if c.is_empty() {
        bail!("{s:?} names no container: use blob://<container>/<path>");
    }
    Ok(Some(BlobUrl {
        container: c.to_owned(),
        path: p.to_owned(),
    }))
}

fn need_blob(s: &str) -> Result<BlobUrl> {
    parse_blob_url(s)?
        .with_context(|| format!("{s:?} is not a blob URL: use blob://<container>/<path>"))
}

fn service(c: &Common) -> Result<BlobService> {
    let mut o = ClientOptions::default();
    if let Some(s) = &c.socket {
        o.socket = s.clone();
    }
    let client = Client::connect_with(o).context("connecting to blobringd")?;
    let account = AccountConfig::from_env().context("reading AZURE_STORAGE_CONNECTION_STRING")?;
    Ok(BlobService::new(client, account))
}

struct Bar {
    done: AtomicU64,
    start: Instant,
    show: bool,
    label: String,
}

impl Bar {
    fn new(label: String, quiet: bool) -> Arc<Self> {
        Arc::new(Self {
            done: AtomicU64::new(0),
            start: Instant::now(),
            show: !quiet && std::io::stderr().is_terminal(),
            label,
        })
    }

    fn update(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        if self.show {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let w = (pct / 4) as usize;
            eprint!(
                "\r{} [{}{}] {pct:3}% {}/{}",
                self.label,
                "#".repeat(w),
                " ".repeat(25 - w.min(25)),
                human(done),
                human(total)
            );
        }
    }

    fn finish(&self, bytes: u64) {
        let s = self.start.elapsed().as_secs_f64().max(1e-9);
        if self.show {
            eprintln!();
        }
        eprintln!(
            "{}: {} in {:.2} s ({}/s)",
            self.label,
            human(bytes),
            s,
            human((bytes as f64 / s) as u64)
        );
    }
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn topts(c: &Common, bar: &Arc<Bar>) -> TransferOptions {
    let b = bar.clone();
    TransferOptions {
        chunk_size: c.chunk_mib.max(1) << 20,
        parallelism: c.parallel.max(1),
        verify: c.verify,
        progress: None,
    }
    .with_progress(move |d, t| b.update(d, t))
}

/// Runs a data command.
pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Mb { url, common } => {
            let u = need_blob(&url)?;
            block_on(service(&common)?.create_container(&u.container))
                .with_context(|| format!("creating container {}", u.container))
        }
        DataCmd::Rb { url, common } => {
            let u = need_blob(&url)?;
            block_on(service(&common)?.delete_container(&u.container))
                .with_context(|| format!("deleting container {}", u.container))
        }
        DataCmd::Ls {
            url,
            recursive,
            common,
        } => {
            let u = need_blob(&url)?;
            let svc = service(&common)?;
            let page = block_on(svc.list_blobs(
                &u.container,
                &ListOptions {
                    prefix: (!u.path.is_empty()).then(|| u.path.clone()),
                    delimiter: (!recursive).then(|| "/".to_owned()),
                    ..Default::default()
                },
            ))
            .with_context(|| format!("listing {url}"))?;
            let mut out = std::io::stdout().lock();
            for p in &page.prefixes {
                writeln!(out, "{:>12}  blob://{}/{p}", "DIR", u.container)?;
            }
            for b in &page.blobs {
                writeln!(out, "{:>12}  blob://{}/{}", b.size, u.container, b.name)?;
            }
            Ok(())
        }
        DataCmd::Cat { url, common } => {
            let u = need_blob(&url)?;
            let svc = service(&common)?;
            let mut out = std::io::stdout();
            block_on(transfer::download_to_writer(
                &svc,
                &u.container,
                &u.path,
                &mut out,
                &TransferOptions::default(),
            ))
            .with_context(|| format!("reading {url}"))?;
            out.flush()?;
            Ok(())
        }
        DataCmd::Rm {
            url,
            recursive,
            common,
        } => {
            let u = need_blob(&url)?;
            let svc = service(&common)?;
            if !recursive {
                return block_on(svc.delete_blob(&u.container, &u.path, &Default::default()))
                    .with_context(|| format!("deleting {url}"));
            }
            let page = block_on(svc.list_blobs(
                &u.container,
                &ListOptions {
                    prefix: Some(u.path.clone()),
                    ..Default::default()
                },
            ))?;
            for b in page.blobs {
                block_on(svc.delete_blob(&u.container, &b.name, &Default::default()))
                    .with_context(|| format!("deleting blob://{}/{}", u.container, b.name))?;
            }
            Ok(())
        }
        DataCmd::Cp {
            src,
            dst,
            recursive,
            common,
        } => cp(&src, &dst, recursive, &common),
    }
}

fn cp(src: &str, dst: &str, recursive: bool, c: &Common) -> Result<()> {
    let (s, d) = (parse_blob_url(src)?, parse_blob_url(dst)?);
    let svc = service(c)?;
    match (s, d) {
        (None, None) => bail!(
            "neither {src:?} nor {dst:?} is a blob URL (blob://<container>/<path>); use cp(1) for local copies"
        ),
        (None, Some(d)) => {
            let root = Path::new(src);
            if recursive {
                let mut files = Vec::new();
                walk(root, &mut files)?;
                for f in files {
                    let rel = f.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
                    let name = join(&d.path, &rel);
                    upload(&svc, &f, &d.container, &name, c)?;
                }
                Ok(())
            } else {
                if root.is_dir() {
                    bail!("{src} is a directory: pass -r to copy it recursively");
                }
                let name = if d.path.is_empty() || d.path.ends_with('/') {
                    join(
                        &d.path,
                        &root
                            .file_name()
                            .context("source has no file name")?
                            .to_string_lossy(),
                    )
                } else {
                    d.path.clone()
                };
                upload(&svc, root, &d.container, &name, c)
            }
        }
        (Some(s), None) => {
            let root = Path::new(dst);
            if recursive {
                let page = block_on(svc.list_blobs(
                    &s.container,
                    &ListOptions {
                        prefix: (!s.path.is_empty()).then(|| s.path.clone()),
                        ..Default::default()
                    },
                ))?;
                for b in page.blobs {
                    let rel = b.name[s.path.len()..].trim_start_matches('/');
                    let to = root.join(rel);
                    if let Some(p) = to.parent() {
                        std::fs::create_dir_all(p)
                            .with_context(|| format!("creating {}", p.display()))?;
                    }
                    download(&svc, &s.container, &b.name, &to, c)?;
                }
                Ok(())
            } else {
                let to = if root.is_dir() {
                    root.join(s.path.rsplit('/').next().unwrap_or("blob"))
                } else {
                    root.to_owned()
                };
                download(&svc, &s.container, &s.path, &to, c)
            }
        }
        (Some(s), Some(d)) => {
            let names: Vec<(String, String)> = if recursive {
                let page = block_on(svc.list_blobs(
                    &s.container,
                    &ListOptions {
                        prefix: (!s.path.is_empty()).then(|| s.path.clone()),
                        ..Default::default()
                    },
                ))?;
                page.blobs
                    .into_iter()
                    .map(|b| {
                        let rel = b.name[s.path.len()..].trim_start_matches('/').to_owned();
                        (b.name, join(&d.path, &rel))
                    })
                    .collect()
            } else {
                vec![(s.path.clone(), d.path.clone())]
            };
            for (from, to) in names {
                block_on(svc.copy_blob(
                    &s.container,
                    &from,
                    &d.container,
                    &to,
                    &Default::default(),
                ))
                .with_context(|| {
                    format!(
                        "copying blob://{}/{from} to blob://{}/{to}",
                        s.container, d.container
                    )
                })?;
            }
            Ok(())
        }
    }
}

fn join(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_owned()
    } else if prefix.ends_with('/') {
        format!("{prefix}{rel}")
    } else {
        format!("{prefix}/{rel}")
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn upload(svc: &BlobService, file: &Path, container: &str, name: &str, c: &Common) -> Result<()> {
    let bar = Bar::new(
        format!("{} → blob://{container}/{name}", file.display()),
        c.quiet,
    );
    let o = topts(c, &bar);
    block_on(transfer::upload_from_file(
        svc,
        container,
        name,
        file,
        &PutOptions::default(),
        &o,
    ))
    .with_context(|| format!("uploading {} to blob://{container}/{name}", file.display()))?;
    let n = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    bar.finish(n);
    Ok(())
}

fn download(svc: &BlobService, container: &str, name: &str, to: &Path, c: &Common) -> Result<()> {
    let bar = Bar::new(
        format!("blob://{container}/{name} → {}", to.display()),
        c.quiet,
    );
    let o = topts(c, &bar);
    let n = block_on(transfer::download_to_file(svc, container, name, to, &o))
        .with_context(|| format!("downloading blob://{container}/{name} to {}", to.display()))?;
    bar.finish(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_parse() {
        assert_eq!(parse_blob_url("/tmp/x").unwrap(), None);
        assert_eq!(
            parse_blob_url("blob://c/a/b").unwrap(),
            Some(BlobUrl {
                container: "c".into(),
                path: "a/b".into()
            })
        );
        assert!(parse_blob_url("blob:///x").is_err());
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(join("a/", "b"), "a/b");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
