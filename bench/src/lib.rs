#![forbid(unsafe_code)]
//! blobring benchmarks: the seed experiment and micro-benchmarks, measured side by side with
//! peers in one run (ARCHITECTURE.md §9, issue #6).
//!
//! **Owns:** the `blobring-bench` binary's work — starting a real `blobring-host` (fs store,
//! REST front end on loopback) and `blobringd` (sim transport) ([`stack`]), writing blobs with
//! known xxh3 checksums ([`data`]), running client *processes* (the binary re-executed with a
//! hidden `worker` subcommand; job in on stdin, result out as one JSON line on stdout:
//! [`worker`]) over five read paths ([`paths`]), and turning their figures into a table, JSON
//! and charts ([`report`], [`chart`]). The three modes are [`seed`], [`small`] and [`scale`].
//!
//! **Trusts:** the host and daemon binaries it starts (found next to the running executable),
//! and nothing it reads back: every byte read on every path is checksummed against the
//! checksum of the data written, and a mismatch is a hard error, so no path can win by
//! skipping work.
//!
//! **Invariants:**
//! - every process it spawns is killed and reaped when its owner is dropped ([`stack::Stack`],
//!   [`worker::Fleet`]), also on errors;
//! - CPU is measured the same way for every path: `getrusage` in each client process between
//!   "go" and "done", plus utime+stime of the daemon and host from `/proc/<pid>/stat` over the
//!   same interval;
//! - performance targets are printed beside measured figures, never asserted.
//!
//! Dependencies: object_store (the peer being compared), plotters (SVG + PNG charts; text via
//! ab_glyph and a TrueType file found at run time, so no fontconfig is needed), indicatif
//! (progress), hdrhistogram (latency; serialised V2 between processes), xxhash-rust (xxh3,
//! ~10+ GB/s, so the checksum does not dominate any path), nix (`getrusage`).

pub mod chart;
pub mod cli;
pub mod data;
pub mod machine;
pub mod paths;
pub mod report;
pub mod scale;
pub mod seed;
pub mod small;
pub mod stack;
pub mod worker;
