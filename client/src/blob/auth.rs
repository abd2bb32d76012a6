//! Credentials, endpoints and the SharedKey signer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::BlobError;

/// The well-known emulator account.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// The well-known (public) emulator account key.
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How requests are authorised.
#[derive(Clone)]
pub enum Credentials {
    /// `Authorization: SharedKey <account>:<sig>` with the decoded account key.
    SharedKey {
        /// The decoded account key.
        key: Vec<u8>,
    },
    /// A SAS token (query string without the leading `?`) appended to every request.
    Sas(String),
    /// No authorisation (public containers, or a host started with `--no-auth`).
    Anonymous,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::SharedKey { .. } => "SharedKey(..)",
            Credentials::Sas(_) => "Sas(..)",
            Credentials::Anonymous => "Anonymous",
        })
    }
}

/// Where the account lives and how to authorise: what a connection string says.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Storage account name.
    pub account: String,
    /// `Host` header value (e.g. `127.0.0.1:10000` or `acct.blob.core.windows.net`).
    pub host: String,
    /// Path prefix before `/<container>` (`/devstoreaccount1` in path style, empty otherwise).
    pub path_prefix: String,
    /// `http` or `https` (used for copy-source URLs).
    pub scheme: String,
    /// Credentials.
    pub credentials: Credentials,
}

impl AccountConfig {
    /// The emulator account (path-style, `127.0.0.1:10000`, well-known key).
    pub fn emulator() -> Self {
        Self {
            account: EMULATOR_ACCOUNT.into(),
            host: "127.0.0.1:10000".into(),
            path_prefix: format!("/{EMULATOR_ACCOUNT}"),
            scheme: "http".into(),
            credentials: Credentials::SharedKey {
                key: B64.decode(EMULATOR_KEY).expect("valid constant"),
            },
        }
    }

    /// An account at `https://<account>.blob.core.windows.net` (host-style URLs).
    pub fn new(account: &str, credentials: Credentials) -> Self {
        Self {
            account: account.into(),
            host: format!("{account}.blob.core.windows.net"),
            path_prefix: String::new(),
            scheme: "https".into(),
            credentials,
        }
    }

    /// SharedKey credentials from a Base64 account key.
    pub fn shared_key(key_base64: &str) -> Result<Credentials, BlobError> {
        let key = B64.decode(key_base64.trim()).map_err(|_| {
            BlobError::Config(
                "the account key is not valid Base64; copy it again from the portal".into(),
            )
        })?;
        Ok(Credentials::SharedKey { key })
    }

    /// Reads `AZURE_STORAGE_CONNECTION_STRING`, falling back to the emulator account when it
    /// is unset.
    pub fn from_env() -> Result<Self, BlobError> {
        match std::env::var("AZURE_STORAGE_CONNECTION_STRING") {
            Ok(s) if !s.trim().is_empty() => Self::from_connection_string(&s),
            _ => Ok(Self::emulator()),
        }
    }

    /// Parses an Azure connection string: `AccountName`, `AccountKey`, `SharedAccessSignature`,
    /// `BlobEndpoint`, `DefaultEndpointsProtocol`, `EndpointSuffix`, or `UseDevelopmentStorage=true`.
    ///
    /// ```
    /// let c = blobring::blob::AccountConfig::from_connection_string(
    ///     "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=AAAA;\
    ///      BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
    /// ).unwrap();
    /// assert_eq!(c.path_prefix, "/devstoreaccount1");
    /// assert_eq!(c.host, "127.0.0.1:10000");
    /// ```
    pub fn from_connection_string(s: &str) -> Result<Self, BlobError> {
        let mut kv = std::collections::HashMap::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(BlobError::Config(format!(
                    "connection string part {part:?} is not key=value"
                )));
            };
            kv.insert(k.to_ascii_lowercase(), v.to_owned());
        }
        if kv
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(Self::emulator());
        }
        let account = kv.get("accountname").cloned().unwrap_or_default();
        let credentials = if let Some(k) = kv.get("accountkey") {
            Self::shared_key(k)?
        } else if let Some(sas) = kv.get("sharedaccesssignature") {
            Credentials::Sas(sas.trim_start_matches('?').to_owned())
        } else {
            Credentials::Anonymous
        };
        if let Some(ep) = kv.get("blobendpoint") {
            let (scheme, rest) = ep.split_once("://").ok_or_else(|| {
                BlobError::Config(format!(
                    "BlobEndpoint {ep:?} has no scheme (http:// or https://)"
                ))
            })?;
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let path = path.trim_end_matches('/');
            let mut account = account;
            if account.is_empty() {
                account = if path.is_empty() {
                    host.split('.').next().unwrap_or("").to_owned()
                } else {
                    path.to_owned()
                };
            }
            return Ok(Self {
                account,
                host: host.to_owned(),
                path_prefix: if path.is_empty() {
                    String::new()
                } else {
                    format!("/{path}")
                },
                scheme: scheme.to_owned(),
                credentials,
            });
        }
        if account.is_empty() {
            return Err(BlobError::Config(
                "the connection string names no AccountName and no BlobEndpoint".into(),
            ));
        }
        let suffix = kv
            .get("endpointsuffix")
            .cloned()
            .unwrap_or_else(|| "core.windows.net".into());
        let scheme = kv
            .get("defaultendpointsprotocol")
            .cloned()
            .unwrap_or_else(|| "https".into());
        Ok(Self {
            host: format!("{account}.blob.{suffix}"),
            account,
            path_prefix: String::new(),
            scheme,
            credentials,
        })
    }

    /// The URL of a blob (for `x-ms-copy-source`).
    pub fn url(&self, encoded_path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.host, encoded_path)
    }
}

/// The SharedKey string-to-sign of a request (the 2009-09-19+ scheme).
///
/// `path` is the encoded request path, `query` the decoded parameters, `headers` lower-case
/// names with their values.
pub fn string_to_sign(
    method: &str,
    account: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
) -> String {
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map_or("", |(_, v)| v.as_str())
    };
    let content_length = match h("content-length") {
        "0" => "",
        v => v,
    };
    let mut s = String::with_capacity(256);
    for part in [
        method,
        h("content-encoding"),
        h("content-language"),
        content_length,
        h("content-md5"),
        h("content-type"),
        h("date"),
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    ] {
        s.push_str(part);
        s.push('\n');
    }
    let mut ms: Vec<&(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-ms-"))
        .collect();
    ms.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in ms {
        s.push_str(k);
        s.push(':');
        s.push_str(v.trim());
        s.push('\n');
    }
    s.push('/');
    s.push_str(account);
    s.push_str(path);
    let mut q: Vec<(String, &str)> = query
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.as_str()))
        .collect();
    q.sort();
    let mut i = 0;
    while i < q.len() {
        let name = q[i].0.clone();
        let mut vals = Vec::new();
        while i < q.len() && q[i].0 == name {
            vals.push(q[i].1);
            i += 1;
        }
        s.push('\n');
        s.push_str(&name);
        s.push(':');
        s.push_str(&vals.join(","));
    }
    s
}

/// Base64(HMAC-SHA256(key, string_to_sign)).
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}
