use super::*;

/// A box in whitened coordinates has the closed-form mass prod (Phi(b_k) - Phi(a_k)).
fn log_box_mass(lo: &[f64], hi: &[f64]) -> f64 {
    lo.iter().zip(hi).map(|(a, b)| normal::log_diff_ndtr(*a, *b)).sum()
}

#[test]
fn far_boxes_are_exact_in_every_dimension() {
    for s in 3..=6 {
        let mut g = Vec::new();
        let mut h = Vec::new();
        for k in 0..s {
            let mut row = vec![0.0; s];
            row[k] = -1.0; // z_k >= 7
            g.extend_from_slice(&row);
            h.push(-7.0);
        }
        let cov: Vec<f64> = (0..s * s).map(|k| f64::from(u8::from(k / s == k % s))).collect();
        let shape = PolytopeShape::new(&g, s, &cov).unwrap();
        let out = shape.moments(&h, &vec![0.0; s], 1e-6, 0, true, &Cancel::new()).unwrap();
        let want = log_box_mass(&vec![7.0; s], &vec![f64::INFINITY; s]);
        assert!((out.log_mass - want).abs() < 1e-9 * want.abs(), "S={s}: {} vs {want}", out.log_mass);
        let (_, mean, second) = normal::truncated_normal(0.0, 1.0, 7.0, f64::INFINITY);
        for k in 0..s {
            assert!((out.mean[k] - mean).abs() < 1e-6, "S={s}: mean {:?}", out.mean);
            assert!((out.cov[k * s + k] - (second - mean * mean)).abs() < 1e-6);
        }
    }
}

#[test]
fn a_degenerate_far_wedge_reports_that_it_is_unreliable() {
    // A region of a random decoder ~32 standard deviations out whose vertex is nearly
    // degenerate: separation of variables has almost no successful paths. The answer must
    // either be right (log mass -545.36 by slicing) or say it is not.
    let g = [-0.5971829576722052, -0.5242093612048158, 0.6071054774016754, -0.2631547984614597, -0.006864459381237838, 0.964729200990678, 0.27231472479274765, -0.0010246836382463264, -0.9622076910337454, 0.6479550130933063, 0.743772653086758, -0.1641844740757738];
    let h = [-0.4124194256261446, -1.0928668452090948, 2.0665351147103204, -0.9453409315056456];
    let mean = [-0.06249913, -0.00753739, 0.2144043];
    let cov = [0.99207244, -9.28888386e-04, 2.72733204e-02, -9.28888386e-04, 0.999856675, 3.09707459e-03, 2.72733204e-02, 3.09707459e-03, 0.905889239];
    let shape = PolytopeShape::new(&g, 3, &cov).unwrap();
    let out = shape.moments(&h, &mean, 1e-4, 0, false, &Cancel::new()).unwrap();
    assert!(out.log_mass.is_finite());
    let true_error = (out.log_mass + 545.3567).abs();
    assert!(true_error < 1e-3 || out.error >= 1.0, "{} with error {}", out.log_mass, out.error);
}

#[test]
fn invalid_covariances_are_rejected() {
    assert!(PolytopeShape::new(&[1.0, 0.0], 2, &[1.0, 0.5, 0.4, 1.0]).is_err());
    assert!(PolytopeShape::new(&[1.0, 0.0], 2, &[1.0, 2.0, 2.0, 1.0]).is_err());
    assert!(PolytopeShape::new(&[1.0, f64::NAN], 2, &[1.0, 0.0, 0.0, 1.0]).is_err());
}

#[test]
fn a_strip_open_at_one_end_has_mass_below_one() {
    // Two antiparallel rows (a strip) closed at one end: the end between the antiparallel
    // edges is open. Its mass by Monte Carlo (2e6 draws) is exp(-1.3428).
    let rows = vec![[-0.40189482, 0.91568584], [-0.00415525, -0.99999137], [-0.99658542, -0.08256817], [0.40189482, -0.91568584]];
    let offsets = vec![0.54028856, 0.48540897, 0.04986396, 1.81140916];
    let poly = polygon::Polygon2::new(rows, offsets, [1.0, 0.0, 0.0, 1.0]);
    let log_mass = poly.log_mass(&[0.0, 0.0]);
    assert!((log_mass + 1.3428).abs() < 3e-3, "{log_mass}");
}
