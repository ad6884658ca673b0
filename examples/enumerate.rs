//! Enumerates the regions of a random decoder, three times, printing the time of each:
//! `cargo run --release --example enumerate -- 3,32,32,2 [slope] [seed]`.
use std::sync::Arc;
use std::time::Instant;

use exactem::partition::Partition;
use exactem::{Cancel, Decoder};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let widths: Vec<usize> = args
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("2,64,64,10")
        .split(',')
        .map(|w| w.parse().expect("widths like 2,64,64,10"))
        .collect();
    let slope: f64 = args.get(2).map(|s| s.parse().expect("a number")).unwrap_or(0.1);
    let seed: u64 = args.get(3).map(|s| s.parse().expect("an integer")).unwrap_or(0);
    let decoder = Arc::new(Decoder::random_uniform(&widths, slope, seed).expect("a valid decoder"));
    for _ in 0..3 {
        let start = Instant::now();
        let part = Partition::enumerate(decoder.clone(), 10_000_000, &Cancel::new()).expect("enumeration");
        println!("{:?}: {} regions in {:.1} ms", widths, part.len(), start.elapsed().as_secs_f64() * 1e3);
    }
}
