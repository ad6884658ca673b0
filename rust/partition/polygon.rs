//! S = 2: exact convex-polygon clipping, unbounded cells included, in homogeneous coordinates.
//!
//! A cell C of the plane is the cone K = {(z, w) : w >= 0, n.z + c w >= 0 for its lines}. Once
//! C has two non-parallel edges K is pointed, and it is stored as its extreme rays in cyclic
//! order: finite vertices `(x, y, 1)` and ideal points `(dx, dy, 0)` (directions in which C is
//! unbounded). Clipping a cone by a line is Sutherland-Hodgman on those rays, with no bounding
//! box. Cells without vertices (the plane, a half-plane, a strip) are kept as their lines.

use super::{Cell, Cut, Facet, Shape, Tolerance};
use crate::linalg::cross;

type Ray = [f64; 3];

/// A side of a line: the points with `n . z + c >= 0`, `|n| = 1`.
#[derive(Clone, Copy, Debug)]
pub struct Line {
    n: [f64; 2],
    c: f64,
    unit: usize,
}

impl Line {
    fn flipped(self) -> Line {
        Line { n: [-self.n[0], -self.n[1]], c: -self.c, unit: self.unit }
    }

    #[inline]
    fn eval(&self, r: &Ray) -> f64 {
        self.n[0] * r[0] + self.n[1] * r[1] + self.c * r[2]
    }

    fn facet(&self, point: [f64; 2]) -> Facet {
        Facet { normal: vec![-self.n[0], -self.n[1]], offset: self.c, unit: self.unit, point: point.to_vec() }
    }

    /// The point of the line nearest the origin.
    fn foot(&self) -> [f64; 2] {
        [-self.c * self.n[0], -self.c * self.n[1]]
    }
}

/// Directions are compared with this tolerance on the cosine of their angle.
const ANGLE_TOL: f64 = 1e-12;

#[inline]
fn is_ideal(r: &Ray) -> bool {
    r[2] == 0.0
}

#[inline]
fn length(x: f64, y: f64) -> f64 {
    // Coordinates here are far from overflow, so the plain formula is exact enough and
    // several times cheaper than `hypot`.
    (x * x + y * y).sqrt()
}

#[inline]
fn ray_tolerance(r: &Ray, tol: &Tolerance) -> f64 {
    if is_ideal(r) {
        ANGLE_TOL
    } else {
        tol.at(length(r[0], r[1]))
    }
}

/// Scales a homogeneous point to `w = 1`, or a direction to unit length.
fn normalise(r: Ray) -> Option<Ray> {
    let xy = length(r[0], r[1]);
    if r[2] > 1e-14 * xy.max(1e-300) {
        Some([r[0] / r[2], r[1] / r[2], 1.0])
    } else if r[2] >= -1e-14 * xy && xy > 0.0 {
        Some([r[0] / xy, r[1] / xy, 0.0])
    } else {
        None
    }
}

#[derive(Clone, Debug)]
pub enum Polygon {
    /// No vertex: the plane (no lines), a half-plane (one), or a strip (two parallel lines).
    Lineal(Vec<Line>),
    /// A pointed cone: `edges[i]` joins `rays[i]` to `rays[i + 1]`; `None` is the line at infinity.
    Cone { rays: Vec<Ray>, edges: Vec<Option<Line>> },
}

impl Polygon {
    fn cut_cone(rays: &[Ray], edges: &[Option<Line>], line: Line, tol: &Tolerance) -> Pieces {
        // Most cuts miss the cell: decide that without allocating.
        let (mut any_on, mut any_off) = (false, false);
        for r in rays {
            let (v, t) = (line.eval(r), ray_tolerance(r, tol));
            any_on |= v > t;
            any_off |= v < -t;
        }
        match (any_on, any_off) {
            (true, false) => return Pieces::AllOn,
            (false, true) => return Pieces::AllOff,
            (false, false) => return Pieces::Undecided,
            (true, true) => {}
        }
        let values: Vec<f64> = rays.iter().map(|r| line.eval(r)).collect();
        let tols: Vec<f64> = rays.iter().map(|r| ray_tolerance(r, tol)).collect();
        Pieces::Split(
            Self::clip(rays, edges, &values, &tols, 1.0, line),
            Self::clip(rays, edges, &values, &tols, -1.0, line.flipped()),
        )
    }

    /// Sutherland-Hodgman: the part of the cone where `sign * value >= 0`, bounded by `line`.
    fn clip(rays: &[Ray], edges: &[Option<Line>], values: &[f64], tols: &[f64], sign: f64, line: Line) -> Polygon {
        let k = rays.len();
        let mut out_rays = Vec::with_capacity(k + 1);
        let mut out_edges = Vec::with_capacity(k + 1);
        let side = |i: usize| {
            let v = sign * values[i];
            if v > tols[i] {
                1
            } else if v < -tols[i] {
                -1
            } else {
                0
            }
        };
        let crossing = |i: usize, j: usize| {
            // |v_i| r_j + |v_j| r_i is on the line and a positive combination of both rays.
            let (vi, vj) = (values[i].abs(), values[j].abs());
            let r = [
                vi * rays[j][0] + vj * rays[i][0],
                vi * rays[j][1] + vj * rays[i][1],
                vi * rays[j][2] + vj * rays[i][2],
            ];
            normalise(r).expect("a positive combination of rays of a pointed cone is a valid point")
        };
        for i in 0..k {
            let j = (i + 1) % k;
            let (si, sj) = (side(i), side(j));
            if si >= 0 {
                if sj < 0 {
                    if si > 0 {
                        out_rays.push(rays[i]);
                        out_edges.push(edges[i]);
                        out_rays.push(crossing(i, j));
                    } else {
                        out_rays.push(rays[i]);
                    }
                    out_edges.push(Some(line));
                } else {
                    out_rays.push(rays[i]);
                    out_edges.push(edges[i]);
                }
            } else if sj > 0 {
                out_rays.push(crossing(i, j));
                out_edges.push(edges[i]);
            }
        }
        Polygon::Cone { rays: out_rays, edges: out_edges }
    }

    /// The pointed cone cut out by `lines` (at least two of them non-parallel) and `w >= 0`,
    /// by brute force over pairs of planes; used only for the first vertex of a cell.
    fn cone_from_lines(lines: &[Line], tol: &Tolerance) -> Polygon {
        let planes: Vec<([f64; 3], Option<Line>)> = lines
            .iter()
            .map(|l| ([l.n[0], l.n[1], l.c], Some(*l)))
            .chain(std::iter::once(([0.0, 0.0, 1.0], None)))
            .collect();
        let eval = |p: &[f64; 3], r: &Ray| p[0] * r[0] + p[1] * r[1] + p[2] * r[2];
        let mut rays: Vec<Ray> = Vec::new();
        for a in 0..planes.len() {
            for b in a + 1..planes.len() {
                let (p, q) = (planes[a].0, planes[b].0);
                let along = cross(&p, &q);
                for sign in [1.0, -1.0] {
                    let Some(r) = normalise(along.map(|v| sign * v)) else { continue };
                    let t = ray_tolerance(&r, tol);
                    let feasible = planes.iter().all(|(p, _)| eval(p, &r) >= -t);
                    let duplicate = rays
                        .iter()
                        .any(|s| s[2] == r[2] && length(s[0] - r[0], s[1] - r[1]) <= t.max(ray_tolerance(s, tol)));
                    if feasible && !duplicate {
                        rays.push(r);
                    }
                }
            }
        }
        // Cyclic order by angle around the cone's axis.
        let mut axis = [0.0; 3];
        for r in &rays {
            let norm = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
            for t in 0..3 {
                axis[t] += r[t] / norm;
            }
        }
        let helper = if axis[0].abs() < 0.9 * (axis[0].hypot(axis[1]).hypot(axis[2])) {
            [1.0, 0.0, 0.0]
        } else {
            [0.0, 1.0, 0.0]
        };
        let e1 = cross(&axis, &helper);
        let e2 = cross(&axis, &e1);
        rays.sort_by(|r, s| {
            let angle = |r: &Ray| (eval(&e2, r)).atan2(eval(&e1, r));
            angle(r).total_cmp(&angle(s))
        });
        let k = rays.len();
        let edges = (0..k)
            .map(|i| {
                let (r, s) = (&rays[i], &rays[(i + 1) % k]);
                planes
                    .iter()
                    .find(|(p, _)| {
                        eval(p, r).abs() <= ray_tolerance(r, tol) && eval(p, s).abs() <= ray_tolerance(s, tol)
                    })
                    .and_then(|(_, line)| *line)
            })
            .collect();
        Polygon::Cone { rays, edges }
    }

    fn cut_lineal(lines: &[Line], line: Line, tol: &Tolerance) -> Pieces {
        let Some(first) = lines.first() else {
            return Pieces::Split(Polygon::Lineal(vec![line]), Polygon::Lineal(vec![line.flipped()]));
        };
        let direction = [-first.n[1], first.n[0]];
        if (line.n[0] * direction[0] + line.n[1] * direction[1]).abs() > ANGLE_TOL {
            let with = |l: Line| {
                let mut all = lines.to_vec();
                all.push(l);
                Self::cone_from_lines(&all, tol)
            };
            return Pieces::Split(with(line), with(line.flipped()));
        }
        // Parallel: in the coordinate u = n0 . z the cell is an interval (lo, hi).
        let n0 = first.n;
        let along = |l: &Line| l.n[0] * n0[0] + l.n[1] * n0[1];
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for l in lines {
            if along(l) > 0.0 {
                lo = lo.max(-l.c);
            } else {
                hi = hi.min(l.c);
            }
        }
        let orientation = along(&line).signum();
        let position = -orientation * line.c;
        let margin = tol.at(position.abs());
        if !(position > lo + margin && position < hi - margin) {
            return Pieces::Undecided;
        }
        // Each piece keeps the old line on its far side and gains the cut.
        let piece = |cut: Line| {
            let mut kept: Vec<Line> = lines.iter().filter(|l| along(l) * along(&cut) < 0.0).copied().collect();
            kept.push(cut);
            Polygon::Lineal(kept)
        };
        Pieces::Split(piece(line), piece(line.flipped()))
    }
}

/// The outcome of cutting a polygon by a line.
enum Pieces {
    Split(Polygon, Polygon),
    AllOn,
    AllOff,
    /// The line does not split the cell; its side is read at the interior point.
    Undecided,
}

impl Cell for Polygon {
    fn whole_space(_s: usize) -> Self {
        Polygon::Lineal(Vec::new())
    }

    fn cut(&mut self, a: &[f64], c: f64, unit: usize, tol: &Tolerance) -> Cut<Self> {
        let line = Line { n: [a[0], a[1]], c, unit };
        let pieces = match self {
            Polygon::Lineal(lines) => Self::cut_lineal(lines, line, tol),
            Polygon::Cone { rays, edges } => Self::cut_cone(rays, edges, line, tol),
        };
        match pieces {
            Pieces::Split(on, off) => Cut::Split { on, off },
            Pieces::AllOn => Cut::On,
            Pieces::AllOff => Cut::Off,
            Pieces::Undecided => {
                let z = self.interior_point();
                if line.eval(&[z[0], z[1], 1.0]) >= 0.0 {
                    Cut::On
                } else {
                    Cut::Off
                }
            }
        }
    }

    fn interior_point(&self) -> Vec<f64> {
        match self {
            Polygon::Lineal(lines) => match lines.as_slice() {
                [] => vec![0.0, 0.0],
                [l] => {
                    let p = l.foot();
                    vec![p[0] + l.n[0], p[1] + l.n[1]]
                }
                [l, rest @ ..] => {
                    let p = l.foot();
                    let width = rest.iter().map(|m| m.eval(&[p[0], p[1], 1.0])).fold(f64::INFINITY, f64::min);
                    vec![p[0] + 0.5 * width * l.n[0], p[1] + 0.5 * width * l.n[1]]
                }
            },
            Polygon::Cone { rays, edges } => {
                // A strictly positive combination of all extreme rays is interior.
                let finite: Vec<&Ray> = rays.iter().filter(|r| !is_ideal(r)).collect();
                let nf = finite.len() as f64;
                let mut centre = [0.0, 0.0];
                for r in &finite {
                    centre[0] += r[0] / nf;
                    centre[1] += r[1] / nf;
                }
                let spread = finite.iter().map(|r| length(r[0] - centre[0], r[1] - centre[1])).fold(1.0f64, f64::max);
                let ideal: Vec<&Ray> = rays.iter().filter(|r| is_ideal(r)).collect();
                let ni = ideal.len().max(1) as f64;
                let mut step = [0.0, 0.0];
                for r in ideal {
                    step[0] += spread * r[0] / ni;
                    step[1] += spread * r[1] / ni;
                }
                let at = |p: [f64; 2]| [p[0] + step[0], p[1] + step[1]];
                // The least distance to an edge relative to the point's size. A thin wedge far out
                // (two lines 1e-13 from parallel meet ~1e13 away) has its vertex known only to
                // ~eps / 1e-13 relative, and clipping may keep an ideal ray beside it: the
                // centroid, pulled out there, fell outside. Then means of vertices decide.
                let margin = |p: [f64; 2]| {
                    let least =
                        edges.iter().flatten().map(|l| l.eval(&[p[0], p[1], 1.0])).fold(f64::INFINITY, f64::min);
                    least / (1.0 + p[0].abs().max(p[1].abs()))
                };
                let mut best = (margin(at(centre)), at(centre));
                if best.0 <= 1e-9 && finite.len() >= 2 {
                    // Means of two and of three vertices: one of them lies in the wide part.
                    let k = finite.len();
                    for i in 0..k {
                        for j in i + 1..k {
                            let (a, b) = (finite[i], finite[j]);
                            let mut candidates = vec![[0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1])]];
                            for c in &finite[j + 1..] {
                                candidates.push([(a[0] + b[0] + c[0]) / 3.0, (a[1] + b[1] + c[1]) / 3.0]);
                            }
                            // Also without the step along the ideal rays: one that clipping kept
                            // beside the far vertex of nearly parallel lines is no direction of
                            // the region, and conv(finite vertices) lies in the region anyway.
                            candidates.push(centre);
                            for p in candidates {
                                for q in [at(p), p] {
                                    let value = margin(q);
                                    if value > best.0 {
                                        best = (value, q);
                                    }
                                }
                            }
                        }
                    }
                }
                best.1.to_vec()
            }
        }
    }

    fn into_shape(self) -> Shape {
        match self {
            Polygon::Lineal(lines) => {
                Shape::Exact { facets: lines.iter().map(|l| l.facet(l.foot())).collect(), bounded: false }
            }
            Polygon::Cone { rays, edges } => {
                let k = rays.len();
                let scale = rays.iter().filter(|r| !is_ideal(r)).map(|r| length(r[0], r[1])).fold(1.0f64, f64::max);
                let facets = edges
                    .iter()
                    .enumerate()
                    .filter_map(|(i, edge)| {
                        let line = (*edge)?;
                        let (r, s) = (&rays[i], &rays[(i + 1) % k]);
                        let point = match (is_ideal(r), is_ideal(s)) {
                            (false, false) => [0.5 * (r[0] + s[0]), 0.5 * (r[1] + s[1])],
                            (false, true) => [r[0] + scale * s[0], r[1] + scale * s[1]],
                            (true, false) => [s[0] + scale * r[0], s[1] + scale * r[1]],
                            (true, true) => line.foot(),
                        };
                        Some(line.facet(point))
                    })
                    .collect();
                Shape::Exact { facets, bounded: rays.iter().all(|r| !is_ideal(r)) }
            }
        }
    }
}
