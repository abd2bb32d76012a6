//! blobring-reactor (being built).
