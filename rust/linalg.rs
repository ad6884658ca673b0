//! The small shared pieces of linear algebra and numerics that every part of the engine uses:
//! dot products, the Gaussian tail bound, and the relative tolerance of geometric tests.

/// `u . v` (the shorter length if they differ).
#[inline]
pub fn dot(u: &[f64], v: &[f64]) -> f64 {
    u.iter().zip(v).map(|(a, b)| a * b).sum()
}

/// `a x b` in space.
#[inline]
pub fn cross(a: &[f64], b: &[f64]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// The point on three planes `a . v = e_0`, `b . v = e_1`, `c . v = e_2` (Cramer's rule), if
/// their normals' determinant `a . (b x c)` exceeds `min_det` in size.
pub fn solve3(a: &[f64], b: &[f64], c: &[f64], e: [f64; 3], min_det: f64) -> Option<[f64; 3]> {
    let bc = cross(b, c);
    let det = dot(a, &bc);
    if det.abs() <= min_det {
        return None;
    }
    let (ca, ab) = (cross(c, a), cross(a, b));
    Some(std::array::from_fn(|k| (e[0] * bc[k] + e[1] * ca[k] + e[2] * ab[k]) / det))
}

/// `a . b` in the plane.
#[inline]
pub fn dot2(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[0] + a[1] * b[1]
}

/// `log` of the Gaussian tail bound `Phi(-d) <= exp(-d^2 / 2) / 2` on the mass of a convex region
/// at distance `d >= 0` (in whitened units) from the mean; 0 (the bound 1) for a mean inside.
/// (The S = 1 blocks use the same bound in a branch-free form over vector lanes,
/// `inference::interval`.)
#[inline]
pub fn log_tail_bound(d: f64) -> f64 {
    if d == 0.0 {
        0.0
    } else {
        -0.5 * d * d - std::f64::consts::LN_2
    }
}

/// Distances below `abs + rel * |z|` are treated as zero. The partition uses it as the radius of
/// the ball a cell must contain to count as full-dimensional; the polyhedral tests of the
/// Gaussian engine as the slack within which a point counts as on a boundary.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// `1e-9 (1 + |z|)`.
    pub const DEFAULT: Tolerance = Tolerance { abs: 1e-9, rel: 1e-9 };

    /// The tolerance at a point of norm (or a value of magnitude) `z_norm`.
    #[inline]
    pub fn at(&self, z_norm: f64) -> f64 {
        self.abs + self.rel * z_norm
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance::DEFAULT
    }
}
