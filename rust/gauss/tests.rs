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
        let out = shape.moments(&h, &vec![0.0; s], true, &IntegrationSettings::new(1e-6, 0, &Cancel::new())).unwrap();
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
fn a_degenerate_far_wedge_is_integrated_exactly() {
    // A region of a random decoder ~32 standard deviations out whose vertex is nearly
    // degenerate (separation of variables had almost no successful paths there): log mass
    // -545.3567 by the Python slicing reference.
    let g = [
        -0.5971829576722052,
        -0.5242093612048158,
        0.6071054774016754,
        -0.2631547984614597,
        -0.006864459381237838,
        0.964729200990678,
        0.27231472479274765,
        -0.0010246836382463264,
        -0.9622076910337454,
        0.6479550130933063,
        0.743772653086758,
        -0.1641844740757738,
    ];
    let h = [-0.4124194256261446, -1.0928668452090948, 2.0665351147103204, -0.9453409315056456];
    let mean = [-0.06249913, -0.00753739, 0.2144043];
    let cov = [
        0.99207244,
        -9.28888386e-04,
        2.72733204e-02,
        -9.28888386e-04,
        0.999856675,
        3.09707459e-03,
        2.72733204e-02,
        3.09707459e-03,
        0.905889239,
    ];
    let shape = PolytopeShape::new(&g, 3, &cov).unwrap();
    let out = shape.moments(&h, &mean, false, &IntegrationSettings::new(1e-4, 0, &Cancel::new())).unwrap();
    assert!(out.log_mass.is_finite());
    assert!((out.log_mass + 545.3567).abs() < 1e-4, "{}", out.log_mass);
    assert!(out.error < 1e-4, "{}", out.error);
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
    let rows = vec![
        [-0.40189482, 0.91568584],
        [-0.00415525, -0.99999137],
        [-0.99658542, -0.08256817],
        [0.40189482, -0.91568584],
    ];
    let offsets = vec![0.54028856, 0.48540897, 0.04986396, 1.81140916];
    let poly = polygon::Polygon2::new(rows, offsets, [1.0, 0.0, 0.0, 1.0]);
    let log_mass = poly.log_mass(&[0.0, 0.0], 0.0);
    assert!((log_mass + 1.3428).abs() < 3e-3, "{log_mass}");
}

#[test]
fn a_strip_whose_normals_round_past_antiparallel_has_the_right_mass() {
    // A slice of a cone: rows 0 and 1 are antiparallel up to the last bit, row 2 closes the
    // strip at one end. The arc at infinity of the open end used to come out as 2 pi instead
    // of 0 (mass e^0.40). Reference: the mass along the strip, int phi(x) Phi(upper(x)) dx.
    let rows = vec![
        [-0.9995873204078933, -0.02872610101923639],
        [0.9995873204078934, 0.02872610101923602],
        [0.09577166028888834, 0.9954033298545418],
    ];
    let t = 0.8;
    let offsets = vec![
        -1.746389483118592 + 3.859844960713404 * t,
        -0.8248704355187916 + 1.8231167929923178 * t,
        -0.581641502079146 + 1.5834871530750179 * t,
    ];
    let poly = polygon::Polygon2::new(rows.clone(), vec![0.0; 3], [1.0, 0.0, 0.0, 1.0]);
    let log_mass = poly.log_mass_whitened(offsets.clone(), 0.0);
    let u = rows[1];
    let v = [-u[1], u[0]];
    let (lo, hi) = (-offsets[0], offsets[1]);
    let (along, across) = (rows[2][0] * u[0] + rows[2][1] * u[1], rows[2][0] * v[0] + rows[2][1] * v[1]);
    let pieces = 200;
    let width = (hi - lo) / pieces as f64;
    let mut mass = 0.0;
    for p in 0..pieces {
        let centre = lo + (p as f64 + 0.5) * width;
        for (x, w) in normal::GL_NODES.iter().zip(normal::GL_WEIGHTS) {
            let x = centre + 0.5 * width * x;
            mass +=
                0.5 * width * w * normal::log_pdf(x).exp() * normal::log_ndtr((offsets[2] - along * x) / across).exp();
        }
    }
    assert!((log_mass - mass.ln()).abs() < 1e-10, "{log_mass} vs {}", mass.ln());
}
