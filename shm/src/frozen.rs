//! [`Frozen`]: a read-only byte slice into a [`Mapping`] whose writers have all promised to
//! keep still — the one exception to "no references into shared memory", for the SDK only.
//!
//! The trust model that makes it sound is on [`Frozen`].

use std::ptr::NonNull;
use std::sync::Arc;

use crate::{AccessError, Mapping};

/// `len` bytes of a [`Mapping`] viewed as `&[u8]`, kept alive (and kept still) by `keep`.
///
/// **Trust model.** A slice (`&[u8]`) into memory that someone writes concurrently is
/// undefined behaviour, which is why every other access in this crate copies. A [`Frozen`] is
/// sound only where *every* writer of the range is trusted to leave it alone while the view
/// lives:
/// - the peer processes: ARCHITECTURE §8 — a client trusts its daemon (and, through it, the
///   host). The SDK freezes an arena buffer only after the request that filled it completed
///   **without** `CQE_F_BUFFERS_LENT`, i.e. after the daemon and host have declared they are
///   done with it and will not touch it again until the client hands it out anew;
/// - this process: the view owns `keep` (the SDK puts the buffer's lease there), so the buffer
///   cannot be freed, reallocated or written through its lease until the view — and every
///   `bytes::Bytes` clone made from it — is dropped.
///
/// **Never use this on the daemon or host side**: there the peers are untrusted clients, who
/// may write any byte at any time; the daemon and host keep copying.
///
/// Build it with [`Frozen::trusting_peer`]; read it through [`AsRef<[u8]>`] or
/// [`std::ops::Deref`]. `bytes::Bytes::from_owner(frozen)` turns it into a zero-copy `Bytes`
/// whose last clone drops `keep`.
///
/// ```
/// use std::sync::Arc;
/// use blobring_shm::{Frozen, Region, SharedMemory};
/// let r = Region::create("frozen-doc", 4096)?;
/// r.mapping().write(100, b"hello")?;
/// let (_fd, map, _) = r.into_parts();
/// // Nothing else in this process or any other writes the mapping from here on.
/// let f = Frozen::trusting_peer(Arc::new(map), 100, 5, ())?;
/// assert_eq!(&*f, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Frozen<K> {
    ptr: NonNull<u8>,
    len: usize,
    // Never handed out: whoever could reach it (e.g. a lease) could write the viewed bytes.
    _keep: K,
    // Declared last: dropped after `keep`, so the memory outlives anything `keep` does on drop.
    _map: Arc<Mapping>,
}

// SAFETY: the view is an immutable byte slice into a mapping that lives as long as the view
// (the Arc), so sharing or sending it is as safe as sharing `&[u8]`; `keep` is sent/shared
// only when it is itself Send/Sync.
unsafe impl<K: Send> Send for Frozen<K> {}
// SAFETY: as for Send.
unsafe impl<K: Sync> Sync for Frozen<K> {}

impl<K> std::fmt::Debug for Frozen<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K> Frozen<K> {
    /// Views `[offset, offset + len)` of `map` as a byte slice for as long as the result
    /// lives, holding `keep` (and the mapping) until then. Bounds-checked.
    ///
    /// The caller vouches, under the trust model on [`Frozen`], that nobody —
    /// no peer process, no other code of this process — writes the range until the view is
    /// dropped: only a client of a trusted daemon may call this, for a buffer whose request
    /// completed without "buffers still lent", with the buffer's owner passed as `keep`.
    pub fn trusting_peer(
        map: Arc<Mapping>,
        offset: u64,
        len: u64,
        keep: K,
    ) -> Result<Self, AccessError> {
        let base = map.raw_addr(offset, len)?;
        Ok(Self {
            // `raw_addr` bounds-checked the range inside the live mapping, whose base is never
            // null; a zero-length view still needs a non-null, aligned pointer (u8: any).
            ptr: NonNull::new(base).unwrap_or(NonNull::dangling()),
            len: len as usize,
            _keep: keep,
            _map: map,
        })
    }
}

impl<K> std::ops::Deref for Frozen<K> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside the mapping (checked by `raw_addr`), which the
        // Arc keeps mapped for the view's life; u8 has no alignment or validity requirement.
        // No one writes the range while the view lives: that is the contract of
        // `trusting_peer` (module docs: trusted daemon, completion without buffers lent,
        // `keep` owning the buffer).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<K> AsRef<[u8]> for Frozen<K> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
