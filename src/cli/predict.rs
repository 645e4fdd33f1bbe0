//! `sknet predict`: classify images with trained weights.

use std::path::PathBuf;

use sknet::device::default_device;
use sknet::infer;

use super::args::{load_weights, parse_input_size, preprocessing, WeightsArgs};
use super::CliError;

/// `sknet predict` arguments.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Image files (jpg, png, webp, gif, bmp, tiff).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Crop size `S` or `HxW` (default: the network's input size).
    #[arg(long)]
    pub input: Option<String>,
    /// Add each SK unit's mean large-kernel weight (channel average) per image.
    #[arg(long)]
    pub attention: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The top classes of every image.
pub fn run(args: PredictArgs) -> Result<String, CliError> {
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    let input = args.input.as_deref().map(parse_input_size).transpose()?;
    let pre = preprocessing(loaded.preprocess, input, model.config.default_input);
    model.check_input(&[1, model.config.in_channels, pre.size[0], pre.size[1]])?;
    let classes = infer::class_names(loaded.classes, model.config.num_classes)?;
    let predictions = infer::predict(
        &model,
        &pre,
        &args.images,
        &classes,
        args.topk,
        args.attention,
        &device,
    )?;
    if args.json {
        return Ok(
            serde_json::to_string_pretty(&predictions).expect("predictions serialize") + "\n",
        );
    }
    let mut out = String::new();
    for p in predictions {
        out.push_str(&format!("{}\n", p.path));
        for s in p.top {
            out.push_str(&format!(
                "  {:>6.2}%  {:>4}  {}\n",
                s.probability * 100.0,
                s.index,
                s.label
            ));
        }
        for w in p.attention.iter().flatten() {
            out.push_str(&format!(
                "  {:<10} {:.4}  weight of {}\n",
                w.unit, w.weight, w.kernel
            ));
        }
    }
    Ok(out)
}
