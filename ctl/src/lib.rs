#![forbid(unsafe_code)]
//! The `blobring` command-line tool: daemon administration (`stats`, `top`, `clients`,
//! `channels`, `up`), blob data commands ([`data`]: `cp`, `ls`, `cat`, `rm`, `mb`, `rb`), and
//! the entry points of `gateway` and `mount` ([`entry`]).
//!
//! [`stack`] is the one stack launcher: it starts `blobring-host` and `blobringd`, waits for
//! them and kills them on drop, for `blobring up`, the cross-process tests, the benchmarks and
//! (through the tests crate) the Python tests.
//!
//! **Owns:** reading `blobringd`'s ctl socket (one JSON document per connection, with the
//! top-level keys `daemon`, `totals`, `workers`, `channels`, `clients`) and rendering it as
//! tables; the processes a [`stack::StackBuilder`] starts. **Trusts:** the daemon's ctl socket
//! (its JSON is still parsed defensively: missing fields render as 0) and the binaries it is
//! told to start. **Invariants:** admin commands are read-only and never block longer than
//! [`CTL_TIMEOUT`]; every launcher wait is bounded and every process it starts is killed and
//! reaped on drop.

pub mod data;
pub mod entry;
pub mod stack;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Longest wait for the daemon's answer.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the ctl socket could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Could not connect.
    #[error(
        "cannot reach blobringd's ctl socket {path}: {source}; is the daemon running? (pass --ctl-socket)"
    )]
    Connect {
        /// Path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Could not read the answer.
    #[error("reading from blobringd's ctl socket failed: {0}")]
    Read(#[source] std::io::Error),
    /// The answer is not JSON.
    #[error("blobringd sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The default ctl socket: `blobringd.ctl` next to the default client socket.
pub fn default_ctl_path() -> PathBuf {
    blobring::default_socket_path().with_file_name("blobringd.ctl")
}

/// Fetches the statistics document.
pub fn fetch(path: &Path) -> Result<Value, CtlError> {
    let mut s = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    s.set_read_timeout(Some(CTL_TIMEOUT))
        .map_err(CtlError::Read)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(CtlError::Read)?;
    Ok(serde_json::from_str(&text)?)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn us(v: &Value) -> String {
    format!("{:.1}", n(v) as f64 / 1e3)
}

fn errors(v: &Value) -> u64 {
    v.as_object().map_or(0, |o| o.values().map(n).sum())
}

/// How the field `field` of a row shows in a table (a missing one as 0 or `-`).
fn cell(row: &Value, field: &str) -> String {
    let v = &row[field];
    match field {
        "errors" => errors(v).to_string(),
        "pid" => v.as_i64().unwrap_or(0).to_string(),
        "cpu" => v.as_u64().map_or("-".to_string(), |c| c.to_string()),
        "end_to_end" => us(&v["p99_ns"]),
        "guid" | "state" => v.as_str().unwrap_or("-").to_string(),
        _ => n(v).to_string(),
    }
}

/// The rows of a table: the elements of an array (none if it is missing).
fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// A table: a header line of `heads` (separated by `|`), then a line a row of its `fields`
/// (separated by spaces; shown by `show`), every cell padded to its column's width (negative:
/// left-aligned) and separated by a space.
fn table<'a>(
    heads: &str,
    widths: &[i16],
    fields: &str,
    rows: impl IntoIterator<Item = &'a Value>,
    show: impl Fn(&Value, &str) -> String,
) -> String {
    let fields: Vec<&str> = fields.split_whitespace().collect();
    debug_assert!(heads.split('|').count() == widths.len() && fields.len() == widths.len());
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let padded: Vec<String> = cells
            .zip(widths)
            .map(|(c, &w)| {
                let width = usize::from(w.unsigned_abs());
                if w < 0 {
                    format!("{c:<width$}")
                } else {
                    format!("{c:>width$}")
                }
            })
            .collect();
        padded.join(" ") + "\n"
    };
    let mut out = line(&mut heads.split('|').map(str::to_string));
    for r in rows {
        out.push_str(&line(&mut fields.iter().map(|f| show(r, f))));
    }
    out
}

/// `blobring stats`: daemon summary and one line per worker.
pub fn render_stats(doc: &Value) -> String {
    let d = &doc["daemon"];
    let t = &doc["totals"];
    let mut out = format!(
        "host: {}  channels: {}  clients: {}  refused: {}\nrequests: {}  bytes out: {}  bytes in: {}  errors: {}\n\
         latency µs (p50/p99): queue wait {}/{}  host {}/{}  end-to-end {}/{}\n\n",
        if d["host_connected"].as_bool().unwrap_or(false) {
            "connected"
        } else {
            "DISCONNECTED"
        },
        n(&d["channels_open"]),
        n(&d["clients"]),
        n(&d["refused"]),
        n(&t["requests"]),
        n(&t["bytes_out"]),
        n(&t["bytes_in"]),
        errors(&t["errors"]),
        us(&t["queue_wait"]["p50_ns"]),
        us(&t["queue_wait"]["p99_ns"]),
        us(&t["host_service"]["p50_ns"]),
        us(&t["host_service"]["p99_ns"]),
        us(&t["end_to_end"]["p50_ns"]),
        us(&t["end_to_end"]["p99_ns"]),
    );
    out.push_str(&table(
        "worker|cpu|requests|nops|inflight|waiting|errors|sleeps|e2e p99µs",
        &[6, 4, 12, 10, 8, 8, 8, 10, 9],
        "index cpu requests nops in_flight waiting errors sleeps end_to_end",
        rows(&doc["workers"]),
        cell,
    ));
    let in_flight = doc["in_flight"].as_array().map_or(&[][..], Vec::as_slice);
    if !in_flight.is_empty() {
        out.push_str("\noldest in flight (transaction GUID as sent to the host):\n");
        out.push_str(&table(
            "guid|worker|client|user_data|state|age ms",
            &[-36, 6, 6, 20, 14, 8],
            "guid worker client user_data state age_ms",
            in_flight.iter().take(IN_FLIGHT_ROWS),
            cell,
        ));
    }
    out
}

/// Rows of the daemon's in-flight list `blobring stats` prints (`--json` has them all).
const IN_FLIGHT_ROWS: usize = 10;

/// `blobring clients`: one line per client.
pub fn render_clients(doc: &Value) -> String {
    table(
        "id|uid|pid|requests|bytes out|bytes in|inflight|stalls|errors",
        &[6, 6, 8, 12, 14, 14, 8, 8, 8],
        "id uid pid requests bytes_out bytes_in in_flight credit_stalls errors",
        rows(&doc["clients"]),
        cell,
    )
}

/// `blobring channels`: one line per channel.
pub fn render_channels(doc: &Value) -> String {
    table(
        "channel|worker|requests|bytes out|bytes in|inflight|outstanding|ring full",
        &[7, 6, 12, 14, 14, 8, 12, 9],
        "index worker requests bytes_out bytes_in in_flight outstanding_bytes ring_full",
        rows(&doc["channels"]),
        cell,
    )
}

/// `blobring top`: rates between two documents taken `secs` apart, per worker and per client.
pub fn render_top(prev: &Value, cur: &Value, secs: f64) -> String {
    let rate = |a: &Value, b: &Value| (n(b).saturating_sub(n(a))) as f64 / secs.max(1e-9);
    let t0 = &prev["totals"];
    let t1 = &cur["totals"];
    let mut out = format!(
        "{:.0} req/s  out {:.1} MB/s  in {:.1} MB/s  errors {:.0}/s  clients {}  host {}\n\n",
        rate(&t0["requests"], &t1["requests"]),
        rate(&t0["bytes_out"], &t1["bytes_out"]) / 1e6,
        rate(&t0["bytes_in"], &t1["bytes_in"]) / 1e6,
        (errors(&t1["errors"]).saturating_sub(errors(&t0["errors"]))) as f64 / secs.max(1e-9),
        n(&cur["daemon"]["clients"]),
        if cur["daemon"]["host_connected"].as_bool().unwrap_or(false) {
            "up"
        } else {
            "DOWN"
        },
    );
    // Workers, then clients; a row's `requests` shows as its rate since the row of `prev`
    // with the same id.
    let heads = [
        "worker|req/s|inflight|e2e p99µs",
        "client|pid|req/s|inflight",
    ];
    let widths: [&[i16]; 2] = [&[6, 12, 8, 10], &[6, 8, 12, 8]];
    let fields = [
        "index requests in_flight end_to_end",
        "id pid requests in_flight",
    ];
    for (i, (key, id)) in [("workers", "index"), ("clients", "id")]
        .into_iter()
        .enumerate()
    {
        let show = |r: &Value, field: &str| {
            if field != "requests" {
                return cell(r, field);
            }
            let before = rows(&prev[key])
                .find(|p| p[id] == r[id])
                .unwrap_or(&Value::Null);
            format!("{:.0}", rate(&before["requests"], &r["requests"]))
        };
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&table(
            heads[i],
            widths[i],
            fields[i],
            rows(&cur[key]),
            show,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_rows_and_tolerates_missing_fields() {
        let doc = json!({
            "daemon": {"host_connected": true, "channels_open": 2, "clients": 1, "refused": 3},
            "totals": {"requests": 10, "errors": {"invalid": 1, "timed_out": 2}},
            "workers": [{"index": 0, "cpu": 1, "requests": 7, "errors": {"invalid": 1}}, {"index": 1}],
            "channels": [{"index": 0, "worker": 0, "requests": 5}],
            "clients": [{"id": 9, "uid": 1000, "pid": 42, "requests": 10}],
        });
        let s = render_stats(&doc);
        assert!(
            s.contains("host: connected") && s.contains("refused: 3") && s.contains("errors: 3"),
            "{s}"
        );
        assert_eq!(
            s.lines()
                .filter(|l| l.trim_start().starts_with(char::is_numeric))
                .count(),
            2,
            "{s}"
        );
        let c = render_clients(&doc);
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()[..4]
                == ["9", "1000", "42", "10"],
            "{c}"
        );
        let ch = render_channels(&doc);
        assert_eq!(ch.lines().count(), 2);
        assert!(render_stats(&json!({})).contains("DISCONNECTED"));
    }

    #[test]
    fn stats_lists_the_oldest_requests_in_flight_with_their_guid() {
        let rows: Vec<_> = (0..12)
            .map(|i| {
                json!({"worker": 1, "client": 7, "user_data": i, "state": "sent", "age_ms": 100 - i,
                       "guid": format!("0badcafe-0000-0001-0000-{i:012x}")})
            })
            .collect();
        let s = render_stats(&json!({"in_flight": rows}));
        let listed: Vec<&str> = s.lines().filter(|l| l.starts_with("0badcafe")).collect();
        assert_eq!(listed.len(), IN_FLIGHT_ROWS, "{s}");
        assert_eq!(
            listed[0].split_whitespace().collect::<Vec<_>>(),
            [
                "0badcafe-0000-0001-0000-000000000000",
                "1",
                "7",
                "0",
                "sent",
                "100"
            ]
        );
        assert!(!render_stats(&json!({})).contains("oldest in flight"));
    }

    #[test]
    fn top_shows_rates_between_snapshots() {
        let a = json!({"totals": {"requests": 100}, "workers": [{"index": 0, "requests": 100}], "clients": [{"id": 3, "requests": 40}]});
        let b = json!({"totals": {"requests": 300}, "daemon": {"host_connected": true}, "workers": [{"index": 0, "requests": 300}], "clients": [{"id": 3, "requests": 140}, {"id": 4, "requests": 10}]});
        let t = render_top(&a, &b, 2.0);
        assert!(t.starts_with("100 req/s"), "{t}");
        assert!(t.contains("host up"), "{t}");
        let client_rates: Vec<&str> = t
            .lines()
            .rev()
            .take(2)
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(client_rates, ["5", "50"], "{t}");
    }
}
