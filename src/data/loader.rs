//! Batches decoded and augmented on worker threads while the model trains on the previous ones.
//! At most `prefetch` batches wait in memory; order and augmentation are fixed by the seed.
//!
//! An image that cannot be decoded is left out of its batch, counted, and described in a
//! [`SkippedImage`] that the caller collects with [`Loader::take_skipped`]: the loader never
//! prints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::augment::TrainTransform;
use super::rng::Rng;
use super::Dataset;
use crate::infer::resize::enlarge;
use crate::infer::Preprocess;

/// One batch: `[n, 3, H, W]` values and labels.
pub struct Batch {
    /// Row-major pixels.
    pub pixels: Vec<f32>,
    /// Labels.
    pub labels: Vec<usize>,
    /// The dataset items the images are, in batch order.
    pub items: Vec<usize>,
}

/// An image that could not be decoded and was left out of its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedImage {
    /// The image (its file, or its record in a binary file).
    pub image: String,
    /// Why it could not be decoded.
    pub reason: String,
}

impl std::fmt::Display for SkippedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.image, self.reason)
    }
}

/// Iterates over the batches of one epoch.
pub struct Loader {
    rx: Receiver<(usize, Batch)>,
    pending: BTreeMap<usize, Batch>,
    next: usize,
    total: usize,
    workers: Vec<JoinHandle<()>>,
    skipped: Arc<AtomicUsize>,
    skipped_rx: Receiver<SkippedImage>,
}

/// What the loader is asked for.
#[derive(Clone)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch: usize,
    /// Worker threads.
    pub workers: usize,
    /// Shuffle the order (seeded by seed and epoch).
    pub shuffle: bool,
    /// Drop a last incomplete batch.
    pub drop_last: bool,
    /// The training transform (the evaluation transform with `Augment::None` alone).
    pub augment: TrainTransform,
    /// Size and normalization.
    pub eval: Preprocess,
    /// Seed.
    pub seed: u64,
    /// Enlarge the central object by this scale before the transform (see
    /// [`enlarge`](crate::infer::resize::enlarge)); `None` leaves images as they are.
    pub enlarge: Option<f64>,
}

impl Loader {
    /// Starts the workers for `epoch` over `indices` of `data`.
    pub fn new(data: Arc<Dataset>, indices: &[usize], config: LoaderConfig, epoch: u64) -> Self {
        let mut order = indices.to_vec();
        if config.shuffle {
            Rng::derive(&[config.seed, epoch, 0x5a11]).shuffle(&mut order);
        }
        let b = config.batch.max(1);
        let mut total = order.len() / b;
        if !config.drop_last && !order.len().is_multiple_of(b) {
            total += 1;
        }
        let order = Arc::new(order);
        let workers_n = config.workers.max(1);
        let (tx, rx) = sync_channel(2 * workers_n);
        let skipped = Arc::new(AtomicUsize::new(0));
        // Unbounded: a worker never waits for its caller to collect what it skipped.
        let (skipped_tx, skipped_rx) = channel();
        let workers = (0..workers_n)
            .map(|w| {
                let (tx, data, order, config, skipped, skipped_tx) = (
                    tx.clone(),
                    data.clone(),
                    order.clone(),
                    config.clone(),
                    skipped.clone(),
                    skipped_tx.clone(),
                );
                std::thread::spawn(move || {
                    let [h, wd] = config.eval.size;
                    for k in (w..total).step_by(workers_n) {
                        let slice = &order[k * b..((k + 1) * b).min(order.len())];
                        let mut pixels = Vec::with_capacity(slice.len() * 3 * h * wd);
                        let mut labels = Vec::with_capacity(slice.len());
                        let mut items = Vec::with_capacity(slice.len());
                        for &i in slice {
                            match data.load(i) {
                                Ok(img) => {
                                    let img = match config.enlarge {
                                        Some(scale) => enlarge(&img, scale),
                                        None => img,
                                    };
                                    let mut rng = Rng::derive(&[config.seed, epoch, i as u64]);
                                    pixels.extend(config.augment.apply(
                                        &img,
                                        &config.eval,
                                        &mut rng,
                                    ));
                                    labels.push(data.label(i));
                                    items.push(i);
                                }
                                Err(reason) => {
                                    skipped.fetch_add(1, Ordering::Relaxed);
                                    // The caller may have stopped listening; nothing to do then.
                                    let _ = skipped_tx.send(SkippedImage {
                                        image: data.describe(i),
                                        reason,
                                    });
                                }
                            }
                        }
                        let batch = Batch {
                            pixels,
                            labels,
                            items,
                        };
                        if tx.send((k, batch)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            rx,
            pending: BTreeMap::new(),
            next: 0,
            total,
            workers,
            skipped,
            skipped_rx,
        }
    }

    /// Images skipped so far because they could not be decoded.
    pub fn skipped_count(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The images skipped since the last call, in the order the workers met them. An image is
    /// reported before the batch it was left out of is returned, so after the last batch this
    /// holds every image of the epoch that was skipped.
    pub fn take_skipped(&mut self) -> Vec<SkippedImage> {
        self.skipped_rx.try_iter().collect()
    }

    /// Batches in this epoch.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            let (k, batch) = self.rx.recv().ok()?;
            self.pending.insert(k, batch);
        }
        let batch = self.pending.remove(&self.next);
        self.next += 1;
        batch
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock and finish the workers.
        while self.rx.try_recv().is_ok() {}
        let (_tx, rx) = sync_channel(0);
        let old = std::mem::replace(&mut self.rx, rx);
        drop(old);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
