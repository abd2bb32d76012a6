//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use std::sync::Arc;

use blobring_host::store::MemStore;
use blobring_host::{EMULATOR_ACCOUNT, Executor, ExecutorConfig, Faults, SharedKeyAuth, Store};

/// Reads fuzzer input front to back; yields zeros once it is exhausted, so every input is a
/// complete (if dull) program.
#[derive(Debug)]
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// Fills `out` with the next bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.u8();
        }
    }

    /// The next `N` bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill(&mut out);
        out
    }

    /// The next little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    /// The next little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    /// The next little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// Up to `n` of the next bytes, as they are.
    pub fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A Blob executor over a fresh `mem` store holding the empty container `data`, for the
/// emulator account, verifying requests with `auth` if given.
pub fn mem_executor(auth: Option<SharedKeyAuth>) -> Executor {
    let store = Arc::new(MemStore::new());
    store
        .create_container("data", Vec::new())
        .expect("fresh mem store");
    Executor::new(
        store,
        ExecutorConfig {
            account: EMULATOR_ACCOUNT.into(),
            auth,
            faults: Faults::default(),
        },
    )
}

/// A hello read from the next 64 bytes, then fixed up by the bits of `mode` so that every
/// check of the daemon's admission is reachable from short inputs: bit 0 sets the magic, bit 1
/// the ABI version, bit 2 zeroes the flags and reserved bytes, bit 3 makes `sq_entries` a power
/// of two below `1 << sq_log2_below` and `arena_len` less than `arena_below`.
pub fn fuzzed_hello(
    inp: &mut Input,
    mode: u8,
    sq_log2_below: u32,
    arena_below: u64,
) -> blobring_abi::HelloRequest {
    use blobring_abi::{ABI_VERSION, FromBytes, HELLO_REQUEST_MAGIC, HelloRequest};
    let raw: [u8; 64] = inp.bytes();
    let mut hello = HelloRequest::read_from_bytes(&raw).expect("a hello is 64 bytes");
    if mode & 1 != 0 {
        hello.magic = HELLO_REQUEST_MAGIC;
    }
    if mode & 2 != 0 {
        hello.abi_version = ABI_VERSION;
    }
    if mode & 4 != 0 {
        hello.flags = 0;
        hello.reserved = [0; 40];
    }
    if mode & 8 != 0 {
        hello.sq_entries = 1 << (hello.sq_entries % sq_log2_below);
        hello.arena_len %= arena_below;
    }
    hello
}
