//! The gateway's counters: connections, and per Blob operation requests, errors, bytes and a
//! latency histogram. Lock-free atomics (each request updates a handful); rendered as
//! Prometheus text ([`Stats::prometheus`], metric names `blobring_gateway_*`) and as JSON
//! ([`Stats::json`]).

use blobring::proto::header::X_MS_COPY_SOURCE;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};

/// The Blob REST operation of a request, from its method, query and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Get Blob.
    GetBlob,
    /// Get Blob Properties (HEAD).
    GetBlobProperties,
    /// Put Blob.
    PutBlob,
    /// Put Block.
    PutBlock,
    /// Put Block List.
    PutBlockList,
    /// Get Block List.
    GetBlockList,
    /// List Blobs / List Containers.
    List,
    /// Copy Blob.
    CopyBlob,
    /// Delete Blob.
    DeleteBlob,
    /// Create / Delete / Get properties of a container.
    Container,
    /// Anything else (metadata, properties, leases…).
    Other,
}

impl Op {
    /// Every operation, in the order stats list them.
    pub const ALL: [Op; 11] = [
        Op::GetBlob,
        Op::GetBlobProperties,
        Op::PutBlob,
        Op::PutBlock,
        Op::PutBlockList,
        Op::GetBlockList,
        Op::List,
        Op::CopyBlob,
        Op::DeleteBlob,
        Op::Container,
        Op::Other,
    ];

    /// Its label in the stats.
    pub fn name(self) -> &'static str {
        match self {
            Op::GetBlob => "get_blob",
            Op::GetBlobProperties => "get_blob_properties",
            Op::PutBlob => "put_blob",
            Op::PutBlock => "put_block",
            Op::PutBlockList => "put_block_list",
            Op::GetBlockList => "get_block_list",
            Op::List => "list",
            Op::CopyBlob => "copy_blob",
            Op::DeleteBlob => "delete_blob",
            Op::Container => "container",
            Op::Other => "other",
        }
    }

    /// The operation a request names.
    pub fn classify(method: &Method, query: Option<&str>, headers: &HeaderMap) -> Op {
        let q = query.unwrap_or("");
        let has = |k: &str| {
            q.split('&')
                .any(|p| p == k || p.starts_with(&format!("{k}=")))
        };
        let is = |k: &str, v: &str| q.split('&').any(|p| p == format!("{k}={v}"));
        if is("comp", "list") {
            return Op::List;
        }
        if is("restype", "container") {
            return Op::Container;
        }
        if has("comp") && !is("comp", "block") && !is("comp", "blocklist") {
            return Op::Other;
        }
        match *method {
            Method::GET if is("comp", "blocklist") => Op::GetBlockList,
            Method::GET => Op::GetBlob,
            Method::HEAD => Op::GetBlobProperties,
            Method::PUT if is("comp", "block") => Op::PutBlock,
            Method::PUT if is("comp", "blocklist") => Op::PutBlockList,
            Method::PUT if headers.contains_key(X_MS_COPY_SOURCE) => Op::CopyBlob,
            Method::PUT => Op::PutBlob,
            Method::DELETE => Op::DeleteBlob,
            _ => Op::Other,
        }
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default)]
struct OpStats {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency_us_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// One per-operation counter of an [`OpStats`].
type OpCounter = fn(&OpStats) -> &AtomicU64;

/// The gateway's statistics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Requests answered 503 because blobringd was unreachable or died.
    pub daemon_errors: AtomicU64,
    /// GET answers carried in more than one blobring request (body windows).
    pub windowed_gets: AtomicU64,
    /// Body windows fetched after the first, over all windowed GETs.
    pub extra_windows: AtomicU64,
    /// Put Blobs larger than one request, carried in body parts.
    pub put_in_parts: AtomicU64,
    /// Answers cut off after their head was sent (a later window failed: the blob changed,
    /// blobringd died, a deadline passed); the client sees a truncated body.
    pub aborted_bodies: AtomicU64,
    ops: [OpStats; Op::ALL.len()],
}

impl Stats {
    pub(crate) fn record(&self, op: Op, status: u16, bytes_in: u64, bytes_out: u64, t: Duration) {
        let s = &self.ops[Op::ALL.iter().position(|o| *o == op).unwrap_or(0)];
        s.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 400 {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        s.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        s.latency_us_sum
            .fetch_add(t.as_micros() as u64, Ordering::Relaxed);
        let secs = t.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests answered so far (all operations).
    pub fn requests(&self) -> u64 {
        self.ops
            .iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let scalars: [(&str, &str, &str, &AtomicU64); 7] = [
            (
                "connections_total",
                "counter",
                "Connections accepted.",
                &self.connections_total,
            ),
            (
                "connections_open",
                "gauge",
                "Connections open now.",
                &self.connections_open,
            ),
            (
                "daemon_errors_total",
                "counter",
                "Requests answered 503 because blobringd was unreachable or died.",
                &self.daemon_errors,
            ),
            (
                "windowed_gets_total",
                "counter",
                "GET answers carried in more than one blobring request.",
                &self.windowed_gets,
            ),
            (
                "extra_windows_total",
                "counter",
                "Body windows fetched after the first.",
                &self.extra_windows,
            ),
            (
                "put_in_parts_total",
                "counter",
                "Put Blobs larger than one request, carried in parts.",
                &self.put_in_parts,
            ),
            (
                "aborted_bodies_total",
                "counter",
                "Answers cut off after their head was sent.",
                &self.aborted_bodies,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(
                o,
                "# HELP blobring_gateway_{name} {help}\n# TYPE blobring_gateway_{name} {kind}\n\
                 blobring_gateway_{name} {}",
                g(v)
            );
        }
        let per_op: [(&str, &str, OpCounter); 4] = [
            (
                "requests_total",
                "Requests answered, by Blob operation.",
                |s| &s.requests,
            ),
            ("errors_total", "Answers with status >= 400.", |s| &s.errors),
            ("request_bytes_total", "Request body bytes received.", |s| {
                &s.bytes_in
            }),
            ("response_bytes_total", "Response body bytes sent.", |s| {
                &s.bytes_out
            }),
        ];
        for (name, help, f) in per_op {
            let _ = writeln!(
                o,
                "# HELP blobring_gateway_{name} {help}\n# TYPE blobring_gateway_{name} counter"
            );
            for (op, s) in Op::ALL.iter().zip(&self.ops) {
                let _ = writeln!(
                    o,
                    "blobring_gateway_{name}{{op=\"{}\"}} {}",
                    op.name(),
                    g(f(s))
                );
            }
        }
        self.latency_histogram(&mut o);
        o
    }

    /// The `blobring_gateway_latency_seconds` histogram, by operation, appended to `o`.
    fn latency_histogram(&self, o: &mut String) {
        use std::fmt::Write as _;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP blobring_gateway_latency_seconds Time from request head to answer, by Blob operation.\n\
             # TYPE blobring_gateway_latency_seconds histogram"
        );
        for (op, s) in Op::ALL.iter().zip(&self.ops) {
            let mut cum = 0;
            for (b, n) in BUCKETS.iter().zip(&s.buckets) {
                cum += g(n);
                let _ = writeln!(
                    o,
                    "blobring_gateway_latency_seconds_bucket{{op=\"{}\",le=\"{b}\"}} {cum}",
                    op.name()
                );
            }
            let _ = writeln!(
                o,
                "blobring_gateway_latency_seconds_bucket{{op=\"{0}\",le=\"+Inf\"}} {1}\n\
                 blobring_gateway_latency_seconds_sum{{op=\"{0}\"}} {2}\n\
                 blobring_gateway_latency_seconds_count{{op=\"{0}\"}} {1}",
                op.name(),
                g(&s.requests),
                g(&s.latency_us_sum) as f64 / 1e6
            );
        }
    }

    /// The same figures as JSON (`connections`, `daemon_errors`, `windowed_gets`,
    /// `extra_windows`, `put_in_parts`, `aborted_bodies`, `ops.<op>.{requests, errors,
    /// request_bytes, response_bytes, latency_mean_us}`).
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut ops = serde_json::Map::new();
        for (op, s) in Op::ALL.iter().zip(&self.ops) {
            let n = g(&s.requests);
            ops.insert(
                op.name().into(),
                serde_json::json!({
                    "requests": n,
                    "errors": g(&s.errors),
                    "request_bytes": g(&s.bytes_in),
                    "response_bytes": g(&s.bytes_out),
                    "latency_mean_us": g(&s.latency_us_sum).checked_div(n).unwrap_or(0),
                }),
            );
        }
        serde_json::json!({
            "connections": {
                "total": g(&self.connections_total),
                "open": g(&self.connections_open),
            },
            "requests": self.requests(),
            "daemon_errors": g(&self.daemon_errors),
            "windowed_gets": g(&self.windowed_gets),
            "extra_windows": g(&self.extra_windows),
            "put_in_parts": g(&self.put_in_parts),
            "aborted_bodies": g(&self.aborted_bodies),
            "ops": ops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        let h = HeaderMap::new();
        let c = |m: Method, q: &str| Op::classify(&m, Some(q), &h);
        assert_eq!(c(Method::GET, ""), Op::GetBlob);
        assert_eq!(c(Method::PUT, "comp=block&blockid=x"), Op::PutBlock);
        assert_eq!(c(Method::PUT, "comp=blocklist"), Op::PutBlockList);
        assert_eq!(c(Method::GET, "restype=container&comp=list"), Op::List);
        assert_eq!(c(Method::PUT, "restype=container"), Op::Container);
        assert_eq!(c(Method::PUT, "comp=metadata"), Op::Other);
    }

    #[test]
    fn prometheus_text_counts() {
        let s = Stats::default();
        s.record(Op::GetBlob, 200, 0, 10, Duration::from_millis(3));
        let t = s.prometheus();
        assert!(t.contains("blobring_gateway_requests_total{op=\"get_blob\"} 1"));
        assert!(t.contains("blobring_gateway_response_bytes_total{op=\"get_blob\"} 10"));
        assert!(
            t.contains("blobring_gateway_latency_seconds_bucket{op=\"get_blob\",le=\"0.005\"} 1")
        );
    }

    #[test]
    fn prometheus_scalars_have_help_type_and_value() {
        let s = Stats::default();
        s.connections_open.store(2, Ordering::Relaxed);
        s.aborted_bodies.store(5, Ordering::Relaxed);
        let t = s.prometheus();
        assert!(t.starts_with(
            "# HELP blobring_gateway_connections_total Connections accepted.\n\
             # TYPE blobring_gateway_connections_total counter\n\
             blobring_gateway_connections_total 0\n\
             # HELP blobring_gateway_connections_open Connections open now.\n\
             # TYPE blobring_gateway_connections_open gauge\n\
             blobring_gateway_connections_open 2\n"
        ));
        assert!(t.contains(
            "# TYPE blobring_gateway_aborted_bodies_total counter\n\
             blobring_gateway_aborted_bodies_total 5\n\
             # HELP blobring_gateway_requests_total Requests answered, by Blob operation.\n"
        ));
    }
}
