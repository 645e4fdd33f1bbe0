//! [`Trainer`]: a training run, epoch by epoch.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};

use super::ema::ModelEma;
use super::files::{
    read_checkpoint, read_history, save_checkpoint, save_weights, write_metrics, TrainCheckpoint,
};
use super::loss::{argmax_hits, soft_cross_entropy};
use super::mixup::Mixup;
use super::observer::{RunInfo, StepProgress, TrainObserver};
use super::optim::Optimizer;
use super::{EmaMetrics, EpochMetrics, TrainError, TrainSettings, TrainState};
use crate::data::augment::TrainTransform;
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::rng::Rng;
use crate::data::Dataset;
use crate::eval::{evaluate, EvalReport};
use crate::model::SkNet;
use crate::weights::checkpoint::WeightsError;
use crate::weights::load::{load_for_fine_tuning, load_into, read_weights};

/// Batch size of validation.
const VALIDATION_BATCH: usize = 64;

const MODEL_IN_STEP: &str = "the model is away only during an optimizer step";

/// A training run: the dataset and its split, the network, the optimizer and where training
/// stands. [`Trainer::fit`] runs the remaining epochs; [`Trainer::run_epoch`] and
/// [`Trainer::save`] do one epoch and write its files.
pub struct Trainer {
    settings: TrainSettings,
    data: Arc<Dataset>,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    /// The device without autodiff: seeding, momentum buffers, validation.
    inner: Device,
    /// The training device (with autodiff).
    device: Device,
    /// Taken out only for the optimizer step, which consumes and returns it.
    model: Option<SkNet>,
    optimizer: Optimizer,
    /// With `freeze`: the backbone in inference mode (BatchNorm folded, on `inner`), which the
    /// steps run without gradients; only the classifier of `model` trains.
    frozen: Option<SkNet>,
    /// The training transform and the batch mixing of the settings.
    transform: TrainTransform,
    mixup: Mixup,
    /// With model EMA: the average, from the first step on (or from the checkpoint).
    ema: Option<ModelEma>,
    best_ema_top1: f64,
    best_ema_epoch: Option<usize>,
    /// The gradients of the batches since the last optimizer step, and how many there are.
    accumulated: GradientsAccumulator<SkNet>,
    pending: usize,
    /// Optimizer steps per epoch.
    steps_per_epoch: usize,
    epoch: usize,
    step: usize,
    best_top1: f64,
    /// The epoch whose validation set `best_top1` in this process.
    best_epoch: Option<usize>,
    history: Vec<EpochMetrics>,
    /// One run per output folder.
    _lock: super::lock::OutputLock,
}

/// The running sums of an epoch's training steps.
struct StepTotals {
    lr: f64,
    loss_sum: f64,
    hits: usize,
    seen: usize,
    /// Wall seconds of the steps, once they are over.
    seconds: f64,
}

impl Trainer {
    /// Opens the dataset, splits it, creates the output folder and builds the network (seeded
    /// by the settings) and the optimizer, for a run from scratch.
    ///
    /// # Errors
    ///
    /// [`TrainError::Setting`] when the batch size or the number of epochs is 0, the network's
    /// outputs do not match the dataset's classes or there are fewer training images than one
    /// batch; [`TrainError::Data`] when the dataset cannot be opened or split;
    /// [`TrainError::Weights`] when the output folder cannot be created.
    pub fn new(settings: TrainSettings) -> Result<Self, TrainError> {
        let s = &settings;
        s.validate()?;
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
        let lock = super::lock::OutputLock::take(&s.output)?;
        super::lock::remove_stale_temporaries(&s.output);
        let inner = crate::device::default_device();
        let device = crate::device::training_device();
        inner.seed(s.seed);
        let model =
            SkNet::new(&s.config, &device).map_err(|e| TrainError::Setting(e.to_string()))?;
        let optimizer = Optimizer::new(s.optimizer_config());
        let batches = train_idx.len() / s.batch;
        let steps_per_epoch = batches.div_ceil(s.grad_accum_steps);
        if steps_per_epoch == 0 {
            return Err(TrainError::Setting(format!(
                "{} training images are fewer than one batch of {}",
                train_idx.len(),
                s.batch
            )));
        }
        let history = read_history(&s.output.join("metrics.jsonl"), 0);
        let transform = s.train_transform()?;
        let mixup = s.mixup();
        Ok(Self {
            transform,
            mixup,
            ema: None,
            best_ema_top1: f64::NEG_INFINITY,
            best_ema_epoch: None,
            settings,
            data,
            train_idx,
            val_idx,
            inner,
            device,
            model: Some(model),
            optimizer,
            frozen: None,
            accumulated: GradientsAccumulator::new(),
            pending: 0,
            steps_per_epoch,
            epoch: 0,
            step: 0,
            best_top1: f64::NEG_INFINITY,
            best_epoch: None,
            history,
            _lock: lock,
        })
    }

    /// Continues from `checkpoint` (a `checkpoint.safetensors` written by [`Trainer::save`]):
    /// restores the weights, the momentum buffers, the epoch and step counts, the best
    /// validation accuracy and the metrics of the epochs done, then reports
    /// [`TrainObserver::resumed`]. Call it before training.
    ///
    /// # Errors
    ///
    /// [`TrainError::Weights`] when the file cannot be read; [`TrainError::Resume`] when it is
    /// not a training checkpoint or was made for another network config.
    pub fn resume(
        &mut self,
        checkpoint: &Path,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let TrainCheckpoint {
            model,
            optimizer,
            ema,
            state,
        } = read_checkpoint(checkpoint)?;
        if state.settings.config != self.settings.config {
            return Err(TrainError::Resume {
                path: checkpoint.display().to_string(),
                message: format!(
                    "it was made for `{}`, not `{}` (the network configs differ)",
                    state.settings.config.name, self.settings.config.name
                ),
            });
        }
        let differences = recipe_differences(&state.settings, &self.settings);
        if !differences.is_empty() {
            return Err(TrainError::Resume {
                path: checkpoint.display().to_string(),
                message: format!(
                    "it was made with other data or recipe settings ({}); resuming continues \
                     the run exactly only with the data, split, seed, batch, transforms and \
                     recipe it was made with",
                    differences.join(", ")
                ),
            });
        }
        if state.settings.optimizer != self.settings.optimizer {
            return Err(TrainError::Resume {
                path: checkpoint.display().to_string(),
                message: format!(
                    "it was made with the {:?} optimizer, not {:?}: its buffers do not carry over",
                    state.settings.optimizer, self.settings.optimizer
                ),
            });
        }
        // The model's parameters are shared by the clone, not copied.
        self.model = Some(load_into(self.model().clone(), model, false)?.0);
        self.ema = match ema {
            Some(ema) => {
                let mut average = self.new_ema();
                average.set_model(load_into(average.model().clone(), ema, false)?.0);
                Some(average)
            }
            None => None,
        };
        self.optimizer
            .restore(optimizer, state.step as u64, &self.inner);
        self.epoch = state.epoch;
        self.step = state.step;
        self.best_top1 = state.best_top1;
        self.best_epoch = None;
        self.best_ema_top1 = state.best_ema_top1.unwrap_or(f64::NEG_INFINITY);
        self.best_ema_epoch = None;
        self.history = read_history(&self.settings.output.join("metrics.jsonl"), self.epoch);
        observer.resumed(checkpoint, self.epoch);
        Ok(())
    }

    /// Runs the remaining epochs, at most `stop_after` of them in this call (all when `None`),
    /// writing each epoch's files ([`Trainer::save`]). Returns the metrics of every epoch so
    /// far, earlier runs' included.
    ///
    /// # Errors
    ///
    /// As [`Trainer::run_epoch`] and [`Trainer::save`]; the files of the last good epoch are
    /// kept.
    pub fn fit(
        &mut self,
        stop_after: Option<usize>,
        observer: &mut dyn TrainObserver,
    ) -> Result<&[EpochMetrics], TrainError> {
        observer.run_started(&self.run_info());
        let epochs = self.settings.epochs;
        let end = stop_after.map_or(epochs, |n| (self.epoch + n).min(epochs));
        while self.epoch < end {
            self.run_epoch(observer)?;
            self.save()?;
        }
        Ok(&self.history)
    }

    /// Trains one epoch (one pass over the training split, in the seeded order of that epoch),
    /// validates, and records the epoch's metrics, which it returns. The files are written by
    /// [`Trainer::save`].
    ///
    /// # Errors
    ///
    /// [`TrainError::NotFinite`] when the loss diverges (the trainer then holds the weights of
    /// the step before); [`TrainError::Setting`] when every epoch of the run is done.
    pub fn run_epoch(
        &mut self,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochMetrics, TrainError> {
        if self.epoch >= self.settings.epochs {
            return Err(TrainError::Setting(format!(
                "all {} epochs of the run are done",
                self.settings.epochs
            )));
        }
        let started = Instant::now();
        let totals = self.train_steps(observer)?;
        observer.validation_started(self.epoch + 1, self.val_idx.len());
        let report = self.validate().map_err(|source| TrainError::Validation {
            epoch: self.epoch + 1,
            source,
        })?;
        for image in &report.skipped_images {
            observer.image_skipped(image);
        }
        let ema = match &self.ema {
            Some(average) => {
                let r = self.validate_model(average.model()).map_err(|source| {
                    TrainError::Validation {
                        epoch: self.epoch + 1,
                        source,
                    }
                })?;
                Some(EmaMetrics {
                    val_loss: r.loss,
                    val_top1: r.top1,
                    val_top5: r.top5,
                })
            }
            None => None,
        };
        let metrics = EpochMetrics {
            ema,
            epoch: self.epoch + 1,
            lr: totals.lr,
            train_loss: totals.loss_sum / totals.seen.max(1) as f64,
            train_top1: totals.hits as f64 / totals.seen.max(1) as f64,
            val_loss: report.loss,
            val_top1: report.top1,
            val_top5: report.top5,
            images_per_s: totals.seen as f64 / totals.seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.epoch += 1;
        if metrics.val_top1 > self.best_top1 {
            self.best_top1 = metrics.val_top1;
            self.best_epoch = Some(self.epoch);
        }
        if let Some(ema) = metrics.ema.filter(|e| e.val_top1 > self.best_ema_top1) {
            self.best_ema_top1 = ema.val_top1;
            self.best_ema_epoch = Some(self.epoch);
        }
        self.history.push(metrics.clone());
        observer.epoch_finished(&metrics);
        Ok(metrics)
    }

    /// The training steps of the next epoch.
    /// Fine-tuning: loads the weights of the settings' `init`, if any, and reports what it
    /// loaded to `observer`. A classifier shaped for other classes keeps its initial values;
    /// any other key that does not fit is an error unless `allow_partial`. Call it before
    /// training, instead of [`Trainer::resume`].
    ///
    /// # Errors
    ///
    /// [`TrainError::Weights`] when the file cannot be read, holds NaN or infinite values, or
    /// does not fit the network.
    pub fn initialize(&mut self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some(spec) = self.settings.init.clone() else {
            return Ok(());
        };
        let ckpt = read_weights(&spec, false)?;
        // The clone shares the parameters; on an error the network stays as it was.
        let (model, report) =
            load_for_fine_tuning(self.model().clone(), ckpt, self.settings.allow_partial)?;
        self.model = Some(model);
        observer.initialized(&spec, &report);
        Ok(())
    }

    fn train_steps(&mut self, observer: &mut dyn TrainObserver) -> Result<StepTotals, TrainError> {
        if self.settings.recipe.model_ema && self.ema.is_none() {
            self.ema = Some(self.new_ema());
        }
        // The backbone as it stands: loaded, resumed, or (frozen) unchanged since.
        self.frozen = self
            .settings
            .freeze
            .then(|| self.model().valid().fold_batchnorm());
        let mut loader = Loader::new(
            self.data.clone(),
            &self.train_idx,
            self.loader_config(),
            self.epoch as u64,
        );
        let steps = loader.len();
        observer.epoch_started(self.epoch + 1, self.settings.epochs, steps);
        let mut totals = StepTotals {
            lr: self.lr(),
            loss_sum: 0.0,
            hits: 0,
            seen: 0,
            seconds: 0.0,
        };
        let train_start = Instant::now();
        let mut index = 0;
        while let Some(batch) = loader.next() {
            for image in loader.take_skipped() {
                observer.image_skipped(&image);
            }
            index += 1;
            if batch.labels.is_empty() {
                continue;
            }
            // With accumulation, the optimizer steps every `grad_accum_steps` batches and
            // after the epoch's last.
            let update = index % self.settings.grad_accum_steps == 0 || index == steps;
            if let Err(error) = self.train_step(batch, index, update, &mut totals) {
                observer.epoch_aborted(&error);
                return Err(error);
            }
            observer.step(&StepProgress {
                epoch: self.epoch + 1,
                step: index,
                steps,
                images: totals.seen,
                correct: totals.hits,
                loss: totals.loss_sum / totals.seen as f64,
                images_per_s: totals.seen as f64 / train_start.elapsed().as_secs_f64(),
            });
        }
        // The last batches were empty (every image undecodable): what they follow still counts.
        if self.pending > 0 {
            if let Err(error) = self.apply_gradients(index, &mut totals) {
                observer.epoch_aborted(&error);
                return Err(error);
            }
        }
        totals.seconds = train_start.elapsed().as_secs_f64();
        for image in loader.take_skipped() {
            observer.image_skipped(&image);
        }
        Ok(totals)
    }

    /// The gradients of a non-empty `batch`, the `index`-th (1-based) of the epoch, added to
    /// those accumulated; with `update`, then an optimizer step with them.
    fn train_step(
        &mut self,
        batch: Batch,
        index: usize,
        update: bool,
        totals: &mut StepTotals,
    ) -> Result<(), TrainError> {
        let n = batch.labels.len();
        let [h, w] = self.settings.preprocess.size;
        let classes = self.data.classes.len();
        let mut pixels = batch.pixels;
        // Seeded by the step, so that a resumed run mixes as the uninterrupted one.
        let mut rng = Rng::derive(&[self.settings.seed, self.epoch as u64, index as u64, 0x313]);
        let mix = self.mixup.draw(h, w, &mut rng);
        let targets = self
            .mixup
            .apply(&mix, &mut pixels, [n, 3, h, w], &batch.labels, classes);
        let pixels = TensorData::new(pixels, [n, 3, h, w]);
        let logits = match &self.frozen {
            // Only the classifier takes part in the backward pass.
            Some(backbone) => {
                let features = backbone.forward_pooled(Tensor::<4>::from_data(pixels, &self.inner));
                let features = Tensor::<2>::from_data(features.into_data(), &self.device);
                self.model().fc.forward(features)
            }
            None => self
                .model()
                .forward(Tensor::<4>::from_data(pixels, &self.device)),
        };
        totals.hits += argmax_hits(&logits, &batch.labels);
        let loss = soft_cross_entropy(logits, targets, &self.device);
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(TrainError::NotFinite {
                loss: value,
                epoch: self.epoch + 1,
                step: index,
                dir: self.settings.output.display().to_string(),
            });
        }
        // timm's accumulation: each batch's loss divided by the number of batches per step.
        let accum = self.settings.grad_accum_steps;
        let loss = if accum > 1 {
            loss.div_scalar(accum as f64)
        } else {
            loss
        };
        let model = self.model.as_ref().expect(MODEL_IN_STEP);
        let accumulated = &mut self.accumulated;
        crate::ops::on_cpu_pool(|| {
            let grads = GradientsParams::from_grads(loss.backward(), model);
            accumulated.accumulate(model, grads);
        });
        self.pending += 1;
        totals.loss_sum += value as f64 * n as f64;
        totals.seen += n;
        if update {
            self.apply_gradients(index, totals)?;
        }
        Ok(())
    }

    /// An optimizer step with the accumulated gradients, at the schedule's learning rate.
    fn apply_gradients(&mut self, index: usize, totals: &mut StepTotals) -> Result<(), TrainError> {
        let lr = self.lr();
        totals.lr = lr;
        let grads = self.accumulated.grads();
        self.pending = 0;
        let model = self.model.take().expect(MODEL_IN_STEP);
        let optimizer = &mut self.optimizer;
        self.model = Some(crate::ops::on_cpu_pool(|| optimizer.step(model, grads, lr)));
        if let Some(parameter) = self.optimizer.non_finite() {
            return Err(TrainError::NonFiniteWeights {
                parameter: parameter.to_string(),
                epoch: self.epoch + 1,
                step: index,
                dir: self.settings.output.display().to_string(),
            });
        }
        self.step += 1;
        if let Some(average) = &mut self.ema {
            let model = self.model.as_ref().expect(MODEL_IN_STEP);
            crate::ops::on_cpu_pool(|| average.update(model, self.step));
        }
        Ok(())
    }

    fn new_ema(&self) -> ModelEma {
        let r = &self.settings.recipe;
        ModelEma::new(self.model(), r.model_ema_decay, r.model_ema_warmup)
    }

    /// Evaluates the network as it stands (BatchNorm folded, inference mode) on the
    /// validation split. Images that cannot be decoded are listed in
    /// [`EvalReport::skipped_images`].
    ///
    /// # Errors
    /// When no validation image could be decoded, or the network's outputs are not finite.
    pub fn validate(&self) -> Result<EvalReport, crate::eval::EvalError> {
        self.validate_model(&self.model().valid())
    }

    /// The weights of model EMA, when the recipe keeps them and a step has been taken.
    pub fn ema_model(&self) -> Option<&SkNet> {
        self.ema.as_ref().map(ModelEma::model)
    }

    fn validate_model(&self, model: &SkNet) -> Result<EvalReport, crate::eval::EvalError> {
        let identity: Vec<usize> = (0..self.data.classes.len()).collect();
        evaluate(
            &model.clone().fold_batchnorm(),
            self.data.clone(),
            &self.val_idx,
            &identity,
            &self.data.classes,
            &self.settings.preprocess,
            crate::eval::EvalOptions {
                batch: VALIDATION_BATCH,
                workers: self.settings.workers,
                flip: false,
            },
            &self.inner,
        )
    }

    /// Writes, in the output folder, `best.safetensors` when the last epoch set the best
    /// validation accuracy, `last.safetensors`, `metrics.jsonl`, `metrics.csv`, `curves.png`
    /// and last `checkpoint.safetensors` (for [`Trainer::resume`]), each atomically. The
    /// checkpoint's rename commits the epoch: a run killed before it resumes from the epoch
    /// before, whose metrics rows it keeps (later rows are dropped on resume).
    ///
    /// # Errors
    ///
    /// [`TrainError::Weights`] when a file cannot be written.
    pub fn save(&self) -> Result<(), TrainError> {
        let s = &self.settings;
        let valid = self.model().valid();
        let classes = &self.data.classes;
        if self.best_epoch.is_some_and(|e| e == self.epoch) {
            save_weights(
                &s.output.join("best.safetensors"),
                &valid,
                classes,
                &s.preprocess,
            )?;
        }
        save_weights(
            &s.output.join("last.safetensors"),
            &valid,
            classes,
            &s.preprocess,
        )?;
        if let Some(average) = &self.ema {
            if self.best_ema_epoch.is_some_and(|e| e == self.epoch) {
                save_weights(
                    &s.output.join("best_ema.safetensors"),
                    average.model(),
                    classes,
                    &s.preprocess,
                )?;
            }
            save_weights(
                &s.output.join("last_ema.safetensors"),
                average.model(),
                classes,
                &s.preprocess,
            )?;
        }
        write_metrics(&s.output, &self.history)?;
        save_checkpoint(
            &s.output.join("checkpoint.safetensors"),
            &valid,
            self.ema_model(),
            &self.optimizer,
            &self.state(),
            classes,
        )?;
        Ok(())
    }

    /// What the run trains on what.
    pub fn run_info(&self) -> RunInfo {
        let s = &self.settings;
        RunInfo {
            model: s.config.name.clone(),
            data: s.data.clone(),
            train_images: self.train_idx.len(),
            val_images: self.val_idx.len(),
            classes: self.data.classes.len(),
            epochs: s.epochs,
            epochs_done: self.epoch,
            steps_per_epoch: self.steps_per_epoch,
        }
    }

    /// Where training stands, as a checkpoint records it.
    pub fn state(&self) -> TrainState {
        TrainState {
            epoch: self.epoch,
            step: self.step,
            best_top1: self.best_top1,
            best_ema_top1: self.best_ema_top1.is_finite().then_some(self.best_ema_top1),
            settings: self.settings.clone(),
        }
    }

    /// The run's settings.
    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    /// The dataset's class names, by label.
    pub fn classes(&self) -> &[String] {
        &self.data.classes
    }

    /// The network being trained (on the training device, in training mode).
    pub fn model(&self) -> &SkNet {
        self.model.as_ref().expect(MODEL_IN_STEP)
    }

    /// The metrics of every epoch so far, earlier runs' included.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    /// The metrics of every epoch so far, earlier runs' included.
    pub fn into_history(self) -> Vec<EpochMetrics> {
        self.history
    }

    /// The learning rate of the next step.
    fn lr(&self) -> f64 {
        self.settings.schedule.at(self.step, self.steps_per_epoch)
    }

    pub(super) fn loader_config(&self) -> LoaderConfig {
        let s = &self.settings;
        LoaderConfig {
            batch: s.batch,
            workers: s.workers,
            shuffle: true,
            drop_last: true,
            augment: self.transform.clone(),
            eval: s.preprocess.clone(),
            seed: s.seed,
            enlarge: None,
        }
    }
}

/// Every setting that decides which images an epoch sees, and how, that differs between a
/// checkpoint's run and this one, as `name: then -> now`: the data settings and every field of
/// the recipe, compared as the checkpoint records them. The optimizer's settings may change on
/// resume (a lower learning rate, say); these may not.
fn recipe_differences(then: &TrainSettings, now: &TrainSettings) -> Vec<String> {
    use serde_json::Value;
    const DATA: [&str; 7] = [
        "data",
        "val_per_class",
        "seed",
        "batch",
        "augment",
        "preprocess",
        "label_smoothing",
    ];
    let as_json = |s: &TrainSettings| serde_json::to_value(s).expect("settings serialize");
    let (then, now) = (as_json(then), as_json(now));
    let show = |v: &Value| match v {
        Value::Null => "none".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let fields = |settings: &Value| -> Vec<(String, Value)> {
        let data = DATA.iter().map(|k| (k.to_string(), settings[*k].clone()));
        let recipe = settings["recipe"].as_object().cloned().unwrap_or_default();
        data.chain(recipe).collect()
    };
    fields(&then)
        .into_iter()
        .zip(fields(&now))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| format!("{name}: {} -> {}", show(&a), show(&b)))
        .collect()
}
