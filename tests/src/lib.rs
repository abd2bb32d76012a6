#![forbid(unsafe_code)]
//! Cross-process integration tests for blobring: real daemon, real host, real clients.
//! The tests live in `tests/tests/`; this library holds shared fixtures.
