//! The `sknet` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;
use thiserror::Error;

use crate::config::{ConfigError, NetworkConfig};
use crate::device::default_device;
use crate::infer::{self, InferError, Preprocess};
use crate::model::{InputError, SkNet};
use crate::presets;
use crate::summary::{summarize, thousands};
use crate::weights::checkpoint::{write_safetensors, Checkpoint, WeightsError};
use crate::weights::{hub, load};

/// Anything a command can fail with.
#[derive(Debug, Error)]
pub enum CliError {
    /// Bad architecture or config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad input size.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Bad weights file.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Bad image.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Bad dataset.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Bad argument.
    #[error("invalid argument `{arg}`: {message}")]
    Argument {
        /// The argument.
        arg: String,
        /// What was expected.
        message: String,
    },
}

/// Selective Kernel Networks: build, inspect and run SKNets.
#[derive(Debug, Parser)]
#[command(name = "sknet", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the preset architectures with parameters, multiply-adds and reference accuracy.
    Archs {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a Keras-style summary of a network.
    Summary(ModelArgs),
    /// Classify images with trained weights (timm's evaluation transform, top-k labels).
    Predict(PredictArgs),
    /// Write weights as a timm-compatible safetensors file (loads with strict=True in timm).
    Export(ExportArgs),
    /// Train on an image dataset (default: the CIFAR-10 subset shipped in data/cifar10-mini).
    Train(Box<TrainArgs>),
    /// Evaluate weights on a labelled image folder: top-1, top-5, loss, per class, confusion.
    Eval(EvalArgs),
    /// Time inference or a training step: median ms, images/s, peak memory.
    Bench(BenchArgs),
    /// Print the config of a preset (JSON, or TOML with --toml), to edit and pass to --config.
    Config {
        /// Preset name.
        #[arg(long)]
        arch: String,
        /// Print TOML instead of JSON.
        #[arg(long)]
        toml: bool,
    },
}

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
}

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
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sknet train` arguments.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Preset to train.
    #[arg(long, default_value = "sknet-tiny")]
    pub arch: String,
    /// A JSON or TOML network config; overrides --arch.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset: an ImageFolder (class subfolders) or a CIFAR-10/100 binary folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/cifar10-mini"))]
    pub data: PathBuf,
    /// Images per class held out for validation (the last ones of each class, in file order).
    #[arg(long, default_value_t = 100)]
    pub val_per_class: usize,
    /// Epochs (the default trains on the shipped subset in under 5 minutes on 2 cores).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Learning-rate schedule after warmup.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: crate::train::schedule::Schedule,
    /// Linear warmup epochs.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 30)]
    pub step_epochs: usize,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay on conv and linear weights (BatchNorm and biases are not decayed).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Augmentation (default: cifar for inputs up to 64 pixels, imagenet above).
    #[arg(long, value_enum)]
    pub augment: Option<crate::data::augment::Augment>,
    /// Training and evaluation input size `S` or `HxW` (default: the network's).
    #[arg(long)]
    pub input: Option<String>,
    /// Seed for initialisation, order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data loading threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Output folder for checkpoints, weights, metrics and the curve plot.
    #[arg(long, default_value = "runs/train")]
    pub output: PathBuf,
    /// Continue from a checkpoint.safetensors written by an earlier run (pass the same
    /// settings).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs in this invocation (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

/// `sknet bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Preset (see `sknet archs`).
    #[arg(long, default_value = "sknet50")]
    pub arch: String,
    /// A JSON or TOML config; overrides --arch.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Input size `S` or `HxW` (default: the network's).
    #[arg(long)]
    pub input: Option<String>,
    /// Time a training step (forward, backward, SGD update) instead of inference.
    #[arg(long)]
    pub train: bool,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

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

/// A network with weights loaded, and the class names its checkpoint carries.
pub struct Loaded {
    /// The network.
    pub model: SkNet,
    /// Class names from the checkpoint's metadata.
    pub classes: Option<Vec<String>>,
    /// Preprocessing from the checkpoint's metadata (sknet-trained weights).
    pub preprocess: Option<Preprocess>,
    /// What matched.
    pub report: load::LoadReport,
}

/// Resolves, reads and loads weights.
pub fn load_weights(args: &WeightsArgs, device: &burn::tensor::Device) -> Result<Loaded, CliError> {
    let path = hub::local_path(&args.weights)?;
    let ckpt = Checkpoint::read(&path)?;
    let explicit = args
        .config
        .as_deref()
        .map(NetworkConfig::from_file)
        .transpose()?;
    let config = load::resolve_config(&ckpt, args.arch.as_deref(), explicit)?;
    let classes = load::checkpoint_class_names(&ckpt)?;
    let preprocess = ckpt
        .metadata
        .get(crate::train::META_PREPROCESS)
        .map(|json| {
            serde_json::from_str::<Preprocess>(json).map_err(|e| WeightsError::Metadata {
                path: ckpt.path.clone(),
                key: crate::train::META_PREPROCESS.into(),
                message: e.to_string(),
            })
        })
        .transpose()?;
    let model = SkNet::new(&config, device)?;
    let (model, report) = load::load_into(model, ckpt, args.allow_partial)?;
    if !report.is_exact() {
        eprintln!(
            "warning: --allow-partial: some tensors were not loaded\n{}",
            report.describe()
        );
    }
    Ok(Loaded {
        model,
        classes,
        preprocess,
        report,
    })
}

fn predict(args: PredictArgs) -> Result<String, CliError> {
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    let size = match &args.input {
        Some(text) => parse_input_size(text)?,
        None => model.config.default_input,
    };
    model.check_input(&[1, model.config.in_channels, size[0], size[1]])?;
    let classes = infer::class_names(loaded.classes, model.config.num_classes)?;
    let pre = match loaded.preprocess {
        Some(p) if args.input.is_none() => p,
        Some(p) => Preprocess { size, ..p },
        None => Preprocess::imagenet(size),
    };
    let predictions = infer::predict(&model, &pre, &args.images, &classes, args.topk, &device)?;
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
    }
    Ok(out)
}

fn train(args: TrainArgs) -> Result<String, CliError> {
    use crate::data::augment::Augment;
    use crate::train::schedule::LrSchedule;
    let mut config = match &args.config {
        Some(path) => NetworkConfig::from_file(path)?,
        None => presets::by_name(&args.arch)?,
    };
    let data = crate::data::Dataset::open(&args.data)?;
    config.num_classes = data.classes.len();
    let size = match &args.input {
        Some(text) => parse_input_size(text)?,
        None => config.default_input,
    };
    config.default_input = size;
    config.validate()?;
    let small = size[0].max(size[1]) <= 64;
    let augment = args.augment.unwrap_or(if small {
        Augment::Cifar
    } else {
        Augment::Imagenet
    });
    let preprocess = if small {
        // Small images are used at their own size: no resize, CIFAR statistics.
        Preprocess {
            size,
            crop_pct: 1.0,
            interpolation: crate::infer::resize::Filter::Bicubic,
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
        }
    } else {
        Preprocess::imagenet(size)
    };
    let settings = crate::train::TrainSettings {
        config,
        data: args.data.clone(),
        val_per_class: args.val_per_class,
        epochs: args.epochs,
        batch: args.batch,
        schedule: LrSchedule {
            lr: args.lr,
            kind: args.schedule,
            warmup_epochs: args.warmup_epochs,
            step_epochs: args.step_epochs,
            gamma: args.gamma,
            epochs: args.epochs,
        },
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        label_smoothing: args.label_smoothing,
        augment,
        preprocess,
        seed: args.seed,
        workers: args.workers,
        output: args.output.clone(),
    };
    let history = crate::train::train(settings, args.resume.as_deref(), args.stop_after)?;
    let best = history.iter().map(|m| m.val_top1).fold(0.0, f64::max);
    let last = history.last().map(|m| m.val_top1).unwrap_or(0.0);
    Ok(format!(
        "done: validation top-1 {:.2}% (best {:.2}%); weights in {}/best.safetensors and last.safetensors, \
         curves in {}/curves.png\n",
        last * 100.0,
        best * 100.0,
        args.output.display(),
        args.output.display()
    ))
}

fn eval(args: EvalArgs) -> Result<String, CliError> {
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    let data = crate::data::Dataset::open(&args.data)?;
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
    let report = crate::eval::evaluate(
        &model,
        std::sync::Arc::new(data),
        &indices,
        &label_map,
        &classes,
        &pre,
        args.batch,
        args.workers,
        &device,
    );
    Ok(if args.json {
        serde_json::to_string_pretty(&report).expect("report") + "\n"
    } else {
        report.text()
    })
}

fn export(args: ExportArgs) -> Result<String, CliError> {
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

/// Parses `224` or `224x160` into `[height, width]`.
pub fn parse_input_size(text: &str) -> Result<[usize; 2], CliError> {
    let bad = || CliError::Argument {
        arg: format!("--input {text}"),
        message: "expected a size like 224 or 224x160 (height x width), each >= 1".into(),
    };
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let nums: Vec<usize> = parts
        .iter()
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match nums.as_slice() {
        [s] if *s > 0 => Ok([*s, *s]),
        [h, w] if *h > 0 && *w > 0 => Ok([*h, *w]),
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

#[derive(Serialize)]
struct ArchRow {
    name: &'static str,
    description: &'static str,
    input: [usize; 2],
    classes: usize,
    params: usize,
    macs: u64,
    reference: Option<ArchReference>,
}

#[derive(Serialize)]
struct ArchReference {
    dataset: &'static str,
    top1: f64,
    source: &'static str,
}

fn archs(json: bool) -> Result<String, CliError> {
    let device = default_device();
    let mut rows = Vec::new();
    for p in presets::all() {
        let config = (p.build)();
        let model = SkNet::new(&config, &device)?;
        let [h, w] = config.default_input;
        let s = summarize(&model, h, w)?;
        rows.push(ArchRow {
            name: p.name,
            description: p.description,
            input: config.default_input,
            classes: config.num_classes,
            params: s.trainable_params,
            macs: s.macs,
            reference: p.reference.map(|(dataset, top1, source)| ArchReference {
                dataset,
                top1,
                source,
            }),
        });
    }
    if json {
        return Ok(serde_json::to_string_pretty(&rows).expect("rows serialize"));
    }
    let mut out = format!(
        "{:<18} {:>7} {:>12} {:>9} {:>22}  {}\n",
        "arch", "input", "params", "GMACs", "reference top-1", "description"
    );
    for r in rows {
        let reference = r
            .reference
            .map(|x| format!("{:.2}% {}", x.top1, x.dataset))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:>7} {:>12} {:>9.2} {:>22}  {}\n",
            r.name,
            format!("{}x{}", r.input[0], r.input[1]),
            thousands(r.params as u64),
            r.macs as f64 / 1e9,
            reference,
            r.description
        ));
    }
    Ok(out)
}

/// Runs a parsed command and returns what it prints.
pub fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Archs { json } => archs(json),
        Command::Summary(args) => {
            let config = args.network_config()?;
            let model = SkNet::new(&config, &default_device())?;
            let [h, w] = config.default_input;
            let summary = summarize(&model, h, w)?;
            Ok(if args.json {
                summary.json()
            } else {
                summary.table()
            })
        }
        Command::Predict(args) => predict(args),
        Command::Export(args) => export(args),
        Command::Train(args) => train(*args),
        Command::Bench(args) => {
            let mut config = match &args.config {
                Some(path) => NetworkConfig::from_file(path)?,
                None => presets::by_name(&args.arch)?,
            };
            if let Some(size) = &args.input {
                config.default_input = parse_input_size(size)?;
            }
            if args.batch == 0 || args.runs == 0 {
                return Err(CliError::Argument {
                    arg: "--batch / --runs".into(),
                    message: "must be >= 1".into(),
                });
            }
            let model = SkNet::new(&config, &default_device())?;
            let [h, w] = config.default_input;
            model.check_input(&[args.batch, config.in_channels, h, w])?;
            let r = crate::bench::bench(&config, args.batch, args.train, args.warmup, args.runs);
            Ok(if args.json {
                serde_json::to_string(&r).expect("result") + "\n"
            } else {
                format!(
                    "{} {} batch {} at {}x{} on {}: median {:.1} ms, {:.1} images/s, peak RSS {:.0} MiB\n",
                    r.arch, r.mode, r.batch, h, w, r.backend, r.median_ms, r.images_per_s, r.peak_rss_mb
                )
            })
        }
        Command::Eval(args) => eval(args),
        Command::Config { arch, toml } => {
            let config = presets::by_name(&arch)?;
            Ok(if toml {
                toml::to_string(&config).expect("config serializes")
            } else {
                config.to_json()
            })
        }
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
    }
}
