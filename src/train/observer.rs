//! What a [`Trainer`](super::Trainer) reports while it trains, for a caller to show or log.

use std::path::{Path, PathBuf};

use super::{EpochMetrics, TrainError};
use crate::data::loader::SkippedImage;

/// What a run trains on what, reported once when training starts or continues.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// The network's name.
    pub model: String,
    /// The dataset folder.
    pub data: PathBuf,
    /// Training images.
    pub train_images: usize,
    /// Held-out validation images.
    pub val_images: usize,
    /// Classes.
    pub classes: usize,
    /// Epochs of the whole run.
    pub epochs: usize,
    /// Epochs already done (by a resumed checkpoint).
    pub epochs_done: usize,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: usize,
}

/// Where an epoch stands after one optimizer step. The figures are running ones, over the
/// epoch's images so far.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    /// Epoch (1-based).
    pub epoch: usize,
    /// The batch's index in the epoch (1-based).
    pub step: usize,
    /// Batches in the epoch.
    pub steps: usize,
    /// Images trained on in this epoch so far.
    pub images: usize,
    /// Of those, how many the network classified right before its update.
    pub correct: usize,
    /// Mean training loss over those images.
    pub loss: f64,
    /// Training images per second since the epoch's first batch was asked for.
    pub images_per_s: f64,
}

/// Receives a [`Trainer`](super::Trainer)'s reports, in the order below for each epoch. Every
/// method does nothing by default, so an observer implements only what it shows.
pub trait TrainObserver {
    /// A run starts, or continues from a checkpoint.
    fn run_started(&mut self, _run: &RunInfo) {}

    /// Fine-tuning: the weights of `init` were loaded, as `report` says.
    fn initialized(&mut self, _init: &str, _report: &crate::weights::load::FineTuneReport) {}

    /// The state of `checkpoint`, saved after `epoch` epochs, was restored.
    fn resumed(&mut self, _checkpoint: &Path, _epoch: usize) {}

    /// Epoch `epoch` (1-based) of `epochs` starts, with `steps` batches to train on.
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}

    /// An optimizer step was taken.
    fn step(&mut self, _progress: &StepProgress) {}

    /// An image could not be decoded and was left out (in training or validation).
    fn image_skipped(&mut self, _image: &SkippedImage) {}

    /// The epoch's training steps are over; validation on `images` images starts.
    fn validation_started(&mut self, _epoch: usize, _images: usize) {}

    /// The epoch stopped with `error` during its training steps (the loss diverged).
    fn epoch_aborted(&mut self, _error: &TrainError) {}

    /// The epoch is over: trained and validated. Its files are written next.
    fn epoch_finished(&mut self, _metrics: &EpochMetrics) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl TrainObserver for NoopObserver {}
