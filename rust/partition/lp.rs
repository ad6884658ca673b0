//! Small linear programs of the partition: Chebyshev balls (is a cell full-dimensional, and
//! where is a point well inside it), facet tests, recession-cone tests.
//!
//! These LPs have `S + 1 <= ~8` variables and tens of rows, and enumeration solves hundreds
//! of thousands of them. A general sparse solver spends most of its time on set-up at that
//! size (microlp: ~39 us per Chebyshev LP in S = 3, see BENCHMARKS.md), so the hot path is a
//! dense primal active-set method started from a known feasible point (~1 us). microlp, the
//! maintained general solver, is the fallback whenever the dense method does not converge
//! cleanly, and the reference the tests compare against.

use microlp::{ComparisonOp, OptimizationDirection, Problem};

use crate::linalg::dot;

/// `maximize c.x  subject to  A x <= b`, `A` row-major `m x n`, `x` free.
pub struct Lp<'a> {
    pub n: usize,
    pub a: &'a [f64],
    pub b: &'a [f64],
    pub c: &'a [f64],
}

#[derive(Clone, Debug, PartialEq)]
pub enum LpOutcome {
    Optimal {
        x: Vec<f64>,
        value: f64,
    },
    Unbounded,
    /// The dense method did not converge cleanly (cycling, loss of precision).
    Failed,
}

impl<'a> Lp<'a> {
    pub fn m(&self) -> usize {
        self.b.len()
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.a[i * self.n..(i + 1) * self.n]
    }

    /// Solves from the feasible point `x0` with the dense active-set method, falling back to
    /// microlp when it fails.
    pub fn solve(&self, x0: &[f64]) -> LpOutcome {
        match self.solve_active_set(x0) {
            LpOutcome::Failed => self.solve_microlp(),
            outcome => outcome,
        }
    }

    /// Primal active-set method (a simplex method in inequality form). Moves along the
    /// projection of `c` onto the null space of the active rows until a row blocks, adds that
    /// row; when the projection vanishes, drops a row with a negative multiplier, or stops.
    /// Ties and degenerate steps use Bland's lowest-index rule, which prevents cycling.
    pub fn solve_active_set(&self, x0: &[f64]) -> LpOutcome {
        let (n, m) = (self.n, self.m());
        debug_assert_eq!(x0.len(), n);
        let c_norm = dot(self.c, self.c).sqrt();
        if c_norm == 0.0 {
            return LpOutcome::Optimal { x: x0.to_vec(), value: 0.0 };
        }
        let mut x = x0.to_vec();
        let mut row_norms = Vec::with_capacity(m);
        let mut slack = Vec::with_capacity(m);
        for i in 0..m {
            let row = self.row(i);
            row_norms.push(dot(row, row).sqrt());
            slack.push(self.b[i] - dot(row, &x));
        }
        let mut is_active = vec![false; m];
        let mut active: Vec<usize> = Vec::with_capacity(n);
        // Q (orthonormal basis of the active rows, row by row) and R with A_W^T = Q R.
        let mut basis = vec![0.0; n * n];
        let mut r = vec![0.0; n * n];
        let mut v = vec![0.0; n];
        let mut d = vec![0.0; n];
        let mut lambda = vec![0.0; n];
        let max_iter = 50 + 10 * (m + n);
        'iterate: for _ in 0..max_iter {
            let mut k = 0;
            for j in 0..active.len() {
                let i = active[j];
                v.copy_from_slice(self.row(i));
                for l in 0..k {
                    r[l * n + j] = 0.0;
                }
                // Gram-Schmidt twice: once is not enough in floating point.
                for _ in 0..2 {
                    for l in 0..k {
                        let q = &basis[l * n..(l + 1) * n];
                        let proj = dot(q, &v);
                        r[l * n + j] += proj;
                        for t in 0..n {
                            v[t] -= proj * q[t];
                        }
                    }
                }
                let norm = dot(&v, &v).sqrt();
                if norm <= 1e-11 * row_norms[i] {
                    // Numerically dependent on the rows before it: it adds no constraint.
                    is_active[i] = false;
                    active.remove(j);
                    continue 'iterate;
                }
                r[k * n + j] = norm;
                for t in 0..n {
                    basis[k * n + t] = v[t] / norm;
                }
                k += 1;
            }
            d.copy_from_slice(self.c);
            for _ in 0..2 {
                for l in 0..k {
                    let q = &basis[l * n..(l + 1) * n];
                    let proj = dot(q, &d);
                    for t in 0..n {
                        d[t] -= proj * q[t];
                    }
                }
            }
            let d_norm = dot(&d, &d).sqrt();
            if d_norm > 1e-12 * c_norm {
                let mut best: Option<(usize, f64)> = None;
                for i in 0..m {
                    if is_active[i] {
                        continue;
                    }
                    let rate = dot(self.row(i), &d);
                    if rate <= 1e-12 * row_norms[i] * d_norm {
                        continue;
                    }
                    let t = slack[i].max(0.0) / rate;
                    match best {
                        // Lowest index wins ties (Bland), so degenerate pivots cannot cycle.
                        Some((_, bt)) if t >= bt * (1.0 - 1e-12) => {}
                        _ => best = Some((i, t)),
                    }
                }
                let Some((enter, t)) = best else {
                    return LpOutcome::Unbounded;
                };
                for (xi, di) in x.iter_mut().zip(&d) {
                    *xi += t * di;
                }
                for i in 0..m {
                    slack[i] -= t * dot(self.row(i), &d);
                }
                slack[enter] = 0.0;
                is_active[enter] = true;
                active.push(enter);
            } else {
                // Multipliers: R lambda = Q^T c, by back-substitution.
                for l in (0..k).rev() {
                    let q = &basis[l * n..(l + 1) * n];
                    let mut value = dot(q, self.c);
                    for j in l + 1..k {
                        value -= r[l * n + j] * lambda[j];
                    }
                    lambda[l] = value / r[l * n + l];
                }
                let leave = (0..k).filter(|&j| lambda[j] < -1e-11 * c_norm).min_by_key(|&j| active[j]);
                match leave {
                    None => {
                        let value = dot(self.c, &x);
                        if !value.is_finite() || x.iter().any(|v| !v.is_finite()) {
                            return LpOutcome::Failed;
                        }
                        return LpOutcome::Optimal { x, value };
                    }
                    Some(j) => {
                        is_active[active[j]] = false;
                        active.remove(j);
                    }
                }
            }
        }
        LpOutcome::Failed
    }

    /// The same LP through microlp (revised simplex with LU factorisation).
    pub fn solve_microlp(&self) -> LpOutcome {
        let mut problem = Problem::new(OptimizationDirection::Maximize);
        let vars: Vec<_> =
            (0..self.n).map(|j| problem.add_var(self.c[j], (f64::NEG_INFINITY, f64::INFINITY))).collect();
        for i in 0..self.m() {
            let terms: Vec<_> =
                vars.iter().zip(self.row(i)).filter(|(_, &coef)| coef != 0.0).map(|(v, &coef)| (*v, coef)).collect();
            if terms.is_empty() {
                continue;
            }
            problem.add_constraint(&terms, ComparisonOp::Le, self.b[i]);
        }
        match problem.solve() {
            Ok(outcome) => match outcome.into_solution() {
                Ok(solution) => {
                    let x: Vec<f64> = vars.iter().map(|v| solution.var_value(*v)).collect();
                    LpOutcome::Optimal { value: dot(self.c, &x), x }
                }
                Err(_) => LpOutcome::Failed,
            },
            Err(microlp::Error::Unbounded) => LpOutcome::Unbounded,
            Err(_) => LpOutcome::Failed,
        }
    }
}

/// The largest ball `{z : |z - center| <= radius}` inside `{z : G z <= h}` (rows of `G` of unit
/// length), with the radius capped at `cap` so that unbounded cells have an answer. The radius
/// is negative when the polyhedron is empty. `start` is any point; it makes the LP feasible.
#[derive(Clone, Debug)]
pub struct Ball {
    pub center: Vec<f64>,
    pub radius: f64,
}

pub fn chebyshev_ball(s: usize, g: &[f64], h: &[f64], start: &[f64], cap: f64) -> Ball {
    let m = h.len();
    let n = s + 1;
    let mut a = Vec::with_capacity((m + 1) * n);
    let mut b = Vec::with_capacity(m + 1);
    let mut r0 = cap;
    for i in 0..m {
        let row = &g[i * s..(i + 1) * s];
        a.extend_from_slice(row);
        a.push(1.0);
        b.push(h[i]);
        r0 = r0.min(h[i] - dot(row, start));
    }
    a.extend(std::iter::repeat_n(0.0, s));
    a.push(1.0);
    b.push(cap);
    let mut c = vec![0.0; n];
    c[s] = 1.0;
    let mut x0 = start.to_vec();
    x0.push(r0);
    let lp = Lp { n, a: &a, b: &b, c: &c };
    match lp.solve(&x0) {
        LpOutcome::Optimal { mut x, .. } => {
            let radius = x.pop().unwrap();
            Ball { center: x, radius }
        }
        // Both solvers failed: report the start point with its (certain) inscribed radius, a
        // valid lower bound, so the caller errs toward calling a sliver empty.
        _ => Ball { center: start.to_vec(), radius: r0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64;

    fn random_polytope(rng: &mut Pcg64, s: usize, m: usize) -> (Vec<f64>, Vec<f64>) {
        let mut g = Vec::new();
        let mut h = Vec::new();
        for _ in 0..m {
            let row: Vec<f64> = (0..s).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
            let norm = dot(&row, &row).sqrt();
            g.extend(row.iter().map(|v| v / norm));
            h.push(rng.random::<f64>() * 2.0 - 0.5);
        }
        (g, h)
    }

    #[test]
    fn active_set_agrees_with_microlp_on_random_chebyshev_problems() {
        let mut rng = Pcg64::seed_from_u64(7);
        let mut compared = 0;
        for trial in 0..400 {
            let s = 1 + trial % 5;
            let m = 1 + (trial * 7) % 30;
            let (g, h) = random_polytope(&mut rng, s, m);
            let n = s + 1;
            let mut a = Vec::new();
            let mut b = h.clone();
            for i in 0..m {
                a.extend_from_slice(&g[i * s..(i + 1) * s]);
                a.push(1.0);
            }
            a.extend(std::iter::repeat_n(0.0, s));
            a.push(1.0);
            b.push(1.0);
            let mut c = vec![0.0; n];
            c[s] = 1.0;
            let lp = Lp { n, a: &a, b: &b, c: &c };
            let start = vec![0.0; s];
            let r0 = (0..m).map(|i| h[i]).fold(1.0f64, f64::min);
            let mut x0 = start.clone();
            x0.push(r0);
            let dense = lp.solve_active_set(&x0);
            let reference = lp.solve_microlp();
            match (dense, reference) {
                (LpOutcome::Optimal { value: v1, x }, LpOutcome::Optimal { value: v2, .. }) => {
                    assert!((v1 - v2).abs() < 1e-7, "trial {trial}: {v1} vs {v2}");
                    for i in 0..=m {
                        assert!(dot(&a[i * n..(i + 1) * n], &x) <= b[i] + 1e-9);
                    }
                    compared += 1;
                }
                (d, r) => panic!("trial {trial}: dense {d:?} vs microlp {r:?}"),
            }
        }
        assert_eq!(compared, 400);
    }

    #[test]
    fn degenerate_vertex_with_many_rows_through_it() {
        // 40 planes through the origin around the z-axis, plus a cap: highly degenerate.
        let s = 3;
        let mut g = Vec::new();
        let mut h = Vec::new();
        for k in 0..40 {
            let t = k as f64 * std::f64::consts::TAU / 40.0;
            let row = [t.cos(), t.sin(), -1.0];
            let norm = dot(&row, &row).sqrt();
            g.extend(row.iter().map(|v| v / norm));
            h.push(0.0);
        }
        let ball = chebyshev_ball(s, &g, &h, &[0.0, 0.0, -5.0], 1.0);
        // The cone {z_3 >= |(z_1, z_2)| roughly} contains a unit ball.
        assert!((ball.radius - 1.0).abs() < 1e-9, "{}", ball.radius);
        for i in 0..40 {
            assert!(dot(&g[i * 3..i * 3 + 3], &ball.center) + ball.radius <= h[i] + 1e-9);
        }
    }

    #[test]
    fn empty_polyhedron_has_negative_radius() {
        // z <= -1 and -z <= -1 (z >= 1): empty; the best "radius" is -1.
        let ball = chebyshev_ball(1, &[1.0, -1.0], &[-1.0, -1.0], &[0.0], 1.0);
        assert!((ball.radius + 1.0).abs() < 1e-12, "{}", ball.radius);
    }
}
