//! `sknet train`: SGD training on an image dataset, with validation, checkpoints that resume
//! exactly, metrics files and a curve plot.
//!
//! Every epoch writes, atomically (temporary file, then rename), in the output folder:
//! `checkpoint.safetensors` (weights, momentum buffers and the training state, for `--resume`),
//! `last.safetensors` and, when validation improves, `best.safetensors` (timm-compatible weights
//! with the config, class names and preprocessing in their metadata), `metrics.csv`,
//! `metrics.jsonl` and `curves.png`.

pub mod optim;
pub mod plot;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::NetworkConfig;
use crate::data::augment::Augment;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::{DataError, Dataset};
use crate::eval::{evaluate, EvalReport};
use crate::infer::Preprocess;
use crate::model::SkNet;
use crate::weights::checkpoint::{write_safetensors, Checkpoint, OutTensor, WeightsError};
use crate::weights::load::{self, load_into};
use optim::{Sgd, SgdConfig};
use schedule::LrSchedule;

pub use crate::weights::metadata::{META_PREPROCESS, META_STATE};

/// Training errors.
#[derive(Debug, Error)]
pub enum TrainError {
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Checkpoint problem.
    #[error(transparent)]
    Weights(#[from] WeightsError),
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
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
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
    /// Training images per second.
    pub images_per_s: f64,
    /// Wall seconds for the epoch (training and validation).
    pub seconds: f64,
}

fn cross_entropy(
    logits: Tensor<2>,
    labels: &[usize],
    smoothing: f64,
    device: &Device,
) -> Tensor<1> {
    let [b, k] = logits.dims();
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b]),
        device,
    );
    let onehot = targets.one_hot::<2>(k).float();
    let dist = onehot
        .mul_scalar(1.0 - smoothing)
        .add_scalar(smoothing / k as f64);
    log_softmax(logits, 1)
        .mul(dist)
        .sum()
        .neg()
        .div_scalar(b as f64)
}

fn argmax_hits(logits: &Tensor<2>, labels: &[usize]) -> usize {
    let pred = logits
        .clone()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("indices");
    pred.iter()
        .zip(labels)
        .filter(|(p, l)| **p as usize == **l)
        .count()
}

/// Writes the training checkpoint (weights, momentum, state) atomically.
fn save_checkpoint(
    path: &Path,
    model: &SkNet,
    sgd: &Sgd,
    state: &TrainState,
    classes: &[String],
) -> Result<(), WeightsError> {
    let mut tensors: Vec<(String, OutTensor)> = load::state_dict(model)?
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    for (k, v) in sgd.state() {
        let n = v.len();
        tensors.push((format!("momentum.{k}"), OutTensor::F32(vec![n], v)));
    }
    let mut meta = weights_metadata(model, classes, &state.settings.preprocess);
    meta.insert(
        META_STATE.into(),
        serde_json::to_string(state).expect("state"),
    );
    write_safetensors(path, tensors, meta)
}

fn weights_metadata(
    model: &SkNet,
    classes: &[String],
    pre: &Preprocess,
) -> BTreeMap<String, String> {
    let mut meta = load::export_metadata(model, Some(classes));
    meta.insert(
        META_PREPROCESS.into(),
        serde_json::to_string(pre).expect("preprocess"),
    );
    meta
}

fn save_weights(
    path: &Path,
    model: &SkNet,
    classes: &[String],
    pre: &Preprocess,
) -> Result<(), WeightsError> {
    write_safetensors(
        path,
        load::state_dict(model)?,
        weights_metadata(model, classes, pre),
    )
}

/// Reads a training checkpoint: model tensors, momentum buffers, state.
fn read_checkpoint(
    path: &Path,
) -> Result<(Checkpoint, Vec<(String, Vec<f32>)>, TrainState), TrainError> {
    let ckpt = Checkpoint::read(path)?;
    let resume_err = |message: String| TrainError::Resume {
        path: path.display().to_string(),
        message,
    };
    let state: TrainState = ckpt
        .metadata
        .get(META_STATE)
        .ok_or_else(|| {
            resume_err("not a training checkpoint (no training state in its metadata)".into())
        })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| resume_err(format!("bad training state: {e}")))
        })?;
    let mut model = Checkpoint {
        path: ckpt.path.clone(),
        metadata: ckpt.metadata.clone(),
        ..Default::default()
    };
    let mut momentum = Vec::new();
    for (k, t) in ckpt.tensors {
        if let Some(key) = k.strip_prefix("model.") {
            model.tensors.insert(key.to_string(), t);
        } else if let Some(key) = k.strip_prefix("momentum.") {
            momentum.push((key.to_string(), t.data));
        }
    }
    Ok((model, momentum, state))
}

/// Runs training, from scratch or from a checkpoint, for at most `stop_after` epochs in this
/// invocation (all remaining epochs when `None`). Returns every epoch's metrics so far.
pub fn train(
    settings: TrainSettings,
    resume: Option<&Path>,
    stop_after: Option<usize>,
) -> Result<Vec<EpochMetrics>, TrainError> {
    let s = &settings;
    if s.batch == 0 || s.epochs == 0 {
        return Err(TrainError::Setting(
            "the batch size and the number of epochs must be >= 1".into(),
        ));
    }
    let data = Arc::new(Dataset::open(&s.data)?);
    if data.classes.len() != s.config.num_classes {
        return Err(TrainError::Setting(format!(
            "the dataset has {} classes, the network {} outputs",
            data.classes.len(),
            s.config.num_classes
        )));
    }
    let (train_idx, val_idx) = data.split(s.val_per_class)?;
    std::fs::create_dir_all(&s.output).map_err(|e| WeightsError::Io {
        path: s.output.display().to_string(),
        source: e,
    })?;
    let inner = crate::device::default_device();
    let device = crate::device::training_device();
    inner.seed(s.seed);

    let mut model =
        SkNet::new(&s.config, &device).map_err(|e| TrainError::Setting(e.to_string()))?;
    let mut sgd = Sgd::new(SgdConfig {
        momentum: s.momentum,
        nesterov: s.nesterov,
        weight_decay: s.weight_decay,
    });
    let (mut start_epoch, mut step, mut best) = (0usize, 0usize, f64::NEG_INFINITY);
    if let Some(path) = resume {
        let (ckpt, momentum, state) = read_checkpoint(path)?;
        if state.settings.config != s.config {
            return Err(TrainError::Resume {
                path: path.display().to_string(),
                message: format!(
                    "it was made for `{}`, not `{}` (the network configs differ)",
                    state.settings.config.name, s.config.name
                ),
            });
        }
        model = load_into(model, ckpt, false)?.0;
        sgd.restore(momentum, &inner);
        start_epoch = state.epoch;
        step = state.step;
        best = state.best_top1;
        eprintln!("resuming {} after epoch {start_epoch}", path.display());
    }
    let steps_per_epoch = train_idx.len() / s.batch.max(1);
    if steps_per_epoch == 0 {
        return Err(TrainError::Setting(format!(
            "{} training images are fewer than one batch of {}",
            train_idx.len(),
            s.batch
        )));
    }
    let loader_config = LoaderConfig {
        batch: s.batch,
        workers: s.workers,
        shuffle: true,
        drop_last: true,
        augment: s.augment,
        eval: s.preprocess.clone(),
        seed: s.seed,
    };
    let identity: Vec<usize> = (0..data.classes.len()).collect();
    let [h, w] = s.preprocess.size;
    let mut history = read_history(&s.output.join("metrics.jsonl"), start_epoch);
    eprintln!(
        "training {} on {} ({} train / {} validation images, {} classes), {} epochs of {} steps",
        s.config.name,
        s.data.display(),
        train_idx.len(),
        val_idx.len(),
        data.classes.len(),
        s.epochs,
        steps_per_epoch
    );
    let end = stop_after.map_or(s.epochs, |n| (start_epoch + n).min(s.epochs));
    for epoch in start_epoch..end {
        let t0 = Instant::now();
        let loader = Loader::new(
            data.clone(),
            &train_idx,
            loader_config.clone(),
            epoch as u64,
        );
        let bar = indicatif::ProgressBar::new(loader.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, s.epochs));
        let (mut loss_sum, mut hits, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = s.schedule.at(step, steps_per_epoch);
        let train_start = Instant::now();
        for (i, batch) in loader.enumerate() {
            let n = batch.labels.len();
            if n == 0 {
                continue;
            }
            lr = s.schedule.at(step, steps_per_epoch);
            let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 3, h, w]), &device);
            let logits = model.forward(x);
            hits += argmax_hits(&logits, &batch.labels);
            let loss = cross_entropy(logits, &batch.labels, s.label_smoothing, &device);
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                bar.abandon();
                return Err(TrainError::NotFinite {
                    loss: value,
                    epoch: epoch + 1,
                    step: i + 1,
                    dir: s.output.display().to_string(),
                });
            }
            model = crate::ops::on_cpu_pool(|| {
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                sgd.step(model, grads, lr)
            });
            step += 1;
            loss_sum += value as f64 * n as f64;
            seen += n;
            let ips = seen as f64 / train_start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * hits as f64 / seen as f64,
                ips
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_secs = train_start.elapsed().as_secs_f64();
        let valid = model.valid();
        let report: EvalReport = evaluate(
            &valid.clone().fold_batchnorm(),
            data.clone(),
            &val_idx,
            &identity,
            &data.classes,
            &s.preprocess,
            64,
            s.workers,
            &inner,
        );
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: hits as f64 / seen.max(1) as f64,
            val_loss: report.loss,
            val_top1: report.top1,
            val_top5: report.top5,
            images_per_s: seen as f64 / train_secs,
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "epoch {:>3}/{}  lr {:.4}  train loss {:.4} acc {:.2}%  val loss {:.4} top-1 {:.2}% top-5 {:.2}%  {:.0} img/s  {:.0}s",
            m.epoch,
            s.epochs,
            m.lr,
            m.train_loss,
            m.train_top1 * 100.0,
            m.val_loss,
            m.val_top1 * 100.0,
            m.val_top5 * 100.0,
            m.images_per_s,
            m.seconds
        );
        let improved = m.val_top1 > best;
        if improved {
            best = m.val_top1;
            save_weights(
                &s.output.join("best.safetensors"),
                &valid,
                &data.classes,
                &s.preprocess,
            )?;
        }
        save_weights(
            &s.output.join("last.safetensors"),
            &valid,
            &data.classes,
            &s.preprocess,
        )?;
        let state = TrainState {
            epoch: epoch + 1,
            step,
            best_top1: best,
            settings: settings.clone(),
        };
        save_checkpoint(
            &s.output.join("checkpoint.safetensors"),
            &valid,
            &sgd,
            &state,
            &data.classes,
        )?;
        history.push(m);
        write_metrics(&s.output, &history)?;
    }
    Ok(history)
}

fn read_history(path: &Path, upto: usize) -> Vec<EpochMetrics> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<EpochMetrics>(l).ok())
        .filter(|m| m.epoch <= upto)
        .collect()
}

fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<(), WeightsError> {
    use crate::weights::checkpoint::write_atomic;
    let mut jsonl = String::new();
    let mut csv = String::from(
        "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,images_per_s,seconds\n",
    );
    for m in history {
        jsonl.push_str(&serde_json::to_string(m).expect("metrics"));
        jsonl.push('\n');
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1},{:.1}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_top1,
            m.val_loss,
            m.val_top1,
            m.val_top5,
            m.images_per_s,
            m.seconds
        ));
    }
    write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
    write_atomic(&dir.join("curves.png"), &plot::curves_png(history))?;
    Ok(())
}
