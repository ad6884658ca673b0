//! S >= 2: the regions of a point are pruned before their exact `log kappa` is formed.
//!
//! The residual form of `log kappa_q(x)` ([`RegionAlgebra::stable_log_kappa`]) costs O(DS) per
//! (point, region), and so do the tail bounds of the polygons: formed for every region of every
//! point, they were most of an E-step on 64-dimensional data, where a point's posterior meets a
//! few hundred of thousands of regions. Here every region first gets a cheap, certain upper
//! bound on the residual form's value, the completed square (two matrix products for the
//! batch, then O(S^2) per pair) plus a margin that covers its rounding; only regions whose
//! upper bound is within [`PRUNE_GAP`] of the best term so far get the region's tail bound,
//! first at the mean from the products (a certain bound once loosened by that mean's rounding),
//! and only those still within the gap get the residual form. The decisions are those of
//! [`super::visit_regions`] on the residual form's values: the same regions are visited in the
//! same order with the same `log kappa`, `mu` and looseness, so the results are the same to the
//! last bit; only the work on regions that cannot matter is left out.

use nalgebra::{DMatrix, DMatrixView};

use super::{PointTerms, RegionAlgebra, RegionIntegrator, RunningLogSumExp, PRUNE_GAP};

/// The margin of the completed square's upper bound, relative to the magnitudes it is formed
/// from. Its rounding error is at most a few `(D + S) u` of `x^T Psi^-1 x + b^T Psi^-1 b` and of
/// `mu^T Sigma^-1 mu` (each a dot product of length D or S with those sums of absolute values,
/// by Cauchy-Schwarz), plus the SVD's backward error `c u |Psi^-1/2 A|` carried into
/// `u^T Sigma u` as at most `2 c u s_max (x^T Psi^-1 x + b^T Psi^-1 b)`, and the residual form
/// it must bound is itself within `STABLE_FORM_TOLERANCE = 1e-10` of `|log kappa|`, which these
/// magnitudes bound. `1e-8` covers all of it with a margin of ~1e5 for `D` up to 1e3 (and an
/// SVD constant `c` up to 1e6); a larger margin only visits a region more, never loses one.
const UPPER_MARGIN: f64 = 1e-8;

/// A bound on the rounding error of each entry of `mu_q = gain_q x - offset_q`, relative to
/// `|Psi^-1/2 x| + |Psi^-1/2 b_q|`: the entries of `gain Psi^{1/2}` are at most
/// `max s / (1 + s^2) <= 1/2` in norm (Cauchy-Schwarz over the dot product of length D), and
/// the gain's own error from the SVD is `c u` of that; `1e-10` allows `c (D + S)` up to ~1e6.
const MEAN_ERROR: f64 = 1e-10;

/// Per region, what the completed square needs beyond [`RegionAlgebra`]'s arrays: `1 / shrink`
/// (`1 + s_k^2`, the eigenvalues of `Sigma^-1` in the basis `V`) and `1 + 1 / sqrt(min shrink)`
/// (at least `1 + s_max`, the margin's growth with the largest singular value).
pub(crate) struct UpperForms {
    inv_shrink: Vec<f64>,
    growth: Vec<f64>,
    /// `sqrt(b_q^T Psi^-1 b_q)`.
    root_b_psi_b: Vec<f64>,
}

impl UpperForms {
    pub(crate) fn new(algebra: &RegionAlgebra) -> Self {
        let s = algebra.s;
        let inv_shrink = algebra.shrink.iter().map(|v| 1.0 / v).collect();
        let growth = algebra
            .shrink
            .chunks_exact(s)
            .map(|k| 1.0 + 1.0 / k.iter().fold(f64::INFINITY, |a, v| a.min(*v)).sqrt())
            .collect();
        let root_b_psi_b = algebra.b_psi_b.iter().map(|v| v.sqrt()).collect();
        UpperForms { inv_shrink, growth, root_b_psi_b }
    }
}

/// A batch of points: `mu_q` of every region (refined in place where the residual form asks)
/// and the products the upper bounds come from.
pub(crate) struct PrunedBatch<'a> {
    algebra: &'a RegionAlgebra,
    forms: &'a UpperForms,
    x: DMatrixView<'a, f64>,
    /// `mu_q(x_p) = gain_q x_p - offset_q`, `R S x n` (column-major: a point's regions together).
    mu: DMatrix<f64>,
    /// `b_q^T Psi^-1 x_p`, `R x n`.
    bx: DMatrix<f64>,
}

impl<'a> PrunedBatch<'a> {
    pub(crate) fn new(algebra: &'a RegionAlgebra, forms: &'a UpperForms, x: DMatrixView<'a, f64>) -> Self {
        let (s, r) = (algebra.s, algebra.n_regions());
        let mut mu = &algebra.gain * x;
        for mut column in mu.column_iter_mut() {
            for (m, o) in column.iter_mut().zip(&algebra.offset[..r * s]) {
                *m -= o;
            }
        }
        let bx = &algebra.bt_psi * x;
        PrunedBatch { algebra, forms, x, mu, bx }
    }

    pub(crate) fn len(&self) -> usize {
        self.x.ncols()
    }
}

/// One point's regions: the upper bounds of all, the residual form and tail bound of those
/// asked for (formed once each). Buffers reused from point to point.
#[derive(Default)]
pub(crate) struct PointRegions {
    column: Vec<f64>,
    xpx: f64,
    upper: Vec<f64>,
    /// The residual form's `log kappa`, and `log kappa + log_mass_bound`, where formed.
    log_kappa: Vec<f64>,
    bound: Vec<f64>,
    formed: Vec<bool>,
    /// [`Self::cheap_bound`] where computed, else NaN (it is never NaN itself).
    cheap: Vec<f64>,
    /// The regions of a band and their upper bounds (scratch).
    candidates: Vec<(f64, usize)>,
}

impl PointRegions {
    /// Loads point `p` of `batch`: its coordinates and every region's upper bound.
    fn load(&mut self, batch: &PrunedBatch, p: usize) {
        let (algebra, forms) = (batch.algebra, batch.forms);
        let (s, r) = (algebra.s, algebra.n_regions());
        self.column.clear();
        self.column.extend(batch.x.column(p).iter());
        self.xpx = self.column.iter().zip(&algebra.inv_psi).map(|(v, w)| v * v * w).sum();
        let (xpx, root_xpx) = (self.xpx, self.xpx.sqrt());
        let (mu, bx) = (batch.mu.column(p), batch.bx.column(p));
        let (mu, bx) = (mu.as_slice(), bx.as_slice());
        self.upper.clear();
        self.upper.extend((0..r).map(|q| {
            // mu^T Sigma^-1 mu = sum_k (V_k . mu)^2 (1 + s_k^2).
            let (m, basis, inv_shrink) = (
                &mu[q * s..(q + 1) * s],
                &algebra.basis[q * s * s..(q + 1) * s * s],
                &forms.inv_shrink[q * s..(q + 1) * s],
            );
            let mut quad = 0.0;
            for k in 0..s {
                let along: f64 = (0..s).map(|j| basis[j * s + k] * m[j]).sum();
                quad += along * along * inv_shrink[k];
            }
            let constant = algebra.constant[q];
            let value = constant - 0.5 * xpx + bx[q] + 0.5 * quad;
            let margin = UPPER_MARGIN
                * (forms.growth[q] * (xpx + algebra.b_psi_b[q]) + constant.abs() + bx[q].abs() + quad + 1.0);
            // The residual form is `base - (r^T Psi^-1 r + m^T m) / 2 <= base - m^T m / 2`: far
            // from the origin this bound is tight where the completed square's margin is not
            // (large `b`, nearly singular regions). `m` there is `mu_q`, perhaps refined by a
            // Newton step, which moves it by at most its rounding (see `MEAN_ERROR`).
            // With `|m - mu| <= shift`: `|m|^2 >= |mu|^2 - 2 |mu| shift` and `|mu| <= (|mu|^2 + 1) / 2`.
            let mean_square: f64 = m.iter().map(|v| v * v).sum();
            let shift = MEAN_ERROR * s as f64 * (root_xpx + forms.root_b_psi_b[q]);
            let base = algebra.base[q];
            let centre_bound = base - 0.5 * mean_square
                + 0.5 * shift * (mean_square + 1.0)
                + UPPER_MARGIN * (base.abs() + mean_square + 1.0);
            let upper = (value + margin).min(centre_bound);
            // NaN (an overflow somewhere) bounds nothing: the region is formed exactly.
            if upper.is_nan() {
                f64::INFINITY
            } else {
                upper
            }
        }));
        self.log_kappa.clear();
        self.log_kappa.resize(r, f64::NAN);
        self.bound.clear();
        self.bound.resize(r, f64::NAN);
        self.formed.clear();
        self.formed.resize(r, false);
        self.cheap.clear();
        self.cheap.resize(r, f64::NAN);
    }

    /// Region q's residual-form `log kappa` and bound, formed at the first ask (refining
    /// `mu_q` in place as [`RegionAlgebra::local_gaussians`] does).
    fn form<I: RegionIntegrator>(&mut self, integrator: &I, algebra: &RegionAlgebra, mu: &mut [f64], q: usize) -> f64 {
        if !self.formed[q] {
            let s = algebra.s;
            let m = &mut mu[q * s..(q + 1) * s];
            let lk = algebra.stable_log_kappa(q, &self.column, self.xpx, m);
            self.log_kappa[q] = lk;
            self.bound[q] = lk + integrator.log_mass_bound(q, m);
            self.formed[q] = true;
        }
        self.bound[q]
    }

    /// An upper bound on region q's `log kappa + log_mass_bound` without its residual form:
    /// the upper bound on `log kappa` plus the mass bound at the unrefined mean, loosened for
    /// any mean within the refinement's reach. The Newton step moves `mu_q` by at most `shift`
    /// (see `MEAN_ERROR`), at most `growth * shift` in the whitened units of the mass bound
    /// (`|Sigma^-1/2| = sqrt(1 + s_max^2) <= growth`), and the bound, `-d^2/2 - ln 2` at the
    /// whitened distance `d`, decreases in `d`: at `d - w` it bounds every mean so near. Both
    /// mass bounds also carry rounding of the order of `eps` times the whitened mean's
    /// magnitude, which the `1e-9` term covers many times over. Regions below the threshold
    /// here are below it after their residual form too: the decisions are unchanged.
    fn cheap_bound<I: RegionIntegrator>(
        &mut self,
        integrator: &I,
        forms: &UpperForms,
        s: usize,
        mu: &[f64],
        q: usize,
    ) -> f64 {
        if !self.cheap[q].is_nan() {
            return self.cheap[q];
        }
        let m = &mu[q * s..(q + 1) * s];
        let mass_bound = integrator.log_mass_bound(q, m);
        let bound = if !(mass_bound < 0.0) {
            self.upper[q]
        } else {
            let distance = (2.0 * (-mass_bound - std::f64::consts::LN_2)).max(0.0).sqrt();
            let shift = MEAN_ERROR * s as f64 * (self.xpx.sqrt() + forms.root_b_psi_b[q]);
            let mean_norm = m.iter().map(|v| v * v).sum::<f64>().sqrt();
            let reach = forms.growth[q] * (shift + 1e-9 * (1.0 + mean_norm)) + 1e-9 * (1.0 + distance);
            let near = distance - reach;
            let loosened = if near > 0.0 { crate::linalg::log_tail_bound(near) } else { 0.0 };
            // NaN bounds nothing.
            if loosened.is_nan() {
                f64::INFINITY
            } else {
                self.upper[q] + loosened
            }
        };
        self.cheap[q] = bound;
        bound
    }

    /// How many regions got the residual form (for tests and benchmarks).
    #[cfg(test)]
    pub(crate) fn formed_count(&self) -> usize {
        self.formed.iter().filter(|f| **f).count()
    }
}

/// [`super::visit_regions`] for point `p` of `batch`, forming `log kappa` only where the upper
/// bounds cannot exclude a region. `visit(q, log_kappa_q, mu_q, looseness)` returns the term.
pub(crate) fn visit_regions_pruned<I: RegionIntegrator>(
    integrator: &I,
    batch: &mut PrunedBatch,
    p: usize,
    regions: &mut PointRegions,
    mut visit: impl FnMut(usize, f64, &[f64], f64) -> f64,
) {
    let (algebra, forms) = (batch.algebra, batch.forms);
    let (s, r) = (algebra.s, algebra.n_regions());
    regions.load(batch, p);
    let mut column = batch.mu.column_mut(p);
    let mu = column.as_mut_slice();
    // The region of the largest bound (the smallest index among equals), as visit_regions
    // picks it. bound <= upper (log_mass_bound <= 0), so once the largest bound formed reaches
    // a threshold, no region whose upper bound is below it can beat it: regions are formed in
    // bands of upper bound below the largest, widening until that holds (the band's width
    // grows fast: a region's bound can lie thousands of nats below its upper bound, where its
    // posterior sits far outside it, and one band per ~8 nats would scan the regions often).
    let top = regions.upper.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    // Within a band, regions go in decreasing order of their upper bound, and only until that
    // falls below the largest bound formed (the rest cannot be the largest); a region whose
    // cheap bound (>= its bound) is below it is passed over without its residual form.
    let mut first = usize::MAX;
    let mut candidates = std::mem::take(&mut regions.candidates);
    let mut above = None;
    for width in [8.0, 128.0, 4096.0, f64::INFINITY] {
        let threshold = if width == f64::INFINITY { f64::NEG_INFINITY } else { top - width };
        // The band's own regions: those of the bands above were examined (or cannot win).
        candidates.clear();
        candidates.extend(
            regions
                .upper
                .iter()
                .enumerate()
                .filter(|&(_, &u)| u >= threshold && above.is_none_or(|a| !(u >= a)))
                .map(|(q, &u)| (u, q)),
        );
        above = Some(threshold);
        candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(upper, q) in &candidates {
            if first != usize::MAX && upper < regions.bound[first] {
                break;
            }
            if first != usize::MAX && regions.cheap_bound(integrator, forms, s, mu, q) < regions.bound[first] {
                continue;
            }
            let bound = regions.form(integrator, algebra, mu, q);
            if first == usize::MAX || bound.total_cmp(&regions.bound[first]).then(first.cmp(&q)).is_gt() {
                first = q;
            }
        }
        if first != usize::MAX && regions.bound[first] >= threshold {
            break;
        }
    }
    regions.candidates = candidates;
    if first == usize::MAX {
        return;
    }
    let mut best = visit(first, regions.log_kappa[first], &mu[first * s..(first + 1) * s], 1.0);
    let track = integrator.uses_looseness();
    let mut terms = RunningLogSumExp::new();
    if track {
        terms.add(best);
    }
    for q in 0..r {
        // The upper bound first: most regions end here, without their residual form.
        if q == first || !(regions.upper[q] >= best - PRUNE_GAP) {
            continue;
        }
        // Then the mass bound at the unrefined mean: most of the rest end here.
        if !regions.formed[q] && !(regions.cheap_bound(integrator, forms, s, mu, q) >= best - PRUNE_GAP) {
            continue;
        }
        let bound = regions.form(integrator, algebra, mu, q);
        if bound >= best - PRUNE_GAP {
            let looseness = if track { terms.looseness(bound) } else { 1.0 };
            let term = visit(q, regions.log_kappa[q], &mu[q * s..(q + 1) * s], looseness);
            best = best.max(term);
            if track {
                terms.add(term);
            }
        }
    }
}

/// `log p(x_p)` through the pruned visit (as `log_likelihood_by_regions`).
pub(crate) fn log_likelihood_pruned<I: RegionIntegrator>(
    integrator: &I,
    batch: &mut PrunedBatch,
    p: usize,
    regions: &mut PointRegions,
) -> f64 {
    let mut total = RunningLogSumExp::new();
    visit_regions_pruned(integrator, batch, p, regions, |q, lk, m, looseness| {
        let t = lk + integrator.log_mass_loose(q, m, looseness);
        total.add(t);
        t
    });
    total.value()
}

impl PointTerms {
    /// [`PointTerms::compute_by_regions`] through the pruned visit.
    pub(crate) fn compute_pruned<I: RegionIntegrator>(
        &mut self,
        integrator: &I,
        batch: &mut PrunedBatch,
        p: usize,
        regions: &mut PointRegions,
    ) {
        let s = batch.algebra.s;
        self.clear();
        let PointTerms { region, weight, mean, second, .. } = self;
        visit_regions_pruned(integrator, batch, p, regions, |q, lk, m, looseness| {
            let k = region.len();
            mean.resize((k + 1) * s, 0.0);
            second.resize((k + 1) * s * s, 0.0);
            let log_mass = integrator.moments_into_loose(q, m, &mut mean[k * s..], &mut second[k * s * s..], looseness);
            let t = lk + log_mass;
            region.push(q);
            weight.push(t);
            t
        });
        self.normalise();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nalgebra::{DMatrix, DVector};

    use super::super::batching::map_batches;
    use super::super::{
        e_step, log_likelihood, log_likelihood_by_regions, EStep, GaussIntegrator, IntegrationSettings, PointTerms,
        RegionAlgebra,
    };
    use super::*;
    use crate::cancel::Cancel;
    use crate::model::Decoder;
    use crate::partition::Partition;

    /// A random decoder with its weights and biases multiplied by `scale` (large weights make
    /// rank-deficient, badly conditioned regions and large `x^T Psi^-1 x`).
    fn scaled_decoder(widths: &[usize], scale: f64, seed: u64) -> Arc<Decoder> {
        let base = Decoder::random_uniform(widths, 0.1, seed).unwrap();
        let weights = base.weights().iter().map(|w| w * scale).collect();
        let biases: Vec<DVector<f64>> = base.biases().iter().map(|b| b * scale).collect();
        Arc::new(Decoder::new(weights, biases, base.slopes().to_vec()).unwrap())
    }

    /// Points from the decoder at latent points spread over [-3, 3]^S, some moved off the
    /// decoder's image by `offset` (in units of the output's scale) to be far from every region.
    fn points(dec: &Decoder, n: usize, offset: f64, seed: u64) -> DMatrix<f64> {
        let s = dec.latent_dim();
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut uniform = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let z = DMatrix::from_fn(s, n, |_, _| 6.0 * uniform() - 3.0);
        let mut x = dec.forward_batch(z.as_view());
        let scale = x.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        for p in 0..n {
            if p % 3 == 2 {
                for i in 0..x.nrows() {
                    x[(i, p)] += offset * scale * (2.0 * uniform() - 1.0);
                }
            }
        }
        x
    }

    /// The per-point path: every region's residual form and tail bound, then `visit_regions`.
    fn reference(
        algebra: &RegionAlgebra,
        gauss: &GaussIntegrator,
        x: &DMatrix<f64>,
    ) -> (crate::error::Result<Vec<f64>>, crate::error::Result<EStep>) {
        let s = algebra.latent_dim();
        let cancel = Cancel::new();
        let ll = map_batches(
            algebra,
            x.as_view(),
            &cancel,
            |n| (Vec::with_capacity(n), Vec::new()),
            |(out, bounds), lk, mu| out.push(log_likelihood_by_regions(gauss, lk, mu, s, bounds)),
        )
        .map(|batches| batches.into_iter().flat_map(|(out, _)| out).collect());
        let cancel = Cancel::new();
        let stats = map_batches(
            algebra,
            x.as_view(),
            &cancel,
            |n| (EStep::with_capacity(n, 4, s), PointTerms::default()),
            |(out, terms), lk, mu| {
                terms.compute_by_regions(gauss, lk, mu, s);
                out.push_point(terms, s);
            },
        )
        .and_then(|batches| EStep::concat(batches.into_iter().map(|(e, _)| (e, None)).collect(), s));
        (ll, stats)
    }

    fn same_bits(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{what}[{k}]: {g:e} vs {w:e}");
        }
    }

    /// Over networks of S = 2 and 3, weights from ordinary to large, noise from wide to tiny,
    /// points on the decoder's image and far off it: (1) every region's upper bound is at least
    /// the residual form's `log kappa` (what the pruning relies on), (2) the pruned path gives
    /// the per-point path's log-likelihoods and E-step statistics to the last bit.
    fn pruned_path_is_the_per_point_path(widths: &[usize], scales: &[f64], noises: &[f64], n: usize) -> (usize, usize) {
        let (mut formed, mut pairs, mut failures) = (0, 0, 0);
        for (case, &scale) in scales.iter().enumerate() {
            let dec = scaled_decoder(widths, scale, 7 + case as u64);
            let part = Partition::enumerate(dec.clone(), 100_000, &Cancel::new()).unwrap();
            let r = part.len();
            for &noise in noises {
                let psi = vec![noise * scale * scale; dec.output_dim()];
                let algebra = RegionAlgebra::new(&part, &psi).unwrap();
                let gauss =
                    GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-6, 0, &Cancel::new())).unwrap();
                let forms = UpperForms::new(&algebra);
                for offset in [0.0, 0.3, 30.0] {
                    let x = points(&dec, n, offset, 3 + case as u64);
                    let local = algebra.local_gaussians(x.as_view());
                    let mut batch = PrunedBatch::new(&algebra, &forms, x.as_view());
                    let mut regions = PointRegions::default();
                    for p in 0..n {
                        regions.load(&batch, p);
                        let (lk, _) = local.point(p);
                        assert_eq!(lk.len(), r);
                        for (q, (upper, lk)) in regions.upper.iter().zip(lk).enumerate() {
                            assert!(
                                upper >= lk,
                                "scale {scale} noise {noise} point {p} region {q}: upper {upper} below log kappa {lk}"
                            );
                        }
                        log_likelihood_pruned(&gauss, &mut batch, p, &mut regions);
                        formed += regions.formed_count();
                        pairs += r;
                    }
                    let (want_ll, want) = reference(&algebra, &gauss, &x);
                    let got_ll = log_likelihood(&algebra, &gauss, x.as_view(), &Cancel::new());
                    let got = e_step(&algebra, &gauss, x.as_view(), &Cancel::new());
                    let what = format!("{widths:?} scale {scale} noise {noise} offset {offset}");
                    // Where the engine's integrals fail (points absurdly far in noise units),
                    // both paths fail (each with the failure its threads met first).
                    let (got_ll, want_ll) = match (got_ll, want_ll) {
                        (Ok(got), Ok(want)) => (got, want),
                        (got, want) => {
                            assert!(
                                got.is_err() && want.is_err(),
                                "{what}: log_likelihood: {:?} vs {:?}",
                                got.err(),
                                want.err()
                            );
                            failures += 1;
                            continue;
                        }
                    };
                    same_bits(&got_ll, &want_ll, &format!("{what}: log_likelihood"));
                    let (got, want) = match (got, want) {
                        (Ok(got), Ok(want)) => (got, want),
                        (got, want) => {
                            assert!(
                                got.is_err() && want.is_err(),
                                "{what}: e_step: {:?} vs {:?}",
                                got.err(),
                                want.err()
                            );
                            failures += 1;
                            continue;
                        }
                    };
                    same_bits(&got.log_likelihood, &want.log_likelihood, &format!("{what}: e_step log_likelihood"));
                    assert_eq!(got.indptr, want.indptr, "{what}");
                    assert_eq!(got.region, want.region, "{what}");
                    same_bits(&got.m0, &want.m0, &format!("{what}: m0"));
                    same_bits(&got.m1, &want.m1, &format!("{what}: m1"));
                    same_bits(&got.m2, &want.m2, &format!("{what}: m2"));
                }
            }
        }
        // The comparison must mostly be of results, not of failures.
        assert!(failures * 4 <= scales.len() * noises.len() * 3, "{failures} of the cases failed in both paths");
        (formed, pairs)
    }

    #[test]
    fn pruned_path_matches_the_per_point_path_in_two_dimensions() {
        let (formed, pairs) =
            pruned_path_is_the_per_point_path(&[2, 10, 10, 6], &[1.0, 30.0, 1e3], &[1.0, 1e-2, 1e-6], 24);
        // The point of it: regions are left without their residual form (22% formed here, with
        // posteriors as wide as the regions at noise 1).
        assert!(formed * 10 < pairs * 4, "formed {formed} of {pairs}");
    }

    #[test]
    fn pruned_path_matches_the_per_point_path_in_three_dimensions() {
        pruned_path_is_the_per_point_path(&[3, 4, 4, 4], &[1.0, 100.0], &[1.0, 1e-4], 6);
    }
}
