//! Cost of one balancer pick over endpoint sets of several sizes, and of the
//! in-flight bookkeeping around it (`Endpoint::try_start` plus dropping the guard).
//!
//! ```text
//! cargo bench -p roster-bench --bench balancer
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use roster_client::balance::{
    Balancer, Cost, Endpoint, PowerOfTwoChoices, Random, RoundRobin, WeightedRoundRobin,
};

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let e = Endpoint::new(format!("web-{i}"), 1 + (i % 5) as u32);
            // Give peak EWMA something to compare.
            e.start().finish(Duration::from_micros(200 + 37 * i as u64));
            e
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3, 10, 100] {
        let eps = endpoints(n);
        let balancers: [(&str, Box<dyn Balancer>); 5] = [
            ("round_robin", Box::new(RoundRobin::new())),
            ("random", Box::new(Random::new())),
            ("weighted_rr", Box::new(WeightedRoundRobin::new())),
            (
                "p2c_in_flight",
                Box::new(PowerOfTwoChoices::with_cost(Cost::InFlight)),
            ),
            ("p2c_peak_ewma", Box::new(PowerOfTwoChoices::new())),
        ];
        for (name, balancer) in &balancers {
            group.bench_with_input(BenchmarkId::new(*name, n), &eps, |b, eps| {
                b.iter(|| balancer.pick(black_box(eps)))
            });
        }
    }
    group.finish();

    let eps = endpoints(10);
    c.bench_function("try_start_and_finish", |b| {
        b.iter(|| {
            let guard = black_box(&eps[3]).try_start(256).expect("room");
            guard.finish(Duration::from_micros(250));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = picks
}
criterion_main!(benches);
