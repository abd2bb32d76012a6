#![forbid(unsafe_code)]
//! blobring benchmarks: the seed experiment and micro-benchmarks, measured side by side
//! with peers in one run (ARCHITECTURE.md §9).
//!
//! Status: not built yet (issue "blobring-bench").
