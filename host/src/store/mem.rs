//! The `mem` store: everything in process memory, lost on exit.
//!
//! Blob versions and staged blocks are immutable [`Bytes`]; a reader holds its own reference,
//! so reads never block writers. Put Block List assembles the new blob in one allocation (one
//! copy of each block).

use bytes::Bytes;

use super::StoreError;
use super::engine::{Backend, Engine, Part, ReadAt, State, impl_store_via_engine};
use crate::store::{BlobProps, ContainerProps};

/// In-memory store (`--store mem`).
pub struct MemStore {
    engine: Engine<MemBackend>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemStore")
    }
}

impl MemStore {
    /// An empty in-memory store.
    pub fn new() -> Self {
        MemStore {
            engine: Engine::new(MemBackend, State::default()),
        }
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl_store_via_engine!(MemStore);

pub(crate) struct MemBackend;

struct MemReader(Bytes);

impl ReadAt for MemReader {
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), StoreError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(dst.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or(StoreError::OutOfRange {
                offset,
                len: dst.len() as u64,
                size: self.0.len() as u64,
            })?;
        dst.copy_from_slice(src);
        Ok(())
    }
    fn bytes(&self) -> Option<&[u8]> {
        Some(&self.0)
    }
}

impl Backend for MemBackend {
    type Data = Bytes;

    fn describe(&self) -> String {
        "mem".to_owned()
    }

    fn write_data(&self, _container: &str, parts: &[Part<'_, Bytes>]) -> Result<Bytes, StoreError> {
        if let [Part::Range(d, 0, len)] = parts
            && *len == d.len() as u64
        {
            return Ok((*d).clone());
        }
        let total: u64 = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::Range(_, _, len) => *len,
            })
            .sum();
        let mut v = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for p in parts {
            match p {
                Part::Bytes(b) => v.extend_from_slice(b),
                Part::Range(d, off, len) => {
                    let off = *off as usize;
                    v.extend_from_slice(&d[off..off + *len as usize]);
                }
            }
        }
        Ok(Bytes::from(v))
    }

    fn clone_data(&self, _container: &str, src: &Bytes) -> Result<Bytes, StoreError> {
        Ok(src.clone())
    }

    fn reader(&self, data: &Bytes) -> Result<Box<dyn ReadAt>, StoreError> {
        Ok(Box::new(MemReader(data.clone())))
    }

    fn drop_data(&self, _data: &Bytes) {}

    fn publish_blob(&self, _c: &str, _p: &BlobProps, _d: &Bytes) -> Result<(), StoreError> {
        Ok(())
    }

    fn unpublish_blob(&self, _c: &str, _n: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn stage_block(
        &self,
        _c: &str,
        _b: &str,
        _id: &[u8],
        bytes: &[u8],
    ) -> Result<Bytes, StoreError> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn drop_block(&self, _data: &Bytes) {}

    fn create_container(&self, _props: &ContainerProps) -> Result<(), StoreError> {
        Ok(())
    }

    fn delete_container(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
