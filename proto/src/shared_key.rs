//! The SharedKey string-to-sign and the keyed HMAC that signs it.
//!
//! "Authorize with Shared Key" (version 2015-02-21 and later: `Content-Length` empty when
//! `0`); see `reference/blob-api-and-peers.md` §1. The canonical resource is `/<account>`
//! followed by the path exactly as it appears on the wire (object_store signs `Url::path()`),
//! which for a path-style emulator URL puts the account in it twice.
//!
//! Sorting is done by repeated selection of the next-smallest name over the given iterators, so
//! no scratch space is needed: quadratic in the number of `x-ms-*` headers and of query
//! parameters, which a request head's size bounds (a few dozen in practice).

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::header;

type HmacSha256 = Hmac<Sha256>;

/// The standard headers the string-to-sign lists by value, one per line after the method, in
/// order. `date` is the one [`Canonical::date`] may override.
pub const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    header::CONTENT_LENGTH,
    header::CONTENT_MD5,
    "content-type",
    header::DATE,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_UNMODIFIED_SINCE,
    "range",
];

/// Where canonical text goes: a `String` (to compare or log) or straight into the HMAC (to
/// sign without building the string).
pub trait Sink {
    /// Appends `s`.
    fn put(&mut self, s: &str);

    /// Appends `s` with ASCII letters lower-cased.
    fn put_lower(&mut self, s: &str) {
        if !s.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.put(s);
        }
        let mut buf = [0u8; 4];
        for c in s.chars() {
            self.put(c.to_ascii_lowercase().encode_utf8(&mut buf));
        }
    }
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for HmacSha256 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }
}

/// What a SharedKey signature covers, borrowed from wherever the request lives: the SDK's
/// request being built, or the head the host parsed.
///
/// `headers` yields every header in order as (name, value); a value that is not text (the
/// host's `HeaderValue::to_str` failed) is `None` and counts as absent from the values, though
/// an `x-ms-*` name still gets its line. `query` yields the decoded query parameters in order.
#[derive(Debug, Clone)]
pub struct Canonical<'a, H, Q> {
    /// The request method (`GET`, `PUT`, …).
    pub method: &'a str,
    /// The account the resource is signed for.
    pub account: &'a str,
    /// The path as on the wire (percent-encoded), without the query.
    pub path: &'a str,
    /// The `Date` line: `None` takes the `Date` header, `Some` replaces it (a request with
    /// `x-ms-date` may have been signed with an empty one).
    pub date: Option<&'a str>,
    /// The headers, in order.
    pub headers: H,
    /// The decoded query parameters, in order.
    pub query: Q,
}

/// ASCII case-insensitive order of header names.
fn cmp_ci(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|b| b.to_ascii_lowercase())
        .cmp(b.bytes().map(|b| b.to_ascii_lowercase()))
}

fn is_x_ms(name: &str) -> bool {
    name.get(..header::X_MS_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(header::X_MS_PREFIX))
}

/// `s.to_lowercase()`, borrowed when `s` is already lower-case ASCII (what the SDK sends).
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

impl<'a, H, Q> Canonical<'a, H, Q>
where
    H: Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
    Q: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    /// The value of the first header called `name` (`""` if none, or not text).
    fn header(&self, name: &str) -> &'a str {
        self.headers
            .clone()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v)
            .unwrap_or("")
    }

    /// Writes the string-to-sign to `out`.
    pub fn write_to<S: Sink + ?Sized>(&self, out: &mut S) {
        out.put(self.method);
        out.put("\n");
        for name in STANDARD_HEADERS {
            let v = match name {
                header::DATE => self.date.unwrap_or_else(|| self.header(name)),
                header::CONTENT_LENGTH => match self.header(name) {
                    "0" => "",
                    v => v,
                },
                _ => self.header(name),
            };
            out.put(v);
            out.put("\n");
        }
        self.write_x_ms_headers(out);
        out.put("/");
        out.put(self.account);
        out.put(self.path);
        self.write_query(out);
    }

    /// The string-to-sign as a `String`.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(256);
        self.write_to(&mut s);
        s
    }

    /// `name:v1,v2\n` for every `x-ms-*` name, names sorted, values trimmed and in order.
    fn write_x_ms_headers<S: Sink + ?Sized>(&self, out: &mut S) {
        let mut last: Option<&str> = None;
        loop {
            let next = self
                .headers
                .clone()
                .map(|(k, _)| k)
                .filter(|k| is_x_ms(k) && last.is_none_or(|l| cmp_ci(k, l).is_gt()))
                .min_by(|a, b| cmp_ci(a, b));
            let Some(name) = next else { return };
            out.put_lower(name);
            out.put(":");
            let values = self
                .headers
                .clone()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .filter_map(|(_, v)| v);
            for (i, v) in values.enumerate() {
                if i > 0 {
                    out.put(",");
                }
                out.put(v.trim());
            }
            out.put("\n");
            last = Some(name);
        }
    }

    /// `\nname:v1,v2` for every query name, names lower-cased and sorted, values sorted.
    fn write_query<S: Sink + ?Sized>(&self, out: &mut S) {
        let mut last: Option<Cow<'a, str>> = None;
        loop {
            let mut next: Option<Cow<'a, str>> = None;
            for (k, _) in self.query.clone() {
                let k = lower(k);
                if last.as_deref().is_some_and(|l| *k <= *l)
                    || next.as_deref().is_some_and(|n| *k >= *n)
                {
                    continue;
                }
                next = Some(k);
            }
            let Some(name) = next else { return };
            out.put("\n");
            out.put(&name);
            out.put(":");
            // The values of `name` in sorted order, each as often as it occurs: the next one is
            // the smallest (value, position) above the previous one.
            let mut prev: Option<(&str, usize)> = None;
            loop {
                let mut pick: Option<(&str, usize)> = None;
                for (i, (k, v)) in self.query.clone().enumerate() {
                    let c = (v, i);
                    if prev.is_some_and(|p| c <= p)
                        || pick.is_some_and(|p| c >= p)
                        || *lower(k) != *name
                    {
                        continue;
                    }
                    pick = Some(c);
                }
                let Some(p) = pick else { break };
                if prev.is_some() {
                    out.put(",");
                }
                out.put(p.0);
                prev = Some(p);
            }
            last = Some(name);
        }
    }
}

/// An account key prepared for signing: the HMAC-SHA256 state keyed once, cloned per
/// signature (no heap, no re-keying).
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A key from its decoded bytes.
    pub fn new(key: &[u8]) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length"),
        }
    }

    /// A key from its Base64 form (as the portal and Azurite show it).
    pub fn from_base64(key: &str) -> Result<Self, base64::DecodeError> {
        Ok(Self::new(&B64.decode(key)?))
    }

    /// Signs the string-to-sign of `c` without building it.
    pub fn sign<'a, H, Q>(&self, c: &Canonical<'a, H, Q>) -> Signature
    where
        H: Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
        Q: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        Signature::of(self.mac_of(c))
    }

    /// Signs a string-to-sign given whole.
    pub fn sign_str(&self, string_to_sign: &str) -> Signature {
        Signature::of(self.mac_of_str(string_to_sign))
    }

    /// Whether `signature` (decoded) is this key's signature of the string-to-sign of `c`,
    /// compared in constant time (`Mac::verify_slice`), without building that string.
    pub fn verify<'a, H, Q>(&self, c: &Canonical<'a, H, Q>, signature: &[u8]) -> bool
    where
        H: Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
        Q: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        self.mac_of(c).verify_slice(signature).is_ok()
    }

    /// Whether `signature` (decoded) is this key's signature of `string_to_sign`, compared in
    /// constant time.
    pub fn verify_str(&self, string_to_sign: &str, signature: &[u8]) -> bool {
        self.mac_of_str(string_to_sign)
            .verify_slice(signature)
            .is_ok()
    }

    /// The keyed MAC fed with the string-to-sign of `c`.
    fn mac_of<'a, H, Q>(&self, c: &Canonical<'a, H, Q>) -> HmacSha256
    where
        H: Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
        Q: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        let mut mac = self.mac.clone();
        c.write_to(&mut mac);
        mac
    }

    /// The keyed MAC fed with `string_to_sign`.
    fn mac_of_str(&self, string_to_sign: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(string_to_sign.as_bytes());
        mac
    }
}

/// A SharedKey signature: Base64 of the 32-byte HMAC-SHA256, held inline. To check a signature a
/// peer sent, use [`SigningKey::verify`] (constant time), not `==`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 44]);

impl Signature {
    fn of(mac: HmacSha256) -> Self {
        let mut b = [0u8; 44];
        let n = B64
            .encode_slice(mac.finalize().into_bytes(), &mut b)
            .expect("32 bytes are 44 in Base64");
        debug_assert_eq!(n, 44);
        Signature(b)
    }

    /// The Base64 text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("Base64 is ASCII")
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", self.as_str())
    }
}

#[cfg(test)]
mod tests;
