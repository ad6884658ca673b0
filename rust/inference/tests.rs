use super::algebra::{compensated_residual, factor_region};
use super::*;
use crate::model::Decoder;
use nalgebra::{DMatrix, DVector};

/// The mass and moments of N(mean, sigma^2) on an interval by composite Simpson quadrature: a
/// slow, independent stand-in for the polytope engine in S = 1.
struct Quadrature<'a> {
    partition: &'a Partition,
    algebra: &'a RegionAlgebra,
}

impl Quadrature<'_> {
    fn interval(&self, q: usize) -> (f64, f64) {
        let mut lo = f64::NEG_INFINITY;
        let mut hi = f64::INFINITY;
        for f in self.partition.facets(q) {
            if f.normal[0] > 0.0 {
                hi = hi.min(f.offset / f.normal[0]);
            } else {
                lo = lo.max(f.offset / f.normal[0]);
            }
        }
        (lo, hi)
    }

    fn integrate(&self, q: usize, mean: f64) -> [f64; 3] {
        let sd = self.algebra.sigma(q)[0].sqrt();
        let (lo, hi) = self.interval(q);
        let a = lo.max(mean - 40.0 * sd);
        let b = hi.min(mean + 40.0 * sd);
        if a >= b {
            return [0.0, 0.0, 0.0];
        }
        let n = 20_000;
        let h = (b - a) / n as f64;
        let mut acc = [0.0; 3];
        for i in 0..=n {
            let z = a + i as f64 * h;
            let w = if i == 0 || i == n {
                1.0
            } else if i % 2 == 1 {
                4.0
            } else {
                2.0
            };
            let pdf = (-0.5 * ((z - mean) / sd).powi(2)).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt());
            acc[0] += w * pdf;
            acc[1] += w * pdf * z;
            acc[2] += w * pdf * z * z;
        }
        acc.map(|v| v * h / 3.0)
    }
}

impl RegionIntegrator for Quadrature<'_> {
    fn log_mass(&self, q: usize, mean: &[f64]) -> f64 {
        self.integrate(q, mean[0])[0].ln()
    }

    fn moments_into(&self, q: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        let [m0, m1, m2] = self.integrate(q, mean[0]);
        cond_mean[0] = m1 / m0;
        cond_second[0] = m2 / m0;
        m0.ln()
    }
}

/// `p(x) = int N(x; g(z), Psi) N(z; 0, 1) dz` by brute-force quadrature over z.
fn brute_force_log_p(dec: &Decoder, psi: &[f64], x: &[f64]) -> f64 {
    let (lo, hi, n) = (-12.0, 12.0, 400_000);
    let h = (hi - lo) / n as f64;
    let zs = DMatrix::from_fn(1, n + 1, |_, i| lo + i as f64 * h);
    let g = dec.forward_batch(zs.as_view());
    let mut total = 0.0;
    for i in 0..=n {
        let z = zs[(0, i)];
        let mut log = -0.5 * z * z - 0.5 * LOG_2PI;
        for (j, (xj, pj)) in x.iter().zip(psi).enumerate() {
            log += -0.5 * (xj - g[(j, i)]).powi(2) / pj - 0.5 * (LOG_2PI + pj.ln());
        }
        let w = if i == 0 || i == n { 0.5 } else { 1.0 };
        total += w * log.exp();
    }
    (total * h).ln()
}

#[test]
fn linear_decoder_gives_the_closed_form_marginal() {
    // No hidden layer: one region, Phi = 1, p(x) = N(x; b, Psi + A A^T).
    let w = DMatrix::from_row_slice(3, 2, &[1.0, 0.5, -0.3, 2.0, 0.7, 0.1]);
    let b = DVector::from_vec(vec![0.2, -1.0, 0.5]);
    let dec = Arc::new(Decoder::new(vec![w.clone()], vec![b.clone()], vec![]).unwrap());
    let part = Partition::enumerate(dec, 10, &Cancel::new()).unwrap();
    let psi = [0.3, 0.5, 0.2];
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    struct Whole;
    impl RegionIntegrator for Whole {
        fn log_mass(&self, _: usize, _: &[f64]) -> f64 {
            0.0
        }
        fn moments_into(&self, _: usize, mean: &[f64], cond_mean: &mut [f64], _: &mut [f64]) -> f64 {
            cond_mean.copy_from_slice(mean);
            0.0
        }
    }
    let x = DMatrix::from_row_slice(3, 2, &[0.1, 3.0, -0.4, 2.0, 1.0, -5.0]);
    let got = log_likelihood(&algebra, &Whole, x.as_view(), &Cancel::new()).unwrap();
    let cov = DMatrix::from_diagonal(&DVector::from_row_slice(&psi)) + &w * w.transpose();
    let chol = nalgebra::Cholesky::new(cov.clone()).unwrap();
    for (p, got) in got.iter().enumerate() {
        let r = x.column(p) - &b;
        let quad = r.dot(&chol.solve(&r));
        let log_det = 2.0 * chol.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
        let expected = -0.5 * (3.0 * LOG_2PI + log_det + quad);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }
}

#[test]
fn deep_one_dimensional_net_matches_brute_force_quadrature() {
    let dec = Arc::new(Decoder::random_uniform(&[1, 8, 8, 2], 0.1, 3).unwrap());
    let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
    let psi = [0.05, 0.2];
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    let quad = Quadrature { partition: &part, algebra: &algebra };
    let zs = DMatrix::from_row_slice(1, 4, &[-2.0, -0.3, 0.4, 1.7]);
    let mut x = dec.forward_batch(zs.as_view());
    x[(0, 3)] += 0.5;
    let got = log_likelihood(&algebra, &quad, x.as_view(), &Cancel::new()).unwrap();
    let stats = e_step(&algebra, &quad, x.as_view(), &Cancel::new()).unwrap();
    for p in 0..4 {
        let xp: Vec<f64> = x.column(p).iter().copied().collect();
        let expected = brute_force_log_p(&dec, &psi, &xp);
        assert!((got[p] - expected).abs() < 1e-7, "point {p}: {} vs {expected}", got[p]);
        assert!((stats.log_likelihood[p] - got[p]).abs() < 1e-12);
        let (a, b) = (stats.indptr[p], stats.indptr[p + 1]);
        let total: f64 = stats.m0[a..b].iter().sum();
        assert!((total - 1.0).abs() < 1e-10, "posterior weights sum to {total}");
    }
}

#[test]
fn one_dimensional_posterior_density_map_and_samples() {
    let dec = Arc::new(Decoder::random_uniform(&[1, 8, 8, 2], -1.0, 5).unwrap());
    let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
    let psi = [0.1, 0.1];
    let algebra = RegionAlgebra::new(&part, &psi).unwrap();
    let quad = Quadrature { partition: &part, algebra: &algebra };
    let x = dec.forward_batch(DMatrix::from_element(1, 1, 0.8).as_view()).column(0).into_owned();
    let post = posterior::PointPosterior::new(&algebra, &quad, x.as_slice());
    assert!((post.weights.iter().sum::<f64>() - 1.0).abs() < 1e-10);
    // The density integrates to one and its grid argmax is the MAP.
    let (lo, hi, n) = (-8.0, 8.0, 160_000);
    let h = (hi - lo) / n as f64;
    let (mut total, mut first, mut argmax, mut best) = (0.0, 0.0, 0.0, f64::NEG_INFINITY);
    for i in 0..=n {
        let z = lo + i as f64 * h;
        let ld = post.log_density(&part, &algebra, &[z]);
        let w = if i == 0 || i == n { 0.5 } else { 1.0 };
        total += w * ld.exp() * h;
        first += w * ld.exp() * h * z;
        if ld > best {
            best = ld;
            argmax = z;
        }
    }
    assert!((total - 1.0).abs() < 1e-6, "density integrates to {total}");
    assert!((first - post.mean[0]).abs() < 1e-6, "mean {} vs quadrature {first}", post.mean[0]);
    let map = post.map(&part, &algebra);
    assert!((map[0] - argmax).abs() < 2.0 * h, "MAP {} vs grid argmax {argmax}", map[0]);
    // Sample mean within 4 standard errors of the exact mean.
    let samples = post.sample(&part, &algebra, 20_000, 1, &Cancel::new()).unwrap();
    let sd = post.cov[0].sqrt();
    let sample_mean = samples.iter().sum::<f64>() / samples.len() as f64;
    assert!((sample_mean - post.mean[0]).abs() < 4.0 * sd / (samples.len() as f64).sqrt());
    assert_eq!(
        post.sample(&part, &algebra, 5, 7, &Cancel::new()).unwrap(),
        post.sample(&part, &algebra, 5, 7, &Cancel::new()).unwrap()
    );
}

#[test]
fn interval_path_matches_region_by_region_quadrature() {
    // The linear-space S = 1 path (shared end densities, Cody tails, the centred series for
    // short intervals) against Simpson's rule per region through the log-space path, for wide
    // and narrow posteriors and for points far from the data, where every region is in a tail.
    // Two outputs: the blocks form the points' local Gaussians themselves.
    interval_path_against_quadrature(&[1, 16, 16, 2], &[[0.5, 0.5], [0.05, 0.2], [1e-4, 1e-4]]);
}

#[test]
fn interval_path_matches_quadrature_with_many_outputs() {
    // Twenty outputs: the local Gaussians come from the batch's matrix products, stored and
    // gathered into the blocks.
    let noise = |a: f64, b: f64| (0..20).map(|i| if i % 2 == 0 { a } else { b }).collect::<Vec<f64>>();
    interval_path_against_quadrature(&[1, 8, 8, 20], &[noise(0.5, 0.5), noise(0.05, 0.2), noise(1e-4, 1e-4)]);
}

fn interval_path_against_quadrature<P: AsRef<[f64]>>(widths: &[usize], noises: &[P]) {
    let dec = Arc::new(Decoder::random_uniform(widths, 0.1, 11).unwrap());
    let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
    for psi in noises {
        let psi = psi.as_ref();
        let algebra = RegionAlgebra::new(&part, psi).unwrap();
        let gauss = GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-6, 0, &Cancel::new())).unwrap();
        assert!(matches!(gauss, GaussIntegrator::Interval(_)));
        let quad = Quadrature { partition: &part, algebra: &algebra };
        let zs = DMatrix::from_row_slice(1, 4, &[-2.5, -0.2, 0.9, 1.6]);
        let mut x = dec.forward_batch(zs.as_view());
        x[(0, 2)] += 0.3;
        x[(1, 3)] += 25.0;
        let got = e_step(&algebra, &gauss, x.as_view(), &Cancel::new()).unwrap();
        let want = e_step(&algebra, &quad, x.as_view(), &Cancel::new()).unwrap();
        let ll = log_likelihood(&algebra, &gauss, x.as_view(), &Cancel::new()).unwrap();
        for p in 0..4 {
            assert!((got.log_likelihood[p] - want.log_likelihood[p]).abs() < 1e-9, "psi {psi:?} point {p}");
            assert!((ll[p] - got.log_likelihood[p]).abs() < 1e-12);
            let dense = |stats: &EStep| {
                let mut rows = vec![[0.0; 3]; part.len()];
                for k in stats.indptr[p]..stats.indptr[p + 1] {
                    rows[stats.region[k]] = [stats.m0[k], stats.m1[k], stats.m2[k]];
                }
                rows
            };
            let (got_rows, want_rows) = (dense(&got), dense(&want));
            let scale = want_rows.iter().map(|r| r[2]).sum::<f64>().sqrt().max(1.0);
            for (q, (g, w)) in got_rows.iter().zip(&want_rows).enumerate() {
                assert!((g[0] - w[0]).abs() < 1e-9, "psi {psi:?} point {p} region {q}: m0 {g:?} vs {w:?}");
                assert!((g[1] - w[1]).abs() < 1e-8 * scale, "psi {psi:?} point {p} region {q}: m1 {g:?} vs {w:?}");
                assert!(
                    (g[2] - w[2]).abs() < 1e-8 * scale * scale,
                    "psi {psi:?} point {p} region {q}: m2 {g:?} vs {w:?}"
                );
            }
        }
    }
}

#[test]
fn interval_path_declines_points_whose_terms_underflow_its_scale() {
    // A region far narrower than its standard deviation around its mean: the bound (0) exceeds
    // the term (~1e-260) by more than the linear scale keeps, so the caller must use logs.
    let intervals = interval::Intervals::new(&[(0.0, 1e-260)], vec![1.0]);
    let mut block = interval::Block::default();
    block.evaluate::<false>(&intervals, &interval::Local::Stored { log_kappa: &[0.0], mu: &[0.0] }, &[0]);
    assert!(block.log_likelihood(0).is_none());
    let wide = interval::Intervals::new(&[(0.0, 1e-3)], vec![1.0]);
    block.evaluate::<true>(&wide, &interval::Local::Stored { log_kappa: &[0.0], mu: &[0.0] }, &[0]);
    // Phi(w) - 1/2 = phi(0) (w - w^3 / 6 + w^5 / 40 - ...).
    let (mass, w) = (block.log_likelihood(0).unwrap().exp(), 1e-3f64);
    let want = crate::gauss::normal::FRAC_1_SQRT_2PI * (w - w.powi(3) / 6.0 + w.powi(5) / 40.0);
    assert!((mass - want).abs() < 1e-14 * want, "{mass} vs {want}");
}

#[test]
fn narrow_posteriors_far_from_zero_keep_their_variance() {
    // Noise 1e-14: a posterior ~1e-7 wide around z = 2.7, so E[z^2] - E[z]^2 would keep no digit
    // of the variance (7.3 against ~1e-14). The reference sums (z - mean)^2 over a grid of
    // offsets around the mean, in the posterior's own scale.
    let dec = Arc::new(Decoder::random_uniform(&[1, 8, 8, 2], -1.0, 5).unwrap());
    let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
    let algebra = RegionAlgebra::new(&part, &[1e-14, 1e-14]).unwrap();
    let gauss = GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-6, 0, &Cancel::new())).unwrap();
    let x = dec.forward_batch(DMatrix::from_element(1, 1, 2.7).as_view()).column(0).into_owned();
    let post = posterior::PointPosterior::new(&algebra, &gauss, x.as_slice());
    let (mean, variance) = (post.mean[0], post.cov[0]);
    assert!((mean - 2.7).abs() < 1e-6 && variance > 0.0 && variance < 1e-12, "{mean} {variance}");
    let sd = variance.sqrt();
    let n = 20_000;
    let h = 24.0 * sd / n as f64;
    let peak = post.log_density(&part, &algebra, &[mean]);
    let (mut total, mut shift, mut spread) = (0.0, 0.0, 0.0);
    for i in 0..=n {
        let offset = -12.0 * sd + i as f64 * h;
        let density = (post.log_density(&part, &algebra, &[mean + offset]) - peak).exp();
        total += density;
        shift += density * offset;
        spread += density * offset * offset;
    }
    let reference = spread / total - (shift / total).powi(2);
    assert!((variance / reference - 1.0).abs() < 1e-6, "variance {variance} vs grid {reference}");
}

#[test]
fn interval_path_agrees_on_every_vector_width() {
    // The wide kernels fuse their multiply-adds and the baseline does not: the same results up
    // to rounding, for wide, moderate and narrow posteriors. `log kappa` sums terms as large as
    // `x^T Psi^-1 x` to a result of order one, so either loses ~eps x^T Psi^-1 x of it, and the
    // weights as much relatively.
    use crate::gauss::normal_batch::{with_vectors, Vectors};
    let dec = Arc::new(Decoder::random_uniform(&[1, 16, 16, 2], 0.1, 11).unwrap());
    let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
    let zs = DMatrix::from_fn(1, 40, |_, j| -3.0 + 0.151 * j as f64);
    let mut x = dec.forward_batch(zs.as_view());
    for j in 0..40 {
        x[(j % 2, j)] += 0.2 * ((j * 7 % 11) as f64 - 5.0);
    }
    for psi in [0.5, 1e-3, 1e-6] {
        let algebra = RegionAlgebra::new(&part, &[psi, psi]).unwrap();
        let gauss = GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-6, 0, &Cancel::new())).unwrap();
        let GaussIntegrator::Interval(gauss) = gauss else { panic!("S = 1 integrates over intervals") };
        let intervals = gauss.intervals();
        let points: Vec<usize> = (0..40).collect();
        for chunk in points.chunks(interval::LANES) {
            let run = |vectors| {
                with_vectors(vectors, || {
                    let mut block = interval::Block::default();
                    block.evaluate::<true>(intervals, &interval::Local::Formed(algebra.s1_forms(x.as_view())), chunk);
                    let lanes = 0..chunk.len();
                    lanes
                        .map(|l| {
                            (
                                block.log_likelihood(l).unwrap(),
                                block.terms(l).map(|(q, t)| (q, t.map(|v| v / block.total(l)))).collect::<Vec<_>>(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            };
            let baseline = run(Vectors::Baseline);
            for vectors in [Vectors::Avx2, Vectors::Avx512] {
                for (((got_ll, got), (want_ll, want)), &p) in run(vectors).iter().zip(&baseline).zip(chunk) {
                    let tolerance = 32.0 * f64::EPSILON * (1.0 + x.column(p).norm_squared() / psi);
                    assert!(
                        (got_ll - want_ll).abs() < tolerance * want_ll.abs().max(1.0),
                        "psi {psi} {vectors:?}: {got_ll} vs {want_ll}"
                    );
                    assert_eq!(got.len(), want.len());
                    for ((q, g), (r, w)) in got.iter().zip(want) {
                        assert_eq!(q, r);
                        let scale = 1.0 + w[1].abs() + w[2].abs();
                        for (g, w) in g.iter().zip(w) {
                            assert!((g - w).abs() < tolerance * scale, "psi {psi} {vectors:?} region {q}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn interval_path_gives_each_point_the_same_bits_in_any_batch() {
    // The blocks take sixteen points at a time, ordered by their best region, and compute a
    // region wherever one of their points counts it: a point's results must still depend on
    // that point alone (not on the others, the batching, or the order).
    let dec = Arc::new(Decoder::random_uniform(&[1, 16, 16, 2], 0.1, 11).unwrap());
    let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
    for psi in [0.5, 1e-3, 1e-6] {
        let algebra = RegionAlgebra::new(&part, &[psi, psi]).unwrap();
        let gauss = GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-6, 0, &Cancel::new())).unwrap();
        let zs = DMatrix::from_fn(1, 53, |_, j| -3.0 + 0.113 * j as f64);
        let mut x = dec.forward_batch(zs.as_view());
        for j in 0..53 {
            x[(j % 2, j)] += 0.3 * ((j * 7 % 11) as f64 - 5.0);
        }
        let all = e_step(&algebra, &gauss, x.as_view(), &Cancel::new()).unwrap();
        let ll = log_likelihood(&algebra, &gauss, x.as_view(), &Cancel::new()).unwrap();
        for p in 0..53 {
            let one = e_step(&algebra, &gauss, x.columns(p, 1), &Cancel::new()).unwrap();
            let entries = all.indptr[p]..all.indptr[p + 1];
            assert_eq!(one.log_likelihood[0].to_bits(), all.log_likelihood[p].to_bits(), "psi {psi} point {p}");
            assert_eq!(ll[p].to_bits(), all.log_likelihood[p].to_bits());
            assert_eq!(one.region, all.region[entries.clone()]);
            assert_eq!(one.m0, all.m0[entries.clone()]);
            assert_eq!(one.m1, all.m1[entries.clone()]);
            assert_eq!(one.m2, all.m2[entries]);
        }
    }
}

/// A batch of E-step statistics at S = 2 whose points have the given regions, in that order:
/// point `p`'s log-likelihood is `-(first + p)`, and each entry's values derive from its region.
fn batch_of(first: usize, regions: &[&[usize]]) -> EStep {
    let mut batch = EStep::with_capacity(regions.len(), 2, 2);
    for (p, point) in regions.iter().enumerate() {
        batch.log_likelihood.push(-((first + p) as f64));
        for &q in *point {
            batch.region.push(q);
            batch.m0.push(q as f64);
            batch.m1.extend([10.0 * q as f64, 11.0 * q as f64]);
            batch.m2.extend([20.0, 21.0, 22.0, 23.0].map(|v| v * q as f64));
        }
        batch.indptr.push(batch.region.len());
    }
    batch
}

#[test]
fn e_step_batches_are_joined_in_point_order() {
    // The first batch computed its points 2, 0, 1 in that order; the second is in order.
    let computed = batch_of(0, &[&[5], &[1, 2], &[]]);
    let computed = EStep { log_likelihood: vec![-2.0, 0.0, -1.0], ..computed };
    let in_order = batch_of(3, &[&[3], &[4, 6]]);
    let joined = EStep::concat(vec![(computed, Some(vec![2, 0, 1])), (in_order, None)], 2).unwrap();
    let expected = batch_of(0, &[&[1, 2], &[], &[5], &[3], &[4, 6]]);
    assert_eq!(joined.log_likelihood, expected.log_likelihood);
    assert_eq!(joined.indptr, expected.indptr);
    assert_eq!(joined.region, expected.region);
    assert_eq!(joined.m0, expected.m0);
    assert_eq!(joined.m1, expected.m1);
    assert_eq!(joined.m2, expected.m2);
    // One batch in order is returned as it is; none gives no points.
    let alone = EStep::concat(vec![(batch_of(0, &[&[7]]), None)], 2).unwrap();
    assert_eq!((alone.indptr, alone.region), (vec![0, 1], vec![7]));
    let empty = EStep::concat(Vec::new(), 2).unwrap();
    assert_eq!((empty.indptr, empty.log_likelihood.len()), (vec![0], 0));
}

#[test]
fn region_factor_matches_the_inverse_of_the_precision_where_it_is_well_conditioned() {
    // A full-rank A under moderate noise: Sigma = (I + A^T Psi^-1 A)^-1 by a plain inverse,
    // L L^T = Sigma, log det, and gain = Sigma A^T Psi^-1.
    let (s, psi) = (3, [0.3, 0.5, 0.2, 0.7]);
    let a = [1.0, 0.5, -0.3, 2.0, 0.7, 0.1, -0.4, 0.3, 1.2, 0.6, -1.1, 0.2];
    let inv_sd: Vec<f64> = psi.iter().map(|v| 1.0 / f64::sqrt(*v)).collect();
    let factor = factor_region(&a, &inv_sd, s);
    let am = DMatrix::from_row_slice(4, 3, &a);
    let inv_psi = DMatrix::from_diagonal(&DVector::from_iterator(4, psi.iter().map(|v| 1.0 / v)));
    let precision = DMatrix::<f64>::identity(3, 3) + am.transpose() * &inv_psi * &am;
    let sigma = precision.clone().try_inverse().unwrap();
    let l = DMatrix::from_row_slice(3, 3, &factor.chol);
    let gain = &sigma * am.transpose() * &inv_psi;
    let ll = &l * l.transpose();
    for j in 0..s {
        for k in 0..s {
            assert!((factor.sigma[j * s + k] - sigma[(j, k)]).abs() < 1e-14, "Sigma[{j}, {k}]");
            assert!((ll[(j, k)] - sigma[(j, k)]).abs() < 1e-14, "L L^T [{j}, {k}]");
            if k > j {
                assert_eq!(factor.chol[j * s + k], 0.0, "L is lower triangular");
            }
        }
        assert!(factor.chol[j * s + j] > 0.0);
        for i in 0..4 {
            assert!((factor.gain[j * 4 + i] - gain[(j, i)]).abs() < 1e-14, "gain[{j}, {i}]");
        }
    }
    assert!((factor.log_det_sigma + precision.determinant().ln()).abs() < 1e-13);
}

#[test]
fn region_factor_keeps_the_small_directions_of_rank_deficient_regions() {
    // A = ones(3, 2), Psi = psi I: Sigma has eigenvalue psi / (psi + 6) along (1, 1) / sqrt 2
    // and 1 along (1, -1) / sqrt 2, log det Sigma = log(psi / (psi + 6)), and
    // Sigma A^T Psi^-1 = ones(2, 3) / (psi + 6): in closed form. The formed precision
    // I + A^T Psi^-1 A has condition ~6 / psi; at psi = 1e-16 it is not positive definite in
    // floating point.
    for psi in [1e-2, 1e-6, 1e-12, 1e-16, 1e-300] {
        let factor = factor_region(&[1.0; 6], &[1.0 / f64::sqrt(psi); 3], 2);
        let small = psi / (psi + 6.0);
        let expected_log_det = psi.ln() - (psi + 6.0).ln();
        assert!(
            (factor.log_det_sigma - expected_log_det).abs() < 1e-13 * expected_log_det.abs().max(1.0),
            "psi {psi}: log det {}",
            factor.log_det_sigma
        );
        let l = DMatrix::from_row_slice(2, 2, &factor.chol);
        let ll = &l * l.transpose();
        let along = |v: [f64; 2], m: &DMatrix<f64>| {
            (v[0] * (m[(0, 0)] * v[0] + m[(0, 1)] * v[1]) + v[1] * (m[(1, 0)] * v[0] + m[(1, 1)] * v[1])) * 0.5
        };
        // (v^T L)(L^T v) for v = (1, 1): the squared norm of L^T v, summed without cancellation.
        let lt_v = [l[(0, 0)] + l[(1, 0)], l[(1, 1)]];
        let small_from_l = 0.5 * (lt_v[0] * lt_v[0] + lt_v[1] * lt_v[1]);
        assert!(
            (small_from_l - small).abs() < 1e-9 * small + 1e-15,
            "psi {psi}: small variance {small_from_l} vs {small}"
        );
        assert!((along([1.0, -1.0], &ll) - 1.0).abs() < 1e-14, "psi {psi}: large variance");
        for g in &factor.gain {
            assert!((g - 1.0 / (psi + 6.0)).abs() < 1e-13 / (psi + 6.0), "psi {psi}: gain {g}");
        }
    }
}

#[test]
fn compensated_residual_is_exact_where_the_plain_one_cancels() {
    // x - a m with a m = (1e8 + 1)(1e8 - 1) = 1e16 - 1, not a double: the plain residual is 0
    // or 2, the exact one 1.
    assert_eq!(compensated_residual(1e16, 0.0, &[1e8 + 1.0], &[1e8 - 1.0]), 1.0);
    assert_eq!(compensated_residual(1e16 + 2.0, 2.0, &[1e8 + 1.0, 3.0], &[1e8 - 1.0, 0.5]), -0.5);
}

#[test]
fn residual_form_agrees_with_the_completed_square_at_moderate_scale_and_fixes_it_at_large() {
    // Where the completed square is accurate both forms agree to rounding; with weights x1000
    // (x - b)^T Psi^-1 (x - b) ~ 1e9 and the completed square loses ~1e-7 nats, which the bound
    // must catch (so that `local_gaussians` takes the residual form).
    for (scale, must_flag) in [(1.0, false), (1000.0, true)] {
        let base = Decoder::random_uniform(&[1, 6, 2], 1.0, 3).unwrap();
        let weights = base.weights().iter().map(|w| w * scale).collect();
        let biases = base.biases().iter().map(|b| b * scale).collect();
        let dec = Arc::new(Decoder::new(weights, biases, base.slopes().to_vec()).unwrap());
        let part = Partition::enumerate(dec.clone(), 100, &Cancel::new()).unwrap();
        let algebra = RegionAlgebra::new(&part, &[0.1, 0.1]).unwrap();
        let x = dec.forward_batch(DMatrix::from_element(1, 1, 0.7).as_view());
        // In the engine's frame, as every entry point passes points on.
        let x = algebra.centred(x.as_view());
        let local = algebra.local_gaussians(x.as_view());
        let xpx: f64 = x.iter().map(|v| v * v / 0.1).sum();
        let mut flagged = false;
        for q in 0..algebra.n_regions() {
            let gx: f64 = (0..2).map(|i| algebra.s1_coefficients(q, i).0 * x[i]).sum();
            let bx: f64 = (0..2).map(|i| algebra.s1_coefficients(q, i).1 * x[i]).sum();
            let (cheap, mean, rough) = algebra.s1_form::<crate::gauss::normal_batch::Separate>(q, gx, bx, xpx);
            let mut m = [mean];
            let stable = algebra.stable_log_kappa(q, x.as_slice(), xpx, &mut m);
            let bound = algebra.cheap_form_error(q, xpx);
            assert!((cheap - stable).abs() <= bound, "region {q}: |{cheap} - {stable}| above the bound {bound}");
            assert_eq!(local.log_kappa[q], if rough { stable } else { cheap });
            flagged |= rough;
        }
        assert_eq!(flagged, must_flag, "scale {scale}");
    }
}

/// A region of no mass (log term -inf) adds nothing to the running sum of a point's terms,
/// first or later: the first once made the sum `exp(-inf + inf)`, NaN, and log p NaN.
#[test]
fn running_log_sum_exp_skips_regions_of_no_mass() {
    let sum = |terms: &[f64]| {
        let mut total = RunningLogSumExp::new();
        terms.iter().for_each(|&t| total.add(t));
        total.value()
    };
    let want = (-3.0f64).exp().ln_1p() - 2.0; // log(e^-2 + e^-5)
    for terms in [[f64::NEG_INFINITY, -2.0, -5.0], [-2.0, f64::NEG_INFINITY, -5.0], [-5.0, -2.0, f64::NEG_INFINITY]] {
        let got = sum(&terms);
        assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "{terms:?}: {got} vs {want}");
    }
    assert_eq!(sum(&[f64::NEG_INFINITY, f64::NEG_INFINITY]), f64::NEG_INFINITY);
    assert_eq!(sum(&[]), f64::NEG_INFINITY);
}
