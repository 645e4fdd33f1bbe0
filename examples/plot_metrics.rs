//! Draws `curves.png` again from a run's `metrics.csv`, with the figure `sknet train` draws
//! today (for runs made before it, such as the shipped model's).
//!
//! `cargo run --release --example plot_metrics -- models/cifar10-metrics.csv models/cifar10-curves.png`

use std::error::Error;

use sknet::train::EpochMetrics;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, metrics, png] = args.as_slice() else {
        return Err("usage: plot_metrics METRICS.csv OUT.png".into());
    };
    let mut reader = csv::Reader::from_path(metrics)?;
    let history = reader
        .deserialize::<EpochMetrics>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{metrics}: {e}"))?;
    let bytes = sknet::train::plot::curves_png(&history)?;
    sknet::weights::checkpoint::write_atomic(std::path::Path::new(png), &bytes)?;
    println!("{png}: {} epochs", history.len());
    Ok(())
}
