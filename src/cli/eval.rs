//! `sknet eval`: top-1, top-5, loss, per-class accuracy and the confusion matrix.

use std::path::PathBuf;

use serde::Serialize;
use sknet::device::default_device;
use sknet::eval::EvalReport;
use sknet::infer::{self, Preprocess};
use sknet::Selection;

use super::args::{check_loader_flags, load_weights, WeightsArgs};
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
    /// Ablation: replace every SK unit's learned weights with equal ones (`uniform`) or with
    /// one branch only (`branch:K`), and report the change against `learned` on the same
    /// images. `learned` is plain evaluation.
    #[arg(long, value_name = "learned|uniform|branch:K")]
    pub select: Option<String>,
    /// Test-time augmentation: average the logits of each image and its mirror image.
    #[arg(long)]
    pub tta_flip: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `learned`, `uniform` or `branch:K`.
fn parse_selection(text: &str) -> Result<Selection, CliError> {
    let bad = || CliError::Argument {
        arg: format!("--select {text}"),
        message: "expected learned, uniform or branch:K (K a branch index, 0 for the \
                  smallest kernel)"
            .into(),
    };
    match text {
        "learned" => Ok(Selection::Learned),
        "uniform" => Ok(Selection::Uniform),
        _ => text
            .strip_prefix("branch:")
            .and_then(|k| k.parse().ok())
            .map(Selection::Branch)
            .ok_or_else(bad),
    }
}

/// An ablation: the learned selection against a fixed one, on the same images.
#[derive(Serialize)]
struct Ablation<'a> {
    select: &'a str,
    learned: &'a EvalReport,
    selected: &'a EvalReport,
    /// `selected - learned`, for top-1, top-5 (fractions) and loss.
    change: Change,
}

#[derive(Serialize)]
struct Change {
    top1: f64,
    top5: f64,
    loss: f64,
}

/// The report, as text or JSON.
pub fn run(args: EvalArgs) -> Result<String, CliError> {
    check_loader_flags(args.batch, args.workers)?;
    let selection = args.select.as_deref().map(parse_selection).transpose()?;
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    // Checked before the learned pass, so that a bad branch fails at once.
    let ablated = match selection {
        Some(s) if s != Selection::Learned => Some(model.clone().with_selection(s)?),
        _ => None,
    };
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
    let data = std::sync::Arc::new(data);
    let evaluate = |model: &sknet::SkNet| {
        sknet::eval::evaluate(
            model,
            data.clone(),
            &indices,
            &label_map,
            &classes,
            &pre,
            sknet::eval::EvalOptions {
                batch: args.batch,
                workers: args.workers,
                flip: args.tta_flip,
            },
            &device,
        )
        .map_err(|source| CliError::Eval {
            data: args.data.display().to_string(),
            source,
        })
    };
    let report = evaluate(&model)?;
    for image in &report.skipped_images {
        eprintln!("warning: skipping {}: {}", image.image, image.reason);
    }
    let Some(ablated) = ablated else {
        return Ok(if args.json {
            serde_json::to_string_pretty(&report).expect("report") + "\n"
        } else {
            report.text()
        });
    };
    let selected = evaluate(&ablated)?;
    let ablation = Ablation {
        select: args.select.as_deref().unwrap_or_default(),
        learned: &report,
        selected: &selected,
        change: Change {
            top1: selected.top1 - report.top1,
            top5: selected.top5 - report.top5,
            loss: selected.loss - report.loss,
        },
    };
    Ok(if args.json {
        serde_json::to_string_pretty(&ablation).expect("ablation") + "\n"
    } else {
        ablation.text()
    })
}

impl Ablation<'_> {
    fn text(&self) -> String {
        let line = |name: &str, r: &EvalReport| {
            format!(
                "  {name:<10} top-1 {:6.2}%  top-5 {:6.2}%  loss {:.4}\n",
                r.top1 * 100.0,
                r.top5 * 100.0,
                r.loss
            )
        };
        format!(
            "selection ablation on {} images\n{}{}  change     top-1 {:+.2} points, top-5 {:+.2} \
             points, loss {:+.4}\n",
            self.learned.images,
            line("learned", self.learned),
            line(self.select, self.selected),
            self.change.top1 * 100.0,
            self.change.top5 * 100.0,
            self.change.loss
        )
    }
}
