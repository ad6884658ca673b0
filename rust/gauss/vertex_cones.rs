//! S = 3: the mass of `N(0, I)` on a simple pointed polyhedron `{w : F w <= e}` (non-redundant
//! unit rows) as a signed sum of trivariate normal orthant probabilities, one per vertex
//! (Lawrence's decomposition): for a direction `xi` on which no edge is orthogonal and along
//! which the polyhedron is bounded above (`xi . r < 0` for every unbounded edge `r`),
//!
//! `1_P = sum_v (-1)^{n_v} 1_{C_v}` (up to sets of measure zero),
//!
//! where `C_v` is the tangent cone at vertex `v` with each of its `n_v` edges that rise along
//! `xi` turned around: with the three facets of `v`, `C_v = {w : s_a f_a . w <= s_a e_a}`, `s_a`
//! = -1 where the edge leaving the facet `a` rises. Its mass is a trivariate orthant
//! probability with correlations `s_a s_b f_a . f_b` ([`super::orthant::trivariate`]), a
//! one-dimensional integral, against the slices' quadrature over polygon masses
//! (`slices.rs`) for the whole polyhedron.
//!
//! The cones are unbounded and their masses can exceed the polyhedron's: `xi` points from the
//! polyhedron's point nearest the mean back to the mean, so every cone extends away from it
//! (each lies beyond the vertex's level along `xi`, past the nearest point), which keeps the
//! cancellation small outside the polyhedron. Any cancellation is in the error estimate (the
//! orthant probabilities' errors, which carry their terms' rounding); where it exceeds the
//! accuracy asked, or the polyhedron is not simple, not pointed, or has a vertex too
//! ill-conditioned to place, this declines and the caller slices.

use super::normal;
use super::orthant::trivariate;
use crate::linalg::{cross, dot, solve3};

/// Three facets whose normals are this close to dependent (`|det|`, unit rows) place no vertex
/// reliably: where they would meet at one, the polyhedron is sliced instead.
const MIN_DETERMINANT: f64 = 1e-6;

/// Edges this close to orthogonal to `xi` (cosine) make the choice of flips fragile: another
/// `xi` is tried.
const MIN_EDGE_COSINE: f64 = 1e-6;

/// The tolerance of a vertex on the facets through it and off the others, relative to the
/// offsets' and the vertex's scale: a fourth facet within it makes the vertex degenerate.
const VERTEX_TOLERANCE: f64 = 1e-9;

struct Vertex {
    facets: [usize; 3],
    /// The edge leaving facet `facets[a]` (along the other two), pointing into the polyhedron.
    edges: [[f64; 3]; 3],
}

fn unit(v: [f64; 3]) -> [f64; 3] {
    let n = dot(&v, &v).sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

/// The vertices of `{w : F w <= e}` with their edges, and the unbounded edges' directions, or
/// `None` where the polyhedron is not simple, has no vertex, or a vertex is ill-conditioned.
fn vertices(f: &[f64], e: &[f64]) -> Option<(Vec<Vertex>, Vec<[f64; 3]>)> {
    let m = e.len();
    let row = |i: usize| &f[3 * i..3 * i + 3];
    let mut found = Vec::new();
    for i in 0..m {
        for j in i + 1..m {
            for k in j + 1..m {
                // Nearly dependent normals place no vertex reliably: left out here, and a
                // vertex of the polyhedron among them shows as an edge that is not a recession
                // direction (checked below), which declines.
                let Some(v) = solve3(row(i), row(j), row(k), [e[i], e[j], e[k]], MIN_DETERMINANT) else { continue };
                let scale = 1.0 + dot(&v, &v).sqrt();
                let mut feasible = true;
                for l in (0..m).filter(|l| ![i, j, k].contains(l)) {
                    let slack = e[l] - dot(row(l), &v);
                    let tolerance = VERTEX_TOLERANCE * (scale + e[l].abs());
                    if slack < -tolerance {
                        feasible = false;
                        break;
                    }
                    if slack <= tolerance {
                        return None; // a fourth facet through the vertex: not simple
                    }
                }
                if !feasible {
                    continue;
                }
                // The edge leaving facet a runs along the other two, into the polyhedron
                // (where facet a's constraint slackens: f_a . edge < 0).
                let edge = |a: usize, b: usize, c: usize| {
                    let d = unit(cross(row(b), row(c)));
                    if dot(row(a), &d) > 0.0 {
                        [-d[0], -d[1], -d[2]]
                    } else {
                        d
                    }
                };
                found.push(Vertex { facets: [i, j, k], edges: [edge(i, j, k), edge(j, k, i), edge(k, i, j)] });
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    // An edge (a pair of facets) joins two vertices, or leaves one to infinity; more is
    // degeneracy the tolerances missed.
    let mut pairs: Vec<((usize, usize), usize, usize)> = Vec::new(); // (pair, vertex, slot)
    for (index, vertex) in found.iter().enumerate() {
        let [i, j, k] = vertex.facets;
        pairs.extend([((j, k), index, 0), ((i, k), index, 1), ((i, j), index, 2)]);
    }
    pairs.sort_unstable_by_key(|p| p.0);
    let mut rays = Vec::new();
    let mut start = 0;
    while start < pairs.len() {
        let mut end = start + 1;
        while end < pairs.len() && pairs[end].0 == pairs[start].0 {
            end += 1;
        }
        match end - start {
            1 => rays.push(found[pairs[start].1].edges[pairs[start].2]),
            2 => {}
            _ => return None,
        }
        start = end;
    }
    // An edge to infinity must be a recession direction (`F r <= 0`), clearly: one that some
    // facet cuts leads to a vertex left out, and one nearly parallel to a facet is fragile.
    let recedes = |r: &[f64; 3]| (0..m).all(|l| dot(row(l), r) < -MIN_EDGE_COSINE || dot(row(l), r).abs() <= 1e-12);
    if !rays.iter().all(recedes) {
        return None;
    }
    Some((found, rays))
}

/// A direction along which the polyhedron is bounded above and no edge is flat, nearest to
/// pointing from `tilt` (the polyhedron's point nearest the origin) back to the origin.
fn direction(vertices: &[Vertex], rays: &[[f64; 3]], tilt: &[f64]) -> Option<[f64; 3]> {
    let d = dot(tilt, tilt).sqrt();
    let ray_sum = rays.iter().fold([0.0; 3], |s, r| [s[0] + r[0], s[1] + r[1], s[2] + r[2]]);
    // Fixed generic directions: tilts of the others where an edge is flat along them (a
    // polyhedron whose nearest point lies on a facet has edges orthogonal to that facet's
    // normal), and themselves for a polyhedron around the origin.
    const GENERIC: [[f64; 3]; 3] = [[0.539, -0.311, 0.783], [-0.227, 0.861, 0.455], [0.802, 0.351, -0.483]];
    let mut preferred: Vec<[f64; 3]> = Vec::new();
    if d > 1e-9 {
        let back = [-tilt[0] / d, -tilt[1] / d, -tilt[2] / d];
        preferred.push(back);
        if !rays.is_empty() {
            preferred.push([back[0] - 0.1 * ray_sum[0], back[1] - 0.1 * ray_sum[1], back[2] - 0.1 * ray_sum[2]]);
        }
    }
    if !rays.is_empty() {
        preferred.push([-ray_sum[0], -ray_sum[1], -ray_sum[2]]);
    }
    let mut candidates = preferred.clone();
    for p in preferred.iter().map(|p| unit(*p)) {
        candidates.extend(GENERIC.iter().map(|g| [p[0] + 0.05 * g[0], p[1] + 0.05 * g[1], p[2] + 0.05 * g[2]]));
    }
    candidates.extend(GENERIC);
    candidates.into_iter().filter(|c| dot(c, c) > 0.0).map(unit).find(|xi| {
        rays.iter().all(|r| dot(xi, r) < -MIN_EDGE_COSINE)
            && vertices.iter().all(|v| v.edges.iter().all(|edge| dot(xi, edge).abs() > MIN_EDGE_COSINE))
    })
}

/// `(log mass, relative error)` of `N(0, I)` on `{w : F w <= e}` (unit, non-redundant rows)
/// where the vertex cones give it within `rtol`, or `(-inf, 0)` where they show it below
/// `negligible` times its tail bound `Phi(-|tilt|)` (a mass the caller can drop); `None` where
/// they cannot (see the module's doc), and the caller slices. `tilt` is the polyhedron's point
/// nearest the origin.
pub fn log_mass(f: &[f64], e: &[f64], tilt: &[f64], rtol: f64, negligible: f64) -> Option<(f64, f64)> {
    if e.len() < 3 {
        return None;
    }
    let (vertices, rays) = vertices(f, e)?;
    let xi = direction(&vertices, &rays, tilt)?;
    // The polyhedron lies beyond its nearest point, so its mass is at most this tail: a sum
    // above it is wrong, whatever its error estimate says, and an error above `rtol` of it (or
    // above what is negligible) can pass neither test below.
    let bound = normal::ndtr(-dot(tilt, tilt).sqrt());
    let (tail, negligible) = (bound * (1.0 + 1e-9), negligible * bound);
    let (mass, error) = cone_sum(f, e, &vertices, xi, rtol, (rtol * tail).max(negligible))?;
    if !(mass - error <= tail) {
        return None;
    }
    // Only well above underflow, where cones too small to represent lose nothing that matters.
    if negligible > 1e-280 && mass + error < negligible {
        return Some((f64::NEG_INFINITY, 0.0));
    }
    (mass > 0.0 && error <= rtol * mass).then(|| (mass.ln(), error / mass))
}

/// The signed sum of the vertex cones along `xi` (which must satisfy [`direction`]'s
/// conditions) and its estimated absolute error, or `None` as soon as that error exceeds
/// `max_error`.
fn cone_sum(f: &[f64], e: &[f64], vertices: &[Vertex], xi: [f64; 3], rtol: f64, max_error: f64) -> Option<(f64, f64)> {
    let row = |i: usize| &f[3 * i..3 * i + 3];
    // Each cone to a thousandth of the accuracy asked of its own terms: the sum's error is then
    // within `rtol` of the mass unless the cones cancel by more than a thousandfold, which the
    // caller's check catches.
    let (mut mass, mut error) = (0.0, 0.0);
    for vertex in vertices {
        let signs: [f64; 3] = std::array::from_fn(|a| if dot(&xi, &vertex.edges[a]) > 0.0 { -1.0 } else { 1.0 });
        let [i, j, k] = vertex.facets;
        let limits = [signs[0] * e[i], signs[1] * e[j], signs[2] * e[k]];
        let r12 = signs[0] * signs[1] * dot(row(i), row(j));
        let r13 = signs[0] * signs[2] * dot(row(i), row(k));
        let r23 = signs[1] * signs[2] * dot(row(j), row(k));
        let cone = trivariate(limits, r12, r13, r23, 1e-3 * rtol);
        mass += signs.iter().product::<f64>() * cone.value;
        error += cone.error;
        if !(error <= max_error) {
            return None;
        }
    }
    Some((mass, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauss::normal::log_diff_ndtr;
    use crate::gauss::orthant::tests::uniforms;

    /// The box `lo_k <= u_k . w <= hi_k` along orthonormal `axes`: its rows and offsets, its
    /// point nearest the origin (each coordinate clamped to its side) and its closed-form log
    /// mass `sum log(Phi(hi) - Phi(lo))`.
    fn rotated_box(axes: &[[f64; 3]; 3], lo: [f64; 3], hi: [f64; 3]) -> (Vec<f64>, Vec<f64>, [f64; 3], f64) {
        let (mut f, mut e) = (Vec::new(), Vec::new());
        for k in 0..3 {
            f.extend(axes[k]);
            e.push(hi[k]);
            f.extend(axes[k].map(|v| -v));
            e.push(-lo[k]);
        }
        let near: [f64; 3] = std::array::from_fn(|k| 0.0f64.clamp(lo[k], hi[k]));
        let tilt = std::array::from_fn(|c| (0..3).map(|k| near[k] * axes[k][c]).sum());
        (f, e, tilt, (0..3).map(|k| log_diff_ndtr(lo[k], hi[k])).sum())
    }

    fn rotation(seed: u64) -> [[f64; 3]; 3] {
        let mut uniform = uniforms(seed);
        let a = unit([uniform() - 0.5, uniform() - 0.5, uniform() - 0.5]);
        let mut b = [uniform() - 0.5, uniform() - 0.5, uniform() - 0.5];
        let along = dot(&a, &b);
        b = unit([b[0] - along * a[0], b[1] - along * a[1], b[2] - along * a[2]]);
        [a, b, cross(&a, &b)]
    }

    /// A rotated box `lo_k <= u_k . w <= hi_k` has the closed-form mass `prod (Phi(hi) - Phi(lo))`.
    #[test]
    fn rotated_boxes_have_their_closed_form() {
        for seed in 0..50u64 {
            let axes = rotation(seed);
            let lo = [-2.0 + 0.1 * seed as f64, -0.5, 0.3 - 0.05 * seed as f64];
            let hi = [lo[0] + 0.7, 1.9, lo[2] + 3.0];
            let (f, e, tilt, want) = rotated_box(&axes, lo, hi);
            let (got, error) = log_mass(&f, &e, &tilt, 1e-10, 0.0).expect("a box is simple and bounded");
            assert!((got - want).abs() <= 2.0 * error + 1e-13, "seed {seed}: {got} vs {want} (error {error})");
        }
    }

    /// A thin rotated box by the mean (its mass far below its tail bound, as a sliver region's):
    /// dropped only where its closed-form mass is below what the caller calls negligible (a
    /// fraction of that bound), else
    /// right within the error reported (or declined: thinner than the vertex tolerance, its
    /// vertices look degenerate).
    #[test]
    fn slivers_are_dropped_only_below_what_is_negligible() {
        let mut dropped = 0;
        for (seed, width) in [1e-8, 3e-8, 1e-7, 1e-6, 1e-4, 1e-1].into_iter().enumerate() {
            let axes = rotation(seed as u64 + 77);
            let (lo, hi) = ([-0.3, -1.0, -2.0], [-0.3 + width, 1.5, 0.7]);
            let (f, e, tilt, log_mass_want) = rotated_box(&axes, lo, hi);
            let mass = log_mass_want.exp();
            for negligible in [1e-16, 1e-11, 1e-8, 1e-7, 1e-5] {
                match log_mass(&f, &e, &tilt, 1e-6, negligible) {
                    Some((got, _)) if got == f64::NEG_INFINITY => {
                        dropped += 1;
                        let allowed = negligible * normal::ndtr(-dot(&tilt, &tilt).sqrt());
                        assert!(mass < allowed, "width {width}: mass {mass} dropped as below {allowed}");
                    }
                    Some((got, error)) => {
                        assert!((got - mass.ln()).abs() <= 2.0 * error + 1e-12, "width {width}: {got} vs {}", mass.ln())
                    }
                    None => {}
                }
            }
        }
        assert!(dropped >= 4, "dropped {dropped}");
    }

    /// A thin prism ~8 deviations out whose facets pass within ~1 of the mean: its cones are
    /// nearly singular and cancel from ~1e-5 down to its mass ~1e-20. Declined, or right.
    #[test]
    fn a_far_thin_prism_is_declined_or_right() {
        let f = [
            -0.8416686507526145,
            0.5020305647925433,
            -0.19889493295293684,
            0.9987453011573194,
            -0.04967472804631332,
            0.0063438797040913176,
            0.9887930007064432,
            -0.08232823678674916,
            0.12454101003899404,
            -0.9812467596073507,
            -0.17701544147243267,
            0.07629108886622217,
            -0.9709557522537144,
            0.19401410080057055,
            -0.14001234179874938,
        ];
        let e = [-0.5646855480285872, -0.4071135077346194, -1.1983200328027779, 1.2073022950652461, 0.8401116837472443];
        let tilt = [-0.8199877327160642, -5.056599600258666, -6.454282256119381];
        let (want, want_error) =
            crate::gauss::slices::log_mass(&f, &e, &tilt, 1e-11, &crate::cancel::Cancel::new()).unwrap();
        for rtol in [0.1, 1e-3, 1e-6, 1e-9] {
            if let Some((got, error)) = log_mass(&f, &e, &tilt, rtol, 0.0) {
                assert!((got - want).abs() <= 2.0 * (error + want_error), "rtol {rtol}: {got} vs slices {want}");
            }
        }
    }

    /// An independent reference for a bounded polyhedron: slices across a random axis, each an
    /// exact polygon mass (`Polygon2`), integrated by composite 20-point Gauss-Legendre on many
    /// panels between the vertices' projections (where the slices' mass is analytic).
    fn mass_by_fixed_slices(f: &[f64], e: &[f64], vertices: &[Vertex], seed: u64) -> f64 {
        use crate::gauss::normal::{GL_NODES, GL_WEIGHTS};
        use crate::gauss::polygon::Polygon2;
        let [u, a, b] = rotation(seed + 1000);
        let row = |i: usize| &f[3 * i..3 * i + 3];
        let mut cuts: Vec<f64> = vertices
            .iter()
            .map(|v| {
                let [i, j, k] = v.facets;
                let (ij, jk, ki) = (cross(row(i), row(j)), cross(row(j), row(k)), cross(row(k), row(i)));
                let det = dot(row(k), &ij);
                let point: [f64; 3] = std::array::from_fn(|c| (e[i] * jk[c] + e[j] * ki[c] + e[k] * ij[c]) / det);
                dot(&point, &u)
            })
            .collect();
        cuts.sort_by(f64::total_cmp);
        // Unit rows in the slice's plane, as the polygon reduction takes them.
        let norms: Vec<f64> = (0..e.len()).map(|i| dot(row(i), &a).hypot(dot(row(i), &b))).collect();
        let rows: Vec<[f64; 2]> =
            (0..e.len()).map(|i| [dot(row(i), &a) / norms[i], dot(row(i), &b) / norms[i]]).collect();
        let slice = |t: f64| {
            let offsets: Vec<f64> = (0..e.len()).map(|i| (e[i] - dot(row(i), &u) * t) / norms[i]).collect();
            let Some(kept) = crate::gauss::polygon::non_redundant(&rows, &offsets) else { return 0.0 };
            let (g, h) = (kept.iter().map(|&i| rows[i]).collect(), kept.iter().map(|&i| offsets[i]).collect());
            let log_mass = Polygon2::new(g, h, [1.0, 0.0, 0.0, 1.0]).log_mass(&[0.0, 0.0], 1e-15);
            (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt() * log_mass.exp()
        };
        let mut total = 0.0;
        for pair in cuts.windows(2) {
            let pieces = 32;
            let width = (pair[1] - pair[0]) / pieces as f64;
            for p in 0..pieces {
                let (mid, half) = (pair[0] + (p as f64 + 0.5) * width, 0.5 * width);
                total += half * GL_NODES.iter().zip(GL_WEIGHTS).map(|(x, w)| w * slice(mid + half * x)).sum::<f64>();
            }
        }
        total
    }

    /// Random polyhedra (bounded, and unbounded with normals in a half-space; around the mean,
    /// near it and far out) against the slices' adaptive quadrature (another method) within the
    /// two error estimates, some also against fixed slices, and most of them not declined.
    #[test]
    fn random_polyhedra_match_the_slices() {
        let mut uniform = uniforms(5);
        let cancel = crate::cancel::Cancel::new();
        let (mut compared, mut declined) = (0, 0);
        for trial in 0..400 {
            let bounded = trial % 3 != 0;
            let m = 4 + (uniform() * 9.0) as usize;
            let distance = [0.0, 0.5, 1.5, 3.0, 6.0][trial % 5];
            let centre = unit([uniform() - 0.5, uniform() - 0.5, uniform() - 0.5]).map(|v| distance * v);
            let (mut f, mut e) = (Vec::new(), Vec::new());
            for _ in 0..m {
                let mut n = unit([uniform() - 0.5, uniform() - 0.5, uniform() - 0.5]);
                if !bounded && n[2] < 0.0 {
                    n[2] = -n[2]; // all normals up: unbounded downwards
                }
                f.extend(n);
                e.push(dot(&n, &centre) + 0.05 + 2.0 * uniform());
            }
            let Some((f, e, inside)) = crate::gauss::reduce(&f, &e, 3) else { continue };
            if e.len() < 3 {
                continue;
            }
            let tilt = crate::gauss::nearest::nearest_point(&f, &e, 3, &[0.0; 3], &inside);
            let (want, want_error) = crate::gauss::slices::log_mass(&f, &e, &tilt, 1e-11, &cancel).unwrap();
            match log_mass(&f, &e, &tilt, 1e-9, 0.0) {
                Some((got, error)) => {
                    compared += 1;
                    assert!(error <= 1e-9, "trial {trial}: error {error}");
                    assert!(
                        (got - want).abs() <= 2.0 * (error + want_error) + 1e-13,
                        "trial {trial} ({} facets, bounded {bounded}, distance {distance}): {got} vs slices {want}",
                        e.len()
                    );
                    let (vertices, rays) = vertices(&f, &e).expect("found above");
                    if rays.is_empty() && trial % 4 == 1 {
                        let reference = mass_by_fixed_slices(&f, &e, &vertices, trial as u64).ln();
                        assert!(
                            (got - reference).abs() <= 2.0 * error + 1e-12,
                            "trial {trial}: {got} vs fixed slices {reference}"
                        );
                    }
                }
                None => declined += 1,
            }
        }
        assert!(compared >= 200 && declined <= compared / 4, "compared {compared}, declined {declined}");
    }
}
