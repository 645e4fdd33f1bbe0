//! Writes a preset's network with sknet's deterministic weights (BatchNorm statistics included,
//! so that folding them changes the convolutions) as a timm-keyed safetensors file: weights for
//! networks that have no reference implementation to draw them from, such as keras-seed.
//!
//! `cargo run --release --example init_weights -- keras-seed keras-seed.safetensors`

use std::error::Error;

use sknet::weights::checkpoint::write_safetensors;
use sknet::weights::{deterministic_init, load};
use sknet::{presets, SkNet};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, arch, out] = args.as_slice() else {
        return Err("usage: init_weights ARCH OUT.safetensors".into());
    };
    let config = presets::by_name(arch)?;
    let device = burn::tensor::Device::flex();
    let model = deterministic_init(SkNet::new(&config, &device)?);
    let tensors = load::state_dict(&model)?;
    let n = tensors.len();
    write_safetensors(
        std::path::Path::new(out),
        tensors,
        load::export_metadata(&model, None),
    )?;
    println!("{out}: {n} tensors of {arch}");
    Ok(())
}
