//! Training, resume, evaluation and bad data, on a few real CIFAR-10 images and a tiny network.

mod common;

use common::small_dataset;

use std::path::{Path, PathBuf};

use burn::module::Module;

use sknet::data::augment::Augment;
use sknet::data::Dataset;
use sknet::infer::Preprocess;
use sknet::train::schedule::{LrSchedule, Schedule};
use sknet::train::{train, TrainError, TrainSettings};
use sknet::weights::checkpoint::Checkpoint;

/// Trainings in this file run one at a time: two models training concurrently in one process
/// were seen to perturb each other's results on burn 0.22's autodiff backend (each alone is
/// bit-for-bit reproducible), and the CLI trains one model per process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sknet-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn settings(data: &Path, output: &Path, epochs: usize) -> TrainSettings {
    let mut config = sknet::presets::by_name("sknet-tiny").unwrap();
    config.num_classes = 3;
    config.layers = vec![1, 1];
    config.planes = vec![8, 16];
    config.strides = vec![1, 2];
    config.stem = sknet::config::StemConfig::Cifar { width: 8 };
    TrainSettings {
        config,
        data: data.to_path_buf(),
        val_per_class: 2,
        epochs,
        batch: 8,
        schedule: LrSchedule {
            lr: 0.05,
            kind: Schedule::Cosine,
            warmup_epochs: 1.0,
            step_epochs: 30,
            gamma: 0.1,
            epochs,
            min_lr: 0.0,
        },
        optimizer: Default::default(),
        momentum: 0.9,
        nesterov: true,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 5e-4,
        label_smoothing: 0.1,
        augment: Augment::Cifar,
        preprocess: Preprocess {
            size: [32, 32],
            crop_pct: 1.0,
            interpolation: sknet::infer::resize::Filter::Bicubic,
            mean: [0.5, 0.5, 0.5],
            std: [0.25, 0.25, 0.25],
        },
        seed: 7,
        workers: 2,
        output: output.to_path_buf(),
        init: None,
        allow_partial: false,
        freeze: false,
        backbone_lr_scale: 1.0,
        grad_accum_steps: 1,
        recipe: Default::default(),
    }
}

/// Largest absolute difference between two checkpoints' tensors (same keys).
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((ka, va), (kb, vb))| {
            assert_eq!(ka, kb);
            va.iter()
                .zip(vb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    Checkpoint::read(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let _guard = serial();
    let dir = scratch("resume");
    let data = small_dataset(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let full = train(settings(&data, &a, 3), None, None).unwrap();
    assert_eq!(full.len(), 3);
    // Interrupted after one epoch, then resumed.
    train(settings(&data, &b, 3), None, Some(1)).unwrap();
    let rest = train(
        settings(&data, &b, 3),
        Some(&b.join("checkpoint.safetensors")),
        None,
    )
    .unwrap();
    assert_eq!(rest.len(), 3, "metrics history continues");
    let c = dir.join("c");
    train(settings(&data, &c, 3), None, None).unwrap();
    let wa = weights(&a.join("last.safetensors"));
    // Runs repeat exactly, and a resumed run ends exactly where the uninterrupted one does.
    let rerun = max_diff(&wa, &weights(&c.join("last.safetensors")));
    let resumed = max_diff(&wa, &weights(&b.join("last.safetensors")));
    assert_eq!(rerun, 0.0, "a rerun differs");
    assert_eq!(resumed, 0.0, "the resumed run differs");
    assert_eq!(full[2].val_loss, rest[2].val_loss);
    for f in [
        "best.safetensors",
        "checkpoint.safetensors",
        "metrics.csv",
        "metrics.jsonl",
        "curves.png",
    ] {
        assert!(a.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    // No temporary files are left behind.
    assert!(std::fs::read_dir(&a).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("tmp")));
    // The weights carry what predict and eval need.
    let ckpt = Checkpoint::read(&a.join("best.safetensors")).unwrap();
    for key in ["sknet.config", "sknet.classes", "sknet.preprocess"] {
        assert!(ckpt.metadata.contains_key(key), "{key}");
    }
}

#[test]
fn resume_from_another_architecture_is_refused() {
    let _guard = serial();
    let dir = scratch("other");
    let data = small_dataset(&dir);
    let out = dir.join("run");
    train(settings(&data, &out, 2), None, Some(1)).unwrap();
    let mut other = settings(&data, &out, 2);
    other.config.planes = vec![8, 32];
    let err = train(other, Some(&out.join("checkpoint.safetensors")), None).unwrap_err();
    assert!(matches!(err, TrainError::Resume { .. }), "{err}");
    assert!(err.to_string().contains("checkpoint.safetensors"), "{err}");
    // A weights-only file is not a training checkpoint.
    let err = train(
        settings(&data, &out, 2),
        Some(&out.join("last.safetensors")),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not a training checkpoint"),
        "{err}"
    );
}

#[test]
fn resume_with_other_data_settings_is_refused_and_temporaries_are_cleaned() {
    let _guard = serial();
    let dir = scratch("recipe");
    let data = small_dataset(&dir);
    let out = dir.join("run");
    train(settings(&data, &out, 2), None, Some(1)).unwrap();
    let checkpoint = out.join("checkpoint.safetensors");
    type Change = fn(&mut TrainSettings);
    let changes: [(&str, Change); 3] = [
        ("seed", |s| s.seed += 1),
        ("batch", |s| s.batch += 1),
        ("val_per_class", |s| s.val_per_class += 1),
    ];
    for (field, change) in changes {
        let mut other = settings(&data, &out, 2);
        change(&mut other);
        let err = train(other, Some(&checkpoint), None).unwrap_err();
        assert!(matches!(err, TrainError::Resume { .. }), "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    // A kill during a write leaves a temporary file; the next run removes it.
    let stale = out.join(".checkpoint.safetensors.tmp-4000000");
    std::fs::write(&stale, b"half written").unwrap();
    train(settings(&data, &out, 2), Some(&checkpoint), None).unwrap();
    assert!(!stale.exists());
}

#[test]
fn diverging_loss_stops_and_keeps_the_last_good_checkpoint() {
    let _guard = serial();
    let dir = scratch("nan");
    let data = small_dataset(&dir);
    let out = dir.join("run");
    train(settings(&data, &out, 3), None, Some(1)).unwrap();
    let before = weights(&out.join("checkpoint.safetensors"));
    let mut wild = settings(&data, &out, 3);
    wild.schedule.lr = 1e30;
    wild.schedule.warmup_epochs = 0.0;
    let err = train(wild, Some(&out.join("checkpoint.safetensors")), None).unwrap_err();
    assert!(matches!(err, TrainError::NotFinite { .. }), "{err}");
    assert!(err.to_string().contains("diverged"), "{err}");
    assert_eq!(weights(&out.join("checkpoint.safetensors")), before);
}

#[test]
fn unreadable_images_are_skipped_and_empty_classes_refused() {
    let _guard = serial();
    let dir = scratch("bad");
    let data = small_dataset(&dir);
    std::fs::write(data.join("cat/zzz_broken.jpg"), b"not a jpeg").unwrap();
    let out = dir.join("run");
    let mut s = settings(&data, &out, 1);
    s.batch = 1; // a batch of one trains too
    s.val_per_class = 3; // the broken file is in the validation split
    let history = train(s, None, None).unwrap();
    assert_eq!(history.len(), 1);
    assert!(history[0].train_loss.is_finite());

    std::fs::create_dir_all(data.join("dog")).unwrap();
    let err = Dataset::open(&data).unwrap_err().to_string();
    assert!(err.contains("dog") && err.contains("no images"), "{err}");
}

#[test]
fn eval_reports_accuracy_per_class_and_confusion() {
    let _guard = serial();
    let dir = scratch("eval");
    let data = small_dataset(&dir);
    let out = dir.join("run");
    train(settings(&data, &out, 1), None, None).unwrap();
    let bin = env!("CARGO_BIN_EXE_sknet");
    let weights = out.join("best.safetensors");
    let run = std::process::Command::new(bin)
        .args([
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["images"], 30);
    let top1 = v["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert_eq!(v["top5"], 1.0, "3 classes: top-5 is certain");
    let confusion = v["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, 30);
    let diag: u64 = (0..3).map(|i| confusion[i][i].as_u64().unwrap()).sum();
    assert!((diag as f64 / 30.0 - top1).abs() < 1e-9);
    assert_eq!(v["per_class"][1]["class"], "cat");
    // A folder the checkpoint does not know is an error.
    std::fs::create_dir_all(data.join("zebra")).unwrap();
    std::fs::copy(
        data.join("cat")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        data.join("zebra/a.jpg"),
    )
    .unwrap();
    let run = std::process::Command::new(bin)
        .args([
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("zebra") && err.contains("not one of the checkpoint's 3 classes"),
        "{err}"
    );
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The timm-format tiny SK-ResNet of the fixtures, fine-tuned on 3 classes at 32x32.
fn fine_tune_settings(data: &Path, output: &Path) -> TrainSettings {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path("tiny_timm.json")).unwrap())
            .unwrap();
    let mut config: sknet::NetworkConfig = serde_json::from_value(fx["config"].clone()).unwrap();
    config.num_classes = 3;
    config.default_input = [32, 32];
    TrainSettings {
        config,
        init: Some(fixture_path("tiny_timm.safetensors").display().to_string()),
        epochs: 1,
        ..settings(data, output, 1)
    }
}

/// Records what fine-tuning reports.
#[derive(Default)]
struct Initialised(Vec<(String, sknet::weights::load::FineTuneReport)>);

impl sknet::train::TrainObserver for Initialised {
    fn initialized(&mut self, init: &str, report: &sknet::weights::load::FineTuneReport) {
        self.0.push((init.to_string(), report.clone()));
    }
}

fn is_classifier(key: &str) -> bool {
    key.starts_with("fc.")
}

#[test]
fn fine_tuning_loads_timm_weights_and_initialises_a_classifier_for_the_new_classes() {
    let _serial = serial();
    let dir = scratch("finetune");
    let data = small_dataset(&dir);
    let init = Checkpoint::read(&fixture_path("tiny_timm.safetensors")).unwrap();
    let s = fine_tune_settings(&data, &dir.join("run"));
    let mut trainer = sknet::train::Trainer::new(s.clone()).unwrap();
    let fresh = sknet::weights::load::state_dict(&trainer.model().valid()).unwrap();
    let mut seen = Initialised::default();
    trainer.initialize(&mut seen).unwrap();
    let [(spec, report)] = seen.0.as_slice() else {
        panic!("{} reports", seen.0.len())
    };
    assert!(spec.ends_with("tiny_timm.safetensors"));
    let reinit: Vec<&str> = report
        .reinitialised
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(reinit, ["fc.weight", "fc.bias"]);
    assert_eq!(
        report.reinitialised[0].1[0], 10,
        "the file's classifier has 10 classes"
    );
    let loaded = sknet::weights::load::state_dict(&trainer.model().valid()).unwrap();
    let mut compared = 0;
    for ((key, tensor), (_, before)) in loaded.iter().zip(&fresh) {
        let (
            sknet::weights::checkpoint::OutTensor::F32(_, now),
            sknet::weights::checkpoint::OutTensor::F32(_, was),
        ) = (tensor, before)
        else {
            continue;
        };
        if is_classifier(key) {
            // The new classifier is the seeded initialisation of a run from scratch.
            assert_eq!(now, was, "{key}");
        } else {
            assert_eq!(now, &init.tensors[key].data, "{key} was not loaded");
            compared += 1;
        }
    }
    assert_eq!(compared, report.report.loaded);
    assert!(compared > 20);

    // --freeze: one epoch changes the classifier only; BatchNorm statistics stay too.
    let frozen_out = dir.join("frozen");
    let frozen = sknet::train::train_with(
        TrainSettings {
            freeze: true,
            output: frozen_out.clone(),
            ..s.clone()
        },
        None,
        None,
        &mut Initialised::default(),
    )
    .unwrap();
    assert_eq!(frozen.len(), 1);
    let after = weights(&frozen_out.join("last.safetensors"));
    let mut classifier_moved = false;
    for (key, values) in &after {
        if is_classifier(key) {
            classifier_moved |= fresh.iter().any(|(k, t)| {
                k == key
                    && matches!(t, sknet::weights::checkpoint::OutTensor::F32(_, v) if v != values)
            });
        } else if let Some(raw) = init.tensors.get(key) {
            assert_eq!(values, &raw.data, "{key} changed under --freeze");
        }
    }
    assert!(classifier_moved);

    // A backbone learning rate of 0 keeps its weights but not its BatchNorm statistics, which
    // training mode updates.
    let still_out = dir.join("still");
    sknet::train::train_with(
        TrainSettings {
            backbone_lr_scale: 0.0,
            output: still_out.clone(),
            ..s.clone()
        },
        None,
        None,
        &mut Initialised::default(),
    )
    .unwrap();
    let after = weights(&still_out.join("last.safetensors"));
    let value = |key: &str| &after.iter().find(|(k, _)| k == key).unwrap().1;
    assert_eq!(value("conv1.weight"), &init.tensors["conv1.weight"].data);
    assert_ne!(
        value("bn1.running_mean"),
        &init.tensors["bn1.running_mean"].data
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fine_tuning_weights_of_another_network_names_the_keys_and_the_preset_that_fits() {
    let _serial = serial();
    let dir = scratch("finetune-other");
    let data = small_dataset(&dir);
    // sknet-tiny's weights (10 classes), into the tiny timm network.
    let tiny = sknet::SkNet::new(
        &sknet::presets::by_name("sknet-tiny").unwrap(),
        &burn::tensor::Device::flex(),
    )
    .unwrap();
    let file = dir.join("sknet-tiny.safetensors");
    sknet::weights::checkpoint::write_safetensors(
        &file,
        sknet::weights::load::state_dict(&tiny).unwrap(),
        Default::default(),
    )
    .unwrap();
    let s = TrainSettings {
        init: Some(file.display().to_string()),
        ..fine_tune_settings(&data, &dir.join("run"))
    };
    let err = sknet::train::train(s.clone(), None, None).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sknet-tiny.safetensors"), "{text}");
    assert!(
        text.contains("layer1.0.conv1.paths.0.conv.weight") || text.contains("missing"),
        "{text}"
    );
    assert!(
        matches!(&err, TrainError::Weights(sknet::WeightsError::Mismatch { fits: Some(p), .. }) if p == "sknet-tiny"),
        "{err:?}"
    );
    // --allow-partial loads what fits and trains.
    let history = sknet::train::train(
        TrainSettings {
            allow_partial: true,
            ..s
        },
        None,
        None,
    )
    .unwrap();
    assert_eq!(history.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_adamw_run_resumes_exactly_and_refuses_another_optimizer() {
    let _serial = serial();
    let dir = scratch("adamw");
    let data = small_dataset(&dir);
    let adamw = |out: &Path| TrainSettings {
        optimizer: sknet::train::optim::OptimizerName::AdamW,
        betas: [0.9, 0.99],
        weight_decay: 0.05,
        schedule: LrSchedule {
            lr: 2e-3,
            min_lr: 1e-4,
            ..settings(&data, out, 3).schedule
        },
        ..settings(&data, out, 3)
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let full = train(adamw(&a), None, None).unwrap();
    train(adamw(&b), None, Some(2)).unwrap();
    let ckpt = Checkpoint::read(&b.join("checkpoint.safetensors")).unwrap();
    assert!(ckpt.tensors.keys().any(|k| k.starts_with("exp_avg_sq.")));
    assert!(!ckpt.tensors.keys().any(|k| k.starts_with("momentum.")));
    let sgd = TrainSettings {
        optimizer: sknet::train::optim::OptimizerName::Sgd,
        ..adamw(&b)
    };
    let err = train(sgd, Some(&b.join("checkpoint.safetensors")), None).unwrap_err();
    assert!(err.to_string().contains("optimizer"), "{err}");
    let rest = train(adamw(&b), Some(&b.join("checkpoint.safetensors")), None).unwrap();
    assert_eq!(full[2].val_loss, rest[2].val_loss);
    let resumed = max_diff(
        &weights(&a.join("last.safetensors")),
        &weights(&b.join("last.safetensors")),
    );
    assert_eq!(resumed, 0.0, "the resumed AdamW run differs");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flip_test_time_augmentation_averages_the_logits_of_the_image_and_its_mirror() {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Tensor, TensorData};
    let dir = scratch("tta");
    let data = small_dataset(&dir);
    let device = burn::tensor::Device::flex();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cifar10.safetensors");
    let loaded = sknet::load_pretrained(shipped, &Default::default(), &device).unwrap();
    let model = loaded.model.fold_batchnorm();
    let pre = loaded.preprocess.unwrap();
    let classes = loaded.classes.unwrap();
    let ds = std::sync::Arc::new(Dataset::open(&data).unwrap());
    let label_map: Vec<usize> = ds
        .classes
        .iter()
        .map(|c| classes.iter().position(|k| k == c).unwrap())
        .collect();
    let indices: Vec<usize> = (0..ds.len()).collect();
    let run = |flip| {
        sknet::eval::evaluate(
            &model,
            ds.clone(),
            &indices,
            &label_map,
            &classes,
            &pre,
            sknet::eval::EvalOptions {
                batch: 7,
                workers: 2,
                flip,
            },
            &device,
        )
        .unwrap()
    };
    let (plain, tta) = (run(false), run(true));
    // The mean loss, recomputed one image at a time from the two forward passes.
    let mut loss = 0.0;
    for &i in &indices {
        let img = pre.resize_crop(&ds.load(i).unwrap());
        let mut mirrored = img.clone();
        for row in mirrored.data.chunks_mut(img.width * 3) {
            let pixels: Vec<[u8; 3]> = row.chunks(3).rev().map(|p| [p[0], p[1], p[2]]).collect();
            row.copy_from_slice(&pixels.concat());
        }
        let x = |im: &sknet::infer::resize::Rgb8| {
            Tensor::<4>::from_data(
                TensorData::new(pre.normalize(im), [1, 3, pre.size[0], pre.size[1]]),
                &device,
            )
        };
        let logits = model
            .forward(x(&img))
            .add(model.forward(x(&mirrored)))
            .div_scalar(2.0);
        let logp = sknet::ops::values_f32(log_softmax(logits, 1));
        loss -= logp[label_map[ds.label(i)]] as f64;
    }
    loss /= indices.len() as f64;
    assert!((tta.loss - loss).abs() < 1e-5, "{} vs {loss}", tta.loss);
    assert!(
        (tta.loss - plain.loss).abs() > 1e-4,
        "the flip changed nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every recipe item at once: mixup and CutMix with label smoothing, RandAugment, random
/// erasing and model EMA.
fn full_recipe(data: &Path, out: &Path, epochs: usize) -> TrainSettings {
    TrainSettings {
        recipe: sknet::train::Recipe {
            mixup: 0.8,
            cutmix: 1.0,
            mixup_prob: 0.9,
            auto_augment: Some("rand-m9-mstd0.5".into()),
            reprob: 0.5,
            model_ema: true,
            model_ema_decay: 0.9,
            model_ema_warmup: true,
            ..Default::default()
        },
        ..settings(data, out, epochs)
    }
}

#[test]
fn a_run_with_the_full_recipe_keeps_ema_weights_and_resumes_exactly() {
    let _serial = serial();
    let dir = scratch("recipe-ema");
    let data = small_dataset(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let full = train(full_recipe(&data, &a, 3), None, None).unwrap();
    // The EMA weights are validated every epoch, and differ from the raw ones.
    for m in &full {
        let ema = m.ema.expect("EMA metrics");
        assert!((0.0..=1.0).contains(&ema.val_top1));
    }
    let raw = weights(&a.join("last.safetensors"));
    let ema = weights(&a.join("last_ema.safetensors"));
    assert!(
        max_diff(&raw, &ema) > 0.0,
        "the EMA weights equal the raw ones"
    );
    assert!(a.join("best_ema.safetensors").exists());
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with(",ema_val_loss,ema_val_top1,ema_val_top5"));
    // The EMA weights load like any weights (the config and classes are in their metadata).
    let device = sknet::device::default_device();
    let spec = a.join("last_ema.safetensors").display().to_string();
    sknet::load_pretrained(&spec, &Default::default(), &device).unwrap();
    // Interrupted after one epoch, then resumed: the mixing, the augmentation and the
    // average continue exactly.
    train(full_recipe(&data, &b, 3), None, Some(1)).unwrap();
    let ckpt = Checkpoint::read(&b.join("checkpoint.safetensors")).unwrap();
    assert!(ckpt.tensors.keys().any(|k| k.starts_with("ema.")));
    let rest = train(
        full_recipe(&data, &b, 3),
        Some(&b.join("checkpoint.safetensors")),
        None,
    )
    .unwrap();
    assert_eq!(full[2].val_loss, rest[2].val_loss);
    assert_eq!(max_diff(&raw, &weights(&b.join("last.safetensors"))), 0.0);
    assert_eq!(
        max_diff(&ema, &weights(&b.join("last_ema.safetensors"))),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_with_another_recipe_is_refused_listing_every_difference() {
    let _serial = serial();
    let dir = scratch("recipe-diff");
    let data = small_dataset(&dir);
    let out = dir.join("run");
    train(settings(&data, &out, 2), None, Some(1)).unwrap();
    let other = full_recipe(&data, &out, 2);
    let err = train(other, Some(&out.join("checkpoint.safetensors")), None).unwrap_err();
    assert!(matches!(err, TrainError::Resume { .. }), "{err}");
    let text = err.to_string();
    for difference in [
        "mixup: 0.0 -> 0.8",
        "cutmix: 0.0 -> 1.0",
        "mixup_prob: 1.0 -> 0.9",
        "auto_augment: none -> rand-m9-mstd0.5",
        "reprob: 0.0 -> 0.5",
        "model_ema: false -> true",
        "model_ema_decay: 0.9998 -> 0.9",
        "model_ema_warmup: false -> true",
    ] {
        assert!(text.contains(difference), "`{difference}` missing: {text}");
    }
    assert!(!text.contains("recount"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diverging_loss_under_mixup_stops_and_keeps_the_last_good_checkpoint() {
    let _serial = serial();
    let dir = scratch("recipe-nan");
    let data = small_dataset(&dir);
    let out = dir.join("run");
    train(full_recipe(&data, &out, 3), None, Some(1)).unwrap();
    let checkpoint = out.join("checkpoint.safetensors");
    let before = std::fs::read(&checkpoint).unwrap();
    let mut wild = full_recipe(&data, &out, 3);
    wild.schedule.lr = 1e30;
    wild.schedule.warmup_epochs = 0.0;
    let err = train(wild, Some(&checkpoint), None).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NotFinite { .. } | TrainError::NonFiniteWeights { .. }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
