//! Per-call cost of the polyhedral Gaussian engine by dimension and number of rows: mass only
//! and mass with moments, for random polyhedra around the mean (the E-step's calls); and one
//! rectangle probability (`mvn_cdf`'s call) by dimension and accuracy; and the normal CDF
//! itself, ours (Cody's rational approximations, one `exp`) against `libm::erfc`.
//!
//! `cargo bench --bench gauss` (figures in BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use exactem::gauss::{normal, normal_batch, rectangles_batch, PolytopeShape};
use exactem::{Cancel, IntegrationSettings};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

fn polytope(rng: &mut Pcg64, s: usize, m: usize) -> (PolytopeShape, Vec<f64>) {
    let g: Vec<f64> = (0..m * s).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    let h: Vec<f64> = (0..m).map(|_| 0.5 + 1.5 * rng.random::<f64>()).collect();
    let cov: Vec<f64> = (0..s * s).map(|k| if k / s == k % s { 1.0 } else { 0.0 }).collect();
    (PolytopeShape::new(&g, s, &cov).unwrap(), h)
}

fn per_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("polytope_moments");
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let mut rng = Pcg64::seed_from_u64(0);
    for s in 1..=5 {
        for m in [2 * s, 4 * s] {
            let (shape, h) = polytope(&mut rng, s, m);
            let mean = vec![0.1; s];
            // S >= 3 is quasi-Monte Carlo: timed at rtol 1e-3, where the E-step's minor regions are.
            let rtol = if s <= 2 { 1e-6 } else { 1e-3 };
            for (label, moments) in [("mass", false), ("moments", true)] {
                let id = BenchmarkId::new(label, format!("S={s} m={m}"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        shape.moments(&h, &mean, moments, &IntegrationSettings::new(rtol, 0, &Cancel::new())).unwrap()
                    })
                });
            }
        }
    }
    group.finish();
}

/// The rectangles of `benches/bench_gauss.py`: a random covariance `A A^T / S + I / 2`, limits
/// 0.2 to 2 on either side of a small mean.
fn rectangle(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvn_cdf");
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let mut rng = Pcg64::seed_from_u64(1);
    for s in 4..=8 {
        let a: Vec<f64> = (0..s * s).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        let cov: Vec<f64> = (0..s * s)
            .map(|k| {
                (0..s).map(|j| a[(k / s) * s + j] * a[(k % s) * s + j]).sum::<f64>() / s as f64
                    + if k / s == k % s { 0.5 } else { 0.0 }
            })
            .collect();
        let mean: Vec<f64> = (0..s).map(|_| 0.3 * (rng.random::<f64>() - 0.5)).collect();
        let lower: Vec<f64> = (0..s).map(|_| -0.2 - 1.8 * rng.random::<f64>()).collect();
        let upper: Vec<f64> = (0..s).map(|_| 0.2 + 1.8 * rng.random::<f64>()).collect();
        for rtol in [1e-4, 1e-6] {
            let id = BenchmarkId::new(format!("rtol={rtol:e}"), format!("S={s}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    rectangles_batch(&lower, &upper, &mean, &cov, 1, &IntegrationSettings::new(rtol, 0, &Cancel::new()))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// `Phi` and `log(Phi(b) - Phi(a))` over 1024 arguments spread across the range the engine
/// evaluates (interval ends of the S = 1 E-step and of the separation of variables).
fn normal_cdf(c: &mut Criterion) {
    let mut group = c.benchmark_group("normal_cdf");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let mut rng = Pcg64::seed_from_u64(2);
    let x: Vec<f64> = (0..1024).map(|_| rng.random::<f64>() * 12.0 - 9.0).collect();
    let width: Vec<f64> = (0..1024).map(|_| 0.3 + 3.0 * rng.random::<f64>()).collect();
    group.bench_function("ndtr/cody", |b| b.iter(|| x.iter().map(|&v| normal::ndtr(black_box(v))).sum::<f64>()));
    group.bench_function("ndtr/libm_erfc", |b| {
        b.iter(|| x.iter().map(|&v| 0.5 * libm::erfc(-black_box(v) * std::f64::consts::FRAC_1_SQRT_2)).sum::<f64>())
    });
    let mut out = vec![0.0; x.len()];
    group.bench_function("ndtr/batch", |b| b.iter(|| normal_batch::ndtr_many(black_box(&x), &mut out)));
    // Probabilities as the separation of variables meets them: mostly central, some far out.
    let p: Vec<f64> = x.iter().map(|&v| normal::ndtr(v)).collect();
    group.bench_function("ndtri/as241", |b| b.iter(|| p.iter().map(|&v| normal::ndtri(black_box(v))).sum::<f64>()));
    group.bench_function("ndtri/batch", |b| b.iter(|| normal_batch::ndtri_many(black_box(&p), &mut out)));
    group.bench_function("log_diff_ndtr", |b| {
        b.iter(|| x.iter().zip(&width).map(|(&a, &w)| normal::log_diff_ndtr(black_box(a), a + w)).sum::<f64>())
    });
    group.finish();
}

criterion_group!(benches, per_call, rectangle, normal_cdf);
criterion_main!(benches);
