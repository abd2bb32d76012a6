//! Credentials and endpoints, and the SharedKey string-to-sign and signature as plain
//! functions (for tests and tools that build their own requests; the SDK's own heads are
//! rendered by [`super::HeadBuilder`]). Both come from `blobring-proto`, which the host
//! verifies with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blobring_proto::{Canonical, SigningKey};

use super::BlobError;

pub use blobring_proto::{EMULATOR_ACCOUNT, EMULATOR_KEY};

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

/// The SharedKey string-to-sign of a request (the 2009-09-19+ scheme,
/// [`blobring_proto::Canonical`]).
///
/// `path` is the encoded request path, `query` the decoded parameters, `headers` the names
/// (case does not matter) with their values.
pub fn string_to_sign(
    method: &str,
    account: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
) -> String {
    Canonical {
        method,
        account,
        path,
        date: None,
        headers: headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
        query: query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    }
    .render()
}

/// Base64(HMAC-SHA256(key, string_to_sign)).
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    SigningKey::new(key).sign_str(string_to_sign).to_string()
}
