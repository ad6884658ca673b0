//! Times exact log-likelihood and E-step of a random S = 1 decoder:
//! `cargo run --release --example inference -- 1,16,16,2 4000`.
use std::sync::Arc;
use std::time::Instant;

use exactem::inference::{e_step, log_likelihood, GaussIntegrator, RegionAlgebra};
use exactem::partition::Partition;
use exactem::{Cancel, Decoder, IntegrationSettings};
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let widths: Vec<usize> =
        args.get(1).map(|s| s.as_str()).unwrap_or("1,16,16,2").split(',').map(|w| w.parse().expect("widths")).collect();
    let n: usize = args.get(2).map(|s| s.parse().expect("points")).unwrap_or(4000);
    let decoder = Arc::new(Decoder::random_uniform(&widths, 0.1, 0).expect("decoder"));
    let cancel = Cancel::new();
    let partition = Partition::enumerate(decoder.clone(), 1_000_000, &cancel).expect("partition");
    let noise = vec![0.05; decoder.output_dim()];
    let algebra = RegionAlgebra::new(&partition, &noise).expect("algebra");
    let integrator =
        GaussIntegrator::new(&partition, &algebra, &IntegrationSettings::new(1e-6, 0, &cancel)).expect("integrator");
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
    let z = DMatrix::from_fn(decoder.latent_dim(), n, |_, _| StandardNormal.sample(&mut rng));
    let x = decoder.forward_batch(z.as_view()).map(|v: f64| {
        let e: f64 = StandardNormal.sample(&mut rng);
        v + 0.2 * e
    });
    for _ in 0..20 {
        let start = Instant::now();
        let ll = log_likelihood(&algebra, &integrator, x.as_view(), &cancel).expect("ll");
        let t_ll = start.elapsed();
        let start = Instant::now();
        let es = e_step(&algebra, &integrator, x.as_view(), &cancel).expect("e-step");
        println!(
            "R={} N={n}: log_likelihood {:.2} ms, e_step {:.2} ms ({} entries, mean ll {:.3})",
            partition.len(),
            t_ll.as_secs_f64() * 1e3,
            start.elapsed().as_secs_f64() * 1e3,
            es.m0.len(),
            ll.iter().sum::<f64>() / n as f64
        );
    }
}
