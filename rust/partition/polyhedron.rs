//! S >= 3: a cell is an H-representation `{z : G z <= h}` (unit rows, possibly redundant)
//! with a witness ball inside it. A cut that passes through the witness ball with room on both
//! sides splits the cell with no LP; otherwise one Chebyshev-ball LP decides whether the far
//! side is full-dimensional. Facets (the minimal H-representation) are found on demand.

use super::lp::{chebyshev_ball, Ball, Lp, LpOutcome};
use super::{Cell, Cut, Facet, Shape, Tolerance};
use crate::linalg::dot;

/// Radius cap of the Chebyshev LPs: unbounded cells would otherwise have no optimum. Any
/// ball of this radius is a witness far above the tolerance.
const CAP: f64 = 1.0;

#[derive(Clone, Debug)]
pub struct Polyhedron {
    s: usize,
    g: Vec<f64>,
    h: Vec<f64>,
    units: Vec<usize>,
    center: Vec<f64>,
    /// A certain lower bound on the inscribed radius at `center`.
    radius: f64,
    /// `center`/`radius` are the capped Chebyshev optimum of this cell.
    optimal: bool,
    /// A box containing the cell (infinite sides where unknown or unbounded); a hyperplane
    /// that misses it cannot cut the cell, which saves an LP.
    lo: Vec<f64>,
    hi: Vec<f64>,
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

/// An orthonormal basis of the hyperplane orthogonal to the unit vector `g` (Householder).
pub(crate) fn complement_basis(g: &[f64]) -> Vec<Vec<f64>> {
    let s = g.len();
    let sign = if g[0] >= 0.0 { 1.0 } else { -1.0 };
    let mut v = g.to_vec();
    v[0] += sign;
    let vv = dot(&v, &v);
    (1..s)
        .map(|j| {
            // Column j of I - 2 v v^T / (v^T v).
            (0..s).map(|i| f64::from(u8::from(i == j)) - 2.0 * v[i] * v[j] / vv).collect()
        })
        .collect()
}

impl Polyhedron {
    pub fn rows(&self) -> impl Iterator<Item = (&[f64], f64)> {
        (0..self.h.len()).map(move |i| (&self.g[i * self.s..(i + 1) * self.s], self.h[i]))
    }

    fn with_row(&self, row: &[f64], offset: f64, unit: usize, ball: Ball, optimal: bool) -> Polyhedron {
        let mut child = Polyhedron {
            s: self.s,
            g: Vec::with_capacity(self.g.len() + self.s),
            h: Vec::with_capacity(self.h.len() + 1),
            units: Vec::with_capacity(self.units.len() + 1),
            center: ball.center,
            radius: ball.radius,
            optimal,
            lo: self.lo.clone(),
            hi: self.hi.clone(),
        };
        child.g.extend_from_slice(&self.g);
        child.g.extend_from_slice(row);
        child.h.extend_from_slice(&self.h);
        child.h.push(offset);
        child.units.extend_from_slice(&self.units);
        child.units.push(unit);
        child
    }

    fn recenter(&mut self) {
        let ball = chebyshev_ball(self.s, &self.g, &self.h, &self.center, CAP);
        if ball.radius >= self.radius {
            self.center = ball.center;
            self.radius = ball.radius;
        }
        self.optimal = true;
    }

    /// The tight bounding box, one LP per side (infinite where the cell is unbounded).
    fn tighten_box(&mut self) {
        let s = self.s;
        let mut c = vec![0.0; s];
        for j in 0..s {
            for sign in [1.0, -1.0] {
                c[j] = sign;
                let extent = match (Lp { n: s, a: &self.g, b: &self.h, c: &c }).solve(&self.center) {
                    LpOutcome::Optimal { value, .. } => sign * value,
                    _ => sign * f64::INFINITY,
                };
                // Pad by the tolerance of the LP's feasibility so the box stays a superset.
                let pad = Tolerance::DEFAULT.at(extent.abs());
                if sign > 0.0 {
                    self.hi[j] = self.hi[j].min(extent + pad);
                } else {
                    self.lo[j] = self.lo[j].max(extent - pad);
                }
            }
            c[j] = 0.0;
        }
    }

    /// Rows whose half-space contains the whole bounding box are redundant; dropping them keeps
    /// the LPs of the next layer small.
    fn drop_rows_the_box_satisfies(&mut self) {
        let s = self.s;
        let mut kept = 0;
        for i in 0..self.h.len() {
            let row = &self.g[i * s..(i + 1) * s];
            let (_, high) = self.box_range(row, -self.h[i]);
            if high < -Tolerance::DEFAULT.at(self.h[i].abs()) {
                continue;
            }
            self.g.copy_within(i * s..(i + 1) * s, kept * s);
            self.h[kept] = self.h[i];
            self.units[kept] = self.units[i];
            kept += 1;
        }
        self.g.truncate(kept * s);
        self.h.truncate(kept);
        self.units.truncate(kept);
    }

    /// The range of `a . z + c` over the bounding box.
    fn box_range(&self, a: &[f64], c: f64) -> (f64, f64) {
        let (mut low, mut high) = (c, c);
        for j in 0..self.s {
            let (p, q) = (a[j] * self.lo[j], a[j] * self.hi[j]);
            if a[j] != 0.0 {
                low += p.min(q);
                high += p.max(q);
            }
        }
        (low, high)
    }

    /// The sub-ball of the witness ball on the side `sign * (a . z + c) >= 0`.
    fn sub_ball(&self, a: &[f64], value: f64, sign: f64) -> Ball {
        if sign * value >= self.radius {
            return Ball { center: self.center.clone(), radius: self.radius };
        }
        let radius = 0.5 * (self.radius + sign * value);
        let shift = sign * 0.5 * (self.radius - sign * value);
        Ball { center: self.center.iter().zip(a).map(|(z, ai)| z + shift * ai).collect(), radius }
    }

    /// The non-redundant rows, each with the centre of its largest inscribed (S-1)-ball.
    pub fn facets(&self, tol: &Tolerance) -> Vec<Facet> {
        (0..self.h.len()).filter_map(|i| self.facet(i, tol)).collect()
    }

    fn facet(&self, i: usize, tol: &Tolerance) -> Option<Facet> {
        let s = self.s;
        let gi = &self.g[i * s..(i + 1) * s];
        let hi = self.h[i];
        let basis = complement_basis(gi);
        let origin: Vec<f64> = gi.iter().map(|v| v * hi).collect();
        let eps = tol.at(norm(&origin).max(norm(&self.center)));
        let mut g = Vec::new();
        let mut h = Vec::new();
        for j in 0..self.h.len() {
            if j == i {
                continue;
            }
            let gj = &self.g[j * s..(j + 1) * s];
            let offset = self.h[j] - dot(gj, &origin);
            let projected: Vec<f64> = basis.iter().map(|u| dot(u, gj)).collect();
            let pn = norm(&projected);
            if pn <= 1e-12 {
                // Parallel to row i: either it cuts the hyperplane away, duplicates it, or
                // constrains nothing on it.
                if offset < -eps {
                    return None;
                }
                if dot(gi, gj) > 0.0 && offset <= eps && j < i {
                    return None;
                }
                continue;
            }
            g.extend(projected.iter().map(|v| v / pn));
            h.push(offset / pn);
        }
        let start: Vec<f64> = basis.iter().map(|u| dot(u, &self.center) - dot(u, &origin)).collect();
        let ball = chebyshev_ball(s - 1, &g, &h, &start, CAP);
        if ball.radius <= eps {
            return None;
        }
        let mut point = origin;
        for (u, y) in basis.iter().zip(&ball.center) {
            for t in 0..s {
                point[t] += y * u[t];
            }
        }
        Some(Facet { normal: gi.to_vec(), offset: hi, unit: self.units[i], point })
    }

    /// Bounded iff the recession cone `{d : G d <= 0}` is `{0}`: no unit-box direction in it
    /// reaches a coordinate of magnitude one half.
    pub fn is_bounded(&self, facets: &[Facet], _tol: &Tolerance) -> bool {
        let s = self.s;
        let m = facets.len();
        let mut a = Vec::with_capacity((m + 2 * s) * s);
        let mut b = Vec::with_capacity(m + 2 * s);
        for f in facets {
            a.extend_from_slice(&f.normal);
            b.push(0.0);
        }
        for j in 0..s {
            for sign in [1.0, -1.0] {
                a.extend((0..s).map(|t| if t == j { sign } else { 0.0 }));
                b.push(1.0);
            }
        }
        let zero = vec![0.0; s];
        for j in 0..s {
            for sign in [1.0, -1.0] {
                let c: Vec<f64> = (0..s).map(|t| if t == j { sign } else { 0.0 }).collect();
                match (Lp { n: s, a: &a, b: &b, c: &c }).solve(&zero) {
                    LpOutcome::Optimal { value, .. } if value <= 0.5 => {}
                    _ => return false,
                }
            }
        }
        true
    }
}

impl Cell for Polyhedron {
    fn whole_space(s: usize) -> Self {
        Polyhedron {
            s,
            g: Vec::new(),
            h: Vec::new(),
            units: Vec::new(),
            center: vec![0.0; s],
            radius: CAP,
            optimal: true,
            lo: vec![f64::NEG_INFINITY; s],
            hi: vec![f64::INFINITY; s],
        }
    }

    fn settle(&mut self, more_cuts: bool) {
        if !self.optimal {
            self.recenter();
        }
        if more_cuts {
            self.tighten_box();
            self.drop_rows_the_box_satisfies();
        }
    }

    fn cut(&mut self, a: &[f64], c: f64, unit: usize, tol: &Tolerance) -> Cut<Self> {
        let (low, high) = self.box_range(a, c);
        let eps = tol.at(norm(&self.center));
        if low >= eps {
            return Cut::On;
        }
        if high <= -eps {
            return Cut::Off;
        }
        let neg_a: Vec<f64> = a.iter().map(|v| -v).collect();
        {
            let value = dot(a, &self.center) + c;
            let eps = tol.at(norm(&self.center));
            let on_ball = self.sub_ball(a, value, 1.0);
            let off_ball = self.sub_ball(a, value, -1.0);
            if on_ball.radius > eps && off_ball.radius > eps {
                return Cut::Split {
                    on: self.with_row(&neg_a, c, unit, on_ball, false),
                    off: self.with_row(a, -c, unit, off_ball, false),
                };
            }
            // The witness lies on the `near` side; one LP tells whether the far side is
            // full-dimensional too.
            let near_on = value >= 0.0;
            let (far_row, far_offset) = if near_on { (a.to_vec(), -c) } else { (neg_a.clone(), c) };
            let mut g = self.g.clone();
            g.extend_from_slice(&far_row);
            let mut h = self.h.clone();
            h.push(far_offset);
            let far = chebyshev_ball(self.s, &g, &h, &self.center, CAP);
            if far.radius <= tol.at(norm(&far.center)) {
                return if near_on { Cut::On } else { Cut::Off };
            }
            let mut near_ball = if near_on { on_ball } else { off_ball };
            let (near_row, near_offset) = if near_on { (neg_a.clone(), c) } else { (a.to_vec(), -c) };
            if near_ball.radius <= eps {
                // A thin cell cut near its middle: the near piece needs its own LP too.
                let mut g = self.g.clone();
                g.extend_from_slice(&near_row);
                let mut h = self.h.clone();
                h.push(near_offset);
                near_ball = chebyshev_ball(self.s, &g, &h, &self.center, CAP);
                if near_ball.radius <= tol.at(norm(&near_ball.center)) {
                    return if near_on { Cut::Off } else { Cut::On };
                }
            }
            // The parent's optimal ball stays optimal for the near piece if it fits entirely.
            let near_optimal = self.optimal && near_ball.radius >= self.radius;
            let near = self.with_row(&near_row, near_offset, unit, near_ball, near_optimal);
            let far = self.with_row(&far_row, far_offset, unit, far, true);
            if near_on {
                Cut::Split { on: near, off: far }
            } else {
                Cut::Split { on: far, off: near }
            }
        }
    }

    fn interior_point(&self) -> Vec<f64> {
        self.center.clone()
    }

    fn into_shape(self) -> Shape {
        Shape::Candidates(self)
    }
}
