//! `sknet attention`, the selection ablation in `eval` and `predict --attention`: the
//! enlargement against Pillow, the aggregates against a recomputation from
//! `forward_with_attention`, and the command's files and errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use sknet::attention::{self, AttentionObserver, AttentionSettings, ImageAttention};
use sknet::data::Dataset;
use sknet::infer::resize::{enlarge, Rgb8};
use sknet::infer::Preprocess;
use sknet::weights::{load_pretrained, LoadOptions};
use sknet::Selection;

fn shipped() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/cifar10.safetensors")
        .display()
        .to_string()
}

fn sknet(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sknet-attention-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The synthetic scene of tools/gen_attention_fixtures.py.
fn scene() -> Rgb8 {
    let (w, h) = (45usize, 37usize);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.extend([
                ((x * 37 + y * 11) % 256) as u8,
                ((x * y * 3) % 256) as u8,
                (((x ^ y) * 29 + 40) % 256) as u8,
            ]);
        }
    }
    Rgb8 {
        width: w,
        height: h,
        data,
    }
}

#[test]
fn enlargement_then_the_eval_transform_equals_pillow() {
    let pre = Preprocess::cifar([32, 32]);
    for scale in ["0.75", "1.5", "2.0", "3.0"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/enlarge_scene_{scale}.png"));
        let want = image::open(&path).unwrap().to_rgb8();
        let got = pre.resize_crop(&enlarge(&scene(), scale.parse().unwrap()));
        assert_eq!((got.width, got.height), (32, 32));
        assert_eq!(
            got.data,
            want.into_raw(),
            "scale {scale}: pixels differ from Pillow"
        );
    }
    // Scale 1 is the image itself.
    assert_eq!(enlarge(&scene(), 1.0), scene());
}

/// Every image the analysis reports, to compare with the recomputation.
#[derive(Default)]
struct Collect {
    images: Vec<(String, usize, Vec<f64>)>,
    last_progress: Option<(usize, usize)>,
}

impl AttentionObserver for Collect {
    fn on_progress(&mut self, done: usize, total: usize) {
        self.last_progress = Some((done, total));
    }
    fn on_image(&mut self, image: &ImageAttention<'_>) {
        self.images
            .push((image.image.clone(), image.scale, image.differences.to_vec()));
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5
}

#[test]
fn the_aggregates_equal_a_recomputation_from_forward_with_attention() {
    let device = Device::flex();
    let loaded = load_pretrained(&shipped(), &LoadOptions::default(), &device).unwrap();
    let model = loaded.model.fold_batchnorm();
    let pre = loaded.preprocess.unwrap();
    let dir = scratch("aggregates");
    let data = Dataset::open(&common::small_dataset(&dir)).unwrap();
    let indices: Vec<usize> = (0..data.len()).step_by(2).collect();
    let units = attention::units(&model);
    assert!(units.len() >= 2, "{units:?}");
    let selected =
        attention::select_units(&units, &[units[1].name.clone(), units[0].path.clone()]).unwrap();
    assert_eq!(selected, vec![1, 0]);
    let scales = vec![1.0, 2.0];
    let settings = AttentionSettings {
        scales: scales.clone(),
        units: selected.clone(),
        batch: 4,
        workers: 2,
    };
    let mut seen = Collect::default();
    let data = Arc::new(data);
    let report = attention::analyse(
        &model,
        data.clone(),
        &indices,
        &pre,
        &settings,
        &mut seen,
        &device,
    )
    .unwrap();
    assert_eq!(report.images, indices.len());
    assert_eq!(seen.images.len(), indices.len() * scales.len());
    assert_eq!(
        seen.last_progress,
        Some((indices.len() * 2, indices.len() * 2))
    );

    // The straightforward way: one image at a time, every sum written out.
    let classes = data.classes.len();
    for (si, &scale) in scales.iter().enumerate() {
        for (j, &u) in selected.iter().enumerate() {
            let info = &units[u];
            let (m, c) = (info.kernels.len(), info.channels);
            let mut branch_sums = vec![vec![0f64; c]; m];
            let (mut diff_sum, mut class_sum, mut class_n) =
                (0f64, vec![0f64; classes], vec![0usize; classes]);
            for &i in &indices {
                let img = pre.resize_crop(&enlarge(&data.load(i).unwrap(), scale));
                let x = Tensor::<4>::from_data(
                    TensorData::new(pre.normalize(&img), [1, 3, pre.size[0], pre.size[1]]),
                    &device,
                );
                let (_, att) = model.forward_with_attention(x);
                let w = common::to_vec(att[u].weights.clone());
                for (b, sums) in branch_sums.iter_mut().enumerate() {
                    for (ch, s) in sums.iter_mut().enumerate() {
                        *s += w[b * c + ch] as f64;
                    }
                }
                let d: f64 = (0..c)
                    .map(|ch| (w[info.largest * c + ch] - w[info.smallest * c + ch]) as f64)
                    .sum::<f64>()
                    / c as f64;
                diff_sum += d;
                class_sum[data.label(i)] += d;
                class_n[data.label(i)] += 1;
                let reported = seen
                    .images
                    .iter()
                    .find(|(name, s, _)| *name == data.describe(i) && *s == si)
                    .unwrap();
                assert!(close(reported.2[j], d), "{} at {scale}x", data.describe(i));
            }
            let n = indices.len() as f64;
            for (b, sums) in branch_sums.iter().enumerate() {
                for (ch, sum) in sums.iter().enumerate() {
                    let got = report.branch_means[si][j][b][ch];
                    assert!(close(got, sum / n), "branch {b} channel {ch}");
                }
            }
            assert!(close(report.mean_difference[si][j], diff_sum / n));
            let per_class = &report.class_differences.as_ref().unwrap()[si][j];
            for k in 0..classes {
                assert!(close(
                    per_class[k].unwrap(),
                    class_sum[k] / class_n[k] as f64
                ));
            }
            assert_eq!(report.class_images.as_ref().unwrap(), &class_n);
        }
    }
    // Enlarging changes what the units select.
    assert_ne!(report.mean_difference[0], report.mean_difference[1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fixed_selection_replaces_the_learned_weights() {
    let device = Device::flex();
    let loaded = load_pretrained(&shipped(), &LoadOptions::default(), &device).unwrap();
    let model = loaded.model.fold_batchnorm();
    let x = common::input(&[2, 3, 32, 32], &device);
    let (learned, _) = model.forward_with_attention(x.clone());
    let same = model.clone().with_selection(Selection::Learned).unwrap();
    assert_eq!(
        common::to_vec(same.forward(x.clone())),
        common::to_vec(learned.clone())
    );
    let uniform = model.clone().with_selection(Selection::Uniform).unwrap();
    let (logits, att) = uniform.forward_with_attention(x.clone());
    assert!(common::to_vec(att[0].weights.clone())
        .iter()
        .all(|&w| w == 0.5));
    assert_ne!(common::to_vec(logits), common::to_vec(learned));
    let one = model.clone().with_selection(Selection::Branch(1)).unwrap();
    let (_, att) = one.forward_with_attention(x);
    let w = common::to_vec(att[0].weights.clone());
    let c = w.len() / 4;
    assert!(w[..c].iter().all(|&v| v == 0.0) && w[c..2 * c].iter().all(|&v| v == 1.0));
    let err = model.with_selection(Selection::Branch(2)).unwrap_err();
    assert!(err.to_string().contains("branch 2"), "{err}");
}

#[test]
fn the_eval_ablation_reports_the_change_and_learned_is_plain_eval() {
    let dir = scratch("ablation");
    let data = common::small_dataset(&dir);
    let w = shipped();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--weights", &w, "--data", data.to_str().unwrap()];
        args.extend(extra);
        sknet(&args)
    };
    let plain = eval(&[]);
    assert_eq!(plain.0, 0, "{}", plain.2);
    assert_eq!(eval(&["--select", "learned"]), plain);
    let (code, out, err) = eval(&["--select", "uniform", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let (l, s) = (&v["learned"]["top1"], &v["selected"]["top1"]);
    let change = v["change"]["top1"].as_f64().unwrap();
    assert!((s.as_f64().unwrap() - l.as_f64().unwrap() - change).abs() < 1e-12);
    assert_eq!(v["select"], "uniform");
    assert_ne!(v["learned"]["loss"], v["selected"]["loss"]);
    let plain_json: Value = serde_json::from_str(&eval(&["--json"]).1).unwrap();
    assert_eq!(v["learned"], plain_json);
    let (code, out, _) = eval(&["--select", "branch:0"]);
    assert_eq!(code, 0);
    assert!(out.contains("branch:0") && out.contains("change"), "{out}");
    for (bad, says) in [
        ("branch:7", "branch 7 does not exist"),
        ("all", "learned, uniform or branch:K"),
    ] {
        let (code, _, err) = eval(&["--select", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn the_command_writes_tables_summary_and_figures() {
    let dir = scratch("command");
    let data = common::small_dataset(&dir);
    let out = dir.join("out");
    let (code, stdout, err) = sknet(&[
        "attention",
        "--weights",
        &shipped(),
        "--data",
        data.to_str().unwrap(),
        "--scales",
        "1,1.5,2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("SK_2_1") && stdout.contains("1.5x"),
        "{stdout}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let units = summary["units"].as_array().unwrap().len();
    assert_eq!(summary["images"], 30);
    assert_eq!(summary["scales"].as_array().unwrap().len(), 3);
    let rows = csv_rows(&out.join("per_image.csv"));
    assert_eq!(rows.len(), 1 + 30 * 3);
    assert_eq!(rows[0][..4], ["image", "scale", "label", "predicted"]);
    assert_eq!(rows[0].len(), 4 + units);
    // The per-image differences average to the summary's.
    for (si, scale) in ["1", "1.5", "2"].iter().enumerate() {
        for u in 0..units {
            let mean: f64 = rows[1..]
                .iter()
                .filter(|r| r[1] == *scale)
                .map(|r| r[4 + u].parse::<f64>().unwrap())
                .sum::<f64>()
                / 30.0;
            let want = summary["mean_difference"][si][u].as_f64().unwrap();
            assert!((mean - want).abs() < 1e-5, "{scale} {u}: {mean} vs {want}");
        }
    }
    assert_eq!(csv_rows(&out.join("differences.csv")).len(), 1 + 3 * units);
    assert_eq!(
        csv_rows(&out.join("per_class.csv")).len(),
        1 + 3 * units * 3
    );
    let channels: usize = summary["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["channels"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(
        csv_rows(&out.join("branch_means.csv")).len(),
        1 + 3 * channels
    );
    let mut figures = vec!["difference.png".to_string()];
    figures.extend(["1", "1.5", "2"].map(|s| format!("per_class_{s}x.png")));
    for u in summary["units"].as_array().unwrap() {
        figures.push(format!("channels_{}.png", u["name"].as_str().unwrap()));
    }
    for f in &figures {
        let img = image::open(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() >= 700 && img.height() >= 400, "{f}");
    }
    // Nothing half-written is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Image files: unlabelled, so per-image and overall results only.
    let images: Vec<String> = ["airplane", "cat"]
        .iter()
        .map(|c| data.join(c).join("0000.jpg").display().to_string())
        .collect();
    let out2 = dir.join("files");
    let (code, stdout, err) = sknet(&[
        "attention",
        "--weights",
        &shipped(),
        "--data",
        &images[0],
        &images[1],
        "--scales",
        "1,2",
        "--units",
        "SK_3_1",
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("unlabelled"), "{err}");
    assert!(
        stdout.contains("per image") && stdout.contains(&images[1]),
        "{stdout}"
    );
    assert!(!out2.join("per_class.csv").exists());
    let rows = csv_rows(&out2.join("per_image.csv"));
    assert_eq!(rows.len(), 1 + 2 * 2);
    assert_eq!(rows[0][4..], ["SK_3_1"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_units_scales_and_data_are_named() {
    let dir = scratch("bad");
    let data = common::small_dataset(&dir);
    let data = data.to_str().unwrap();
    let out = dir.join("out");
    let weights = shipped();
    let run = |extra: &[&str]| {
        let mut args = vec!["attention", "--weights", &weights];
        args.extend(["-o", out.to_str().unwrap()]);
        args.extend(extra);
        sknet(&args)
    };
    let (code, _, err) = run(&["--data", data, "--units", "SK_9_9"]);
    assert_eq!(code, 2);
    assert!(err.contains("SK_9_9") && err.contains("SK_2_1"), "{err}");
    for (scales, says) in [
        ("0", "above 0"),
        ("-1", "above 0"),
        ("1,nan", "above 0"),
        ("33", "shorter side"),
        ("0.0001", "too small"),
    ] {
        let (code, _, err) = run(&["--data", data, "--scales", scales]);
        assert_eq!(code, 2, "{scales}: {err}");
        assert!(err.contains(says), "{scales}: {err}");
    }
    let (code, _, err) = run(&["--data", data, "--scales", "two"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--scales"), "{err}");
    let missing = dir.join("missing.jpg");
    let (code, _, err) = run(&["--data", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.jpg"), "{err}");
    assert!(!out.join("per_image.csv").exists());
    // Weights whose network cannot be told: no config stored, no preset matches.
    let odd = dir.join("odd.safetensors");
    let tensor =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &[0u8; 12]).unwrap();
    std::fs::write(
        &odd,
        safetensors::serialize([("mystery.weight", tensor)], None).unwrap(),
    )
    .unwrap();
    let (code, _, err) = sknet(&[
        "attention",
        "--weights",
        odd.to_str().unwrap(),
        "--data",
        data,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("odd.safetensors") || err.contains("--arch"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn predict_adds_each_units_large_kernel_weight_when_asked() {
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-mini/cat/0000.jpg");
    let img = img.to_str().unwrap();
    let (code, out, err) = sknet(&[
        "predict",
        img,
        "--weights",
        &shipped(),
        "--attention",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let att = v[0]["attention"].as_array().unwrap();
    assert!(att.len() >= 2);
    assert_eq!(att[0]["unit"], "SK_2_1");
    for a in att {
        let w = a["weight"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&w), "{a}");
    }
    let (_, plain, _) = sknet(&["predict", img, "--weights", &shipped(), "--json"]);
    let plain: Value = serde_json::from_str(&plain).unwrap();
    assert!(plain[0].get("attention").is_none());
    assert_eq!(plain[0]["top"], v[0]["top"]);
}

#[test]
fn every_branch_is_reported_when_there_are_more_than_two() {
    // timm's SK basic block with M = 4 (3x3 kernels of dilation 1 to 4), random weights.
    let fx = common::fixture("tiny_basic_m4_timm.json");
    let device = Device::flex();
    let model = common::model(&fx, &device).fold_batchnorm();
    let units = attention::units(&model);
    assert_eq!(units.len(), 4);
    assert_eq!(
        units[0].kernels,
        [
            "3x3",
            "5x5 (3x3, dilation 2)",
            "7x7 (3x3, dilation 3)",
            "9x9 (3x3, dilation 4)"
        ]
    );
    assert_eq!((units[0].smallest, units[0].largest), (0, 3));
    let dir = scratch("m4");
    let data = Arc::new(Dataset::open(&common::small_dataset(&dir)).unwrap());
    let indices: Vec<usize> = (0..data.len()).step_by(5).collect();
    let settings = AttentionSettings {
        scales: vec![1.0, 1.5],
        units: vec![0, 3],
        batch: 3,
        workers: 1,
    };
    let pre = Preprocess::imagenet([64, 64]);
    let report = attention::analyse(
        &model,
        data,
        &indices,
        &pre,
        &settings,
        &mut attention::NoopObserver,
        &device,
    )
    .unwrap();
    for (si, scale) in report.branch_means.iter().enumerate() {
        for (j, unit) in scale.iter().enumerate() {
            assert_eq!(unit.len(), 4, "every branch");
            let c = unit[0].len();
            // The weights sum to 1 over the branches, so their means do too.
            for ch in 0..c {
                let sum: f64 = unit.iter().map(|b| b[ch]).sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "scale {si} unit {j} channel {ch}: {sum}"
                );
            }
            // The difference is the largest kernel's mean weight minus the smallest's.
            let d = (0..c).map(|ch| unit[3][ch] - unit[0][ch]).sum::<f64>() / c as f64;
            assert!((d - report.mean_difference[si][j]).abs() < 1e-6);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
