//! Enumerates the regions of a random decoder: `cargo run --release --example enumerate -- 3,32,32,2 [slope] [seed]`.
use std::sync::Arc;
use std::time::Instant;

use exactem::partition::Partition;
use exactem::{Cancel, Decoder};
use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let widths: Vec<usize> = args.get(1).map(|s| s.as_str()).unwrap_or("2,64,64,10").split(',').map(|w| w.parse().unwrap()).collect();
    let slope: f64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(0.1);
    let seed: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(0);
    let mut rng = Pcg64::seed_from_u64(seed);
    let (mut weights, mut biases) = (Vec::new(), Vec::new());
    for pair in widths.windows(2) {
        let bound = 1.0 / (pair[0] as f64).sqrt();
        weights.push(DMatrix::from_fn(pair[1], pair[0], |_, _| rng.random_range(-bound..bound)));
        biases.push(DVector::from_fn(pair[1], |_, _| rng.random_range(-bound..bound)));
    }
    let decoder = Arc::new(Decoder::new(weights, biases, vec![slope; widths.len() - 2]).unwrap());
    for _ in 0..3 {
        let start = Instant::now();
        let part = Partition::enumerate(decoder.clone(), 10_000_000, &Cancel::new()).unwrap();
        println!("{:?}: {} regions in {:.1} ms", widths, part.len(), start.elapsed().as_secs_f64() * 1e3);
    }
}
