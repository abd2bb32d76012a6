//! What the executor serves requests from, chosen once at start-up and matched once at the top
//! of its dispatch: a local [`Store`] (`mem`, `fs:<dir>`), whose operations the executor
//! implements itself, or a `passthrough:<url>` upstream ([`Passthrough`]), to which it forwards
//! whole requests. The [`Store`] trait has only real implementations; nothing downcasts.

use std::sync::Arc;

#[cfg(feature = "passthrough")]
use crate::passthrough::Passthrough;
use crate::store::{FsStore, MemStore, Store, StoreError, StoreOptions};

/// The executor's backend. See the module docs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A local store: the executor maps each request onto [`Store`] calls.
    Local(Arc<dyn Store>),
    /// A real Blob endpoint: the executor forwards each request (re-signed) and passes the
    /// answer back.
    #[cfg(feature = "passthrough")]
    Upstream(Arc<Passthrough>),
}

impl Backend {
    /// Short description for logs, e.g. `fs:/var/lib/blobring` or `passthrough:<url>`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Local(s) => s.describe(),
            #[cfg(feature = "passthrough")]
            Backend::Upstream(u) => u.describe(),
        }
    }

    /// The local store, if this is one.
    pub fn local(&self) -> Option<&Arc<dyn Store>> {
        match self {
            Backend::Local(s) => Some(s),
            #[cfg(feature = "passthrough")]
            Backend::Upstream(_) => None,
        }
    }

    /// Create a container (the host's `--container`, and tests); an existing one is
    /// [`StoreError::ContainerAlreadyExists`].
    pub fn create_container(
        &self,
        name: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Local(s) => s.create_container(name, metadata).map(drop),
            #[cfg(feature = "passthrough")]
            Backend::Upstream(u) => u.create_container(name, &metadata),
        }
    }
}

impl<S: Store + 'static> From<Arc<S>> for Backend {
    fn from(s: Arc<S>) -> Self {
        Backend::Local(s)
    }
}

impl From<Arc<dyn Store>> for Backend {
    fn from(s: Arc<dyn Store>) -> Self {
        Backend::Local(s)
    }
}

#[cfg(feature = "passthrough")]
impl From<Passthrough> for Backend {
    fn from(p: Passthrough) -> Self {
        Backend::Upstream(Arc::new(p))
    }
}

/// Open a backend from its command-line spec: `mem`, `fs:<dir>` or `passthrough:<url>`, with
/// default [`StoreOptions`].
pub fn open_store(spec: &str) -> Result<Backend, StoreError> {
    open_store_with(spec, &StoreOptions::default())
}

/// [`open_store`] with explicit [`StoreOptions`].
pub fn open_store_with(spec: &str, opts: &StoreOptions) -> Result<Backend, StoreError> {
    if spec == "mem" {
        return Ok(Arc::new(MemStore::new()).into());
    }
    if let Some(url) = spec.strip_prefix("passthrough:") {
        #[cfg(feature = "passthrough")]
        return Ok(Passthrough::open(url)?.into());
        #[cfg(not(feature = "passthrough"))]
        return Err(StoreError::BadSpec(format!(
            "passthrough:{url} (this build of blobring-host lacks the `passthrough` feature)"
        )));
    }
    if let Some(dir) = spec.strip_prefix("fs:") {
        if dir.is_empty() {
            return Err(StoreError::BadSpec(spec.to_owned()));
        }
        return Ok(Arc::new(FsStore::open_with(dir, opts.open_files)?).into());
    }
    Err(StoreError::BadSpec(spec.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_store_specs() {
        assert!(open_store("mem").is_ok_and(|b| b.local().is_some()));
        assert!(matches!(open_store("s3:x"), Err(StoreError::BadSpec(_))));
        assert!(matches!(open_store("fs:"), Err(StoreError::BadSpec(_))));
        let dir = tempfile::tempdir().unwrap();
        let s = open_store(&format!("fs:{}", dir.path().display())).unwrap();
        assert!(s.describe().starts_with("fs:"));
        #[cfg(feature = "passthrough")]
        {
            let p = open_store("passthrough:http://127.0.0.1:1/devstoreaccount1").unwrap();
            assert!(p.local().is_none());
            assert_eq!(
                p.describe(),
                "passthrough:http://127.0.0.1:1/devstoreaccount1"
            );
        }
    }
}
