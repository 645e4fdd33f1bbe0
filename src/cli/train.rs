//! `sknet train`: train or fine-tune on an image dataset.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sknet::config::NetworkConfig;
use sknet::data::loader::SkippedImage;
use sknet::infer::Preprocess;
use sknet::presets;
use sknet::train::{EpochMetrics, RunInfo, StepProgress, TrainError, TrainObserver};

use super::args::parse_input_size;
use super::CliError;

/// `sknet train` arguments.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Preset to train (default: sknet-tiny, or with --init the network of those weights).
    #[arg(long)]
    pub arch: Option<String>,
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
    pub schedule: sknet::train::schedule::Schedule,
    /// Linear warmup epochs.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 30)]
    pub step_epochs: usize,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Cosine schedule: the learning rate it decays to.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Optimizer (timm's --opt): sgd (momentum, as torch.optim.SGD) or adamw (as
    /// torch.optim.AdamW, decoupled weight decay).
    #[arg(long, value_enum, default_value = "sgd")]
    pub opt: sknet::train::optim::OptimizerName,
    /// AdamW: beta1 and beta2.
    #[arg(long, num_args = 2, value_names = ["BETA1", "BETA2"], default_values_t = [0.9, 0.999])]
    pub opt_betas: Vec<f64>,
    /// AdamW: epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub opt_eps: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay on conv and linear weights (BatchNorm and biases are not decayed): L2 for
    /// SGD, decoupled for AdamW (try 0.05).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Label smoothing (timm's --smoothing), within [0, 1).
    #[arg(long, visible_alias = "smoothing", default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Augmentation (default: cifar for inputs up to 64 pixels, imagenet above).
    #[arg(long, value_enum)]
    pub augment: Option<sknet::data::augment::Augment>,
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
    /// Fine-tune: start from these weights (a .safetensors, .pth, .bin or .pt file, or
    /// hf:OWNER/NAME), timm's or sknet's. A classifier for another number of classes is
    /// initialised anew; every other key must fit.
    #[arg(long, value_name = "WEIGHTS")]
    pub init: Option<String>,
    /// With --init: load what fits and keep the rest as initialised.
    #[arg(long, requires = "init")]
    pub allow_partial: bool,
    /// Train only the classifier; the backbone keeps its weights and BatchNorm statistics.
    #[arg(long)]
    pub freeze: bool,
    /// Batches whose gradients make one optimizer step (an effective batch of
    /// --batch x N), within 1..=1024.
    #[arg(long, default_value_t = 1)]
    pub grad_accum_steps: usize,
    /// The backbone's learning rate as a multiple of --lr (the classifier's), within [0, 100].
    #[arg(long, default_value_t = 1.0)]
    pub backbone_lr_scale: f64,
    /// Mixup alpha (timm's --mixup; 0: off), within [0, 100].
    #[arg(long, default_value_t = 0.0, help_heading = "Recipe")]
    pub mixup: f64,
    /// CutMix alpha (timm's --cutmix; 0: off), within [0, 100].
    #[arg(long, default_value_t = 0.0, help_heading = "Recipe")]
    pub cutmix: f64,
    /// The probability that a batch is mixed, within [0, 1].
    #[arg(long, default_value_t = 1.0, help_heading = "Recipe")]
    pub mixup_prob: f64,
    /// With --mixup and --cutmix: the probability of CutMix, within [0, 1].
    #[arg(long, default_value_t = 0.5, help_heading = "Recipe")]
    pub mixup_switch_prob: f64,
    /// Auto-augmentation: timm's RandAugment string (rand-m9-mstd0.5, rand-m9-n3-mstd0.5-inc1,
    /// ...) or trivialaugment.
    #[arg(long = "aa", value_name = "POLICY", help_heading = "Recipe")]
    pub auto_augment: Option<String>,
    /// Random erasing probability per image (0: off), within [0, 1].
    #[arg(long, default_value_t = 0.0, help_heading = "Recipe")]
    pub reprob: f64,
    /// Random erasing fill.
    #[arg(long, value_enum, default_value = "pixel", help_heading = "Recipe")]
    pub remode: sknet::data::augment::EraseMode,
    /// Random erasing: the most boxes per image, within 1..=64.
    #[arg(long, default_value_t = 1, help_heading = "Recipe")]
    pub recount: usize,
    /// Keep an exponential moving average of the weights; it is validated every epoch and
    /// saved as last_ema.safetensors and best_ema.safetensors.
    #[arg(long, help_heading = "Recipe")]
    pub model_ema: bool,
    /// The EMA's decay per optimizer step, within [0, 1].
    #[arg(long, default_value_t = 0.9998, help_heading = "Recipe")]
    pub model_ema_decay: f64,
    /// Warm the EMA's decay up over the first steps (timm's --model-ema-warmup).
    #[arg(long, help_heading = "Recipe")]
    pub model_ema_warmup: bool,
}

/// Trains, and says where the results are.
pub fn run(args: TrainArgs) -> Result<String, CliError> {
    use sknet::data::augment::Augment;
    use sknet::train::schedule::LrSchedule;
    let mut config = match (&args.config, &args.arch, &args.init) {
        (Some(path), _, _) => NetworkConfig::from_file(path)?,
        (None, Some(name), _) => presets::by_name(name)?,
        // The network the weights are for; its classifier follows the data.
        (None, None, Some(spec)) => {
            let ckpt = sknet::weights::load::read_weights(spec, false)?;
            sknet::weights::load::resolve_config(&ckpt, None, None)?
        }
        (None, None, None) => presets::by_name("sknet-tiny")?,
    };
    let data = sknet::data::Dataset::open(&args.data)?;
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
        Preprocess::cifar(size)
    } else {
        Preprocess::imagenet(size)
    };
    let settings = sknet::train::TrainSettings {
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
            min_lr: args.min_lr,
        },
        optimizer: args.opt,
        momentum: args.momentum,
        nesterov: args.nesterov,
        betas: [args.opt_betas[0], args.opt_betas[1]],
        eps: args.opt_eps,
        weight_decay: args.weight_decay,
        label_smoothing: args.label_smoothing,
        augment,
        preprocess,
        seed: args.seed,
        workers: args.workers,
        output: args.output.clone(),
        init: args.init.clone(),
        allow_partial: args.allow_partial,
        freeze: args.freeze,
        backbone_lr_scale: args.backbone_lr_scale,
        grad_accum_steps: args.grad_accum_steps,
        recipe: sknet::train::Recipe {
            mixup: args.mixup,
            cutmix: args.cutmix,
            mixup_prob: args.mixup_prob,
            mixup_switch_prob: args.mixup_switch_prob,
            auto_augment: args.auto_augment.clone(),
            reprob: args.reprob,
            remode: args.remode,
            recount: args.recount,
            model_ema: args.model_ema,
            model_ema_decay: args.model_ema_decay,
            model_ema_warmup: args.model_ema_warmup,
        },
    };
    let history = sknet::train::train_with(
        settings,
        args.resume.as_deref(),
        args.stop_after,
        &mut Progress::default(),
    )?;
    let best = history.iter().map(|m| m.val_top1).fold(0.0, f64::max);
    let last = history.last().map(|m| m.val_top1).unwrap_or(0.0);
    let ema = history
        .iter()
        .filter_map(|m| m.ema.map(|e| e.val_top1))
        .reduce(f64::max)
        .map(|best| {
            format!(
                "; EMA weights (best {:.2}%) in {}/best_ema.safetensors and last_ema.safetensors",
                best * 100.0,
                args.output.display()
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "done: validation top-1 {:.2}% (best {:.2}%); weights in {}/best.safetensors and last.safetensors{ema}, \
         curves in {}/curves.png\n",
        last * 100.0,
        best * 100.0,
        args.output.display(),
        args.output.display()
    ))
}

/// Shows a run on stderr: a line when it starts or resumes, a progress bar during each epoch's
/// training steps, a line per epoch, and a warning per image that could not be decoded.
#[derive(Default)]
struct Progress {
    /// The bar of the epoch being trained.
    bar: Option<ProgressBar>,
    /// Epochs of the run.
    epochs: usize,
}

impl TrainObserver for Progress {
    fn run_started(&mut self, run: &RunInfo) {
        eprintln!(
            "training {} on {} ({} train / {} validation images, {} classes), {} epochs of {} steps",
            run.model,
            run.data.display(),
            run.train_images,
            run.val_images,
            run.classes,
            run.epochs,
            run.steps_per_epoch
        );
    }

    fn initialized(&mut self, init: &str, report: &sknet::weights::load::FineTuneReport) {
        eprintln!(
            "initialised from {init}: {} tensors loaded",
            report.report.loaded
        );
        if !report.reinitialised.is_empty() {
            let keys: Vec<String> = report
                .reinitialised
                .iter()
                .map(|(k, shape)| format!("{k} (the file's is {shape:?})"))
                .collect();
            eprintln!(
                "the classifier is re-initialised for the data's classes: {}",
                keys.join(", ")
            );
        }
        let report = &report.report;
        let classifier = sknet::weights::load::CLASSIFIER_KEYS;
        let other_mismatches = report
            .mismatched
            .iter()
            .filter(|(k, _, _)| !classifier.contains(&k.as_str()))
            .count();
        if !report.missing.is_empty() || !report.unexpected.is_empty() || other_mismatches > 0 {
            eprintln!(
                "warning: --allow-partial: some tensors were not loaded\n{}",
                report.describe()
            );
        }
    }

    fn resumed(&mut self, checkpoint: &Path, epoch: usize) {
        eprintln!("resuming {} after epoch {epoch}", checkpoint.display());
    }

    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.epochs = epochs;
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn step(&mut self, progress: &StepProgress) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% {:.0} img/s",
                progress.loss,
                100.0 * progress.correct as f64 / progress.images as f64,
                progress.images_per_s
            ));
            bar.inc(1);
        }
    }

    fn image_skipped(&mut self, image: &SkippedImage) {
        let warn = || eprintln!("warning: skipping {}: {}", image.image, image.reason);
        match &self.bar {
            // Printed above the bar, which is drawn again below.
            Some(bar) => bar.suspend(warn),
            None => warn(),
        }
    }

    fn validation_started(&mut self, _epoch: usize, _images: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn epoch_aborted(&mut self, _error: &TrainError) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }

    fn epoch_finished(&mut self, m: &EpochMetrics) {
        let ema = m
            .ema
            .map(|e| format!("  EMA top-1 {:.2}%", e.val_top1 * 100.0))
            .unwrap_or_default();
        eprintln!(
            "epoch {:>3}/{}  lr {:.4}  train loss {:.4} acc {:.2}%  val loss {:.4} top-1 {:.2}% top-5 {:.2}%{ema}  {:.0} img/s  {:.0}s",
            m.epoch,
            self.epochs,
            m.lr,
            m.train_loss,
            m.train_top1 * 100.0,
            m.val_loss,
            m.val_top1 * 100.0,
            m.val_top5 * 100.0,
            m.images_per_s,
            m.seconds
        );
    }
}
