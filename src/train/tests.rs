use std::path::{Path, PathBuf};

use super::schedule::{LrSchedule, Schedule};
use super::*;
use crate::data::loader::SkippedImage;

/// Records what a trainer reports.
#[derive(Default)]
struct Recorder {
    events: Vec<&'static str>,
    run: Option<RunInfo>,
    resumed: Option<(PathBuf, usize)>,
    steps: Vec<StepProgress>,
    skipped: Vec<SkippedImage>,
    finished: Vec<EpochMetrics>,
}

impl TrainObserver for Recorder {
    fn run_started(&mut self, run: &RunInfo) {
        self.events.push("run_started");
        self.run = Some(run.clone());
    }
    fn resumed(&mut self, checkpoint: &Path, epoch: usize) {
        self.events.push("resumed");
        self.resumed = Some((checkpoint.to_path_buf(), epoch));
    }
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {
        self.events.push("epoch_started");
    }
    fn step(&mut self, progress: &StepProgress) {
        self.events.push("step");
        self.steps.push(progress.clone());
    }
    fn image_skipped(&mut self, image: &SkippedImage) {
        self.events.push("image_skipped");
        self.skipped.push(image.clone());
    }
    fn validation_started(&mut self, _epoch: usize, _images: usize) {
        self.events.push("validation_started");
    }
    fn epoch_aborted(&mut self, _error: &TrainError) {
        self.events.push("epoch_aborted");
    }
    fn epoch_finished(&mut self, metrics: &EpochMetrics) {
        self.events.push("epoch_finished");
        self.finished.push(metrics.clone());
    }
}

/// 3 classes of 6 files, real images but for an undecodable one in `cat`'s training split.
fn tiny_run(tag: &str) -> TrainSettings {
    let dir = std::env::temp_dir().join(format!("sknet-trainer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-mini");
    let root = dir.join("data");
    for class in ["airplane", "cat", "ship"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        let images = if class == "cat" { 5 } else { 6 };
        for i in 0..images {
            let name = format!("{i:04}.jpg");
            std::fs::copy(src.join(class).join(&name), root.join(class).join(&name)).unwrap();
        }
    }
    std::fs::write(root.join("cat/0000_broken.jpg"), b"not a jpeg").unwrap();
    let mut config = crate::presets::by_name("sknet-tiny").unwrap();
    config.num_classes = 3;
    config.layers = vec![1, 1];
    config.planes = vec![8, 16];
    config.strides = vec![1, 2];
    config.stem = crate::config::StemConfig::Cifar { width: 8 };
    TrainSettings {
        config,
        data: root,
        val_per_class: 2,
        epochs: 2,
        batch: 4,
        schedule: LrSchedule {
            lr: 0.05,
            kind: Schedule::Cosine,
            warmup_epochs: 1.0,
            step_epochs: 30,
            gamma: 0.1,
            epochs: 2,
            min_lr: 0.0,
        },
        optimizer: Default::default(),
        momentum: 0.9,
        nesterov: true,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 5e-4,
        label_smoothing: 0.1,
        augment: crate::data::augment::Augment::Cifar,
        preprocess: crate::infer::Preprocess::cifar([32, 32]),
        seed: 3,
        workers: 1,
        output: dir.join("run"),
        init: None,
        allow_partial: false,
        freeze: false,
        backbone_lr_scale: 1.0,
        grad_accum_steps: 1,
        recipe: Default::default(),
    }
}

/// One training run at a time: burn's autodiff backend is not meant for two in one process.
pub(super) static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_trainer_reports_each_step_skipped_image_and_epoch() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let settings = tiny_run("observer");
    let output = settings.output.clone();
    let mut recorder = Recorder::default();
    let history = train_with(settings.clone(), None, Some(1), &mut recorder).unwrap();
    // 12 training images, one undecodable: 3 batches of 4, 11 images trained on.
    let run = recorder.run.clone().unwrap();
    assert_eq!(
        (
            run.train_images,
            run.val_images,
            run.classes,
            run.steps_per_epoch
        ),
        (12, 6, 3, 3)
    );
    assert_eq!((run.epochs, run.epochs_done), (2, 0));
    assert_eq!(recorder.skipped.len(), 1, "{:?}", recorder.skipped);
    assert!(recorder.skipped[0].image.ends_with("0000_broken.jpg"));
    assert!(!recorder.skipped[0].reason.is_empty());
    let steps: Vec<usize> = recorder.steps.iter().map(|p| p.step).collect();
    assert_eq!(steps, [1, 2, 3]);
    let last = recorder.steps.last().unwrap();
    assert_eq!((last.steps, last.images), (3, 11));
    assert!(last.correct <= last.images && last.loss.is_finite());
    let mut events = recorder.events.clone();
    events.retain(|e| *e != "image_skipped");
    assert_eq!(
        events,
        [
            "run_started",
            "epoch_started",
            "step",
            "step",
            "step",
            "validation_started",
            "epoch_finished"
        ]
    );
    assert_eq!(history.len(), 1);
    assert_eq!(recorder.finished[0].val_loss, history[0].val_loss);

    // Resumed step by step: the resume is reported, the last epoch runs, then there are none.
    let checkpoint = output.join("checkpoint.safetensors");
    let mut trainer = Trainer::new(settings).unwrap();
    let mut recorder = Recorder::default();
    trainer.resume(&checkpoint, &mut recorder).unwrap();
    assert_eq!(recorder.resumed, Some((checkpoint, 1)));
    assert_eq!(trainer.history().len(), 1);
    let metrics = trainer.run_epoch(&mut recorder).unwrap();
    trainer.save().unwrap();
    assert_eq!((metrics.epoch, trainer.state().epoch), (2, 2));
    assert_eq!(trainer.history().len(), 2);
    let err = trainer.run_epoch(&mut recorder).unwrap_err();
    assert!(matches!(err, TrainError::Setting(_)), "{err}");
    let jsonl = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
}

/// Gradient accumulation, recomputed by hand: the same batches in the same order, each loss
/// divided by the number of batches per step, an optimizer step after every second batch and
/// after the epoch's last.
#[test]
fn accumulated_gradients_make_one_step_of_several_batches() {
    use burn::module::Module;
    use burn::optim::{GradientsAccumulator, GradientsParams};
    use burn::tensor::{Tensor, TensorData};

    use crate::data::loader::Loader;

    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let base = tiny_run("accum");
    let s = TrainSettings {
        grad_accum_steps: 2,
        ..base.clone()
    };
    // The run's initial network and loader: a trainer builds them from the seed, as the run
    // will.
    let probe = Trainer::new(TrainSettings {
        output: s.output.with_file_name("probe"),
        ..s.clone()
    })
    .unwrap();
    let mut model = probe.model().clone();
    // burn initialises parameters when they are first read: read them now, before the run
    // below draws from the seeded generator again.
    let _ = crate::weights::load::state_dict(&model.valid()).unwrap();
    let run = train(s.clone(), None, Some(1)).unwrap();
    assert_eq!(run.len(), 1);
    let data = std::sync::Arc::new(crate::data::Dataset::open(&s.data).unwrap());
    let (train_idx, _) = data.split(s.val_per_class).unwrap();
    let loader = Loader::new(data, &train_idx, probe.loader_config(), 0);
    let device = crate::device::training_device();
    let batches: Vec<_> = loader.collect();
    assert_eq!(batches.len(), 3, "12 images in batches of 4");
    let steps_per_epoch = 2;
    let mut optimizer = super::optim::Optimizer::new(s.optimizer_config());
    let mut accumulated = GradientsAccumulator::<crate::SkNet>::new();
    let mut step = 0;
    for (i, batch) in batches.into_iter().enumerate() {
        let n = batch.labels.len();
        let [h, w] = s.preprocess.size;
        let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 3, h, w]), &device);
        let targets =
            super::mixup::mix_targets(&batch.labels, s.config.num_classes, 1.0, s.label_smoothing);
        let loss =
            super::loss::soft_cross_entropy(model.forward(x), targets, &device).div_scalar(2.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulated.accumulate(&model, grads);
        if i % 2 == 1 || i == 2 {
            let lr = s.schedule.at(step, steps_per_epoch);
            model = optimizer.step(model, accumulated.grads(), lr);
            step += 1;
        }
    }
    assert_eq!(step, 2);
    let want = crate::weights::load::state_dict(&model.valid()).unwrap();
    let got =
        crate::weights::checkpoint::Checkpoint::read(&s.output.join("last.safetensors")).unwrap();
    let mut compared = 0;
    for (key, tensor) in want {
        if let crate::weights::checkpoint::OutTensor::F32(_, values) = tensor {
            let file = &got.tensors[&key].data;
            let worst = values
                .iter()
                .zip(file)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{key}: differs by {worst:e}");
            compared += 1;
        }
    }
    assert!(compared > 10);
    // Without accumulation the same epoch takes three steps and ends elsewhere.
    let plain = TrainSettings {
        output: s.output.with_file_name("plain"),
        ..base
    };
    train(plain.clone(), None, Some(1)).unwrap();
    let other =
        crate::weights::checkpoint::Checkpoint::read(&plain.output.join("last.safetensors"))
            .unwrap();
    assert_ne!(
        other.tensors["fc.weight"].data,
        got.tensors["fc.weight"].data
    );
}
