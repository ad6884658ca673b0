//! Exact draws from `N(0, I_S)` restricted to a convex polyhedron `{w : F w <= e}`: a posterior
//! region in whitened coordinates, whatever its shape (thin, unbounded, far from the mean).
//!
//! The draws are sequential. The first coordinate's marginal has the density `exp(h(t))` with
//! `h(t) = log phi(t) + log M(t)`, `M(t)` the `(S-1)`-dimensional standard normal mass of the
//! section at `w_1 = t`. By Prekopa's theorem `log M` is concave (the section mass is the
//! marginal of the log-concave `1_P(w) phi(w_2..w_S)`), so `h` is concave, and `h(t) + t^2 / 2`
//! too: `h` falls at least quadratically from its mode. A secant of a concave function lies
//! above it outside its chord and below it inside, so secants through points of `h` give an
//! upper envelope (exact rejection sampling of `t` from a piecewise exponential density) and
//! chords a lower bound on the mass: their ratio bounds the acceptance probability from below,
//! and the envelope is refined until that bound reaches [`TARGET_ACCEPTANCE`]. The rest of
//! the point given `t` is the same problem one dimension down: at S = 1 the truncated normal
//! by inversion, at S = 2 the section `[l(t), u(t)]` (whose mass gives `h` in closed form), at
//! S = 3 a polygon whose mass comes from the polygon engine (`gauss::polygon`, near machine
//! precision), at S = 4 a polyhedron whose mass comes from the slice integrator (to 1e-10).
//! Nothing is truncated beyond rounding, so the draws are exact; the expected
//! number of proposals per draw is at most `1 / TARGET_ACCEPTANCE` by construction.

use rand::Rng;
use rand_pcg::Pcg64;

use crate::gauss::normal::{log_diff_ndtr, log_pdf, log_sum_exp, truncated_draw, LN_SQRT_2PI};
use crate::gauss::polygon::{level_interval, non_redundant, Polygon2};
use crate::partition::lp::{Lp, LpOutcome};

/// The refinement of an envelope stops once the acceptance probability is proven at least this.
pub(crate) const TARGET_ACCEPTANCE: f64 = 0.9;

/// Points on an envelope at most (the refinement reaches the target long before this on every
/// shape we have seen; the bound only limits the work of a pathological one).
const MAX_ABSCISSAE: usize = 64;

/// Proposals per draw before giving up: at an acceptance of at least a few percent (always,
/// by construction) the chance of reaching it is below `1e-40`, so reaching it means a bug.
pub(crate) const MAX_PROPOSALS: usize = 10_000;

/// The envelope's lines are raised by this (times `1 + |h|` at the mode): `h` is computed to a
/// few ulps, and secants extended far from their chord amplify its rounding (the quadratic fall
/// of `h` outgrows that amplification within a few units; this covers the rest).
const ENVELOPE_MARGIN: f64 = 1e-9;

/// A line `value + slope (t - base)`.
#[derive(Clone, Copy, Debug)]
struct Line {
    base: f64,
    value: f64,
    slope: f64,
}

impl Line {
    fn through(a: (f64, f64), b: (f64, f64)) -> Line {
        Line { base: a.0, value: a.1, slope: (b.1 - a.1) / (b.0 - a.0) }
    }

    fn at(&self, t: f64) -> f64 {
        self.value + self.slope * (t - self.base)
    }
}

/// Where two lines of different slopes meet.
fn crossing(l: Line, r: Line) -> f64 {
    (r.value - l.value + l.slope * l.base - r.slope * r.base) / (l.slope - r.slope)
}

/// `exp(line)` on `[lo, hi]`, written from the end where it is largest (`anchor`), falling at
/// `rate >= 0` away from it.
#[derive(Clone, Copy, Debug)]
struct Piece {
    lo: f64,
    hi: f64,
    anchor_at_hi: bool,
    top: f64,
    rate: f64,
}

impl Piece {
    /// `None` when the piece has infinite mass (an unbounded end toward which the line does not fall).
    fn new(lo: f64, hi: f64, line: Line) -> Option<Piece> {
        let anchor_at_hi = line.slope >= 0.0;
        let anchor = if anchor_at_hi { hi } else { lo };
        if !anchor.is_finite() {
            return None;
        }
        Some(Piece { lo, hi, anchor_at_hi, top: line.at(anchor), rate: line.slope.abs() })
    }

    /// `log int exp(line)` over the piece.
    fn log_area(&self) -> f64 {
        log_exponential_area(self.top, self.rate, self.hi - self.lo)
    }

    /// The point at the uniform `u` by inversion of the piece's CDF.
    fn draw(&self, u: f64) -> f64 {
        let width = self.hi - self.lo;
        let distance = if self.rate * width < 1e-12 {
            u * width
        } else {
            -(u * (-self.rate * width).exp_m1()).ln_1p() / self.rate
        };
        let t = if self.anchor_at_hi { self.hi - distance } else { self.lo + distance };
        t.clamp(self.lo, self.hi)
    }

    fn at(&self, t: f64) -> f64 {
        let distance = if self.anchor_at_hi { self.hi - t } else { t - self.lo };
        self.top - self.rate * distance
    }
}

/// `log int_0^width exp(top - rate x) dx` (`width` may be infinite when `rate > 0`).
fn log_exponential_area(top: f64, rate: f64, width: f64) -> f64 {
    let x = rate * width;
    if x < 1e-12 {
        top + width.ln()
    } else {
        top + (-(-x).exp_m1()).ln() - rate.ln()
    }
}

/// A piecewise exponential upper envelope of `exp(h)`, `h` concave, and a lower bound on the
/// integral of `exp(h)`, from points of `h`.
#[derive(Clone, Debug)]
struct Envelope {
    pieces: Vec<Piece>,
    /// The stretch of each piece: 0 before the first point, `i + 1` between points `i` and
    /// `i + 1`, `k` after the last of the `k` points.
    stretch: Vec<usize>,
    /// Cumulative shares of the envelope's mass, the last one 1.
    cumulative: Vec<f64>,
    log_area: f64,
    /// `log` of the integral of `exp(chords)`, which concavity puts below `exp(h)`.
    log_lower: f64,
}

impl Envelope {
    /// From points `(x_i, h(x_i))` with increasing `x_i` and finite values, at least three, on
    /// the domain `[lo, hi]`. `None` when the secants do not bound a finite mass (an unbounded
    /// side on which the points do not yet fall).
    fn new(points: &[(f64, f64)], lo: f64, hi: f64, margin: f64) -> Option<Envelope> {
        let k = points.len();
        if k < 3 {
            return None;
        }
        let secants: Vec<Line> = points
            .windows(2)
            .map(|w| {
                let line = Line::through(w[0], w[1]);
                Line { value: line.value + margin, ..line }
            })
            .collect();
        let mut pieces = Vec::with_capacity(2 * k + 2);
        let mut stretch = Vec::with_capacity(2 * k + 2);
        if lo < points[0].0 {
            pieces.push(Piece::new(lo, points[0].0, secants[0])?);
        }
        stretch.resize(pieces.len(), 0);
        for i in 0..k - 1 {
            let (a, b) = (points[i].0, points[i + 1].0);
            // On [x_i, x_{i+1}] both neighbouring secants, extended, lie above h.
            let left = (i >= 1).then(|| secants[i - 1]);
            let right = (i + 2 < k).then(|| secants[i + 1]);
            match (left, right) {
                (Some(l), Some(r)) if l.slope > r.slope && crossing(l, r).is_finite() => {
                    // The left line is the lower one before their crossing, the right after.
                    let cross = crossing(l, r);
                    if cross <= a {
                        pieces.push(Piece::new(a, b, r)?);
                    } else if cross >= b {
                        pieces.push(Piece::new(a, b, l)?);
                    } else {
                        pieces.push(Piece::new(a, cross, l)?);
                        pieces.push(Piece::new(cross, b, r)?);
                    }
                }
                // Slopes out of order (or equal) can only come from rounding on a straight
                // stretch of h: the higher line is kept, which bounds whichever of the two is right.
                (Some(l), Some(r)) => {
                    let mid = 0.5 * (a + b);
                    pieces.push(Piece::new(a, b, if l.at(mid) >= r.at(mid) { l } else { r })?);
                }
                (Some(line), None) | (None, Some(line)) => pieces.push(Piece::new(a, b, line)?),
                (None, None) => return None,
            }
            stretch.resize(pieces.len(), i + 1);
        }
        if points[k - 1].0 < hi {
            pieces.push(Piece::new(points[k - 1].0, hi, secants[k - 2])?);
        }
        stretch.resize(pieces.len(), k);
        let log_areas: Vec<f64> = pieces.iter().map(Piece::log_area).collect();
        let log_area = log_sum_exp(log_areas.iter().copied());
        if !log_area.is_finite() {
            return None;
        }
        let mut cumulative = Vec::with_capacity(pieces.len());
        let mut running = 0.0;
        for la in &log_areas {
            running += (la - log_area).exp();
            cumulative.push(running);
        }
        *cumulative.last_mut().unwrap() = 1.0;
        let chords = points.windows(2).map(|w| {
            let (top, other) = if w[0].1 >= w[1].1 { (w[0].1, w[1].1) } else { (w[1].1, w[0].1) };
            let width = w[1].0 - w[0].0;
            log_exponential_area(top, (top - other) / width, width)
        });
        let log_lower = log_sum_exp(chords);
        Some(Envelope { pieces, stretch, cumulative, log_area, log_lower })
    }

    /// A proposal and the envelope's log value there.
    fn propose(&self, rng: &mut Pcg64) -> (f64, f64) {
        let u: f64 = rng.random();
        let k = self.cumulative.partition_point(|&c| c <= u).min(self.pieces.len() - 1);
        let piece = &self.pieces[k];
        let t = piece.draw(rng.random());
        (t, piece.at(t))
    }

    /// The excess of the envelope over the chords on each stretch (see `stretch`), relative to
    /// the envelope's mass, for choosing where to refine.
    fn excess(&self, points: &[(f64, f64)]) -> Vec<f64> {
        let mut excess = vec![0.0; points.len() + 1];
        for (p, &i) in self.pieces.iter().zip(&self.stretch) {
            excess[i] += (p.log_area() - self.log_area).exp();
        }
        for (i, w) in points.windows(2).enumerate() {
            let (top, other) = if w[0].1 >= w[1].1 { (w[0].1, w[1].1) } else { (w[1].1, w[0].1) };
            let width = w[1].0 - w[0].0;
            excess[i + 1] -= (log_exponential_area(top, (top - other) / width, width) - self.log_area).exp();
        }
        excess
    }
}

/// Exact draws from the density `exp(h)` on `[lo, hi]`, `h` concave with
/// `h(t) <= log phi(t)` (a normal density times a probability), so that its mode lies where
/// `log phi` is above any value `h` takes.
#[derive(Clone, Debug)]
pub(crate) struct LogConcave {
    envelope: Envelope,
}

impl LogConcave {
    /// `start` is a point where `h` is finite. `None` if `h` has no three distinct finite points
    /// (a domain of zero width). With `centre` nonzero, `h(t) <= -t (centre + t / 2)` takes the
    /// place of `log phi(t)` (a density counted from `centre`, see [`Sections::centre`]).
    pub(crate) fn new(h: &impl Fn(f64) -> f64, lo: f64, hi: f64, start: f64, centre: f64) -> Option<LogConcave> {
        let h0 = h(start);
        if !h0.is_finite() {
            return None;
        }
        // The mode m has h(m) >= h0 and h(m) <= log phi(m), so |m| <= radius.
        let (below, above) = if centre == 0.0 {
            let radius = (-2.0 * (h0 + LN_SQRT_2PI)).max(0.0).sqrt() * (1.0 + 1e-12) + 1e-12;
            (-radius, radius)
        } else {
            let (a, b) = level_interval(centre, h0 - 1e-12 * (1.0 + h0.abs()));
            (a - 1e-12 * (1.0 + a.abs()), b + 1e-12 * (1.0 + b.abs()))
        };
        let (mut a, mut b) = (lo.max(below).min(start), hi.min(above).max(start));
        let mut best = (start, h0);
        let eval = |t: f64, best: &mut (f64, f64)| {
            let v = h(t);
            if v > best.1 {
                *best = (t, v);
            }
            v
        };
        // Golden-section search for the mode; where both inner points miss the domain (h is
        // -inf there), the part holding `start` holds the domain.
        const GOLD: f64 = 0.618_033_988_749_894_9;
        let width0 = b - a;
        let mut c = b - GOLD * (b - a);
        let mut d = a + GOLD * (b - a);
        let mut fc = eval(c, &mut best);
        let mut fd = eval(d, &mut best);
        for _ in 0..200 {
            if b - a <= 1e-7 * width0 {
                break;
            }
            if fc == f64::NEG_INFINITY && fd == f64::NEG_INFINITY {
                if start < c {
                    b = c;
                } else if start > d {
                    a = d;
                } else {
                    (a, b) = (c, d);
                }
                c = b - GOLD * (b - a);
                d = a + GOLD * (b - a);
                fc = eval(c, &mut best);
                fd = eval(d, &mut best);
            } else if fc >= fd {
                b = d;
                (d, fd) = (c, fc);
                c = b - GOLD * (b - a);
                fc = eval(c, &mut best);
            } else {
                a = c;
                (c, fc) = (d, fd);
                d = a + GOLD * (b - a);
                fd = eval(d, &mut best);
            }
        }
        let (mode, top) = best;
        let mut points = vec![(mode, top)];
        // On each side, the points where h has fallen by 1 and by 4 (or the domain's end). The
        // quadratic fall puts both within 4 of the mode.
        for side in [-1.0, 1.0] {
            let end = if side < 0.0 { lo.max(mode - 4.0) } else { hi.min(mode + 4.0) };
            if end == mode {
                continue;
            }
            let h_end = h(end);
            let mut inner = (mode, top);
            for drop in [1.0, 4.0] {
                let level = top - drop;
                if h_end >= level {
                    points.push((end, h_end));
                    break;
                }
                let mut outer = end;
                // Where the points fall does not matter to exactness, only to the envelope's fit.
                for _ in 0..16 {
                    let mid = 0.5 * (inner.0 + outer);
                    if mid == inner.0 || mid == outer {
                        break;
                    }
                    let v = h(mid);
                    if v >= level {
                        inner = (mid, v);
                    } else {
                        outer = mid;
                    }
                }
                if inner.0 != mode {
                    points.push(inner);
                }
            }
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut points = tidy(points);
        // A domain too short for three points apart: its midpoints.
        let mut tries = 0;
        while points.len() < 3 && tries < 8 {
            tries += 1;
            let mut extra = Vec::new();
            for w in points.windows(2) {
                extra.push(0.5 * (w[0].0 + w[1].0));
            }
            if points.len() == 1 {
                let x = points[0].0;
                for end in [lo, hi] {
                    if end.is_finite() {
                        extra.push(0.5 * (x + end));
                    }
                }
            }
            for x in extra {
                let v = h(x);
                if v.is_finite() {
                    points.push((x, v));
                }
            }
            points = tidy(points);
        }
        let margin = ENVELOPE_MARGIN * (1.0 + top.abs());
        let mut envelope = Envelope::new(&points, lo, hi, margin)?;
        // Refine where the envelope exceeds the chords most, until the acceptance is proven.
        // Steps that only move an end of the domain (where `h` is -inf) add no point: the
        // count of steps is bounded too, so that a domain end the steps approach by ever
        // smaller amounts ends the refinement (a hang seen at S = 2) rather than the search.
        let mut steps = 0;
        while envelope.log_lower - envelope.log_area < TARGET_ACCEPTANCE.ln()
            && points.len() < MAX_ABSCISSAE
            && steps < 4 * MAX_ABSCISSAE
        {
            steps += 1;
            let k = points.len();
            let (first, last) = (points[0].0, points[k - 1].0);
            let excess = envelope.excess(&points);
            let worst = (0..=k).max_by(|&i, &j| excess[i].total_cmp(&excess[j])).unwrap();
            let x = if worst == 0 || worst == k {
                let (edge, end, piece) = if worst == k {
                    (last, hi, envelope.pieces.last().unwrap())
                } else {
                    (first, lo, &envelope.pieces[0])
                };
                let step = if piece.rate > 0.0 { 1.0 / piece.rate } else { f64::INFINITY };
                let half = 0.5 * (end - edge).abs();
                edge + (end - edge).signum() * step.min(half)
            } else {
                0.5 * (points[worst - 1].0 + points[worst].0)
            };
            if !x.is_finite() || points.iter().any(|p| p.0 == x) {
                break;
            }
            let v = h(x);
            if v.is_finite() {
                points.push((x, v));
                points = tidy(points);
            } else if x < first {
                // Beyond the domain to rounding: the domain ends there.
                lo = x;
            } else if x > last {
                hi = x;
            } else {
                break;
            }
            match Envelope::new(&points, lo, hi, margin) {
                Some(e) => envelope = e,
                None => break,
            }
        }
        Some(LogConcave { envelope })
    }

    /// A lower bound on the probability that a proposal is accepted (what the tests check;
    /// the construction guarantees it is at least [`TARGET_ACCEPTANCE`] or as near as
    /// [`MAX_ABSCISSAE`] points get).
    #[cfg(test)]
    pub(crate) fn acceptance_bound(&self) -> f64 {
        (self.envelope.log_lower - self.envelope.log_area).exp().min(1.0)
    }

    /// The envelope's log value at `t` (`-inf` outside the domain).
    #[cfg(test)]
    fn envelope_at(&self, t: f64) -> f64 {
        self.envelope.pieces.iter().find(|p| p.lo <= t && t <= p.hi).map_or(f64::NEG_INFINITY, |p| p.at(t))
    }

    /// A proposal `t` and the envelope's log value there: accept it with probability
    /// `exp(h(t) - envelope)`.
    pub(crate) fn propose(&self, rng: &mut Pcg64) -> (f64, f64) {
        self.envelope.propose(rng)
    }
}

/// Sorted by abscissa, finite values, no two abscissae within rounding of each other.
fn tidy(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.retain(|p| p.0.is_finite() && p.1.is_finite());
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points.dedup_by(|b, a| (b.0 - a.0).abs() <= 1e-13 * (1.0 + a.0.abs()));
    points
}

/// Rows `f_i . w <= e_i` scaled to unit normals; rows with a zero normal are dropped (they
/// hold everywhere or nowhere: `e_i >= 0` for any region with points).
fn unit_rows(f: &[f64], e: &[f64], s: usize) -> (Vec<f64>, Vec<f64>) {
    let mut fu = Vec::with_capacity(f.len());
    let mut eu = Vec::with_capacity(e.len());
    for (row, &ei) in f.chunks(s).zip(e) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n > 0.0 {
            fu.extend(row.iter().map(|v| v / n));
            eu.push(ei / n);
        }
    }
    (fu, eu)
}

/// `N(0, I_S)` on a half-space or a slab (every row parallel or antiparallel to the first,
/// `n`): the coordinate along `n` is a truncated normal, the rest standard normal across `n`.
/// O(S) per draw, exact however far out the slab is (the sequential sampler's marginal there
/// is `-d^2 / 2` in size, and its envelope's rounding margin grows with it).
#[derive(Clone, Debug)]
pub(crate) struct Lineal {
    n: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Lineal {
    /// Unit rows `f` (`m x s`) and offsets `e`; `None` unless all rows are parallel (to
    /// 1e-14, as `gauss::polytope_moments` decides) or the interval is empty.
    pub(crate) fn new(f: &[f64], e: &[f64], s: usize) -> Option<Lineal> {
        let n = f.get(..s)?.to_vec();
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for (row, &ei) in f.chunks_exact(s).zip(e) {
            let along: f64 = row.iter().zip(&n).map(|(a, b)| a * b).sum();
            if along >= 1.0 - 1e-14 {
                hi = hi.min(ei);
            } else if along <= -(1.0 - 1e-14) {
                lo = lo.max(-ei);
            } else {
                return None;
            }
        }
        (lo < hi).then_some(Lineal { n, lo, hi })
    }

    pub(crate) fn draw(&self, rng: &mut Pcg64) -> Vec<f64> {
        let t = truncated_draw(self.lo, self.hi, rng.random()).1;
        // A standard normal with its component along n replaced by t.
        let mut w: Vec<f64> = (0..self.n.len()).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
        let along: f64 = w.iter().zip(&self.n).map(|(a, b)| a * b).sum();
        for (wi, ni) in w.iter_mut().zip(&self.n) {
            *wi += (t - along) * ni;
        }
        w
    }
}

/// `N(0, 1)` on `[lo, hi]`.
#[derive(Clone, Debug)]
pub(crate) struct Interval {
    lo: f64,
    hi: f64,
}

impl Interval {
    /// The interval `{t : f_i t <= e_i}`.
    pub(crate) fn new(f: &[f64], e: &[f64]) -> Interval {
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for (&fi, &ei) in f.iter().zip(e) {
            if fi > 0.0 {
                hi = hi.min(ei / fi);
            } else if fi < 0.0 {
                lo = lo.max(ei / fi);
            }
        }
        Interval { lo, hi }
    }

    pub(crate) fn draw(&self, rng: &mut Pcg64) -> f64 {
        truncated_draw(self.lo, self.hi, rng.random()).1
    }
}

/// `N(0, I_2)` on a polygon `{w : g_i . w <= c_i}`: `w_1` from its marginal
/// `phi(t) (Phi(u(t)) - Phi(l(t)))`, `w_2` from the truncated normal on the section
/// `[l(t), u(t)]`, `l` the largest of the lower lines, `u` the smallest of the upper ones.
#[derive(Clone, Debug)]
pub(crate) struct Plane {
    sections: Sections,
    marginal: LogConcave,
    /// For [`Plane::new_oriented`]: the axes `(u, v)` the polygon was rotated into (`w = (d +
    /// t) u + w_2 v`, `d = sections.centre`).
    axes: Option<([f64; 2], [f64; 2])>,
}

/// The sections of a polygon across its first axis.
#[derive(Clone, Debug)]
struct Sections {
    /// `w_2 >= a + b t` and `w_2 <= a + b t`.
    lower: Vec<(f64, f64)>,
    upper: Vec<(f64, f64)>,
    /// `t` is counted from this along the first axis: the marginal's log density is
    /// `-t (centre + t / 2)` up to a constant, exact however far out the polygon is.
    centre: f64,
}

impl Sections {
    /// The log density along the first axis, up to a constant.
    fn log_density(&self, t: f64) -> f64 {
        if self.centre == 0.0 {
            log_pdf(t)
        } else {
            -t * (self.centre + 0.5 * t)
        }
    }

    fn at(&self, t: f64) -> (f64, f64) {
        let l = self.lower.iter().fold(f64::NEG_INFINITY, |m, &(a, b)| m.max(a + b * t));
        let u = self.upper.iter().fold(f64::INFINITY, |m, &(a, b)| m.min(a + b * t));
        (l, u)
    }

    fn log_marginal(&self, t: f64) -> f64 {
        let (l, u) = self.at(t);
        if !(l < u) {
            return f64::NEG_INFINITY;
        }
        self.log_density(t) + log_diff_ndtr(l, u)
    }
}

impl Plane {
    /// `None` if the polygon is empty or has no interior.
    pub(crate) fn new(g: &[[f64; 2]], c: &[f64]) -> Option<Plane> {
        Self::build(g, c, 0.0)
    }

    /// As [`Plane::new`], in axes turned to `u` and counted from `p . u` along it, `p` the
    /// polygon's point nearest the mean. Far from the mean the marginal `log phi(t) + log M(t)`
    /// is `-|p|^2 / 2` in size, and its rounding (and the envelope's margin for it) would swamp
    /// the density's shape; counted from `p . u` it is `-t (p . u + t / 2) + log M`, of order
    /// one where the mass is when `u` points at `p`. A thin wedge is sliced along an edge
    /// instead (see [`slicing_axis`]): across nearly parallel edges the sections' bounds sweep
    /// across the Gaussian within a rounding error of `t`.
    pub(crate) fn new_oriented(g: &[[f64; 2]], c: &[f64], p: [f64; 2]) -> Option<Plane> {
        let u = slicing_axis(g, p);
        let v = [-u[1], u[0]];
        let centre = p[0] * u[0] + p[1] * u[1];
        let rows: Vec<[f64; 2]> = g.iter().map(|r| [r[0] * u[0] + r[1] * u[1], r[0] * v[0] + r[1] * v[1]]).collect();
        let offsets: Vec<f64> = rows.iter().zip(c).map(|(r, &ci)| ci - r[0] * centre).collect();
        let mut plane = Self::build(&rows, &offsets, centre)?;
        plane.axes = Some((u, v));
        Some(plane)
    }

    fn build(g: &[[f64; 2]], c: &[f64], centre: f64) -> Option<Plane> {
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        let (mut lower, mut upper) = (Vec::new(), Vec::new());
        for (gi, &ci) in g.iter().zip(c) {
            if gi[1] == 0.0 {
                if gi[0] > 0.0 {
                    hi = hi.min(ci / gi[0]);
                } else if gi[0] < 0.0 {
                    lo = lo.max(ci / gi[0]);
                } else if ci < 0.0 {
                    return None;
                }
            } else {
                let line = (ci / gi[1], -gi[0] / gi[1]);
                if gi[1] > 0.0 {
                    upper.push(line);
                } else {
                    lower.push(line);
                }
            }
        }
        // The section is non-empty where every lower line is below every upper one: a linear
        // condition on t per pair.
        for &(al, bl) in &lower {
            for &(au, bu) in &upper {
                // al + bl t <= au + bu t  <=>  (bl - bu) t <= au - al
                let (slope, room) = (bl - bu, au - al);
                if slope > 0.0 {
                    hi = hi.min(room / slope);
                } else if slope < 0.0 {
                    lo = lo.max(room / slope);
                } else if room < 0.0 {
                    return None;
                }
            }
        }
        if !(lo < hi) {
            return None;
        }
        let start = if centre > 0.0 && lo.is_finite() {
            // Where the density has fallen by about one from the polygon's start.
            lo + (0.5 * (hi - lo)).min(1.0 / (1.0 + centre))
        } else if lo.is_finite() && hi.is_finite() {
            0.5 * (lo + hi)
        } else if lo.is_finite() {
            lo.max(0.0) + if 0.0 > lo { 0.0 } else { 1.0 }
        } else if hi.is_finite() {
            hi.min(0.0) - if 0.0 < hi { 0.0 } else { 1.0 }
        } else {
            0.0
        };
        let sections = Sections { lower, upper, centre };
        let marginal = LogConcave::new(&|t| sections.log_marginal(t), lo, hi, start, centre)?;
        Some(Plane { sections, marginal, axes: None })
    }

    #[cfg(test)]
    pub(crate) fn acceptance_bound(&self) -> f64 {
        self.marginal.acceptance_bound()
    }

    /// One exact draw; `None` only if [`MAX_PROPOSALS`] proposals were all rejected.
    pub(crate) fn draw(&self, rng: &mut Pcg64) -> Option<[f64; 2]> {
        for _ in 0..MAX_PROPOSALS {
            let (t, envelope) = self.marginal.propose(rng);
            let (l, u) = self.sections.at(t);
            if !(l < u) {
                continue;
            }
            // One call gives the section's log mass (for h) and the draw on it.
            let (log_mass, w2) = truncated_draw(l, u, rng.random());
            let h = self.sections.log_density(t) + log_mass;
            if rng.random::<f64>() < (h - envelope).exp() {
                return Some(match self.axes {
                    None => [t, w2],
                    Some((a, b)) => {
                        let along = self.sections.centre + t;
                        [along * a[0] + w2 * b[0], along * a[1] + w2 * b[1]]
                    }
                });
            }
        }
        None
    }
}

/// The first axis for sampling a polygon (unit rows `g`): towards `p`, its point nearest the
/// mean (or the first coordinate axis when the mean is inside), unless some row nearly bounds
/// the sections' other end (`|g . v| < 0.01`, a thin wedge seen from its tip), and then the
/// edge direction whose least steep bound is the steepest.
fn slicing_axis(g: &[[f64; 2]], p: [f64; 2]) -> [f64; 2] {
    let conditioning = |u: [f64; 2]| {
        let v = [-u[1], u[0]];
        g.iter().map(|r| (r[0] * v[0] + r[1] * v[1]).abs()).filter(|&a| a > 1e-14).fold(f64::INFINITY, f64::min)
    };
    let d = p[0].hypot(p[1]);
    let u = if d > 0.0 && d.is_finite() { [p[0] / d, p[1] / d] } else { [1.0, 0.0] };
    let here = conditioning(u);
    if here >= 0.01 {
        return u;
    }
    g.iter()
        .map(|r| [-r[1], r[0]])
        .map(|along| (conditioning(along), along))
        .filter(|(c, _)| *c >= 10.0 * here)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(u, |(_, along)| along)
}

/// A row of a polyhedron in the frame of its slices: in the slice at `w_1 = t` it reads
/// `g . (w_2, w_3) <= c - s t`, `g` of unit length.
#[derive(Clone, Debug)]
struct SliceRow {
    g: [f64; 2],
    c: f64,
    s: f64,
}

/// `N(0, I_3)` on a polyhedron: `w_1` from its marginal `phi(t) M(t)`, `M(t)` the exact mass of
/// the polygon at `w_1 = t`, then that polygon by [`Plane`].
#[derive(Clone, Debug)]
pub(crate) struct Space {
    slices: Slices,
    marginal: LogConcave,
}

#[derive(Clone, Debug)]
struct Slices {
    rows: Vec<SliceRow>,
}

impl Space {
    /// `f` (`m x 3`, unit rows) and `e`, with a point `inside` the polyhedron.
    pub(crate) fn new(f: &[f64], e: &[f64], inside: &[f64]) -> Option<Space> {
        let mut rows = Vec::new();
        for (r, &ei) in f.chunks(3).zip(e) {
            let n = r[1].hypot(r[2]);
            // Rows normal to the first axis bound t only; the domain below holds them.
            if n > 0.0 {
                rows.push(SliceRow { g: [r[1] / n, r[2] / n], c: ei / n, s: r[0] / n });
            }
        }
        // The range of w_1 over the polyhedron (either side may be unbounded): the largest
        // `sign w_1` is `value`, so the end is `sign value`.
        let bound = |sign: f64| {
            let objective = [sign, 0.0, 0.0];
            match (Lp { n: 3, a: f, b: e, c: &objective }).solve(inside) {
                LpOutcome::Optimal { value, .. } => sign * value,
                // Unbounded, or no clean answer: the envelope then finds the end where h is -inf.
                _ => sign * f64::INFINITY,
            }
        };
        let (lo, hi) = (bound(-1.0), bound(1.0));
        let slices = Slices { rows };
        let start = inside[0].clamp(lo, hi);
        let marginal = LogConcave::new(&|t| slices.log_marginal(t), lo, hi, start, 0.0)?;
        Some(Space { slices, marginal })
    }

    #[cfg(test)]
    pub(crate) fn acceptance_bound(&self) -> f64 {
        self.marginal.acceptance_bound()
    }

    pub(crate) fn draw(&self, rng: &mut Pcg64) -> Option<[f64; 3]> {
        for _ in 0..MAX_PROPOSALS {
            let (t, envelope) = self.marginal.propose(rng);
            let Some((g, c)) = self.slices.at(t) else { continue };
            let h = log_pdf(t) + Slices::log_mass(&g, &c);
            if rng.random::<f64>() < (h - envelope).exp() {
                // An accepted slice has positive mass, so an interior, up to rounding at the
                // ends of the range (measure zero): such a t is passed over.
                let Some(plane) = Plane::new(&g, &c) else { continue };
                let [w2, w3] = plane.draw(rng)?;
                return Some([t, w2, w3]);
            }
        }
        None
    }
}

impl Slices {
    /// The polygon at `w_1 = t`, non-redundant rows only; `None` if it is empty.
    fn at(&self, t: f64) -> Option<(Vec<[f64; 2]>, Vec<f64>)> {
        let g: Vec<[f64; 2]> = self.rows.iter().map(|r| r.g).collect();
        let c: Vec<f64> = self.rows.iter().map(|r| r.c - r.s * t).collect();
        let kept = non_redundant(&g, &c)?;
        Some((kept.iter().map(|&i| g[i]).collect(), kept.iter().map(|&i| c[i]).collect()))
    }

    fn log_mass(g: &[[f64; 2]], c: &[f64]) -> f64 {
        if g.is_empty() {
            return 0.0;
        }
        Polygon2::new(g.to_vec(), vec![0.0; g.len()], [1.0, 0.0, 0.0, 1.0]).log_mass_whitened(c.to_vec(), 0.0)
    }

    fn log_marginal(&self, t: f64) -> f64 {
        match self.at(t) {
            Some((g, c)) => log_pdf(t) + Self::log_mass(&g, &c),
            None => f64::NEG_INFINITY,
        }
    }
}

/// The relative accuracy asked of the three-dimensional slice masses at S = 4: far below the
/// envelope's margin, so the envelope stays an upper bound and the draws are exact to it.
const SLICE_RTOL: f64 = 1e-10;

/// `N(0, I_4)` on a polyhedron: `w_1` from its marginal `phi(t) M(t)`, `M(t)` the mass of the
/// three-dimensional slice at `w_1 = t` (the slice integrator, `gauss::slices`, to
/// [`SLICE_RTOL`]), then that slice by [`Space`]. About a millisecond a draw: for regions the
/// tilted proposal cannot take.
#[derive(Clone, Debug)]
pub(crate) struct Hyper {
    slices: HyperSlices,
    marginal: LogConcave,
}

#[derive(Clone, Debug)]
struct HyperSlices {
    /// In the slice at `t` row `i` reads `g_i . (w_2, w_3, w_4) <= c_i - s_i t`, `g_i` unit.
    g: Vec<f64>,
    c: Vec<f64>,
    s: Vec<f64>,
}

impl HyperSlices {
    /// The slice's non-redundant rows and a point well inside it; `None` if it is empty or thinner
    /// than `1e-9` (`gauss::reduce`).
    fn at(&self, t: f64) -> Option<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        let offsets: Vec<f64> = self.c.iter().zip(&self.s).map(|(c, s)| c - s * t).collect();
        crate::gauss::reduce(&self.g, &offsets, 3)
    }

    fn log_mass(f: &[f64], e: &[f64], centre: &[f64]) -> f64 {
        if e.is_empty() {
            return 0.0;
        }
        let nearest = crate::gauss::nearest::nearest_point(f, e, 3, &[0.0; 3], centre);
        // The draw loop checks for Ctrl-C; a failed slice integral is no point of the envelope
        // (non-finite values are left out of it).
        crate::gauss::slices::log_mass(f, e, &nearest, SLICE_RTOL, &crate::cancel::Cancel::new())
            .map_or(f64::NAN, |r| r.0)
    }

    fn log_marginal(&self, t: f64) -> f64 {
        match self.at(t) {
            Some((f, e, centre)) => log_pdf(t) + Self::log_mass(&f, &e, &centre),
            None => f64::NEG_INFINITY,
        }
    }
}

impl Hyper {
    /// `f` (`m x 4`, unit rows) and `e`, with a point `inside` the polyhedron.
    pub(crate) fn new(f: &[f64], e: &[f64], inside: &[f64]) -> Option<Hyper> {
        let mut slices = HyperSlices { g: Vec::new(), c: Vec::new(), s: Vec::new() };
        for (r, &ei) in f.chunks(4).zip(e) {
            let n = (r[1] * r[1] + r[2] * r[2] + r[3] * r[3]).sqrt();
            if n > 0.0 {
                slices.g.extend([r[1] / n, r[2] / n, r[3] / n]);
                slices.c.push(ei / n);
                slices.s.push(r[0] / n);
            }
        }
        let bound = |sign: f64| {
            let objective = [sign, 0.0, 0.0, 0.0];
            match (Lp { n: 4, a: f, b: e, c: &objective }).solve(inside) {
                LpOutcome::Optimal { value, .. } => sign * value,
                _ => sign * f64::INFINITY,
            }
        };
        let (lo, hi) = (bound(-1.0), bound(1.0));
        let start = inside[0].clamp(lo, hi);
        let marginal = LogConcave::new(&|t| slices.log_marginal(t), lo, hi, start, 0.0)?;
        Some(Hyper { slices, marginal })
    }

    #[cfg(test)]
    pub(crate) fn acceptance_bound(&self) -> f64 {
        self.marginal.acceptance_bound()
    }

    pub(crate) fn draw(&self, rng: &mut Pcg64) -> Option<[f64; 4]> {
        for _ in 0..MAX_PROPOSALS {
            let (t, envelope) = self.marginal.propose(rng);
            let Some((f, e, centre)) = self.slices.at(t) else { continue };
            let h = log_pdf(t) + HyperSlices::log_mass(&f, &e, &centre);
            if rng.random::<f64>() < (h - envelope).exp() {
                let Some(space) = Space::new(&f, &e, &centre) else { continue };
                let [w2, w3, w4] = space.draw(rng)?;
                return Some([t, w2, w3, w4]);
            }
        }
        None
    }
}

/// The exact sampler for `N(0, I_S)` on `{w : F w <= e}` (S <= 4), given a point inside.
#[derive(Clone, Debug)]
pub(crate) enum Exact {
    Interval(Interval),
    Lineal(Lineal),
    Plane(Plane),
    Space(Space),
    Hyper(Hyper),
}

impl Exact {
    /// `None` for S >= 5, or a region without interior.
    pub(crate) fn new(f: &[f64], e: &[f64], s: usize, inside: &[f64]) -> Option<Exact> {
        let (f, e) = unit_rows(f, e, s);
        if s >= 2 {
            if let Some(lineal) = Lineal::new(&f, &e, s) {
                return Some(Exact::Lineal(lineal));
            }
        }
        match s {
            1 => Some(Exact::Interval(Interval::new(&f, &e))),
            2 => {
                // From the region's point nearest the mean (see Plane::new_oriented).
                let g: Vec<[f64; 2]> = f.chunks(2).map(|r| [r[0], r[1]]).collect();
                let p = crate::gauss::nearest::nearest_point(&f, &e, 2, &[0.0, 0.0], inside);
                Plane::new_oriented(&g, &e, [p[0], p[1]]).map(Exact::Plane)
            }
            3 => Space::new(&f, &e, inside).map(Exact::Space),
            4 => Hyper::new(&f, &e, inside).map(Exact::Hyper),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn acceptance_bound(&self) -> f64 {
        match self {
            Exact::Interval(_) | Exact::Lineal(_) => 1.0,
            Exact::Plane(p) => p.acceptance_bound(),
            Exact::Space(p) => p.acceptance_bound(),
            Exact::Hyper(p) => p.acceptance_bound(),
        }
    }

    pub(crate) fn draw(&self, rng: &mut Pcg64) -> Option<Vec<f64>> {
        match self {
            Exact::Interval(i) => Some(vec![i.draw(rng)]),
            Exact::Lineal(l) => Some(l.draw(rng)),
            Exact::Plane(p) => p.draw(rng).map(|w| w.to_vec()),
            Exact::Space(p) => p.draw(rng).map(|w| w.to_vec()),
            Exact::Hyper(p) => p.draw(rng).map(|w| w.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests;
