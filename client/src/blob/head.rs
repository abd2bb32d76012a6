//! Rendering a signed HTTP/1.1 request head for one account, without allocating.
//!
//! What stays the same for every request of an account is prepared once in a [`HeadBuilder`]:
//! the SharedKey HMAC keyed with the account key ([`blobring_proto::SigningKey`]), the `host`,
//! `x-ms-version` and `authorization` prefix lines. Rendering writes into a buffer the caller
//! keeps and reuses, signs by feeding the canonical string straight into a clone of the keyed
//! HMAC, and formats the date, numbers and percent-encoding in place: once the buffer has
//! grown to a head's size, rendering and signing allocate nothing
//! (`client/tests/head_alloc.rs` counts).

use std::io::Write as _;
use std::ops::Range;
use std::time::SystemTime;

use blobring_proto::header::{AUTHORIZATION, CONTENT_LENGTH, X_MS_DATE, X_MS_VERSION};
use blobring_proto::{API_VERSION, Canonical, SigningKey};
use percent_encoding::utf8_percent_encode;

use super::{AccountConfig, Credentials, PATH};

/// How heads are authorised, prepared.
#[derive(Clone)]
enum Auth {
    SharedKey(SigningKey),
    Sas(String),
    Anonymous,
}

/// Renders request heads for one account: `Host`, `x-ms-date`, `x-ms-version`,
/// `Content-Length` and the authorisation added to a request's own headers.
///
/// ```
/// use blobring::blob::{AccountConfig, HeadBuilder};
/// let b = HeadBuilder::new(&AccountConfig::emulator());
/// let mut head = Vec::new();
/// let query = [("restype", "container")];
/// b.render(&mut head, "PUT", "/devstoreaccount1/data", &query, &[], 0);
/// assert!(head.starts_with(b"PUT /devstoreaccount1/data?restype=container HTTP/1.1\r\n"));
/// ```
#[derive(Clone)]
pub struct HeadBuilder {
    account: String,
    /// `host: <host>\r\n`.
    host_line: String,
    /// `x-ms-version: <API_VERSION>\r\n`.
    version_line: String,
    /// `authorization: SharedKey <account>:`.
    auth_prefix: String,
    auth: Auth,
}

impl std::fmt::Debug for HeadBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key and a SAS stay out of logs.
        write!(
            f,
            "HeadBuilder({} at {:?})",
            self.account,
            self.host_line.trim_end()
        )
    }
}

impl HeadBuilder {
    /// Prepares heads for `account` (keys its HMAC once).
    pub fn new(account: &AccountConfig) -> Self {
        Self {
            account: account.account.clone(),
            host_line: format!("host: {}\r\n", account.host),
            version_line: format!("{X_MS_VERSION}: {API_VERSION}\r\n"),
            auth_prefix: format!("{AUTHORIZATION}: SharedKey {}:", account.account),
            auth: match &account.credentials {
                Credentials::SharedKey { key } => Auth::SharedKey(SigningKey::new(key)),
                Credentials::Sas(sas) => Auth::Sas(sas.clone()),
                Credentials::Anonymous => Auth::Anonymous,
            },
        }
    }

    /// Renders the head of `method path?query` with `headers` (names in any case; written
    /// lower-case) and a body of `body_len` bytes into `out`, which is cleared first. Adds
    /// `x-ms-date` (now), `x-ms-version` and `Content-Length` (for a body, or any PUT) unless
    /// `headers` has them, then the authorisation: a SharedKey `Authorization` line or the SAS
    /// appended to the query. `path` is already percent-encoded; query names and values are
    /// encoded here. Names and values are any string type (`String`, `&str`, `Cow<str>`;
    /// the query's and the headers' the same), so literals need not be allocated.
    pub fn render<K: AsRef<str>, V: AsRef<str>>(
        &self,
        out: &mut Vec<u8>,
        method: &str,
        path: &str,
        query: &[(K, V)],
        headers: &[(K, V)],
        body_len: u64,
    ) {
        out.clear();
        self.request_line(out, method, path, query);
        out.extend_from_slice(self.host_line.as_bytes());
        for (k, v) in headers {
            out.extend(k.as_ref().bytes().map(|b| b.to_ascii_lowercase()));
            put(out, ": ");
            put(out, v.as_ref());
            put(out, "\r\n");
        }
        let has = |n: &str| {
            headers
                .iter()
                .any(|(k, _)| k.as_ref().eq_ignore_ascii_case(n))
        };
        let date = (!has(X_MS_DATE)).then(|| {
            line(out, X_MS_DATE, |o| {
                write!(o, "{}", httpdate::HttpDate::from(SystemTime::now()))
            })
        });
        let version = !has(X_MS_VERSION);
        if version {
            out.extend_from_slice(self.version_line.as_bytes());
        }
        let length = (!has(CONTENT_LENGTH) && (body_len > 0 || method == "PUT"))
            .then(|| line(out, CONTENT_LENGTH, |o| write!(o, "{body_len}")));
        if let Auth::SharedKey(key) = &self.auth {
            let text = |r: Option<Range<usize>>| {
                r.map(|r| std::str::from_utf8(&out[r]).expect("written as ASCII"))
            };
            let added = [
                text(date).map(|v| (X_MS_DATE, Some(v))),
                version.then_some((X_MS_VERSION, Some(API_VERSION))),
                text(length).map(|v| (CONTENT_LENGTH, Some(v))),
            ];
            let sig = key.sign(&Canonical {
                method,
                account: &self.account,
                path,
                date: None,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.as_ref(), Some(v.as_ref())))
                    .chain(added.into_iter().flatten()),
                query: query.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
            });
            put(out, &self.auth_prefix);
            put(out, sig.as_str());
            put(out, "\r\n");
        }
        put(out, "\r\n");
    }

    /// `<method> <path>?<query> HTTP/1.1\r\n`, the SAS (if any) last in the query.
    fn request_line<K: AsRef<str>, V: AsRef<str>>(
        &self,
        out: &mut Vec<u8>,
        method: &str,
        path: &str,
        query: &[(K, V)],
    ) {
        put(out, method);
        put(out, " ");
        put(out, path);
        let mut sep = "?";
        for (k, v) in query {
            put(out, sep);
            sep = "&";
            utf8_percent_encode(k.as_ref(), PATH).for_each(|s| put(out, s));
            put(out, "=");
            utf8_percent_encode(v.as_ref(), PATH).for_each(|s| put(out, s));
        }
        if let Auth::Sas(sas) = &self.auth {
            put(out, sep);
            put(out, sas);
        }
        put(out, " HTTP/1.1\r\n");
    }
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

/// Writes `name: <value>\r\n` with the value from `value`; returns where the value is.
fn line(
    out: &mut Vec<u8>,
    name: &str,
    value: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> Range<usize> {
    put(out, name);
    put(out, ": ");
    let start = out.len();
    value(out).expect("writing to a Vec cannot fail");
    let end = out.len();
    put(out, "\r\n");
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(a: &[(&str, &str)]) -> Vec<(String, String)> {
        a.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DATE: (&str, &str) = ("x-ms-date", "Tue, 24 Nov 2026 04:00:00 GMT");

    /// Method, path, query, headers, body length and the head expected.
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        u64,
        &'a str,
    );

    /// Heads rendered by the SDK before signer and verifier shared `blobring-proto`, byte for
    /// byte (the date given, so the heads are fixed).
    #[test]
    fn heads_are_as_before() {
        let b = HeadBuilder::new(&AccountConfig::emulator());
        let mut out = Vec::new();
        let cases: [Case; 3] = [
            (
                "PUT",
                "/devstoreaccount1/c/a%20b",
                &[("comp", "block"), ("blockid", "QQ==")],
                &[
                    DATE,
                    ("X-Ms-Meta-Foo", " bar "),
                    ("x-ms-content-crc64", "AAAAAAAAAAA="),
                    ("If-Match", "\"e\""),
                ],
                5,
                "PUT /devstoreaccount1/c/a%20b?comp=block&blockid=QQ%3D%3D HTTP/1.1\r\nhost: 127.0.0.1:10000\r\nx-ms-date: Tue, 24 Nov 2026 04:00:00 GMT\r\nx-ms-meta-foo:  bar \r\nx-ms-content-crc64: AAAAAAAAAAA=\r\nif-match: \"e\"\r\nx-ms-version: 2023-11-03\r\ncontent-length: 5\r\nauthorization: SharedKey devstoreaccount1:tIOzz2gPsRJenu9tgVr8qWq3GNPz6z2KoP01OL18EtY=\r\n\r\n",
            ),
            (
                "GET",
                "/devstoreaccount1/c",
                &[
                    ("restype", "container"),
                    ("comp", "list"),
                    ("prefix", "a b/ü"),
                    ("include", "snapshots"),
                    ("include", "metadata"),
                ],
                &[DATE, ("x-ms-range", "bytes=0-9")],
                0,
                "GET /devstoreaccount1/c?restype=container&comp=list&prefix=a%20b%2F%C3%BC&include=snapshots&include=metadata HTTP/1.1\r\nhost: 127.0.0.1:10000\r\nx-ms-date: Tue, 24 Nov 2026 04:00:00 GMT\r\nx-ms-range: bytes=0-9\r\nx-ms-version: 2023-11-03\r\nauthorization: SharedKey devstoreaccount1:Ph6hAglGGly9BMpgGNmJALH4pSTlZVVKdGlqJOnnyCU=\r\n\r\n",
            ),
            (
                "PUT",
                "/devstoreaccount1/c",
                &[("restype", "container")],
                &[DATE],
                0,
                "PUT /devstoreaccount1/c?restype=container HTTP/1.1\r\nhost: 127.0.0.1:10000\r\nx-ms-date: Tue, 24 Nov 2026 04:00:00 GMT\r\nx-ms-version: 2023-11-03\r\ncontent-length: 0\r\nauthorization: SharedKey devstoreaccount1:WozCuWyyvdzZjghLCURcq95mWE+FarNnuk6rtS36RCg=\r\n\r\n",
            ),
        ];
        for (method, path, q, h, len, want) in cases {
            b.render(&mut out, method, path, &pairs(q), &pairs(h), len);
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
    }

    /// The date added is now's, and what was signed is the head's own (the signature matches
    /// the string-to-sign of the rendered headers).
    #[test]
    fn added_headers_are_signed() {
        let acct = AccountConfig::emulator();
        let b = HeadBuilder::new(&acct);
        let mut out = Vec::new();
        let none: &[(&str, &str)] = &[];
        b.render(&mut out, "PUT", "/devstoreaccount1/c/b", none, none, 3);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<(String, String)> = text
            .split("\r\n")
            .skip(2)
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (signed, auth) = lines.split_at(lines.len() - 1);
        let date = &signed[0].1;
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let Credentials::SharedKey { key } = &acct.credentials else {
            unreachable!()
        };
        let sts = super::super::string_to_sign(
            "PUT",
            &acct.account,
            "/devstoreaccount1/c/b",
            &[],
            signed,
        );
        assert_eq!(
            auth[0].1,
            format!(
                "SharedKey devstoreaccount1:{}",
                super::super::sign(key, &sts)
            )
        );
        assert_eq!(signed[2], ("content-length".to_owned(), "3".to_owned()));
    }

    /// A SAS goes last in the query, with no `Authorization`; anonymous adds neither.
    #[test]
    fn sas_and_anonymous() {
        let mut acct = AccountConfig::emulator();
        acct.credentials = Credentials::Sas("sv=1&sig=x%2B".into());
        let mut out = Vec::new();
        let q = pairs(&[("comp", "list")]);
        HeadBuilder::new(&acct).render(&mut out, "GET", "/devstoreaccount1", &q, &[], 0);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("GET /devstoreaccount1?comp=list&sv=1&sig=x%2B HTTP/1.1\r\n"));
        assert!(!text.contains("authorization"));
        acct.credentials = Credentials::Anonymous;
        let none: &[(String, String)] = &[];
        HeadBuilder::new(&acct).render(&mut out, "GET", "/devstoreaccount1", none, none, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /devstoreaccount1 HTTP/1.1\r\n"));
        assert!(!text.contains("authorization") && !text.contains("content-length"));
    }
}
