//! `sknet eval`: top-1, top-5, loss, per-class accuracy and the confusion matrix.

use std::path::PathBuf;

use sknet::device::default_device;
use sknet::infer::{self, Preprocess};

use super::args::{load_weights, WeightsArgs};
use super::CliError;

/// `sknet eval` arguments.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// A labelled image folder (class subfolders named as the checkpoint's classes), or a
    /// CIFAR binary folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only the last N images of each class (the validation split of `sknet train`).
    #[arg(long)]
    pub val_per_class: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Data loading threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The report, as text or JSON.
pub fn run(args: EvalArgs) -> Result<String, CliError> {
    let (max_batch, max_workers) = (sknet::train::MAX_BATCH, sknet::train::MAX_WORKERS);
    for (arg, value, max) in [
        ("--batch", args.batch, max_batch),
        ("--workers", args.workers, max_workers),
    ] {
        if !(1..=max).contains(&value) {
            return Err(CliError::Argument {
                arg: format!("{arg} {value}"),
                message: format!("must be within 1..={max}"),
            });
        }
    }
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    let data = sknet::data::Dataset::open(&args.data)?;
    let k = model.config.num_classes;
    let classes = match loaded.classes {
        Some(c) => c,
        None => infer::class_names(None, k)?,
    };
    // Folder names map to the checkpoint's class names.
    let label_map = data
        .classes
        .iter()
        .map(|name| {
            classes
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| CliError::Argument {
                    arg: format!("--data {}", args.data.display()),
                    message: format!(
                        "class folder `{name}` is not one of the checkpoint's {k} classes ({})",
                        classes
                            .iter()
                            .take(10)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                            + if k > 10 { ", ..." } else { "" }
                    ),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let indices: Vec<usize> = match args.val_per_class {
        Some(n) => data.split(n)?.1,
        None => (0..data.len()).collect(),
    };
    let size = model.config.default_input;
    let pre = loaded
        .preprocess
        .unwrap_or_else(|| Preprocess::imagenet(size));
    let report = sknet::eval::evaluate(
        &model,
        std::sync::Arc::new(data),
        &indices,
        &label_map,
        &classes,
        &pre,
        args.batch,
        args.workers,
        &device,
    )
    .map_err(|source| CliError::Eval {
        data: args.data.display().to_string(),
        source,
    })?;
    for image in &report.skipped_images {
        eprintln!("warning: skipping {}: {}", image.image, image.reason);
    }
    Ok(if args.json {
        serde_json::to_string_pretty(&report).expect("report") + "\n"
    } else {
        report.text()
    })
}
