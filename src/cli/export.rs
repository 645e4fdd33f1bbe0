//! `sknet export`: weights as a timm-compatible safetensors file, or the network as ONNX.

use std::path::PathBuf;

use sknet::device::default_device;
use sknet::infer;
use sknet::onnx::{write_onnx, OnnxOptions};
use sknet::weights::checkpoint::write_safetensors;
use sknet::weights::load;

use super::args::{load_weights, parse_input_size, preprocessing, WeightsArgs};
use super::CliError;

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// safetensors with timm's key names.
    Safetensors,
    /// An ONNX model (opset 17, dynamic batch), preprocessing and classes in its metadata.
    Onnx,
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
    /// ONNX: keep the BatchNorms as nodes (default: folded into the convolutions).
    #[arg(long)]
    pub keep_bn: bool,
    /// ONNX: add each SK unit's branch weights as an output, `attention.{unit}`.
    #[arg(long)]
    pub attention: bool,
    /// ONNX: the input size `S` or `HxW` (default: the preprocessing's, else the network's).
    #[arg(long)]
    pub input: Option<String>,
}

/// Writes the file.
pub fn run(args: ExportArgs) -> Result<String, CliError> {
    if matches!(args.format, ExportFormat::Safetensors) {
        let onnx_only = [
            ("--keep-bn", args.keep_bn),
            ("--attention", args.attention),
            ("--input", args.input.is_some()),
        ];
        if let Some((flag, _)) = onnx_only.iter().find(|(_, set)| *set) {
            return Err(CliError::Argument {
                arg: flag.to_string(),
                message: "applies to --format onnx only".into(),
            });
        }
    }
    let size = args.input.as_deref().map(parse_input_size).transpose()?;
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
        ExportFormat::Onnx => {
            let model = &loaded.model;
            let pre = preprocessing(loaded.preprocess, size, model.config.default_input);
            let classes = infer::class_names(loaded.classes, model.config.num_classes)?;
            let options = OnnxOptions::new(pre.size)
                .with_keep_batchnorm(args.keep_bn)
                .with_attention(args.attention);
            let summary = write_onnx(&args.output, model, &options, &pre, &classes)?;
            Ok(format!(
                "wrote {} (ONNX opset {}, {} nodes, {} initializers, {:.1} MB; {} at {}x{}, \
                 BatchNorm {}; outputs: {})\n",
                args.output.display(),
                sknet::onnx::OPSET,
                summary.nodes,
                summary.initializers,
                summary.bytes as f64 / 1e6,
                model.config.name,
                pre.size[0],
                pre.size[1],
                if args.keep_bn { "kept" } else { "folded" },
                match summary.outputs.len() {
                    1 => "logits".to_string(),
                    n => format!("logits and {} attention maps", n - 1),
                }
            ))
        }
    }
}
