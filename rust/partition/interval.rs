//! S = 1: cells are intervals `(lo, hi)` of the real line, possibly unbounded; a unit's
//! hyperplane is the single breakpoint `-c / a`.

use super::{Cell, Cut, Facet, Shape, Tolerance};

#[derive(Clone, Debug)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    lo_unit: usize,
    hi_unit: usize,
}

impl Cell for Interval {
    fn whole_space(_s: usize) -> Self {
        Interval { lo: f64::NEG_INFINITY, hi: f64::INFINITY, lo_unit: usize::MAX, hi_unit: usize::MAX }
    }

    fn cut(&mut self, a: &[f64], c: f64, unit: usize, tol: &Tolerance) -> Cut<Self> {
        // |a| = 1, so a = +-1 and the breakpoint is -c / a = -c * a.
        let slope = a[0];
        let root = -c * slope;
        let margin = tol.at(root.abs());
        if root > self.lo + margin && root < self.hi - margin {
            let left = Interval { hi: root, hi_unit: unit, ..self.clone() };
            let right = Interval { lo: root, lo_unit: unit, ..self.clone() };
            return if slope > 0.0 { Cut::Split { on: right, off: left } } else { Cut::Split { on: left, off: right } };
        }
        let z = self.interior_point()[0];
        if slope * z + c >= 0.0 {
            Cut::On
        } else {
            Cut::Off
        }
    }

    fn interior_point(&self) -> Vec<f64> {
        let z = match (self.lo.is_finite(), self.hi.is_finite()) {
            (true, true) => 0.5 * (self.lo + self.hi),
            (true, false) => self.lo + 1.0f64.max(self.lo.abs()),
            (false, true) => self.hi - 1.0f64.max(self.hi.abs()),
            (false, false) => 0.0,
        };
        vec![z]
    }

    fn into_shape(self) -> Shape {
        let mut facets = Vec::new();
        if self.lo.is_finite() {
            // z >= lo  <=>  -z <= -lo
            facets.push(Facet { normal: vec![-1.0], offset: -self.lo, unit: self.lo_unit, point: vec![self.lo] });
        }
        if self.hi.is_finite() {
            facets.push(Facet { normal: vec![1.0], offset: self.hi, unit: self.hi_unit, point: vec![self.hi] });
        }
        Shape::Exact { bounded: self.lo.is_finite() && self.hi.is_finite(), facets }
    }
}
