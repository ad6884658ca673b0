use super::*;
use crate::linalg::dot;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

fn random_decoder(widths: &[usize], slope: f64, seed: u64) -> Arc<Decoder> {
    Arc::new(Decoder::random_uniform(widths, slope, seed).unwrap())
}

fn enumerate(decoder: &Arc<Decoder>) -> Partition {
    Partition::enumerate(decoder.clone(), 10_000_000, &Cancel::new()).unwrap()
}

fn binomial(n: usize, k: usize) -> usize {
    (0..k).fold(1usize, |acc, i| acc * (n - i) / (i + 1))
}

#[test]
fn one_layer_in_general_position_has_zaslavsky_count() {
    for s in 1..=4 {
        for h in [1, 3, 8, 15] {
            let dec = random_decoder(&[s, h, 2], 0.0, (s * 100 + h) as u64);
            let expected: usize = (0..=s.min(h)).map(|i| binomial(h, i)).sum();
            assert_eq!(enumerate(&dec).len(), expected, "S={s}, H={h}");
        }
    }
}

/// Every pattern met by sampling is enumerated, every region is distinct, and every interior
/// point reproduces its pattern and its affine map.
fn check_against_sampling(dec: &Arc<Decoder>, samples: usize, seed: u64) {
    let part = enumerate(dec);
    let s = dec.latent_dim();
    let h = dec.n_hidden();
    let d = dec.output_dim();
    let mut seen = std::collections::HashSet::new();
    for q in 0..part.len() {
        assert!(seen.insert(part.pattern_words(q).to_vec()), "region {q} enumerated twice");
        let z = part.interior_point(q);
        let mut bits = vec![false; h];
        let out = dec.forward_with_pattern(z, &mut bits);
        assert_eq!(
            pack_pattern(bits, h),
            part.pattern_words(q).into(),
            "interior point of region {q} has another pattern"
        );
        let (a, b) = (part.a(q), part.b(q));
        for i in 0..d {
            let affine = dot(&a[i * s..(i + 1) * s], z) + b[i];
            assert!(
                (affine - out[i]).abs() <= 1e-9 * (1.0 + out[i].abs()),
                "A, b of region {q} disagree with the forward pass"
            );
        }
    }
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut bits = vec![false; h];
    for n in 0..samples {
        let scale = [0.3, 1.0, 3.0, 10.0, 30.0][n % 5];
        let z: Vec<f64> = (0..s).map(|_| scale * (rng.random::<f64>() * 2.0 - 1.0)).collect();
        dec.forward_with_pattern(&z, &mut bits);
        let key = pack_pattern(bits.iter().copied(), h);
        let q = part.find(&key).unwrap_or_else(|| panic!("pattern at {z:?} was not enumerated"));
        assert_eq!(part.locate(&z), q);
    }
}

#[test]
fn deep_nets_cover_every_sampled_pattern() {
    for (s, widths, slope) in [
        (1, vec![1, 12, 12, 12, 3], 0.1),
        (1, vec![1, 20, 20, 2], -1.0),
        (2, vec![2, 12, 12, 3], 0.0),
        (2, vec![2, 10, 10, 10, 2], -1.0),
        (2, vec![2, 16, 16, 2], 0.1),
        (2, vec![2, 8, 8, 2], 1.0),
        (3, vec![3, 8, 8, 2], 0.1),
        (3, vec![3, 6, 6, 6, 2], -1.0),
        (3, vec![3, 10, 6, 2], 0.0),
    ] {
        assert_eq!(widths[0], s);
        let dec = random_decoder(&widths, slope, 11 + s as u64);
        check_against_sampling(&dec, 30_000, 5);
    }
}

#[test]
fn neighbours_are_mutual_and_facets_are_tight() {
    for widths in [vec![1, 10, 10, 2], vec![2, 10, 10, 2], vec![3, 6, 6, 2]] {
        let dec = random_decoder(&widths, 0.2, 3);
        let part = enumerate(&dec);
        for q in 0..part.len() {
            let z = part.interior_point(q).to_vec();
            for (f, r) in part.facets(q).iter().zip(part.neighbors(q)) {
                assert!(dot(&f.normal, &z) < f.offset, "interior point violates a facet");
                assert!((dot(&f.normal, &f.point) - f.offset).abs() < 1e-8 * (1.0 + f.offset.abs()));
                assert_ne!(r, q, "region {q} is its own neighbour");
                assert!(part.neighbors(r).contains(&q), "region {r} across a facet of {q} does not point back");
            }
        }
    }
}

fn decoder_from(rows: &[[f64; 3]], s: usize) -> Arc<Decoder> {
    // rows are (w_1, w_2, b) for S = 2 or (w_1, b, _) for S = 1.
    let h = rows.len();
    let w1 = DMatrix::from_fn(h, s, |i, j| rows[i][j]);
    let b1 = DVector::from_fn(h, |i, _| rows[i][s]);
    let w2 = DMatrix::from_element(1, h, 1.0);
    Arc::new(Decoder::new(vec![w1, w2], vec![b1, DVector::zeros(1)], vec![0.0]).unwrap())
}

#[test]
fn degenerate_arrangements_have_their_known_counts() {
    // Duplicate and scaled-duplicate hyperplanes count once.
    let dup = decoder_from(&[[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 2);
    assert_eq!(enumerate(&dup).len(), 4);
    // Opposite orientation of the same hyperplane.
    let opposite = decoder_from(&[[1.0, 1.0, 0.5], [-1.0, -1.0, -0.5]], 2);
    assert_eq!(enumerate(&opposite).len(), 2);
    // Parallel lines: k parallel lines make k + 1 strips.
    let parallel = decoder_from(&[[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [-2.0, 0.0, 4.0], [3.0, 0.0, -1.5]], 2);
    assert_eq!(enumerate(&parallel).len(), 5);
    // Parallel lines crossed by one line: (k + 1) * 2.
    let crossed = decoder_from(&[[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.3]], 2);
    assert_eq!(enumerate(&crossed).len(), 6);
    // Dead units (all-zero rows) and constant units never split.
    let dead = decoder_from(&[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, -1.0, 0.0]], 2);
    let part = enumerate(&dead);
    assert_eq!(part.len(), 2);
    assert!(part.pattern(0)[0] && !part.pattern(0)[1]);
    // k lines through one point: 2k sectors.
    let star: Vec<[f64; 3]> = (0..5)
        .map(|i| {
            let t = i as f64 * std::f64::consts::PI / 5.0 + 0.1;
            [t.cos(), t.sin(), -(t.cos() * 1.0 + t.sin() * 2.0)]
        })
        .collect();
    assert_eq!(enumerate(&decoder_from(&star, 2)).len(), 10);
    // S = 1 duplicates: breakpoints 0, 0, 1 -> 3 intervals.
    let line = decoder_from(&[[1.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [1.0, -1.0, 0.0]], 1);
    assert_eq!(enumerate(&line).len(), 3);
}

#[test]
fn degenerate_arrangements_in_three_dimensions() {
    // Six planes through the origin, pairwise not parallel but all containing the z3-axis:
    // they cut R^3 like 6 lines through a point cut R^2: 12 wedges.
    let h = 6;
    let w1 = DMatrix::from_fn(h, 3, |i, j| {
        let t = i as f64 * std::f64::consts::PI / h as f64 + 0.2;
        [t.cos(), t.sin(), 0.0][j]
    });
    let dec = Arc::new(
        Decoder::new(vec![w1, DMatrix::from_element(1, h, 1.0)], vec![DVector::zeros(h), DVector::zeros(1)], vec![0.0])
            .unwrap(),
    );
    assert_eq!(enumerate(&dec).len(), 12);
    // Duplicates and a dead unit beside the three coordinate planes: 8 octants.
    let w1 = DMatrix::from_row_slice(6, 3, &[1., 0., 0., 0., 1., 0., 0., 0., 1., 2., 0., 0., 0., 0., 0., 0., -1., 0.]);
    let dec = Arc::new(
        Decoder::new(vec![w1, DMatrix::from_element(1, 6, 1.0)], vec![DVector::zeros(6), DVector::zeros(1)], vec![0.1])
            .unwrap(),
    );
    assert_eq!(enumerate(&dec).len(), 8);
}

#[test]
fn layer_two_unit_whose_zero_set_misses_every_cell() {
    // Layer 2 unit = relu(z1) + relu(-z1) + 1 > 0 everywhere: it never splits.
    let w1 = DMatrix::from_row_slice(2, 2, &[1.0, 0.0, -1.0, 0.0]);
    let w2 = DMatrix::from_row_slice(1, 2, &[1.0, 1.0]);
    let w3 = DMatrix::from_element(1, 1, 1.0);
    let dec = Arc::new(
        Decoder::new(
            vec![w1, w2, w3],
            vec![DVector::zeros(2), DVector::from_element(1, 1.0), DVector::zeros(1)],
            vec![0.0, 0.0],
        )
        .unwrap(),
    );
    let part = enumerate(&dec);
    assert_eq!(part.len(), 2);
    for q in 0..2 {
        assert!(part.pattern(q)[2]);
    }
}

#[test]
fn region_limit_stops_enumeration_cleanly() {
    let dec = random_decoder(&[2, 30, 30, 2], 0.1, 1);
    match Partition::enumerate(dec, 100, &Cancel::new()) {
        Err(Error::RegionLimit { limit: 100 }) => {}
        other => panic!("expected a region-limit error, got {:?}", other.map(|p| p.len())),
    }
}

#[test]
fn cancellation_stops_enumeration() {
    let dec = random_decoder(&[3, 20, 20, 2], 0.1, 1);
    let cancel = Cancel::new();
    cancel.cancel();
    assert!(matches!(Partition::enumerate(dec, 1_000_000, &cancel), Err(Error::Interrupted)));
}

#[test]
fn enumeration_order_is_deterministic() {
    let dec = random_decoder(&[2, 24, 24, 2], 0.1, 9);
    let first = enumerate(&dec);
    for _ in 0..3 {
        let again = enumerate(&dec);
        assert_eq!(first.len(), again.len());
        for q in 0..first.len() {
            assert_eq!(first.pattern_words(q), again.pattern_words(q));
            assert_eq!(first.interior_point(q), again.interior_point(q));
        }
    }
}

#[test]
fn boundedness_matches_geometry() {
    // One layer: a region is unbounded exactly when it is met by a ray from far away.
    for s in [2, 3] {
        let dec = random_decoder(&[s, 7, 1], 0.0, 4);
        let part = enumerate(&dec);
        let mut rng = Pcg64::seed_from_u64(2);
        let mut far = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let dir: Vec<f64> = (0..s).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
            let z: Vec<f64> = dir.iter().map(|v| v * 1e6).collect();
            far.insert(part.locate(&z));
        }
        for q in 0..part.len() {
            if far.contains(&q) {
                assert!(!part.is_bounded(q), "S={s}: region {q} reaches infinity but is called bounded");
            }
        }
        let unbounded = (0..part.len()).filter(|&q| !part.is_bounded(q)).count();
        // One-layer arrangements: 2 * sum_{i<S} C(H-1, i) unbounded regions (general position).
        let expected: usize = 2 * (0..s).map(|i| binomial(6, i)).sum::<usize>();
        assert_eq!(unbounded, expected, "S={s}");
    }
}
