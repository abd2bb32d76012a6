//! Statistics: per-worker counters and HDR histograms, per-client and per-channel figures.
//!
//! Each worker updates its own [`WorkerStats`] with plain integer adds (no atomics, no locks on
//! the request path) and publishes a copy into its [`StatsCell`] every
//! [`PUBLISH_EVERY`] and before it sleeps. The control thread (ctl socket) and the metrics thread
//! read and merge those copies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// How often a busy worker publishes its statistics.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Errors by kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors {
    /// SQEs refused as invalid (`-EINVAL`).
    pub invalid: u64,
    /// Requests that passed their deadline (`-ETIMEDOUT`).
    pub timed_out: u64,
    /// Requests failed because no host channel was available (`-ENODEV`).
    pub no_device: u64,
    /// Requests whose buffers span more pages than the channel takes (`-E2BIG`, uio).
    pub too_big: u64,
    /// Host completions for unknown or stale transaction ids, or with bad lengths (dropped).
    pub bad_completions: u64,
    /// Host replies whose packet type is not a completion (0xb): still read as the driver
    /// reads them (the response at `hv_pkt_data`), and counted here.
    pub unexpected_reply_type: u64,
    /// Clients disconnected for corrupting their queue indices.
    pub corrupt_clients: u64,
}

impl Errors {
    fn json(&self) -> Value {
        json!({
            "invalid": self.invalid,
            "timed_out": self.timed_out,
            "no_device": self.no_device,
            "too_big": self.too_big,
            "bad_completions": self.bad_completions,
            "unexpected_reply_type": self.unexpected_reply_type,
            "corrupt_clients": self.corrupt_clients,
        })
    }
}

/// Counters of one client on one worker (or merged).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCounters {
    /// uid of the client process.
    pub uid: u32,
    /// pid of the client process.
    pub pid: i32,
    /// Requests completed.
    pub requests: u64,
    /// Bytes sent to the host (request heads + bodies).
    pub bytes_out: u64,
    /// Bytes the host wrote back (response heads + bodies).
    pub bytes_in: u64,
    /// Errors.
    pub errors: Errors,
    /// Requests taken and not yet completed.
    pub in_flight: u64,
    /// SQ entries waiting in the client's ring at the last look.
    pub sq_pending: u64,
    /// Times intake stopped for lack of CQ credits.
    pub credit_stalls: u64,
    /// Times intake left this client's entries waiting because its uid had `--uid-inflight`
    /// requests in flight on the worker.
    pub uid_stalls: u64,
}

/// Counters of one channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelCounters {
    /// Channel index (0 = primary).
    pub index: u32,
    /// Owning worker.
    pub worker: usize,
    /// Requests sent.
    pub requests: u64,
    /// Bytes described by the packets sent (request + data_valid).
    pub bytes_out: u64,
    /// Bytes the host reported writing.
    pub bytes_in: u64,
    /// Requests outstanding on the channel.
    pub in_flight: u64,
    /// Bytes outstanding on the channel.
    pub outstanding_bytes: u64,
    /// Times the outgoing ring was full.
    pub ring_full: u64,
}

/// One request in a worker's slab, as listed in the ctl stats (`in_flight`).
#[derive(Debug, Clone, Copy)]
pub struct InFlightRequest {
    /// Daemon-assigned client id.
    pub client: u64,
    /// The client's `user_data`.
    pub user_data: u64,
    /// The VMBus transaction id lent to the host.
    pub transaction_id: u64,
    /// The transaction GUID sent in `az_blob_vsp_request` (the host's trace shows it).
    pub guid: [u8; 16],
    /// `waiting`, `sent` or `timed_out_lent`.
    pub state: &'static str,
    /// The channel it was sent on.
    pub channel: Option<u32>,
    /// Time since the worker took it.
    pub age: Duration,
}

/// Everything one worker counts.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// Worker index.
    pub index: usize,
    /// CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// Requests completed (final CQEs posted).
    pub requests: u64,
    /// NOPs completed.
    pub nops: u64,
    /// Bytes to the host.
    pub bytes_out: u64,
    /// Bytes from the host.
    pub bytes_in: u64,
    /// Errors.
    pub errors: Errors,
    /// Requests in the worker's slab.
    pub in_flight: u64,
    /// Requests waiting for ring space or a channel.
    pub waiting: u64,
    /// Times the worker went to sleep in io_uring.
    pub sleeps: u64,
    /// The worker's adaptive spin budget now (ns; see [`crate::spin`]).
    pub spin_budget_ns: u64,
    /// Idle periods in which spinning found work before the worker slept.
    pub spin_hits: u64,
    /// Idle periods in which the spin ran out and the worker slept.
    pub spin_misses: u64,
    /// Futex wakes issued to sleeping clients.
    pub client_wakes: u64,
    /// Doorbell (eventfd) wakeups received.
    pub doorbells: u64,
    /// Intake passes that skipped a client with pending entries because its uid was at
    /// `--uid-inflight`.
    pub uid_stalls: u64,
    /// Times a client's doorbell was muted for ringing with nothing to take (see the worker's
    /// doorbell throttle).
    pub doorbell_mutes: u64,
    /// Request latencies.
    pub latency: Latencies,
    /// Per client.
    pub clients: BTreeMap<u64, ClientCounters>,
    /// Per owned channel.
    pub channels: Vec<ChannelCounters>,
    /// The oldest requests in flight (at most `worker::IN_FLIGHT_LIST_MAX`).
    pub in_flight_list: Vec<InFlightRequest>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour, 2 significant digits: ~20 KiB per histogram.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("static histogram bounds")
}

/// The request latency histograms of a worker (or merged over workers), in ns.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Queue wait: SQE taken → packet on a channel.
    pub queue_wait: Histogram<u64>,
    /// Host service time: packet sent → host completion.
    pub host_service: Histogram<u64>,
    /// End to end inside the daemon: SQE taken → CQE posted.
    pub end_to_end: Histogram<u64>,
}

impl Latencies {
    fn new() -> Self {
        Self {
            queue_wait: histogram(),
            host_service: histogram(),
            end_to_end: histogram(),
        }
    }

    /// Adds `other`'s samples to these.
    fn add(&mut self, other: &Self) {
        let _ = self.queue_wait.add(&other.queue_wait);
        let _ = self.host_service.add(&other.host_service);
        let _ = self.end_to_end.add(&other.end_to_end);
    }

    /// `"queue_wait"`, `"host_service"` and `"end_to_end"`, each a [`hist_json`], added to the
    /// JSON object `into`.
    fn json_into(&self, into: &mut Value) {
        let Value::Object(map) = into else { return };
        for (key, h) in [
            ("queue_wait", &self.queue_wait),
            ("host_service", &self.host_service),
            ("end_to_end", &self.end_to_end),
        ] {
            map.insert(key.into(), hist_json(h));
        }
    }
}

impl WorkerStats {
    /// Empty statistics for worker `index`.
    pub fn new(index: usize, cpu: Option<usize>) -> Self {
        Self {
            index,
            cpu,
            requests: 0,
            nops: 0,
            bytes_out: 0,
            bytes_in: 0,
            errors: Errors::default(),
            in_flight: 0,
            waiting: 0,
            sleeps: 0,
            spin_budget_ns: 0,
            spin_hits: 0,
            spin_misses: 0,
            client_wakes: 0,
            doorbells: 0,
            doorbell_mutes: 0,
            uid_stalls: 0,
            latency: Latencies::new(),
            clients: BTreeMap::new(),
            channels: Vec::new(),
            in_flight_list: Vec::new(),
        }
    }
}

/// Where a worker publishes its statistics.
pub type StatsCell = Arc<Mutex<WorkerStats>>;

fn hist_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ns": h.value_at_quantile(0.5),
        "p99_ns": h.value_at_quantile(0.99),
        "p999_ns": h.value_at_quantile(0.999),
        "max_ns": h.max(),
        "mean_ns": h.mean() as u64,
    })
}

/// `a.f += b.f` for each field `f` named.
macro_rules! add_fields {
    ($a:expr, $b:expr; $($f:ident),+) => {
        $($a.$f += $b.$f;)+
    };
}

fn add_errors(a: &mut Errors, b: &Errors) {
    add_fields!(a, b; invalid, timed_out, no_device, too_big, bad_completions,
        unexpected_reply_type, corrupt_clients);
}

/// Daemon-wide facts the control thread adds to the worker figures.
#[derive(Debug, Clone, Default)]
pub struct DaemonInfo {
    /// Whether the host bus is connected.
    pub host_connected: bool,
    /// Channels open.
    pub channels_open: u32,
    /// Host (re)connections so far.
    pub host_connects: u64,
    /// Clients connected now.
    pub clients: usize,
    /// Handshakes refused so far.
    pub refused: u64,
}

/// Merges worker copies into the JSON document served on the ctl socket: top-level keys
/// `daemon`, `workers`, `channels`, `clients`, `totals`, `in_flight` (the oldest requests of
/// each worker with their transaction GUIDs) (the control thread adds `process`:
/// open fds, RSS and privileges, see [`crate::privs::process_json`]).
pub fn to_json(cells: &[StatsCell], info: &DaemonInfo) -> Value {
    let snaps: Vec<WorkerStats> = cells.iter().map(|c| lock(c).clone()).collect();
    let mut channels = Vec::new();
    let mut clients: BTreeMap<u64, ClientCounters> = BTreeMap::new();
    let mut latency = Latencies::new();
    let mut totals = (0u64, 0u64, 0u64, Errors::default());
    let mut in_flight = Vec::new();
    for w in &snaps {
        in_flight.extend(
            w.in_flight_list
                .iter()
                .map(|r| (r.age, in_flight_json(w.index, r))),
        );
        latency.add(&w.latency);
        totals.0 += w.requests;
        totals.1 += w.bytes_out;
        totals.2 += w.bytes_in;
        add_errors(&mut totals.3, &w.errors);
        channels.extend(w.channels.iter().map(channel_json));
        for (id, c) in &w.clients {
            merge_client(clients.entry(*id).or_default(), c);
        }
    }
    // Oldest first; each worker lists at most its oldest few.
    in_flight.sort_by_key(|r| std::cmp::Reverse(r.0));
    let in_flight: Vec<Value> = in_flight.into_iter().map(|(_, j)| j).collect();
    let mut totals = json!({
        "requests": totals.0,
        "bytes_out": totals.1,
        "bytes_in": totals.2,
        "errors": totals.3.json(),
    });
    latency.json_into(&mut totals);
    json!({
        "daemon": {
            "host_connected": info.host_connected,
            "channels_open": info.channels_open,
            "host_connects": info.host_connects,
            "clients": info.clients,
            "refused": info.refused,
        },
        "totals": totals,
        "workers": snaps.iter().map(worker_json).collect::<Vec<_>>(),
        "channels": channels,
        "clients": clients.iter().map(|(id, c)| client_json(*id, c)).collect::<Vec<_>>(),
        "in_flight": in_flight,
    })
}

fn worker_json(w: &WorkerStats) -> Value {
    let mut json = json!({
        "index": w.index,
        "cpu": w.cpu,
        "requests": w.requests,
        "nops": w.nops,
        "bytes_out": w.bytes_out,
        "bytes_in": w.bytes_in,
        "errors": w.errors.json(),
        "in_flight": w.in_flight,
        "waiting": w.waiting,
        "sleeps": w.sleeps,
        "spin_budget_ns": w.spin_budget_ns,
        "spin_hits": w.spin_hits,
        "spin_misses": w.spin_misses,
        "client_wakes": w.client_wakes,
        "doorbells": w.doorbells,
        "doorbell_mutes": w.doorbell_mutes,
        "uid_stalls": w.uid_stalls,
        "clients": w.clients.len(),
        "channels": w.channels.iter().map(|c| c.index).collect::<Vec<_>>(),
    });
    w.latency.json_into(&mut json);
    json
}

fn in_flight_json(worker: usize, r: &InFlightRequest) -> Value {
    json!({
        "worker": worker,
        "client": r.client,
        "user_data": r.user_data,
        "transaction_id": r.transaction_id,
        "guid": blobring_vmbus::blob::guid_string(&r.guid),
        "state": r.state,
        "channel": r.channel,
        "age_ms": r.age.as_millis() as u64,
    })
}

fn channel_json(c: &ChannelCounters) -> Value {
    json!({
        "index": c.index,
        "worker": c.worker,
        "requests": c.requests,
        "bytes_out": c.bytes_out,
        "bytes_in": c.bytes_in,
        "in_flight": c.in_flight,
        "outstanding_bytes": c.outstanding_bytes,
        "ring_full": c.ring_full,
    })
}

/// Adds one worker's figures of a client to the client's merged figures.
fn merge_client(m: &mut ClientCounters, c: &ClientCounters) {
    (m.uid, m.pid) = (c.uid, c.pid);
    add_fields!(m, c; requests, bytes_out, bytes_in, in_flight, sq_pending, credit_stalls,
        uid_stalls);
    add_errors(&mut m.errors, &c.errors);
}

fn client_json(id: u64, c: &ClientCounters) -> Value {
    json!({
        "id": id,
        "uid": c.uid,
        "pid": c.pid,
        "requests": c.requests,
        "bytes_out": c.bytes_out,
        "bytes_in": c.bytes_in,
        "in_flight": c.in_flight,
        "sq_pending": c.sq_pending,
        "credit_stalls": c.credit_stalls,
        "uid_stalls": c.uid_stalls,
        "errors": c.errors.json(),
    })
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Writes the metric families `(name, key, kind)` with one sample per row of `rows` (a JSON
/// array): labelled by `labels(row)`, valued by the row's `key`.
fn families(
    out: &mut String,
    list: &[(&str, &str, &str)],
    rows: &Value,
    labels: impl Fn(&Value) -> String,
) {
    for &(name, key, kind) in list {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in rows.as_array().into_iter().flatten() {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), num(&r[key]));
        }
    }
}

/// Renders the JSON document as Prometheus text (counters and gauges; quantiles as summaries).
pub fn to_prometheus(doc: &Value) -> String {
    let mut out = String::new();
    let d = &doc["daemon"];
    let _ = writeln!(out, "# TYPE blobring_host_connected gauge");
    let _ = writeln!(
        out,
        "blobring_host_connected {}",
        u8::from(d["host_connected"].as_bool().unwrap_or(false))
    );
    let _ = writeln!(out, "# TYPE blobring_clients gauge");
    let _ = writeln!(out, "blobring_clients {}", num(&d["clients"]));
    let p = &doc["process"];
    for (name, key) in [
        ("blobring_open_fds", "open_fds"),
        ("blobring_rss_bytes", "rss_bytes"),
    ] {
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {}", num(&p[key]));
    }
    let _ = writeln!(out, "# TYPE blobring_handshakes_refused_total counter");
    let _ = writeln!(
        out,
        "blobring_handshakes_refused_total {}",
        num(&d["refused"])
    );
    let workers = &doc["workers"];
    let worker = |w: &Value| format!("worker=\"{}\"", num(&w["index"]));
    families(
        &mut out,
        &[
            ("blobring_worker_requests_total", "requests", "counter"),
            ("blobring_worker_bytes_out_total", "bytes_out", "counter"),
            ("blobring_worker_bytes_in_total", "bytes_in", "counter"),
            ("blobring_worker_in_flight", "in_flight", "gauge"),
            ("blobring_worker_sleeps_total", "sleeps", "counter"),
            ("blobring_worker_spin_hits_total", "spin_hits", "counter"),
            (
                "blobring_worker_spin_misses_total",
                "spin_misses",
                "counter",
            ),
            (
                "blobring_worker_client_wakes_total",
                "client_wakes",
                "counter",
            ),
        ],
        workers,
        worker,
    );
    let _ = writeln!(out, "# TYPE blobring_worker_spin_budget_seconds gauge");
    for w in workers.as_array().into_iter().flatten() {
        let budget = num(&w["spin_budget_ns"]) as f64 / 1e9;
        let _ = writeln!(
            out,
            "blobring_worker_spin_budget_seconds{{{}}} {budget:.9}",
            worker(w)
        );
    }
    let _ = writeln!(out, "# TYPE blobring_worker_errors_total counter");
    for w in workers.as_array().into_iter().flatten() {
        for (kind, v) in w["errors"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "blobring_worker_errors_total{{{},kind=\"{kind}\"}} {}",
                worker(w),
                num(v)
            );
        }
    }
    for (name, key) in [
        ("blobring_queue_wait_seconds", "queue_wait"),
        ("blobring_host_service_seconds", "host_service"),
        ("blobring_end_to_end_seconds", "end_to_end"),
    ] {
        let _ = writeln!(out, "# TYPE {name} summary");
        for w in workers.as_array().into_iter().flatten() {
            let h = &w[key];
            for (q, k) in [("0.5", "p50_ns"), ("0.99", "p99_ns"), ("0.999", "p999_ns")] {
                let _ = writeln!(
                    out,
                    "{name}{{{},quantile=\"{q}\"}} {:.9}",
                    worker(w),
                    num(&h[k]) as f64 / 1e9
                );
            }
            let _ = writeln!(out, "{name}_count{{{}}} {}", worker(w), num(&h["count"]));
        }
    }
    families(
        &mut out,
        &[
            ("blobring_channel_requests_total", "requests", "counter"),
            ("blobring_channel_in_flight", "in_flight", "gauge"),
            ("blobring_channel_ring_full_total", "ring_full", "counter"),
        ],
        &doc["channels"],
        |c| format!("channel=\"{}\"", num(&c["index"])),
    );
    families(
        &mut out,
        &[
            ("blobring_client_requests_total", "requests", "counter"),
            ("blobring_client_in_flight", "in_flight", "gauge"),
        ],
        &doc["clients"],
        |c| format!("client=\"{}\",uid=\"{}\"", num(&c["id"]), num(&c["uid"])),
    );
    out
}

/// Locks a stats cell, tolerating a worker that panicked while holding it.
pub fn lock(c: &StatsCell) -> std::sync::MutexGuard<'_, WorkerStats> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_figures_reach_json_and_prometheus() {
        let mut w = WorkerStats::new(3, None);
        (w.spin_budget_ns, w.spin_hits, w.spin_misses) = (7_500, 11, 4);
        w.channels.push(ChannelCounters {
            index: 2,
            requests: 9,
            ..ChannelCounters::default()
        });
        w.clients.insert(
            5,
            ClientCounters {
                uid: 1000,
                requests: 6,
                ..ClientCounters::default()
            },
        );
        let doc = to_json(&[Arc::new(Mutex::new(w))], &DaemonInfo::default());
        let j = &doc["workers"][0];
        assert_eq!(
            (&j["spin_budget_ns"], &j["spin_hits"], &j["spin_misses"]),
            (&json!(7_500), &json!(11), &json!(4))
        );
        let text = to_prometheus(&doc);
        for line in [
            "# TYPE blobring_worker_spin_hits_total counter",
            "blobring_worker_spin_hits_total{worker=\"3\"} 11",
            "blobring_worker_spin_misses_total{worker=\"3\"} 4",
            "# TYPE blobring_worker_spin_budget_seconds gauge",
            "blobring_worker_spin_budget_seconds{worker=\"3\"} 0.000007500",
            "blobring_channel_requests_total{channel=\"2\"} 9",
            "blobring_client_requests_total{client=\"5\",uid=\"1000\"} 6",
            "blobring_end_to_end_seconds_count{worker=\"3\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
