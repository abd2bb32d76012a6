//! One-process ring throughput: ns per entry for batches of 1, 8 and 64.
//!
//! - `sq_push_pop/<b>`: the client pushes `b` SQEs (one release store), the daemon pops them
//!   (one release store).
//! - `queue_pair/<b>`: a full trip: submit `b` SQEs, take them (credit-checked), complete `b`
//!   CQEs, reap them — four batches, four release stores and the wake-flag fences.
//!
//! Criterion reports time per iteration (one batch) and, via `Throughput::Elements`, entries/s;
//! ns per entry = time / b. Cross-process round-trip latency is measured by
//! `cargo run --release -p blobring-ring --example ring-demo`.

use std::hint::black_box;

use blobring_abi::{Cqe, FromZeros, Sqe};
use blobring_ring::{ClientQueue, DaemonQueue, QueueLayout, SqConsumer, SqProducer};
use blobring_shm::HeapMemory;
use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const BATCHES: [usize; 3] = [1, 8, 64];

fn setup() -> (HeapMemory, QueueLayout) {
    let layout = QueueLayout::contiguous(0, 256, 512).unwrap();
    let mem = HeapMemory::new(layout.end());
    layout.initialize(&mem, u32::MAX - 7).unwrap();
    (mem, layout)
}

/// The benchmark group `name`: `routine` once per batch size (its input: that many SQEs,
/// numbered), throughput counted in entries.
fn per_batch(c: &mut Criterion, name: &str, routine: fn(&mut Bencher<'_>, &[Sqe])) {
    let mut g = c.benchmark_group(name);
    for b in BATCHES {
        let input: Vec<Sqe> = (0..b as u64)
            .map(|i| Sqe {
                user_data: i,
                ..Sqe::new_zeroed()
            })
            .collect();
        g.throughput(Throughput::Elements(b as u64));
        g.bench_with_input(BenchmarkId::from_parameter(b), &input, |bench, input| {
            routine(bench, input)
        });
    }
    g.finish();
}

fn sq_push_pop(bench: &mut Bencher<'_>, input: &[Sqe]) {
    let (mem, layout) = setup();
    let mut prod = SqProducer::attach(&mem, &layout).unwrap();
    let mut cons = SqConsumer::new(&mem, &layout, u32::MAX - 7).unwrap();
    let mut out = vec![Sqe::new_zeroed(); input.len()];
    bench.iter(|| {
        let p = prod.push_batch(black_box(input)).unwrap();
        let n = cons.pop_batch(&mut out).unwrap();
        assert_eq!(p.count + n, 2 * input.len());
        black_box(&out);
    });
}

fn queue_pair(bench: &mut Bencher<'_>, input: &[Sqe]) {
    let (mem, layout) = setup();
    let mut client = ClientQueue::attach(&mem, &layout).unwrap();
    let mut daemon = DaemonQueue::new(&mem, &layout, u32::MAX - 7).unwrap();
    let mut sqes = vec![Sqe::new_zeroed(); input.len()];
    let mut cqes = vec![Cqe::new_zeroed(); input.len()];
    bench.iter(|| {
        let _ = client.submit(black_box(input)).unwrap();
        let n = daemon.take(&mut sqes).unwrap();
        for (s, c) in sqes[..n].iter().zip(cqes.iter_mut()) {
            c.user_data = s.user_data;
        }
        let _ = daemon.complete(&cqes[..n]).unwrap();
        let p = client.reap(&mut cqes).unwrap();
        assert_eq!(p.count, input.len());
        black_box(&cqes);
    });
}

fn ring(c: &mut Criterion) {
    per_batch(c, "sq_push_pop", sq_push_pop);
    per_batch(c, "queue_pair", queue_pair);
}

criterion_group!(benches, ring);
criterion_main!(benches);
