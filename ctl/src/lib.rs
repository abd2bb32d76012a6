#![forbid(unsafe_code)]
//! The `blobring` command-line tool: daemon administration (`stats`, `top`, `clients`,
//! `channels`, `up`) and blob data commands (`cp`, `ls`, `cat`, `rm`, `mb`).
//!
//! **Trusts:** the daemon's ctl socket. Status: not built yet.
