use std::sync::Arc;

use nalgebra::{DMatrix, DVector};

use super::*;
use crate::inference::{log_likelihood, GaussIntegrator, IntegrationSettings};
use crate::model::Decoder;

fn engine_parts(widths: &[usize], slope: f64, seed: u64, psi: &[f64]) -> (Arc<Decoder>, Partition, Vec<f64>) {
    let dec = Arc::new(Decoder::random_uniform(widths, slope, seed).unwrap());
    let part = Partition::enumerate(dec.clone(), 100_000, &Cancel::new()).unwrap();
    (dec, part, psi.to_vec())
}

/// The law of total expectation over the partition: `sum P = 1`, `sum P (c - m) = 0`,
/// `sum P (C + (c - m)(c - m)^T) = V`, for every region's exact moments at once.
fn check_total_moments(part: &Partition, algebra: &RegionAlgebra, mean: &[f64], cov: &[f64], tol: f64) {
    let s = mean.len();
    let engine = VariationalEngine::new(part, algebra, 1e-8, 0).unwrap();
    let point = PointQ::new(mean, cov, s).unwrap();
    let (mut mass, mut first, mut second) = (0.0, vec![0.0; s], vec![0.0; s * s]);
    for q in 0..part.len() {
        let t = engine.truncated(q, &point, 1e-8, &Cancel::new()).unwrap();
        if t.log_mass == f64::NEG_INFINITY {
            continue;
        }
        let p = t.log_mass.exp();
        mass += p;
        for i in 0..s {
            first[i] += p * t.shift[i];
            for j in 0..s {
                second[i * s + j] += p * (t.cov[i * s + j] + t.shift[i] * t.shift[j]);
            }
        }
    }
    assert!((mass - 1.0).abs() < tol, "total mass {mass}");
    let scale = cov.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    for i in 0..s {
        assert!(first[i].abs() < tol * scale.sqrt(), "mean shift {first:?}");
        for j in 0..s {
            assert!((second[i * s + j] - cov[i * s + j]).abs() < tol * scale, "second moment {second:?} vs {cov:?}");
        }
    }
}

#[test]
fn region_moments_add_up_to_q_in_one_and_two_dimensions() {
    let (_, part, psi) = engine_parts(&[1, 8, 8, 2], 0.1, 3, &[0.1, 0.2]);
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    for (m, v) in [(0.3, 0.5), (-1.2, 0.01), (4.0, 2.0), (0.0, 1e-6)] {
        check_total_moments(&part, &algebra, &[m], &[v], 1e-12);
    }
    let (_, part, psi) = engine_parts(&[2, 8, 8, 3], -1.0, 5, &[0.1, 0.2, 0.3]);
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    check_total_moments(&part, &algebra, &[0.2, -0.4], &[0.5, 0.2, 0.2, 0.3], 1e-11);
    check_total_moments(&part, &algebra, &[2.0, 1.0], &[0.02, -0.01, -0.01, 0.03], 1e-11);
}

#[test]
fn region_moments_add_up_to_q_in_three_dimensions_to_rtol() {
    let (_, part, psi) = engine_parts(&[3, 5, 3], 0.1, 7, &[0.1, 0.2, 0.3]);
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    check_total_moments(&part, &algebra, &[0.2, -0.4, 0.1], &[0.5, 0.1, 0.0, 0.1, 0.4, 0.05, 0.0, 0.05, 0.3], 1e-5);
}

/// Composite Simpson over z of `N(z; m, v) log N(x; g(z), Psi)`: an independent S = 1 reference
/// for the expected log-likelihood of an interval-by-interval sum.
fn simpson_expected_log_likelihood(dec: &Decoder, psi: &[f64], x: &[f64], m: f64, v: f64) -> f64 {
    let sd = v.sqrt();
    let (lo, hi, n) = (m - 14.0 * sd, m + 14.0 * sd, 400_000);
    let h = (hi - lo) / n as f64;
    let zs = DMatrix::from_fn(1, n + 1, |_, i| lo + i as f64 * h);
    let g = dec.forward_batch(zs.as_view());
    let mut total = 0.0;
    for i in 0..=n {
        let z = zs[(0, i)];
        let density = (-0.5 * (z - m) * (z - m) / v).exp() / (2.0 * std::f64::consts::PI * v).sqrt();
        let mut log = 0.0;
        for (j, (xj, pj)) in x.iter().zip(psi).enumerate() {
            log += -0.5 * (xj - g[(j, i)]).powi(2) / pj - 0.5 * (LOG_2PI + pj.ln());
        }
        let w = if i == 0 || i == n {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        total += w * density * log;
    }
    total * h / 3.0
}

#[test]
fn one_dimensional_elbo_matches_simpson_quadrature() {
    let (dec, part, psi) = engine_parts(&[1, 8, 8, 2], 0.1, 3, &[0.05, 0.2]);
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    let engine = VariationalEngine::new(&part, &algebra, 1e-8, 0).unwrap();
    for (x, m, v) in [([0.3, -1.0], 0.2, 0.3), ([5.0, 4.0], -1.5, 0.01), ([0.0, 0.0], 2.5, 1.5)] {
        let point = PointQ::new(&[m], &[v], 1).unwrap();
        let (got, error, _) = engine.elbo_point(&x, &point, &Cancel::new()).unwrap();
        let prior_entropy = -0.5 * (m * m + v - 1.0 - v.ln());
        let expected = simpson_expected_log_likelihood(&dec, &psi, &x, m, v) + prior_entropy;
        // Simpson's error on the kinks of g is O(h^2) ~ 1e-9 of the integrand's scale.
        assert!((got - expected).abs() < 1e-7 * (1.0 + expected.abs()), "{got} vs {expected}");
        assert!(error < 1e-12 * (1.0 + got.abs()), "error estimate {error}");
    }
}

/// A decoder without hidden layers: one region, p(z | x) Gaussian, the ELBO and the KL in
/// closed form.
#[test]
fn linear_decoder_gives_closed_form_elbo_and_kl() {
    let w = DMatrix::from_row_slice(3, 2, &[1.0, 0.5, -0.3, 2.0, 0.7, 0.1]);
    let b = DVector::from_vec(vec![0.2, -1.0, 0.5]);
    let dec = Arc::new(Decoder::new(vec![w.clone()], vec![b.clone()], vec![]).unwrap());
    let part = Partition::enumerate(dec, 10, &Cancel::new()).unwrap();
    let psi = [0.3, 0.5, 0.2];
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    let integrator = GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-8, 0, &Cancel::new())).unwrap();
    let engine = VariationalEngine::new(&part, &algebra, 1e-8, 0).unwrap();
    let x = DVector::from_vec(vec![0.1, 3.0, -0.4]);
    let inv_psi = DMatrix::from_diagonal(&DVector::from_iterator(3, psi.iter().map(|p| 1.0 / p)));
    let precision = DMatrix::identity(2, 2) + w.transpose() * &inv_psi * &w;
    let sigma = precision.clone().try_inverse().unwrap();
    let mu = &sigma * w.transpose() * &inv_psi * (&x - &b);
    let log_p =
        log_likelihood(&algebra, &integrator, DMatrixView::from_slice(x.as_slice(), 3, 1), &Cancel::new()).unwrap();
    let local = algebra.local_gaussians(algebra.centred(DMatrixView::from_slice(x.as_slice(), 3, 1)).as_view());
    let (log_kappa, local_mu) = local.point(0);
    // q = the exact posterior: gap 0 (to rounding), ELBO = log p(x).
    let exact = PointQ::new(mu.as_slice(), sigma.transpose().as_slice(), 2).unwrap();
    let (gap, gap_error, _) = engine.gap_point(log_p[0], log_kappa, local_mu, &exact, &Cancel::new()).unwrap();
    assert!((0.0..1e-13).contains(&gap), "gap {gap}");
    assert!(gap_error < 1e-12);
    let (elbo_value, ..) = engine.elbo_point(x.as_slice(), &exact, &Cancel::new()).unwrap();
    assert!((elbo_value - log_p[0]).abs() < 1e-12, "{elbo_value} vs {}", log_p[0]);
    // Another q: KL between Gaussians in closed form.
    let (m, v) = (DVector::from_vec(vec![0.5, -0.2]), DMatrix::from_row_slice(2, 2, &[0.3, 0.1, 0.1, 0.2]));
    let other = PointQ::new(m.as_slice(), v.as_slice(), 2).unwrap();
    let (gap, ..) = engine.gap_point(log_p[0], log_kappa, local_mu, &other, &Cancel::new()).unwrap();
    let diff = &mu - &m;
    let kl = 0.5
        * ((&precision * &v).trace() + diff.dot(&(&precision * &diff))
            - 2.0
            - (v.determinant() * precision.determinant()).ln());
    assert!((gap - kl).abs() < 1e-12 * (1.0 + kl), "{gap} vs {kl}");
    let (elbo_value, ..) = engine.elbo_point(x.as_slice(), &other, &Cancel::new()).unwrap();
    assert!(
        (log_p[0] - elbo_value - kl).abs() < 1e-11 * (1.0 + log_p[0].abs()),
        "ELBO {elbo_value}, log p {}, KL {kl}",
        log_p[0]
    );
}

#[test]
fn gap_agrees_with_log_likelihood_minus_elbo_on_a_deep_net() {
    let (dec, part, psi) = engine_parts(&[2, 8, 8, 3], 0.1, 5, &[0.1, 0.2, 0.3]);
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    let integrator = GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-8, 0, &Cancel::new())).unwrap();
    let engine = VariationalEngine::new(&part, &algebra, 1e-8, 0).unwrap();
    let zs = DMatrix::from_row_slice(2, 3, &[0.3, -1.0, 2.0, 0.5, 0.2, -0.7]);
    let x = dec.forward_batch(zs.as_view());
    let log_p = log_likelihood(&algebra, &integrator, x.as_view(), &Cancel::new()).unwrap();
    let mean: Vec<f64> = zs.iter().copied().collect();
    let cov: Vec<f64> = (0..3).flat_map(|_| [0.2, 0.05, 0.05, 0.1]).collect();
    let q = GaussianQ { mean: &mean, cov: &cov };
    let elbos = elbo(&engine, x.as_view(), q, &Cancel::new()).unwrap();
    let gaps = posterior_gap(&engine, x.as_view(), &log_p, q, &Cancel::new()).unwrap();
    for p in 0..3 {
        let difference = log_p[p] - elbos.value[p];
        assert!(gaps.value[p] > 0.0);
        assert!(
            (gaps.value[p] - difference).abs() < 1e-10 * (1.0 + log_p[p].abs()),
            "{} vs {difference}",
            gaps.value[p]
        );
    }
}

#[test]
fn bad_covariances_are_reported_with_their_point() {
    let (_, part, psi) = engine_parts(&[1, 4, 2], 0.1, 3, &[0.1, 0.2]);
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    let engine = VariationalEngine::new(&part, &algebra, 1e-8, 0).unwrap();
    let x = DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 0.0, 1.0]);
    let q = GaussianQ { mean: &[0.0, 0.0], cov: &[1.0, -1.0] };
    match elbo(&engine, x.as_view(), q, &Cancel::new()) {
        Err(crate::error::Error::InvalidInput(msg)) => assert!(msg.contains("q_var[1]"), "{msg}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// The skipping bound holds: `region_bound >= |E_q[1_omega f]|` for every region, `f` the
/// log-likelihood quadratic, with the region's exact integral computed as the ELBO does.
#[test]
fn region_bounds_bound_the_region_terms() {
    for (widths, m, v) in [
        (vec![1usize, 8, 8, 2], vec![0.3], vec![0.02]),
        (vec![1, 8, 8, 2], vec![-2.0], vec![1.5]),
        (vec![2, 8, 8, 3], vec![0.2, -0.4], vec![0.01, 0.002, 0.002, 0.03]),
        (vec![2, 8, 8, 3], vec![1.5, 2.0], vec![0.5, 0.0, 0.0, 0.5]),
    ] {
        let s = widths[0];
        let d = *widths.last().unwrap();
        let (dec, part, psi) = engine_parts(&widths, 0.1, 9, &vec![0.1; d]);
        let algebra = RegionAlgebra::new(&part, &psi).unwrap();
        let engine = VariationalEngine::new(&part, &algebra, 1e-8, 0).unwrap();
        let point = PointQ::new(&m, &v, s).unwrap();
        let x: Vec<f64> = dec.forward_batch(DMatrixView::from_slice(&m, s, 1)).iter().map(|g| g + 0.3).collect();
        let mut tight = 0;
        for q in 0..part.len() {
            let mut u = vec![0.0; d];
            engine.residual(q, &x, &m, &mut u);
            let mut quadratic = Quadratic::new(s);
            engine.log_likelihood_quadratic(q, &u, &mut quadratic);
            let bound = quadratic.region_bound(&point, engine.facet_distance(q, &point), s);
            let t = engine.truncated(q, &point, 1e-8, &Cancel::new()).unwrap();
            if t.log_mass == f64::NEG_INFINITY {
                continue;
            }
            // E[f 1_omega] = P (a + l . c' + tr(M (C + c' c'^T))).
            let second: Vec<f64> = (0..s * s).map(|k| t.cov[k] + t.shift[k / s] * t.shift[k % s]).collect();
            let exact = t.log_mass.exp()
                * (quadratic.a + dot(&quadratic.l, &t.shift) + trace_product(&quadratic.m, &second, s));
            assert!(exact.abs() <= bound * (1.0 + 1e-12), "region {q}: |{exact}| > bound {bound}");
            if bound < 100.0 * exact.abs() {
                tight += 1;
            }
        }
        assert!(tight > 0, "some bound is within a factor 100 of its term");
    }
}

#[test]
#[ignore]
fn profile_phases() {
    for (widths, n) in [(vec![1usize, 16, 16, 2], 400usize), (vec![2, 32, 32, 10], 50)] {
        let s = widths[0];
        let d = *widths.last().unwrap();
        let dec = Arc::new(Decoder::random_uniform(&widths, 0.1, 0).unwrap());
        let part = Partition::enumerate(dec.clone(), 100_000, &Cancel::new()).unwrap();
        let psi = vec![0.1; d];
        let algebra = RegionAlgebra::new(&part, &psi).unwrap();
        let engine = VariationalEngine::new(&part, &algebra, 1e-6, 0).unwrap();
        let zs = DMatrix::from_fn(s, n, |i, j| ((i * 7 + j * 13) % 17) as f64 / 8.0 - 1.0);
        let x = dec.forward_batch(zs.as_view());
        let cov: Vec<f64> = (0..n)
            .flat_map(|_| {
                let mut c = vec![0.0; s * s];
                (0..s).for_each(|i| c[i * s + i] = 0.05);
                c
            })
            .collect();
        let points = factorise(GaussianQ { mean: zs.as_slice(), cov: &cov }, n, s).unwrap();
        let t0 = std::time::Instant::now();
        for p in 0..n {
            let point = &points[p];
            let xp: Vec<f64> = x.column(p).iter().copied().collect();
            let bounds: Vec<f64> = (0..part.len())
                .map(|q| {
                    let mut u = vec![0.0; d];
                    engine.residual(q, &xp, &point.mean, &mut u);
                    let mut quadratic = Quadratic::new(s);
                    engine.log_likelihood_quadratic(q, &u, &mut quadratic);
                    quadratic.region_bound(point, engine.facet_distance(q, point), s)
                })
                .collect();
            std::hint::black_box(bounds);
        }
        let t_bounds = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let mut computed = 0;
        for p in 0..n {
            let xp: Vec<f64> = x.column(p).iter().copied().collect();
            computed += engine.elbo_point(&xp, &points[p], &Cancel::new()).unwrap().2;
        }
        let t_all = t1.elapsed().as_secs_f64();
        println!(
            "S={s} R={} bounds {:.2} us/(pt,reg), total {:.2} us/(pt,reg), ~computed/pt {}",
            part.len(),
            1e6 * t_bounds / (n * part.len()) as f64,
            1e6 * t_all / (n * part.len()) as f64,
            computed / n
        );
    }
}
