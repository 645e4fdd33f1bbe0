//! Arguments shared by several commands: which network, which weights, which input size.

use std::path::PathBuf;

use sknet::config::NetworkConfig;
use sknet::presets;
use sknet::weights::{load_pretrained, LoadOptions, Pretrained};

use super::CliError;

/// Which network, at which size.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Preset name (see `sknet archs`).
    #[arg(long, default_value = "keras-seed")]
    pub arch: String,
    /// A JSON or TOML config file; overrides --arch.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input size: `S` or `HxW` (default: the architecture's own).
    #[arg(long)]
    pub input: Option<String>,
    /// Number of classes (default: the architecture's own).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which weights, for which network.
#[derive(Debug, clap::Args)]
pub struct WeightsArgs {
    /// Weights: a .safetensors, .pth, .bin or .pt file, or hf:OWNER/NAME (Hugging Face hub,
    /// e.g. hf:timm/skresnet18.ra_in1k; cached, works offline once cached).
    #[arg(long)]
    pub weights: String,
    /// Preset the weights are for (default: the config stored in the file, else the preset
    /// whose keys and shapes the file matches).
    #[arg(long)]
    pub arch: Option<String>,
    /// A JSON or TOML config for the weights; overrides --arch.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Load what matches and keep the rest freshly initialised (e.g. a new classifier).
    #[arg(long)]
    pub allow_partial: bool,
    /// Load tensors holding NaN or infinite values instead of refusing the file.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

/// Resolves, reads and loads weights; warns on stderr when some were not loaded.
pub fn load_weights(
    args: &WeightsArgs,
    device: &burn::tensor::Device,
) -> Result<Pretrained, CliError> {
    let options = LoadOptions {
        arch: args.arch.clone(),
        config: args
            .config
            .as_deref()
            .map(NetworkConfig::from_file)
            .transpose()?,
        allow_partial: args.allow_partial,
        allow_nonfinite: args.allow_nonfinite,
    };
    let loaded = load_pretrained(&args.weights, &options, device)?;
    if !loaded.report.is_exact() {
        eprintln!(
            "warning: --allow-partial: some tensors were not loaded\n{}",
            loaded.report.describe()
        );
    }
    Ok(loaded)
}

/// The evaluation transform for `--input`: the weights' own (resized to `--input` if given), else
/// timm's ImageNet transform at `--input` or the network's size.
pub fn preprocessing(
    stored: Option<sknet::infer::Preprocess>,
    input: Option<[usize; 2]>,
    network_input: [usize; 2],
) -> sknet::infer::Preprocess {
    match (stored, input) {
        (Some(p), None) => p,
        (Some(p), Some(size)) => sknet::infer::Preprocess { size, ..p },
        (None, size) => sknet::infer::Preprocess::imagenet(size.unwrap_or(network_input)),
    }
}

/// Checks `--batch` and `--workers` of the commands that read a dataset.
pub fn check_loader_flags(batch: usize, workers: usize) -> Result<(), CliError> {
    let (max_batch, max_workers) = (sknet::train::MAX_BATCH, sknet::train::MAX_WORKERS);
    for (arg, value, max) in [
        ("--batch", batch, max_batch),
        ("--workers", workers, max_workers),
    ] {
        if !(1..=max).contains(&value) {
            return Err(CliError::Argument {
                arg: format!("{arg} {value}"),
                message: format!("must be within 1..={max}"),
            });
        }
    }
    Ok(())
}

/// Parses `224` or `224x160` into `[height, width]`.
pub fn parse_input_size(text: &str) -> Result<[usize; 2], CliError> {
    let max = sknet::config::MAX_INPUT_SIDE;
    let bad = || CliError::Argument {
        arg: format!("--input {text}"),
        message: format!(
            "expected a size like 224 or 224x160 (height x width), each within 1..={max}"
        ),
    };
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let nums: Vec<usize> = parts
        .iter()
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let side = |s: usize| (1..=max).contains(&s);
    match nums.as_slice() {
        [s] if side(*s) => Ok([*s, *s]),
        [h, w] if side(*h) && side(*w) => Ok([*h, *w]),
        _ => Err(bad()),
    }
}

impl ModelArgs {
    /// The config these arguments describe.
    pub fn network_config(&self) -> Result<NetworkConfig, CliError> {
        let mut config = match &self.config {
            Some(path) => NetworkConfig::from_file(path)?,
            None => presets::by_name(&self.arch)?,
        };
        if let Some(classes) = self.classes {
            config.num_classes = classes;
        }
        if let Some(size) = &self.input {
            config.default_input = parse_input_size(size)?;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sizes() {
        assert_eq!(parse_input_size("224").unwrap(), [224, 224]);
        assert_eq!(parse_input_size("224x160").unwrap(), [224, 160]);
        assert!(parse_input_size("0").is_err());
        assert!(parse_input_size("axb").is_err());
        assert!(parse_input_size("1x2x3").is_err());
        assert!(parse_input_size("1000000").is_err());
    }
}
