//! SGD training on an image dataset, with validation, checkpoints that resume exactly, metrics
//! files and a curve plot.
//!
//! A [`Trainer`] holds a run: [`Trainer::new`] opens the dataset, splits it and builds the
//! network and the optimizer from [`TrainSettings`]; [`Trainer::resume`] continues from a
//! checkpoint; [`Trainer::run_epoch`] trains and validates one epoch and [`Trainer::save`]
//! writes its files; [`Trainer::fit`] does both for the remaining epochs. [`train`] and
//! [`train_with`] do all of it in one call.
//!
//! The trainer never prints: it reports the run, each step, each image it could not decode and
//! each epoch to a [`TrainObserver`] ([`NoopObserver`] ignores them; `sknet train` draws a
//! progress bar).
//!
//! Every epoch writes, atomically (temporary file, then rename), in the output folder:
//! `checkpoint.safetensors` (weights, momentum buffers and the training state, for
//! [`Trainer::resume`]), `last.safetensors` and, when validation improves, `best.safetensors`
//! (timm-compatible weights with the config, class names and preprocessing in their metadata),
//! `metrics.csv`, `metrics.jsonl` and `curves.png`.

pub mod ema;
mod files;
pub mod lock;
mod loss;
pub mod mixup;
pub mod observer;
pub mod optim;
pub mod plot;
pub mod schedule;
#[cfg(test)]
mod tests;
mod trainer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::NetworkConfig;
use crate::data::augment::{Augment, EraseMode};
use crate::data::DataError;
use crate::infer::Preprocess;
use crate::weights::checkpoint::WeightsError;
use optim::{OptimizerConfig, OptimizerKind, OptimizerName};
use schedule::LrSchedule;

pub use crate::weights::metadata::{META_PREPROCESS, META_STATE};
pub use observer::{NoopObserver, RunInfo, StepProgress, TrainObserver};
pub use trainer::Trainer;

/// Training errors.
#[derive(Debug, Error)]
pub enum TrainError {
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Checkpoint problem.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The curves could not be drawn.
    #[error("curves.png: {0}")]
    Plot(#[from] crate::plot::PlotError),
    /// The loss diverged.
    #[error(
        "loss is {loss} at epoch {epoch}, step {step}: training diverged (try a lower learning rate); \
         the last good checkpoint is kept in {dir}"
    )]
    NotFinite {
        /// Loss value.
        loss: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Step in the epoch.
        step: usize,
        /// Output folder.
        dir: String,
    },
    /// A step left a parameter NaN or infinite.
    #[error(
        "`{parameter}` is not finite after epoch {epoch}, step {step}: training diverged (try a \
         lower learning rate); the last good checkpoint is kept in {dir}"
    )]
    NonFiniteWeights {
        /// The first such parameter's key.
        parameter: String,
        /// Epoch (1-based).
        epoch: usize,
        /// Step in the epoch.
        step: usize,
        /// Output folder.
        dir: String,
    },
    /// Validation found nothing to measure, or outputs that are not finite.
    #[error("validation after epoch {epoch}: {source}")]
    Validation {
        /// Epoch (1-based).
        epoch: usize,
        /// What went wrong.
        source: crate::eval::EvalError,
    },
    /// Another run holds the output folder.
    #[error("{dir}: another training run is writing to this folder; wait for it, or choose another output folder")]
    Locked {
        /// The output folder.
        dir: String,
    },
    /// A setting outside its valid range.
    #[error("invalid training setting `{field}`: {constraint}")]
    Invalid {
        /// The setting's field in [`TrainSettings`].
        field: &'static str,
        /// What is expected, and what was found.
        constraint: String,
    },
    /// A resume checkpoint that does not belong to this run.
    #[error("{path}: cannot resume: {message}")]
    Resume {
        /// The checkpoint.
        path: String,
        /// Why.
        message: String,
    },
    /// Bad settings.
    #[error("invalid training setting: {0}")]
    Setting(String),
}

/// Everything a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    /// The network.
    pub config: NetworkConfig,
    /// Dataset folder.
    pub data: PathBuf,
    /// Held-out images per class.
    pub val_per_class: usize,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Schedule.
    pub schedule: LrSchedule,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerName,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
    /// AdamW: the decay rates of the gradient's first and second moments.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW: added to the second moment's root.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Weight decay (conv and linear weights only).
    pub weight_decay: f64,
    /// Label smoothing.
    pub label_smoothing: f64,
    /// Augmentation.
    pub augment: Augment,
    /// Evaluation transform and normalization.
    pub preprocess: Preprocess,
    /// Seed.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Output folder.
    pub output: PathBuf,
    /// Fine-tuning: the weights the run starts from (a file or `hf:` spec, anything
    /// [`load_pretrained`](crate::weights::load_pretrained) reads). A classifier shaped for
    /// other classes is initialised anew; every other key must fit (see `allow_partial`).
    #[serde(default)]
    pub init: Option<String>,
    /// With `init`: load what fits and keep the rest as initialised, instead of failing on any
    /// missing, unexpected or mis-shaped key other than the classifier's.
    #[serde(default)]
    pub allow_partial: bool,
    /// Train only the classifier: the backbone keeps its weights and BatchNorm statistics and
    /// runs in inference mode (timm's `freeze`, with frozen BatchNorm).
    #[serde(default)]
    pub freeze: bool,
    /// The backbone's learning rate as a multiple of the classifier's (the schedule's).
    #[serde(default = "one")]
    pub backbone_lr_scale: f64,
    /// Batches whose gradients add up to one optimizer step (timm's `grad_accum_steps`): each
    /// batch's loss is divided by it, and an epoch's last batches make a step of their own.
    #[serde(default = "one_step")]
    pub grad_accum_steps: usize,
    /// Mixup, CutMix, auto-augmentation, random erasing and model EMA.
    #[serde(default)]
    pub recipe: Recipe,
}

/// The regularisation of a run beyond crop, flip and label smoothing, with timm's meanings and
/// defaults (`train.py`'s arguments of the same names). The defaults turn everything off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Mixup's Beta alpha (0: off).
    pub mixup: f64,
    /// CutMix's Beta alpha (0: off).
    pub cutmix: f64,
    /// The probability that a batch is mixed, when mixup or CutMix is on.
    pub mixup_prob: f64,
    /// With both on: the probability of CutMix rather than mixup.
    pub mixup_switch_prob: f64,
    /// Auto-augmentation policy: timm's RandAugment string (`rand-m9-mstd0.5`, ...) or
    /// `trivialaugment` (see [`AutoAugment`](crate::data::auto_augment::AutoAugment)).
    pub auto_augment: Option<String>,
    /// Random erasing: the probability per image (0: off).
    pub reprob: f64,
    /// Random erasing: what the box is filled with.
    pub remode: EraseMode,
    /// Random erasing: the most boxes per image.
    pub recount: usize,
    /// Keep an exponential moving average of the weights, evaluated and saved beside them.
    pub model_ema: bool,
    /// The EMA's decay per optimizer step.
    pub model_ema_decay: f64,
    /// Warm the EMA's decay up over the first steps.
    pub model_ema_warmup: bool,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            mixup: 0.0,
            cutmix: 0.0,
            mixup_prob: 1.0,
            mixup_switch_prob: 0.5,
            auto_augment: None,
            reprob: 0.0,
            remode: EraseMode::Pixel,
            recount: 1,
            model_ema: false,
            model_ema_decay: 0.9998,
            model_ema_warmup: false,
        }
    }
}

fn one_step() -> usize {
    1
}

fn one() -> f64 {
    1.0
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_eps() -> f64 {
    1e-8
}

impl TrainSettings {
    /// The optimizer these settings describe.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        let kind = match self.optimizer {
            OptimizerName::Sgd => OptimizerKind::Sgd {
                momentum: self.momentum,
                nesterov: self.nesterov,
            },
            OptimizerName::AdamW => OptimizerKind::AdamW {
                betas: self.betas,
                eps: self.eps,
            },
        };
        OptimizerConfig {
            kind,
            weight_decay: self.weight_decay,
            backbone_lr_scale: self.backbone_lr_scale,
        }
    }
}

/// Most images in one batch.
pub const MAX_BATCH: usize = 4096;
/// Most epochs of one run.
pub const MAX_EPOCHS: usize = 100_000;
/// Most batches per optimizer step.
pub const MAX_GRAD_ACCUM_STEPS: usize = 1024;
/// Largest mixup or CutMix alpha.
pub const MAX_MIX_ALPHA: f64 = 100.0;
/// Most random-erasing boxes per image.
pub const MAX_ERASE_COUNT: usize = 64;
/// Most loader threads.
pub const MAX_WORKERS: usize = 256;

impl TrainSettings {
    /// Checks every numeric setting against its valid range; the error names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |field, constraint: String| Err(TrainError::Invalid { field, constraint });
        let count = |field, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else if max == usize::MAX {
                invalid(field, format!("must be >= {min}, found {value}"))
            } else {
                invalid(
                    field,
                    format!("must be within {min}..={max}, found {value}"),
                )
            }
        };
        // `lo <= value <= hi` (or `< hi` when `open_top`), finite.
        let real = |field, value: f64, lo: f64, hi: f64, open_top: bool| {
            let top = if open_top { value < hi } else { value <= hi };
            if value.is_finite() && value >= lo && top {
                Ok(())
            } else {
                let close = if open_top { ")" } else { "]" };
                invalid(
                    field,
                    format!("must be finite and within [{lo}, {hi}{close}, found {value}"),
                )
            }
        };
        count("batch", self.batch, 1, MAX_BATCH)?;
        count("epochs", self.epochs, 1, MAX_EPOCHS)?;
        count("workers", self.workers, 1, MAX_WORKERS)?;
        count(
            "grad_accum_steps",
            self.grad_accum_steps,
            1,
            MAX_GRAD_ACCUM_STEPS,
        )?;
        // Validation picks best.safetensors: it needs images.
        count("val_per_class", self.val_per_class, 1, usize::MAX)?;
        let schedule = &self.schedule;
        if !(schedule.lr.is_finite() && schedule.lr > 0.0) {
            return invalid(
                "lr",
                format!("must be finite and > 0, found {}", schedule.lr),
            );
        }
        real(
            "warmup_epochs",
            schedule.warmup_epochs,
            0.0,
            self.epochs as f64,
            false,
        )?;
        count("step_epochs", schedule.step_epochs, 1, usize::MAX)?;
        if !(schedule.gamma.is_finite() && schedule.gamma > 0.0 && schedule.gamma <= 1.0) {
            return invalid(
                "gamma",
                format!("must be finite and within (0, 1], found {}", schedule.gamma),
            );
        }
        real("momentum", self.momentum, 0.0, 1.0, true)?;
        real(
            "backbone_lr_scale",
            self.backbone_lr_scale,
            0.0,
            100.0,
            false,
        )?;
        real("betas", self.betas[0], 0.0, 1.0, true)?;
        real("betas", self.betas[1], 0.0, 1.0, true)?;
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps <= 1.0) {
            return invalid(
                "eps",
                format!("must be finite and within (0, 1], found {}", self.eps),
            );
        }
        real("min_lr", schedule.min_lr, 0.0, schedule.lr, false)?;
        real("weight_decay", self.weight_decay, 0.0, 1.0, false)?;
        real("label_smoothing", self.label_smoothing, 0.0, 1.0, true)?;
        let r = &self.recipe;
        real("mixup", r.mixup, 0.0, MAX_MIX_ALPHA, false)?;
        real("cutmix", r.cutmix, 0.0, MAX_MIX_ALPHA, false)?;
        real("mixup_prob", r.mixup_prob, 0.0, 1.0, false)?;
        real("mixup_switch_prob", r.mixup_switch_prob, 0.0, 1.0, false)?;
        real("reprob", r.reprob, 0.0, 1.0, false)?;
        count("recount", r.recount, 1, MAX_ERASE_COUNT)?;
        real("model_ema_decay", r.model_ema_decay, 0.0, 1.0, false)?;
        if let Some(spec) = &r.auto_augment {
            self.auto_augment_policy(spec)?;
        }
        Ok(())
    }

    /// The auto-augmentation `spec` parsed, filled with the normalization's mean colour.
    fn auto_augment_policy(
        &self,
        spec: &str,
    ) -> Result<crate::data::auto_augment::AutoAugment, TrainError> {
        let fill = self
            .preprocess
            .mean
            .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8);
        crate::data::auto_augment::AutoAugment::parse(spec, fill).map_err(|e| TrainError::Invalid {
            field: "auto_augment",
            constraint: e.to_string(),
        })
    }

    /// The training transform of these settings: the augmentation, then the auto-augmentation
    /// and random erasing of the recipe.
    ///
    /// # Errors
    /// An auto-augmentation string that does not parse.
    pub fn train_transform(&self) -> Result<crate::data::augment::TrainTransform, TrainError> {
        let r = &self.recipe;
        let auto_augment = match &r.auto_augment {
            Some(spec) => Some(std::sync::Arc::new(self.auto_augment_policy(spec)?)),
            None => None,
        };
        let erasing = (r.reprob > 0.0).then_some(crate::data::augment::RandomErasing {
            prob: r.reprob,
            mode: r.remode,
            max_count: r.recount,
        });
        Ok(crate::data::augment::TrainTransform {
            augment: self.augment,
            auto_augment,
            erasing,
        })
    }

    /// The mixing of the recipe, with the run's label smoothing.
    pub fn mixup(&self) -> mixup::Mixup {
        mixup::Mixup {
            mixup_alpha: self.recipe.mixup,
            cutmix_alpha: self.recipe.cutmix,
            prob: self.recipe.mixup_prob,
            switch_prob: self.recipe.mixup_switch_prob,
            label_smoothing: self.label_smoothing,
        }
    }
}

/// The part of a checkpoint that says where training stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Best validation top-1 so far.
    pub best_top1: f64,
    /// Best validation top-1 of the EMA weights so far, if the run keeps them.
    #[serde(default)]
    pub best_ema_top1: Option<f64>,
    /// The run's settings.
    pub settings: TrainSettings,
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training top-1 (on augmented images).
    pub train_top1: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation top-1.
    pub val_top1: f64,
    /// Validation top-5.
    pub val_top5: f64,
    /// With model EMA: the EMA weights' validation loss, top-1 and top-5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaMetrics>,
    /// Training images per second.
    pub images_per_s: f64,
    /// Wall seconds for the epoch (training and validation).
    pub seconds: f64,
}

/// The validation figures of the EMA weights.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EmaMetrics {
    /// Validation loss.
    pub val_loss: f64,
    /// Validation top-1.
    pub val_top1: f64,
    /// Validation top-5.
    pub val_top5: f64,
}

/// Runs training, from scratch or from a checkpoint, for at most `stop_after` epochs in this
/// invocation (all remaining epochs when `None`). Returns every epoch's metrics so far.
///
/// # Errors
///
/// As [`Trainer::new`], [`Trainer::resume`] and [`Trainer::fit`].
pub fn train(
    settings: TrainSettings,
    resume: Option<&Path>,
    stop_after: Option<usize>,
) -> Result<Vec<EpochMetrics>, TrainError> {
    train_with(settings, resume, stop_after, &mut NoopObserver)
}

/// [`train`], reporting to `observer`.
///
/// # Errors
///
/// As [`Trainer::new`], [`Trainer::resume`] and [`Trainer::fit`].
pub fn train_with(
    settings: TrainSettings,
    resume: Option<&Path>,
    stop_after: Option<usize>,
    observer: &mut dyn TrainObserver,
) -> Result<Vec<EpochMetrics>, TrainError> {
    let mut trainer = Trainer::new(settings)?;
    match resume {
        Some(checkpoint) => trainer.resume(checkpoint, observer)?,
        None => trainer.initialize(observer)?,
    }
    trainer.fit(stop_after, observer)?;
    Ok(trainer.into_history())
}
