//! The point of a polyhedron `{w : F w <= e}` nearest a target `c`: the quadratic program
//! `min |w - c|^2 / 2  s.t.  F w <= e`, by a primal active-set method from a feasible start.
//! In whitened coordinates it gives the most probable point of a Gaussian restricted to a
//! region (the MAP of the posterior) and the centre of the tilted proposal that samples it.

use crate::linalg::dot;

/// Solves `G y = r` for symmetric positive definite `G` (k x k row-major) by Cholesky; `None`
/// when `G` is numerically singular (linearly dependent active rows).
fn solve_spd(g: &[f64], r: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let mut sum = g[i * k + j];
            for t in 0..j {
                sum -= l[i * k + t] * l[j * k + t];
            }
            if i == j {
                if sum <= 1e-12 * g[i * k + i].abs().max(1e-300) {
                    return None;
                }
                l[i * k + i] = sum.sqrt();
            } else {
                l[i * k + j] = sum / l[j * k + j];
            }
        }
    }
    let mut y = r.to_vec();
    for i in 0..k {
        for t in 0..i {
            y[i] -= l[i * k + t] * y[t];
        }
        y[i] /= l[i * k + i];
    }
    for i in (0..k).rev() {
        for t in i + 1..k {
            y[i] -= l[t * k + i] * y[t];
        }
        y[i] /= l[i * k + i];
    }
    Some(y)
}

/// The nearest point of `{w : F w <= e}` (`F` row-major `m x s`) to `c`, starting from the
/// feasible point `start`. Returns `start` unchanged if it is already optimal.
pub fn nearest_point(f: &[f64], e: &[f64], s: usize, c: &[f64], start: &[f64]) -> Vec<f64> {
    let m = e.len();
    let row = |i: usize| &f[i * s..(i + 1) * s];
    let mut w = start.to_vec();
    let mut active: Vec<usize> = Vec::new();
    let scale = 1.0 + dot(c, c).sqrt() + dot(start, start).sqrt();
    for _ in 0..(100 + 20 * (m + s)) {
        // Equality-constrained minimiser on the active rows: w_eq = c - F_W^T lambda with
        // F_W F_W^T lambda = F_W c - e_W.
        let k = active.len();
        let mut gram = vec![0.0; k * k];
        let mut rhs = vec![0.0; k];
        for (a, &i) in active.iter().enumerate() {
            for (b, &j) in active.iter().enumerate() {
                gram[a * k + b] = dot(row(i), row(j));
            }
            rhs[a] = dot(row(i), c) - e[i];
        }
        let Some(lambda) = solve_spd(&gram, &rhs, k) else {
            // A dependent row entered on a degenerate vertex: it adds nothing.
            active.pop();
            continue;
        };
        let mut target = c.to_vec();
        for (a, &i) in active.iter().enumerate() {
            for t in 0..s {
                target[t] -= lambda[a] * row(i)[t];
            }
        }
        let step: Vec<f64> = target.iter().zip(&w).map(|(t, x)| t - x).collect();
        if dot(&step, &step).sqrt() <= 1e-13 * scale {
            // Stationary on the working set: optimal if every multiplier is non-negative.
            match (0..k).filter(|&a| lambda[a] < -1e-12 * scale).min_by(|&a, &b| lambda[a].total_cmp(&lambda[b])) {
                None => return w,
                Some(a) => {
                    active.remove(a);
                    continue;
                }
            }
        }
        let mut alpha = 1.0;
        let mut blocking = None;
        for i in 0..m {
            if active.contains(&i) {
                continue;
            }
            let rate = dot(row(i), &step);
            if rate > 1e-14 * scale {
                let room = (e[i] - dot(row(i), &w)).max(0.0);
                if room / rate < alpha {
                    alpha = room / rate;
                    blocking = Some(i);
                }
            }
        }
        for t in 0..s {
            w[t] += alpha * step[t];
        }
        if let Some(i) = blocking {
            active.push(i);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_onto_a_half_plane_and_a_corner() {
        // {w_1 >= 2}: nearest point to the origin is (2, 0).
        let w = nearest_point(&[-1.0, 0.0], &[-2.0], 2, &[0.0, 0.0], &[5.0, 3.0]);
        assert!((w[0] - 2.0).abs() < 1e-12 && w[1].abs() < 1e-12, "{w:?}");
        // {w_1 >= 1, w_2 >= 1}: the corner (1, 1).
        let w = nearest_point(&[-1.0, 0.0, 0.0, -1.0], &[-1.0, -1.0], 2, &[0.0, 0.0], &[4.0, 7.0]);
        assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 1.0).abs() < 1e-12, "{w:?}");
        // Target inside: the target itself.
        let w = nearest_point(&[1.0, 0.0], &[3.0], 2, &[0.5, -4.0], &[0.0, 0.0]);
        assert!((w[0] - 0.5).abs() < 1e-12 && (w[1] + 4.0).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn matches_brute_force_on_random_triangles() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        for _ in 0..200 {
            // A triangle given by its vertices, as inequalities.
            let v: Vec<[f64; 2]> = (0..3).map(|_| [rng.random_range(-5.0..5.0), rng.random_range(-5.0..5.0)]).collect();
            let centroid = [(v[0][0] + v[1][0] + v[2][0]) / 3.0, (v[0][1] + v[1][1] + v[2][1]) / 3.0];
            let mut f = Vec::new();
            let mut e = Vec::new();
            for i in 0..3 {
                let (p, q) = (v[i], v[(i + 1) % 3]);
                let mut n = [q[1] - p[1], p[0] - q[0]];
                if n[0] * (centroid[0] - p[0]) + n[1] * (centroid[1] - p[1]) > 0.0 {
                    n = [-n[0], -n[1]];
                }
                f.extend(n);
                e.push(n[0] * p[0] + n[1] * p[1]);
            }
            let w = nearest_point(&f, &e, 2, &[0.0, 0.0], &centroid);
            // Brute force: the best of the vertices, the edge projections and the origin.
            let inside = (0..3).all(|i| f[2 * i] * 0.0 + f[2 * i + 1] * 0.0 <= e[i]);
            let mut best = if inside { 0.0 } else { f64::INFINITY };
            for i in 0..3 {
                let (p, q) = (v[i], v[(i + 1) % 3]);
                let d = [q[0] - p[0], q[1] - p[1]];
                let t = (-(p[0] * d[0] + p[1] * d[1]) / (d[0] * d[0] + d[1] * d[1])).clamp(0.0, 1.0);
                let x = [p[0] + t * d[0], p[1] + t * d[1]];
                best = best.min((x[0] * x[0] + x[1] * x[1]).sqrt());
            }
            assert!(((w[0] * w[0] + w[1] * w[1]).sqrt() - best).abs() < 1e-9);
        }
    }
}
