//! Region enumeration: how cost scales with hidden width, depth and latent dimension, the
//! issue's target networks, and the dense LP against microlp.
//!
//! `cargo bench --bench partition` (figures in BENCHMARKS.md).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use exactem::partition::lp::{chebyshev_ball, Lp, LpOutcome};
use exactem::partition::Partition;
use exactem::{Cancel, Decoder};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

fn decoder(widths: &[usize]) -> Arc<Decoder> {
    Arc::new(Decoder::random_uniform(widths, 0.1, 0).unwrap())
}

fn bench_nets(c: &mut Criterion, group_name: &str, nets: &[(String, Vec<usize>)]) {
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (label, widths) in nets {
        let dec = decoder(widths);
        let regions = Partition::enumerate(dec.clone(), 10_000_000, &Cancel::new()).unwrap().len();
        let id = BenchmarkId::new(label.as_str(), format!("{widths:?} R={regions}"));
        group.bench_function(id, |b| b.iter(|| Partition::enumerate(dec.clone(), 10_000_000, &Cancel::new()).unwrap()));
    }
    group.finish();
}

fn targets(c: &mut Criterion) {
    let nets = [vec![2, 64, 64, 10], vec![3, 32, 32, 2], vec![1, 256, 256, 784], vec![2, 32, 32, 2]];
    bench_nets(c, "targets", &nets.iter().map(|w| ("net".to_string(), w.clone())).collect::<Vec<_>>());
}

fn width(c: &mut Criterion) {
    let mut nets = Vec::new();
    for w in [8, 16, 32, 64, 128, 256] {
        nets.push((format!("S=1 width={w}"), vec![1, w, w, 2]));
    }
    for w in [8, 16, 32, 64, 128] {
        nets.push((format!("S=2 width={w}"), vec![2, w, w, 2]));
    }
    for w in [8, 16, 32] {
        nets.push((format!("S=3 width={w}"), vec![3, w, w, 2]));
    }
    bench_nets(c, "width", &nets);
}

fn depth(c: &mut Criterion) {
    let mut nets = Vec::new();
    for depth in 1..=4 {
        let mut w = vec![2];
        w.extend(std::iter::repeat_n(32, depth));
        w.push(2);
        nets.push((format!("S=2 depth={depth}"), w));
        let mut w = vec![3];
        w.extend(std::iter::repeat_n(12, depth));
        w.push(2);
        nets.push((format!("S=3 depth={depth}"), w));
    }
    bench_nets(c, "depth", &nets);
}

fn latent_dim(c: &mut Criterion) {
    let nets: Vec<_> = (1..=4).map(|s| (format!("S={s}"), vec![s, 16, 16, 2])).collect();
    bench_nets(c, "latent_dim", &nets);
}

/// The Chebyshev-ball LP of a cell in S = 3 with 15 rows: the dense active-set method against
/// microlp, the maintained general solver it falls back to.
fn lp(c: &mut Criterion) {
    let (s, m) = (3, 15);
    let mut rng = Pcg64::seed_from_u64(1);
    let problems: Vec<(Vec<f64>, Vec<f64>)> = (0..64)
        .map(|_| {
            let mut g = Vec::new();
            for _ in 0..m {
                let row: Vec<f64> = (0..s).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                g.extend(row.iter().map(|v| v / norm));
            }
            let h = (0..m).map(|_| rng.random::<f64>() + 0.1).collect();
            (g, h)
        })
        .collect();
    let lps: Vec<(Vec<f64>, Vec<f64>)> = problems
        .iter()
        .map(|(g, h)| {
            let mut a = Vec::new();
            for i in 0..m {
                a.extend_from_slice(&g[i * s..(i + 1) * s]);
                a.push(1.0);
            }
            a.extend([0.0, 0.0, 0.0, 1.0]);
            let mut b = h.clone();
            b.push(1.0);
            (a, b)
        })
        .collect();
    let objective = [0.0, 0.0, 0.0, 1.0];
    let mut group = c.benchmark_group("chebyshev_lp S=3 m=15 (64 problems)");
    group.sample_size(20);
    group.bench_function("dense active set", |b| {
        b.iter(|| problems.iter().map(|(g, h)| chebyshev_ball(s, g, h, &[0.0; 3], 1.0).radius).sum::<f64>())
    });
    group.bench_function("microlp", |b| {
        b.iter(|| {
            lps.iter()
                .map(|(a, bb)| match (Lp { n: 4, a, b: bb, c: &objective }).solve_microlp() {
                    LpOutcome::Optimal { value, .. } => value,
                    _ => f64::NAN,
                })
                .sum::<f64>()
        })
    });
    group.finish();
}

criterion_group!(benches, targets, width, depth, latent_dim, lp);
criterion_main!(benches);
