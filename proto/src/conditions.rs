//! The `If-*` conditions of a Blob request: the SDK renders them into headers, the host reads
//! them back from a request's headers; both with the names in [`crate::header`].

use std::fmt;
use std::time::SystemTime;

use crate::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE};

/// ETag and date conditions (`If-Match`, `If-None-Match`, `If-Modified-Since`,
/// `If-Unmodified-Since`). Dates travel as HTTP dates, to the second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// `If-Match`: an ETag (with its quotes), a comma-separated list of them, or `*`.
    pub if_match: Option<String>,
    /// `If-None-Match`: an ETag, a list of them, or `*` (for writes: create only).
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<SystemTime>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<SystemTime>,
}

impl Conditions {
    /// `If-None-Match: *` (create only).
    pub fn create_only() -> Self {
        Self {
            if_none_match: Some("*".into()),
            ..Self::default()
        }
    }

    /// `If-Match: <etag>`.
    pub fn if_match(etag: impl Into<String>) -> Self {
        Self {
            if_match: Some(etag.into()),
            ..Self::default()
        }
    }

    /// The headers that carry the conditions set, as (name, value); dates as HTTP dates.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let date = |t: &Option<SystemTime>| t.map(httpdate::fmt_http_date);
        [
            (IF_MATCH, self.if_match.clone()),
            (IF_NONE_MATCH, self.if_none_match.clone()),
            (IF_MODIFIED_SINCE, date(&self.if_modified_since)),
            (IF_UNMODIFIED_SINCE, date(&self.if_unmodified_since)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    /// The conditions of a request, from its headers (`header` looks one up by its lower-case
    /// name). A date that does not parse is an error naming its header, as Azure answers 400
    /// `InvalidHeaderValue`.
    pub fn from_headers<'a>(
        header: impl Fn(&'static str) -> Option<&'a str>,
    ) -> Result<Self, InvalidDate> {
        let date = |name: &'static str| match header(name) {
            None => Ok(None),
            Some(v) => httpdate::parse_http_date(v)
                .map(Some)
                .map_err(|_| InvalidDate { header: name }),
        };
        Ok(Self {
            if_match: header(IF_MATCH).map(str::to_owned),
            if_none_match: header(IF_NONE_MATCH).map(str::to_owned),
            if_modified_since: date(IF_MODIFIED_SINCE)?,
            if_unmodified_since: date(IF_UNMODIFIED_SINCE)?,
        })
    }
}

/// A date condition whose header value is not an HTTP date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidDate {
    /// The header's name.
    pub header: &'static str,
}

impl fmt::Display for InvalidDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "The value for header {} is not an HTTP date.",
            self.header
        )
    }
}

impl std::error::Error for InvalidDate {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn headers_round_trip_through_from_headers() {
        let c = Conditions {
            if_match: Some("\"0x1\"".into()),
            if_none_match: None,
            if_modified_since: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            if_unmodified_since: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        };
        let h: Vec<_> = c.headers().collect();
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h[0], (IF_MATCH, "\"0x1\"".to_owned()));
        assert_eq!(
            h[1],
            (
                IF_MODIFIED_SINCE,
                "Tue, 14 Nov 2023 22:13:20 GMT".to_owned()
            )
        );
        let find = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(Conditions::from_headers(find), Ok(c));
        assert_eq!(
            Conditions::from_headers(|_| None),
            Ok(Conditions::default())
        );
    }

    #[test]
    fn a_date_that_does_not_parse_names_its_header() {
        let e = Conditions::from_headers(|n| (n == IF_UNMODIFIED_SINCE).then_some("yesterday"))
            .unwrap_err();
        assert_eq!(e.header, IF_UNMODIFIED_SINCE);
        assert_eq!(
            e.to_string(),
            "The value for header if-unmodified-since is not an HTTP date."
        );
    }
}
