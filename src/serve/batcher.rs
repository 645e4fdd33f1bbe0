//! Dynamic batching: requests wait in a bounded queue; one inference thread takes the first,
//! gathers more until the batch is full or the first has waited `max_wait`, and answers them
//! all from one forward pass. The forward pass runs on that thread and the kernels' thread pool,
//! never on the async runtime's threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::infer::{classify, Classify, InferError, Prediction, Preprocess, Rgb8};
use crate::model::SkNet;

/// One image waiting for its prediction.
pub(crate) struct Job {
    pub image: Rgb8,
    pub name: String,
    pub topk: usize,
    pub attention: bool,
    pub reply: oneshot::Sender<Result<Prediction, InferError>>,
}

/// The queue's sending side, shared by the request handlers.
pub(crate) struct Batcher {
    queue: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
}

/// The queue is full: the request is refused, not kept waiting.
pub(crate) struct QueueFull;

/// What the inference thread needs.
pub(crate) struct Worker {
    pub model: SkNet,
    pub preprocess: Preprocess,
    pub classes: Vec<String>,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub device: Device,
    pub metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the inference thread; it stops once every [`Batcher`] handle is dropped and the
    /// queue is empty.
    pub fn start(worker: Worker, capacity: usize) -> (Self, JoinHandle<()>) {
        let (queue, jobs) = sync_channel(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        let handle = std::thread::Builder::new()
            .name("sknet-inference".into())
            .spawn(move || worker.run(jobs, &thread_depth))
            .expect("the inference thread starts");
        (Self { queue, depth }, handle)
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(QueueFull)
            }
        }
    }

    /// Jobs queued and not yet taken into a batch.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

impl Worker {
    fn run(self, jobs: Receiver<Job>, depth: &AtomicUsize) {
        while let Ok(first) = jobs.recv() {
            let deadline = Instant::now() + self.max_wait;
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(left) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            depth.fetch_sub(batch.len(), Ordering::SeqCst);
            // Clients that gave up (timed out, disconnected) cost no forward pass.
            batch.retain(|job| !job.reply.is_closed());
            if !batch.is_empty() {
                self.answer(batch);
            }
        }
    }

    fn answer(&self, batch: Vec<Job>) {
        self.metrics.batch_size.observe(batch.len() as f64);
        let request = Classify {
            classes: &self.classes,
            topk: batch.iter().map(|j| j.topk).max().unwrap_or(1),
            attention: batch.iter().any(|j| j.attention),
        };
        let names: Vec<String> = batch.iter().map(|j| j.name.clone()).collect();
        let images: Vec<Rgb8> = batch.iter().map(|j| j.image.clone()).collect();
        let result = classify(
            &self.model,
            &self.preprocess,
            &names,
            &images,
            &request,
            &self.device,
        );
        match result {
            Ok(predictions) => {
                for (job, mut prediction) in batch.into_iter().zip(predictions) {
                    prediction.top.truncate(job.topk);
                    if !job.attention {
                        prediction.attention = None;
                    }
                    // A client that left meanwhile is no error.
                    let _ = job.reply.send(Ok(prediction));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
