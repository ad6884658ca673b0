//! The exact region samplers against independent references: the polygon engine's and the
//! slice integrator's exact masses and moments, and closed forms.

use super::*;
use crate::cancel::Cancel;
use crate::gauss::{IntegrationSettings, PolytopeShape};
use rand::SeedableRng;

/// Unit rows from unnormalised ones.
fn rows2(raw: &[([f64; 2], f64)]) -> (Vec<[f64; 2]>, Vec<f64>) {
    raw.iter()
        .map(|&(g, c)| {
            let n = g[0].hypot(g[1]);
            ([g[0] / n, g[1] / n], c / n)
        })
        .unzip()
}

/// Polygons in whitened coordinates that the tilted sampler could not handle, and ordinary ones.
fn polygons() -> Vec<(&'static str, Vec<[f64; 2]>, Vec<f64>)> {
    let (c, s) = (0.6f64.cos(), 0.6f64.sin());
    let mut out = Vec::new();
    let mut add = |name, raw: &[([f64; 2], f64)]| {
        let (g, e) = rows2(raw);
        out.push((name, g, e));
    };
    // A sliver 1e-6 wide across the diagonal, 4 long.
    add("thin sliver", &[([c, s], 0.3 + 1e-6), ([-c, -s], -0.3), ([-s, c], 2.0), ([s, -c], 2.0)]);
    // The same nearly parallel to the second axis (sections long, the first coordinate's range tiny).
    add(
        "thin upright sliver",
        &[([1.0, 1e-9], 0.3 + 1e-7), ([-1.0, -1e-9], -0.3), ([0.0, 1.0], 2.0), ([0.0, -1.0], 2.0)],
    );
    // A triangle 25 standard deviations out.
    add("far triangle", &[([-1.0, 0.0], -25.0), ([0.0, 1.0], 5.0), ([1.0, -1.0], 30.0)]);
    // A thin unbounded wedge from (1, 0) (half-angle 1e-4) and a far half-plane.
    let a = 1e-4f64;
    add("thin wedge", &[([-a.sin(), a.cos()], -a.sin()), ([-a.sin(), -a.cos()], -a.sin())]);
    add("far half-plane", &[([-1.0, 0.3], -30.0)]);
    // A thin strip unbounded both ways.
    add("thin strip", &[([-0.5, 1.0], 1e-3), ([0.5, -1.0], 1e-3)]);
    add("square", &[([1.0, 0.0], 1.0), ([-1.0, 0.0], 1.0), ([0.0, 1.0], 1.0), ([0.0, -1.0], 1.0)]);
    add("far thin corner", &[([-1.0, 0.0], -12.0), ([0.0, -1.0], -12.0), ([1.0, 1.0], 24.0 + 1e-5)]);
    out
}

/// Mass and moments of `N(0, I)` on `{w : g w <= e}` by the general integrator (exact for S = 2,
/// slices for S = 3).
fn reference(g: &[f64], e: &[f64], s: usize) -> crate::gauss::GaussMoments {
    let identity: Vec<f64> = (0..s * s).map(|k| if k % (s + 1) == 0 { 1.0 } else { 0.0 }).collect();
    PolytopeShape::new(g, s, &identity)
        .unwrap()
        .moments(e, &vec![0.0; s], true, &IntegrationSettings::new(1e-10, 0, &Cancel::new()))
        .unwrap()
}

/// Sample means within 5 standard errors (from the exact covariance) of the exact mean, and the
/// sample variances within 5 of their own standard errors.
fn assert_moments(name: &str, samples: &[Vec<f64>], exact: &crate::gauss::GaussMoments, s: usize) {
    let n = samples.len() as f64;
    for j in 0..s {
        let mean = samples.iter().map(|w| w[j]).sum::<f64>() / n;
        let var_exact = exact.cov[j * s + j];
        let var = samples.iter().map(|w| (w[j] - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // The reference's conditional moments come from fluxes over the mass: across a sliver
        // of width 1e-7 they keep ~8 digits of the coordinate (its variance none), so the
        // comparison allows that and uses the sample variance where the reference has none.
        let reliable = var_exact > 1e-10 * (1.0 + exact.mean[j] * exact.mean[j]);
        let se = ((if reliable { var_exact } else { var }) / n).sqrt();
        let reference_error = 5e-8 * (1.0 + exact.mean[j].abs());
        assert!(
            (mean - exact.mean[j]).abs() <= 5.0 * se + reference_error,
            "{name}: mean[{j}] {mean} vs exact {} (se {se})",
            exact.mean[j]
        );
        if !reliable {
            continue;
        }
        // A log-concave law's kurtosis is at most 6 (excess 3), so sd(var) <= sqrt(5 / n) var.
        let se_var = (5.0 / n).sqrt() * var_exact;
        assert!((var - var_exact).abs() <= 5.0 * se_var + 1e-20, "{name}: var[{j}] {var} vs exact {var_exact}");
    }
}

/// The Kolmogorov-Smirnov statistic `sqrt(n) D` of samples against a CDF.
fn ks_statistic(mut x: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    x.sort_by(f64::total_cmp);
    let n = x.len() as f64;
    let mut d: f64 = 0.0;
    for (i, &v) in x.iter().enumerate() {
        let f = cdf(v);
        d = d.max((f - i as f64 / n).abs()).max(((i + 1) as f64 / n - f).abs());
    }
    d * n.sqrt()
}

/// `P(KS > 1.95) ~ 1e-3` asymptotically: a fixed-seed test that fails only on a real defect.
const KS_CRITICAL: f64 = 1.95;

/// `log` mass of `N(0, I_2)` on a polygon with possibly redundant rows.
fn polygon_log_mass(g: &[[f64; 2]], e: &[f64]) -> f64 {
    match non_redundant(g, e) {
        None => f64::NEG_INFINITY,
        Some(kept) if kept.is_empty() => 0.0,
        Some(kept) => Slices::log_mass(
            &kept.iter().map(|&i| g[i]).collect::<Vec<_>>(),
            &kept.iter().map(|&i| e[i]).collect::<Vec<_>>(),
        ),
    }
}

#[test]
fn envelopes_bound_the_marginal_and_prove_their_acceptance() {
    for (name, g, e) in polygons() {
        let plane = Plane::new(&g, &e).unwrap_or_else(|| panic!("{name}: no sampler"));
        assert!(plane.acceptance_bound() >= TARGET_ACCEPTANCE, "{name}: acceptance bound {}", plane.acceptance_bound());
        let pieces = &plane.marginal.envelope.pieces;
        let (lo, hi) = (pieces[0].lo, pieces.last().unwrap().hi);
        let (lo, hi) = (lo.max(-40.0), hi.min(40.0));
        for k in 0..=20_000 {
            let t = lo + (hi - lo) * k as f64 / 20_000.0;
            let (h, env) = (plane.sections.log_marginal(t), plane.marginal.envelope_at(t));
            assert!(h <= env, "{name}: h({t}) = {h} above the envelope {env}");
        }
        // The bound is a bound: the true acceptance is the mass over the envelope's area.
        let exact = polygon_log_mass(&g, &e);
        let acceptance = (exact - plane.marginal.envelope.log_area).exp();
        assert!(
            acceptance >= plane.acceptance_bound() * (1.0 - 1e-9) && acceptance <= 1.0 + 1e-9,
            "{name}: acceptance {acceptance}"
        );
    }
}

#[test]
fn polygon_draws_match_exact_moments_and_directional_cdfs() {
    for (index, (name, g, e)) in polygons().into_iter().enumerate() {
        let plane = Plane::new(&g, &e).unwrap();
        let mut rng = Pcg64::seed_from_u64(11 + index as u64);
        let samples: Vec<Vec<f64>> = (0..20_000).map(|_| plane.draw(&mut rng).unwrap().to_vec()).collect();
        let flat: Vec<f64> = g.iter().flat_map(|r| [r[0], r[1]]).collect();
        if name == "far thin corner" {
            // Legs 1e-5 long 17 standard deviations out: the reference integrator's moments
            // lose their digits there, but the Gaussian varies by a factor 1 + 2.4e-4 across
            // the triangle, so it is uniform to that: in units of the legs, mean 1/3 and
            // variance 1/18 per coordinate.
            let n = samples.len() as f64;
            for j in 0..2 {
                let x: Vec<f64> = samples.iter().map(|w| (w[j] - 12.0) / 1e-5).collect();
                let mean = x.iter().sum::<f64>() / n;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                assert!((mean - 1.0 / 3.0).abs() < 5.0 * (1.0 / 18.0 / n).sqrt() + 1e-3, "{name}: mean {mean}");
                assert!((var / (1.0 / 18.0) - 1.0).abs() < 0.05, "{name}: variance {var}");
            }
            continue;
        }
        let exact = reference(&flat, &e, 2);
        assert_moments(name, &samples, &exact, 2);
        for (i, w) in samples.iter().enumerate().take(2000) {
            assert!(
                g.iter().zip(&e).all(|(r, &c)| r[0] * w[0] + r[1] * w[1] <= c + 1e-9 * (1.0 + c.abs())),
                "{name}: sample {i} {w:?} outside"
            );
        }
        if name == "thin upright sliver" {
            // The Gaussian varies by a factor 1 + 3e-8 across the 1e-7 width: the position
            // across is uniform, mean 1/2 and sd 1/sqrt(12) in units of the width.
            let position: f64 = samples.iter().map(|w| (w[0] - 0.3) / 1e-7).sum::<f64>() / samples.len() as f64;
            assert!(
                (position - 0.5).abs() < 5.0 * (1.0 / 12.0 / samples.len() as f64).sqrt() + 1e-6,
                "{name}: mean position across {position}"
            );
        }
        // Along a direction across the first axis, against the exact mass of the cut polygon.
        let v = [0.8f64, -0.6];
        let log_mass = polygon_log_mass(&g, &e);
        let cdf = |x: f64| {
            let mut gc = g.clone();
            let mut ec = e.clone();
            gc.push(v);
            ec.push(x);
            (polygon_log_mass(&gc, &ec) - log_mass).exp()
        };
        let projected: Vec<f64> = samples.iter().take(3000).map(|w| v[0] * w[0] + v[1] * w[1]).collect();
        let ks = ks_statistic(projected, cdf);
        assert!(ks < KS_CRITICAL, "{name}: KS statistic {ks}");
    }
}

#[test]
fn interval_draws_follow_the_truncated_normal() {
    for (index, (lo, hi)) in [
        (-0.3, 0.2),
        (3.0, 3.0 + 1e-9),
        (25.0, f64::INFINITY),
        (f64::NEG_INFINITY, -40.0),
        (-1.0, 1e-12),
        (f64::NEG_INFINITY, f64::INFINITY),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rows = Vec::new();
        let mut offsets = Vec::new();
        if lo > f64::NEG_INFINITY {
            rows.push(-2.0);
            offsets.push(-2.0 * lo);
        }
        if hi < f64::INFINITY {
            rows.push(0.5);
            offsets.push(0.5 * hi);
        }
        let exact = Exact::new(&rows, &offsets, 1, &[0.0]).unwrap();
        assert_eq!(exact.acceptance_bound(), 1.0);
        let mut rng = Pcg64::seed_from_u64(index as u64);
        let x: Vec<f64> = (0..3000).map(|_| exact.draw(&mut rng).unwrap()[0]).collect();
        assert!(x.iter().all(|&v| lo <= v && v <= hi));
        // Standardised within the interval: the CDF from log masses, accurate in the tails.
        let log_total = log_diff_ndtr(lo, hi);
        let ks = ks_statistic(x, |v| (log_diff_ndtr(lo, v) - log_total).exp());
        assert!(ks < KS_CRITICAL, "[{lo}, {hi}]: KS statistic {ks}");
    }
}

/// Polyhedra in whitened coordinates with a point inside each.
fn polyhedra() -> Vec<(&'static str, Vec<f64>, Vec<f64>, [f64; 3])> {
    let mut out = Vec::new();
    let n = [0.48f64, 0.6, 0.64];
    let norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    let n = [n[0] / norm, n[1] / norm, n[2] / norm];
    let mut cube = |name, mut f: Vec<f64>, mut e: Vec<f64>, inside| {
        for j in 0..3 {
            for sign in [1.0, -1.0] {
                let mut row = [0.0; 3];
                row[j] = sign;
                f.extend(row);
                e.push(3.0);
            }
        }
        out.push((name, f, e, inside));
    };
    // A slab 1e-6 thick across a skew direction, in a cube.
    cube(
        "thin slab",
        vec![n[0], n[1], n[2], -n[0], -n[1], -n[2]],
        vec![0.5 + 1e-6, -0.5],
        [0.5 * n[0], 0.5 * n[1], 0.5 * n[2]],
    );
    cube("cube", vec![], vec![], [0.0, 0.0, 0.0]);
    // A needle: thin in two directions.
    cube(
        "needle",
        vec![0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0],
        vec![1e-4, 0.0, 0.2 + 1e-4, -0.2],
        [0.0, 5e-5, 0.2 + 5e-5],
    );
    // A far unbounded corner: w_1 >= 8, w_2 >= 1, w_1 + w_3 <= 9 + 1e-3 ... and w_3 >= -1 closes nothing on w_2.
    out.push((
        "far unbounded",
        vec![-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, -1.0],
        vec![-8.0, -1.0, 9.0 + 1e-3, 1.0],
        [8.0 + 1e-4, 1.5, 0.5],
    ));
    out
}

#[test]
fn polyhedron_draws_match_slice_integrator_moments() {
    for (index, (name, f, e, inside)) in polyhedra().into_iter().enumerate() {
        let exact = Exact::new(&f, &e, 3, &inside).unwrap_or_else(|| panic!("{name}: no sampler"));
        assert!(exact.acceptance_bound() >= TARGET_ACCEPTANCE, "{name}: acceptance bound {}", exact.acceptance_bound());
        let mut rng = Pcg64::seed_from_u64(100 + index as u64);
        let samples: Vec<Vec<f64>> = (0..6000).map(|_| exact.draw(&mut rng).unwrap()).collect();
        for w in &samples {
            assert!(
                f.chunks(3)
                    .zip(&e)
                    .all(|(r, &c)| r[0] * w[0] + r[1] * w[1] + r[2] * w[2] <= c + 1e-9 * (1.0 + c.abs())),
                "{name}: {w:?} outside"
            );
        }
        assert_moments(name, &samples, &reference(&f, &e, 3), 3);
    }
}

#[test]
fn draws_are_deterministic_given_the_seed() {
    let (_, g, e) = polygons().swap_remove(0);
    let plane = Plane::new(&g, &e).unwrap();
    let run = |seed| {
        let mut rng = Pcg64::seed_from_u64(seed);
        (0..50).map(|_| plane.draw(&mut rng).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

/// A region without constraints (a decoder without kinks in view) is the whole plane: the
/// draws are standard normal.
#[test]
fn the_whole_plane_gives_standard_normal_draws() {
    let plane = Plane::new(&[], &[]).unwrap();
    let mut rng = Pcg64::seed_from_u64(2);
    let draws: Vec<[f64; 2]> = (0..4000).map(|_| plane.draw(&mut rng).unwrap()).collect();
    for j in 0..2 {
        let ks = ks_statistic(draws.iter().map(|w| w[j]).collect(), |x| (log_diff_ndtr(f64::NEG_INFINITY, x)).exp());
        assert!(ks < KS_CRITICAL, "coordinate {j}: KS statistic {ks}");
    }
}

/// S = 4: a slab 1e-6 thick across a skew direction in a box, and a far corner, against the
/// general integrator's moments (quasi-Monte Carlo to rtol 1e-6 there, far below 5 standard
/// errors of 1500 draws).
#[test]
fn four_dimensional_draws_match_moments() {
    let n = [0.4f64, 0.5, -0.3, 0.7];
    let norm = n.iter().map(|v| v * v).sum::<f64>().sqrt();
    let n: Vec<f64> = n.iter().map(|v| v / norm).collect();
    let boxed = |mut f: Vec<f64>, mut e: Vec<f64>| {
        for j in 0..4 {
            for sign in [1.0, -1.0] {
                let mut row = [0.0; 4];
                row[j] = sign;
                f.extend(row);
                e.push(2.5);
            }
        }
        (f, e)
    };
    let slab = boxed(n.iter().copied().chain(n.iter().map(|v| -v)).collect(), vec![0.4 + 1e-6, -0.4]);
    let inside_slab: Vec<f64> = n.iter().map(|v| (0.4 + 5e-7) * v).collect();
    let corner = (vec![-1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], vec![-6.0, -1.0, 7.0 + 1e-3]);
    let inside_corner = vec![6.0 + 2e-4, 1.0 + 2e-4, 0.0, 0.0];
    for (index, (name, (f, e), inside)) in
        [("thin slab", slab, inside_slab), ("far thin corner", corner, inside_corner)].into_iter().enumerate()
    {
        let exact = Exact::new(&f, &e, 4, &inside).unwrap_or_else(|| panic!("{name}: no sampler"));
        assert!(exact.acceptance_bound() >= TARGET_ACCEPTANCE, "{name}: acceptance bound {}", exact.acceptance_bound());
        let mut rng = Pcg64::seed_from_u64(40 + index as u64);
        let samples: Vec<Vec<f64>> = (0..1500).map(|_| exact.draw(&mut rng).unwrap()).collect();
        for w in &samples {
            assert!(
                f.chunks(4)
                    .zip(&e)
                    .all(|(r, &c)| (0..4).map(|j| r[j] * w[j]).sum::<f64>() <= c + 1e-9 * (1.0 + c.abs())),
                "{name}: {w:?} outside"
            );
        }
        if name == "far thin corner" {
            // (w_1, w_2) on a triangle with legs 1e-3 at (6, 1), where the Gaussian varies by
            // under 1%: uniform to that (position mean 1/3 in units of the legs); w_3, w_4 free,
            // so standard normal. The quasi-Monte Carlo reference misses this sliver's moments.
            let m = samples.len() as f64;
            for (j, at) in [(0, 6.0), (1, 1.0)] {
                let position = samples.iter().map(|w| (w[j] - at) / 1e-3).sum::<f64>() / m;
                assert!(
                    (position - 1.0 / 3.0).abs() < 5.0 * (1.0 / 18.0 / m).sqrt() + 0.01,
                    "{name}: position {position}"
                );
            }
            for j in [2, 3] {
                let ks =
                    ks_statistic(samples.iter().map(|w| w[j]).collect(), |x| log_diff_ndtr(f64::NEG_INFINITY, x).exp());
                assert!(ks < KS_CRITICAL, "{name}: coordinate {j} KS {ks}");
            }
            continue;
        }
        let identity: Vec<f64> = (0..16).map(|k| if k % 5 == 0 { 1.0 } else { 0.0 }).collect();
        let reference = PolytopeShape::new(&f, 4, &identity)
            .unwrap()
            .moments(&e, &[0.0; 4], true, &IntegrationSettings::new(1e-6, 0, &Cancel::new()))
            .unwrap();
        assert_moments(name, &samples, &reference, 4);
    }
}
