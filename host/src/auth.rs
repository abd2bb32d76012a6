//! SharedKey and service-SAS verification for requests addressed to the emulated account.
//!
//! The SharedKey string-to-sign is [`blobring_proto::Canonical`], the one the SDK signs with
//! (the request's headers and decoded query handed over as they were parsed); the SAS
//! string-to-sign follows "Create a service SAS" (version 2020-12-06 and later field list), see
//! `reference/blob-api-and-peers.md` §1.

use std::time::SystemTime;

use base64::DecodeSliceError;
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use blobring_proto::{Canonical, SigningKey, code, header};

use crate::request::{AzError, QueryPairs, Req, RequestHeaders, borrow_map, decode_query};

/// The well-known emulator account and its key (defined in `blobring-proto`).
pub use blobring_proto::{EMULATOR_ACCOUNT, EMULATOR_KEY};

/// Errors in the auth configuration (not in requests).
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The account key is not Base64.
    #[error(
        "Account key is not valid Base64 ({0}); pass the key exactly as the portal or Azurite shows it"
    )]
    BadKey(base64::DecodeError),
    /// The account name is empty or not lower-case alphanumeric.
    #[error("Account name {0:?} is invalid; use 3-24 lower-case letters and digits")]
    BadAccount(String),
}

/// A storage account and its key, used to verify SharedKey signatures and service SAS tokens.
/// (Its `Debug` shows the account only: [`SigningKey`]'s redacts the key.)
#[derive(Clone, Debug)]
pub struct SharedKeyAuth {
    account: String,
    key: SigningKey,
}

fn valid_account(a: &str) -> bool {
    (1..=24).contains(&a.len())
        && a.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl SharedKeyAuth {
    /// Build from an account name and its Base64 key.
    pub fn new(account: &str, key_base64: &str) -> Result<Self, AuthConfigError> {
        if !valid_account(account) {
            return Err(AuthConfigError::BadAccount(account.to_owned()));
        }
        let key = SigningKey::from_base64(key_base64.trim()).map_err(AuthConfigError::BadKey)?;
        Ok(SharedKeyAuth {
            account: account.to_owned(),
            key,
        })
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Sign a string-to-sign with the account key (Base64 HMAC-SHA256).
    pub fn sign(&self, string_to_sign: &str) -> String {
        self.key.sign_str(string_to_sign).to_string()
    }

    /// The `Authorization` header value (`SharedKey <account>:<sig>`) for a request with
    /// this method, path-and-query (as sent on the wire) and headers. For clients and tests.
    pub fn authorization(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> String {
        let (raw_path, q) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let (query, headers) = (decode_query(q), borrow_map(headers));
        let c = self.canonical(method, raw_path, RequestHeaders(&headers), &query, None);
        format!("SharedKey {}:{}", self.account, self.key.sign(&c))
    }

    /// What a SharedKey signature of this request covers (`date`: the `Date` line, `None` for
    /// the header's).
    fn canonical<'r>(
        &'r self,
        method: &'r http::Method,
        raw_path: &'r str,
        headers: RequestHeaders<'r>,
        query: &'r QueryPairs<'r>,
        date: Option<&'r str>,
    ) -> Canonical<
        'r,
        impl Iterator<Item = (&'r str, Option<&'r str>)> + Clone,
        impl Iterator<Item = (&'r str, &'r str)> + Clone,
    > {
        Canonical {
            method: method.as_str(),
            account: &self.account,
            path: raw_path,
            date,
            headers: headers.texts(),
            query: query.iter().map(|(k, v)| (&**k, &**v)),
        }
    }

    /// Verify a request: SharedKey `Authorization` header, or a service SAS in the query.
    pub(crate) fn verify(&self, req: &Req<'_>) -> Result<(), AzError> {
        if let Some(auth) = req.header(header::AUTHORIZATION) {
            return self.verify_shared_key(req, auth);
        }
        if req.query("sig").is_some() {
            return self.verify_sas(req);
        }
        Err(AzError::new(
            401,
            code::NO_AUTHENTICATION_INFORMATION,
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
        ))
    }

    fn verify_shared_key(&self, req: &Req<'_>, auth: &str) -> Result<(), AzError> {
        let fail = |why: &str| {
            AzError::new(
                403,
                code::AUTHENTICATION_FAILED,
                &format!(
                    "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature. ({why})"
                ),
            )
        };
        let Some(rest) = auth.strip_prefix("SharedKey ") else {
            return Err(fail("only SharedKey authorization is supported"));
        };
        let Some((account, sig)) = rest.trim().split_once(':') else {
            return Err(fail("expected `SharedKey <account>:<signature>`"));
        };
        if account != self.account {
            return Err(fail(
                "the account in the Authorization header is not this host's account",
            ));
        }
        let mut buf = [0u8; 96];
        let sig = match BASE64_STANDARD.decode_slice(sig, &mut buf) {
            Ok(n) => &buf[..n],
            // Valid Base64 longer than any signature: it cannot match.
            Err(DecodeSliceError::OutputSliceTooSmall) if BASE64_STANDARD.decode(sig).is_ok() => {
                &[]
            }
            Err(_) => return Err(fail("the signature is not Base64")),
        };
        let date = req.header(header::DATE).unwrap_or("");
        // With x-ms-date, clients may sign an empty Date line.
        let dates: &[&str] = if !date.is_empty() && req.header(header::X_MS_DATE).is_some() {
            &[date, ""]
        } else {
            &[date]
        };
        let signed = |date| {
            let c = self.canonical(
                &req.method,
                req.raw_path,
                req.headers,
                &req.query,
                Some(date),
            );
            self.key.verify(&c, sig)
        };
        if dates.iter().any(|&d| signed(d)) {
            Ok(())
        } else {
            tracing::debug!(string_to_sign = %self.string_to_sign(req, date), "SharedKey signature mismatch");
            Err(fail("the signature does not match"))
        }
    }

    /// The SharedKey string-to-sign for `req` with the given `Date` line.
    pub(crate) fn string_to_sign(&self, req: &Req<'_>, date: &str) -> String {
        self.canonical(
            &req.method,
            req.raw_path,
            req.headers,
            &req.query,
            Some(date),
        )
        .render()
    }

    fn verify_sas(&self, req: &Req<'_>) -> Result<(), AzError> {
        let fail = |why: &str| {
            AzError::new(
                403,
                code::AUTHENTICATION_FAILED,
                &format!(
                    "Server failed to authenticate the request. Make sure the value of the SAS is formed correctly including the signature. ({why})"
                ),
            )
        };
        let q = |n: &str| req.query(n).unwrap_or("");
        if req.query("ss").is_some() || req.query("skoid").is_some() {
            return Err(fail(
                "only service SAS signed with the account key is supported",
            ));
        }
        let now = SystemTime::now();
        match httpdate_or_iso(q("se")) {
            Some(exp) if exp > now => {}
            Some(_) => return Err(fail("the SAS has expired")),
            None => return Err(fail("the SAS has no valid expiry (se)")),
        }
        if let Some(start) = httpdate_or_iso(q("st"))
            && start > now + std::time::Duration::from_secs(900)
        {
            return Err(fail("the SAS is not valid yet"));
        }
        let need = match req.method.as_str() {
            "GET" | "HEAD" => 'r',
            "PUT" => 'w',
            "DELETE" => 'd',
            _ => 'w',
        };
        let perms = q("sp");
        if !(perms.contains(need) || (need == 'w' && perms.contains('c'))) {
            return Err(fail(
                "the SAS does not grant the permission this operation needs",
            ));
        }
        let Ok(sig) = BASE64_STANDARD.decode(q("sig")) else {
            return Err(fail("the signature is not Base64"));
        };
        let resource = if req.path_has_account {
            format!("/blob{}", req.raw_path)
        } else {
            format!("/blob/{}{}", self.account, req.raw_path)
        };
        // object_store signs the path as sent (percent-encoded); Microsoft's SDKs sign the
        // decoded name. Accept either.
        let decoded = percent_encoding::percent_decode_str(&resource)
            .decode_utf8_lossy()
            .into_owned();
        let sts = |resource: &str| {
            [
                q("sp"),
                q("st"),
                q("se"),
                resource,
                q("si"),
                q("sip"),
                q("spr"),
                q("sv"),
                q("sr"),
                q("sst"),
                q("ses"),
                q("rscc"),
                q("rscd"),
                q("rsce"),
                q("rscl"),
                q("rsct"),
            ]
            .join("\n")
        };
        if self.key.verify_str(&sts(&resource), &sig) || self.key.verify_str(&sts(&decoded), &sig) {
            Ok(())
        } else {
            Err(fail("the signature does not match"))
        }
    }
}

/// Parse an ISO 8601 UTC time as used in SAS (`2026-11-24T04:00:00Z`).
fn httpdate_or_iso(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 17 || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi) = (num(11..13)?, num(14..16)?);
    let sec = if b.len() >= 20 { num(17..19)? } else { 0 };
    // Days from civil (Howard Hinnant's algorithm), valid for years >= 1970.
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2 / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + sec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_time_parses() {
        let t = httpdate_or_iso("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            86_401
        );
        let t = httpdate_or_iso("2024-03-01T12:30:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_709_296_200
        );
        assert!(httpdate_or_iso("garbage").is_none());
    }
}
