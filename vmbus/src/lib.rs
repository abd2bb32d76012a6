//! blobring-vmbus (being built).
