#![forbid(unsafe_code)]
//! The Blob REST pieces that both the SDK (`blobring`) and the emulated host (`blobring-host`)
//! speak, written once so the two cannot drift apart (ARCHITECTURE.md §3).
//!
//! **Owns:**
//! - the SharedKey string-to-sign ([`Canonical`]): the canonicalised standard headers,
//!   `x-ms-*` headers and resource, exactly as the SDK signs and the host verifies them; and the
//!   account key prepared once as a keyed HMAC ([`SigningKey`]), so that signing a request
//!   clones a small state instead of re-keying, and allocates nothing;
//! - the well-known emulator account and key ([`EMULATOR_ACCOUNT`], [`EMULATOR_KEY`]) and the
//!   service version blobring sends ([`API_VERSION`]);
//! - the names of the headers ([`header`]) and error codes ([`code`]) both sides use, including
//!   blobring's own `x-blobring-*` request headers. Those moved here from `blobring-abi`: they
//!   are HTTP headers read by the host and written by HTTP peers (the gateway), never by the
//!   daemon, which stays HTTP-blind; `abi` keeps what is a byte layout, this crate what is
//!   HTTP;
//! - the `If-*` conditions of a request ([`Conditions`]): the SDK renders them into headers,
//!   the host reads them from a request (dates as HTTP dates; a bad one is [`InvalidDate`]);
//!   what they mean for a blob the host's store decides;
//! - [`is_put_blob`], the one test of "shaped like a Put Blob" that the host's REST front end
//!   and the gateway both apply before deciding how to carry a body; [`bounded_range_len`],
//!   the size of a `bytes=a-b` range, which the gateway and the Python binding reserve for a
//!   ranged GET's body.
//!
//! **Trusts:** nothing and no one: it does no I/O and holds no state beyond a key. The inputs to
//! [`Canonical`] may come straight from a peer (the host verifies peer requests with it): any
//! bytes give some string-to-sign, never a panic.
//!
//! **Invariants:**
//! - one canonicalisation for both sides: a head the SDK signs verifies on the host exactly when
//!   Azure would accept it (the host's unit tests and `tests/tests/security.rs` pin what it
//!   accepts and rejects);
//! - header names are compared ASCII case-insensitively and written lower-case; `x-ms-*` headers
//!   of one name are joined with `,` in the order given; query names are lower-cased and sorted,
//!   values of one name sorted and joined with `,`;
//! - building a string-to-sign, signing it and encoding the signature allocate nothing when
//!   the query names are lower-case ASCII (what the SDK sends); `client/tests/head_alloc.rs`
//!   counts.
//!
//! Dependencies: `hmac` + `sha2` + `base64` (ARCHITECTURE.md §3's choice for SharedKey),
//! `http` for the request parts [`is_put_blob`] looks at (types only, already used by both
//! sides) and `httpdate` for the conditions' dates.

pub mod code;
mod conditions;
pub mod header;
mod shared_key;

pub use conditions::{Conditions, InvalidDate};
pub use shared_key::{Canonical, STANDARD_HEADERS, Signature, SigningKey, Sink};

/// The well-known emulator account (Azurite's, and what `blobring up` serves).
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// The well-known emulator account key (public, from the Azurite documentation).
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The `x-ms-version` blobring sends (the SDK, and the host to an upstream endpoint): the
/// version `object_store` pins, which Azurite and Azure both accept.
pub const API_VERSION: &str = "2023-11-03";

/// Whether a request is shaped like a Put Blob: a PUT with no `comp` or `restype` parameter
/// and no `x-ms-copy-source` header. The host decides the rest (a malformed one still fails
/// there with the service's error).
pub fn is_put_blob(parts: &http::request::Parts) -> bool {
    let q = parts.uri.query().unwrap_or("");
    parts.method == http::Method::PUT
        && !q
            .split('&')
            .any(|kv| kv.starts_with("comp=") || kv.starts_with("restype="))
        && !parts.headers.contains_key(header::X_MS_COPY_SOURCE)
}

/// The length of a bounded byte range, the value of a `Range` or `x-ms-range` header of the
/// form `bytes=a-b` (`b - a + 1`); `None` for any other form (`bytes=a-`, a suffix, a list)
/// or a last byte before the first. What a caller reserves for the body of a ranged GET.
pub fn bounded_range_len(value: &str) -> Option<u64> {
    let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    Some(b.checked_sub(a)? + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn put_blob_shape() {
        assert!(is_put_blob(&parts("PUT", "/a/c/b", &[])));
        assert!(is_put_blob(&parts("PUT", "/a/c/b?timeout=5", &[])));
        assert!(!is_put_blob(&parts("GET", "/a/c/b", &[])));
        assert!(!is_put_blob(&parts(
            "PUT",
            "/a/c/b?comp=block&blockid=QQ",
            &[]
        )));
        assert!(!is_put_blob(&parts("PUT", "/a/c?restype=container", &[])));
        let copy = [(header::X_MS_COPY_SOURCE, "http://h/a/c/x")];
        assert!(!is_put_blob(&parts("PUT", "/a/c/b", &copy)));
    }

    #[test]
    fn bounded_ranges() {
        assert_eq!(bounded_range_len("bytes=10-19"), Some(10));
        assert_eq!(bounded_range_len(" bytes=0-0 "), Some(1));
        for other in [
            "bytes=10-",
            "bytes=-5",
            "bytes=0-1,4-5",
            "bytes=9-3",
            "items=0-1",
            "",
        ] {
            assert_eq!(bounded_range_len(other), None, "{other:?}");
        }
    }

    #[test]
    fn emulator_key_is_base64() {
        assert!(SigningKey::from_base64(EMULATOR_KEY).is_ok());
    }
}
