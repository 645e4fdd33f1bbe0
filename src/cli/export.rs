//! `sknet export`: weights as a timm-compatible safetensors file.

use std::path::PathBuf;

use sknet::device::default_device;
use sknet::weights::checkpoint::write_safetensors;
use sknet::weights::load;

use super::args::{load_weights, WeightsArgs};
use super::CliError;

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// safetensors with timm's key names.
    Safetensors,
}

/// `sknet export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
    /// Output file.
    #[arg(long, short)]
    pub output: PathBuf,
}

/// Writes the file.
pub fn run(args: ExportArgs) -> Result<String, CliError> {
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    match args.format {
        ExportFormat::Safetensors => {
            let tensors = load::state_dict(&loaded.model)?;
            let n = tensors.len();
            let meta = load::export_metadata(&loaded.model, loaded.classes.as_deref());
            write_safetensors(&args.output, tensors, meta)?;
            Ok(format!(
                "wrote {} ({} tensors, {} as timm keys; {} loaded from {})\n",
                args.output.display(),
                n,
                loaded.model.config.name,
                loaded.report.loaded,
                args.weights.weights
            ))
        }
    }
}
