//! blobring-ring (being built).
