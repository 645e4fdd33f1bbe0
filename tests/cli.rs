//! The `sknet` binary: outputs and errors as a user sees them.

mod common;

use std::process::Command;

fn sknet(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn archs_lists_every_preset_with_counts() {
    let (code, out, _) = sknet(&["archs", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "keras-seed",
        "sknet26",
        "sknet50",
        "sknet101",
        "skresnet18",
        "skresnet34",
        "skresnext50_32x4d",
        "sknet29",
        "sknet-tiny",
    ] {
        assert!(names.contains(&want), "{want} missing");
    }
    let r18 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "skresnet18")
        .unwrap();
    assert_eq!(r18["params"], 11_958_056);
    assert_eq!(r18["reference"]["top1"], 73.02);
    let (code, table, _) = sknet(&["archs"]);
    assert_eq!(code, 0);
    assert!(table.contains("27,479,784"), "{table}");
}

#[test]
fn summary_json_has_the_documented_fields() {
    let (code, out, err) = sknet(&["summary", "--arch", "keras-seed", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total_params"], 30_164_436);
    assert_eq!(v["trainable_params"], 30_065_998);
    assert_eq!(v["non_trainable_params"], 98_438);
    assert!(v["macs"].as_u64().unwrap() > 4_000_000_000);
    let first = &v["layers"][6];
    assert_eq!(first["name"], "sk_conv");
    assert_eq!(first["type"], "SKConv");
    assert_eq!(first["params"], 92_320);
    assert_eq!(
        first["output_shape"],
        serde_json::json!([null, 56, 56, 256])
    );
}

#[test]
fn summary_table_with_size_and_classes() {
    let (code, out, err) = sknet(&[
        "summary",
        "--arch",
        "skresnet18",
        "--input",
        "128x96",
        "--classes",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("layer4.1 (SelectiveKernelBasic)"), "{out}");
    assert!(out.contains("(None, 512, 4, 3)"), "{out}");
    assert!(out.contains("fc (Linear)"), "{out}");
    assert!(out.contains("Trainable params: 11,450,186"), "{out}");
}

#[test]
fn config_files_round_trip_through_the_cli() {
    let dir = std::env::temp_dir().join(format!("sknet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (flag, file) in [(None, "c.json"), (Some("--toml"), "c.toml")] {
        let mut args = vec!["config", "--arch", "sknet-tiny"];
        args.extend(flag);
        let (code, text, _) = sknet(&args);
        assert_eq!(code, 0);
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = sknet(&["summary", "--config", path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["trainable_params"], 729_994);
    }
}

#[test]
fn bad_input_gets_clear_errors_not_panics() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["summary", "--arch", "sknet51"],
            &["unknown architecture `sknet51`", "sknet50"],
        ),
        (
            &["summary", "--arch", "sknet50", "--input", "4"],
            &["too small", "maxpool", "5x5"],
        ),
        (&["summary", "--input", "12x"], &["--input 12x", "224x160"]),
        (&["summary", "--classes", "0"], &["num_classes"]),
        (
            &["summary", "--config", "/nonexistent/x.json"],
            &["/nonexistent/x.json"],
        ),
    ];
    for (args, needles) in cases {
        let (code, _, err) = sknet(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: `{n}` not in {err}");
        }
    }
    let dir = std::env::temp_dir().join(format!("sknet-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, text, _) = sknet(&["config", "--arch", "skresnext50_32x4d"]);
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sk"]["groups"] = 3.into();
    let path = dir.join("groups.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let (code, _, err) = sknet(&["summary", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("sk.groups") && err.contains("divide"), "{err}");
    v["sk"]["groups"] = 32.into();
    v["sk"]["kernel_sizes"] = serde_json::json!([3]);
    std::fs::write(&path, v.to_string()).unwrap();
    let (code, _, err) = sknet(&["summary", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("M >= 2"), "{err}");
}

fn sknet_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sknet-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn predict_json_and_export_round_trip() {
    let dir = scratch("export");
    let out = dir.join("k.safetensors");
    let (code, msg, err) = sknet(&[
        "export",
        "--weights",
        &fixture("tiny_keras.safetensors"),
        "--format",
        "safetensors",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(msg.contains("wrote"), "{msg}");
    let image = fixture("preprocess_scene.png");
    let run = |weights: &str| {
        let (code, out, err) = sknet(&[
            "predict",
            &image,
            &image,
            "--weights",
            weights,
            "--json",
            "--topk",
            "3",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let a = run(&fixture("tiny_keras.safetensors"));
    let b = run(out.to_str().unwrap());
    assert_eq!(a, b);
    let first = &a[0];
    assert_eq!(first["path"], image.as_str());
    assert_eq!(first["top"].as_array().unwrap().len(), 3);
    for key in ["index", "label", "probability"] {
        assert!(first["top"][0].get(key).is_some(), "{key}");
    }
}

#[test]
fn hub_weights_come_from_the_cache_and_fail_clearly_offline() {
    let cache = scratch("hub");
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let image = fixture("preprocess_scene.png");
    let args = ["predict", image.as_str(), "--weights", "hf:timm/tiny-test"];
    let (code, _, err) = sknet_env(&args, &env);
    assert_eq!(code, 2);
    assert!(
        err.contains("hf:timm/tiny-test") && err.contains("not in the hub cache"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    // The hub cache layout: models--OWNER--NAME/{refs/main, snapshots/REV/FILE}.
    let repo = cache.join("models--timm--tiny-test");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    std::fs::copy(
        fixture("tiny_keras.safetensors"),
        repo.join("snapshots/abc123/model.safetensors"),
    )
    .unwrap();
    let (code, out, err) = sknet_env(&args, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("class_"), "{out}");
}

fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32fast::hash(&ihdr).to_be_bytes());
    png
}

#[test]
fn bad_images_and_weights_are_clear_errors() {
    let dir = scratch("bad");
    let huge = dir.join("huge.png");
    std::fs::write(&huge, png_header_only(100_000, 100_000)).unwrap();
    let text = dir.join("notes.jpg");
    std::fs::write(&text, "not a picture").unwrap();
    let weights = fixture("tiny_keras.safetensors");
    let (code, _, err) = sknet(&["predict", huge.to_str().unwrap(), "--weights", &weights]);
    assert_eq!(code, 2);
    assert!(
        err.contains("huge.png") && err.contains("too large"),
        "{err}"
    );
    let (code, _, err) = sknet(&["predict", text.to_str().unwrap(), "--weights", &weights]);
    assert_eq!(code, 2);
    assert!(err.contains("notes.jpg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Weights for another architecture.
    let image = fixture("preprocess_scene.png");
    let (code, _, err) = sknet(&[
        "predict",
        &image,
        "--weights",
        &fixture("tiny_timm.safetensors"),
        "--arch",
        "skresnet18",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("do not fit `skresnet18`") && err.contains("missing from the file"),
        "{err}"
    );
    // A truncated file.
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &std::fs::read(&weights).unwrap()[..1000]).unwrap();
    let (code, _, err) = sknet(&["predict", &image, "--weights", cut.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cut.safetensors") && err.contains("not a readable checkpoint"),
        "{err}"
    );
}

#[test]
fn bench_reports_median_throughput_and_memory() {
    for extra in [&[][..], &["--train"][..]] {
        let mut args = vec![
            "bench",
            "--arch",
            "sknet-tiny",
            "--batch",
            "2",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = sknet(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ms = v["median_ms"].as_f64().unwrap();
        assert!(ms > 0.0);
        let ips = v["images_per_s"].as_f64().unwrap();
        assert!((ips - 2.0 / (ms / 1e3)).abs() / ips < 1e-6);
        assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0);
    }
    let (code, _, err) = sknet(&["bench", "--arch", "sknet50", "--input", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn train_init_fine_tunes_timm_weights_and_says_the_classifier_is_new() {
    let dir = std::env::temp_dir().join(format!("sknet-cli-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_timm.json")).unwrap()).unwrap();
    let config = dir.join("tiny.json");
    std::fs::write(&config, fx["config"].to_string()).unwrap();
    // 3 classes: the file's classifier has 10.
    let data = common::small_dataset(&dir);
    let data = data.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "train",
            "--init",
            &fixture("tiny_timm.safetensors"),
            "--data",
            data,
            "--val-per-class",
            "2",
            "--input",
            "32",
            "--epochs",
            "1",
            "--batch",
            "8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        sknet(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = dir.join("run");
    let (code, stdout, err) = run(&[
        "--config",
        config.to_str().unwrap(),
        "--freeze",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tensors loaded"), "{err}");
    assert!(
        err.contains("classifier is re-initialised")
            && err.contains("fc.weight (the file's is [10,"),
        "{err}"
    );
    assert!(stdout.contains("best.safetensors"), "{stdout}");
    // Weights that do not fit the named network: the keys, and the hint.
    let (code, _, err) = run(&[
        "--arch",
        "skresnet18",
        "--output",
        dir.join("bad").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing from the file"), "{err}");
    // Recipe settings out of range: the error names the setting, the hint the flag.
    for (extra, field, flag) in [
        (
            &["--backbone-lr-scale=-1"][..],
            "backbone_lr_scale",
            "--backbone-lr-scale",
        ),
        (
            &["--backbone-lr-scale", "nan"][..],
            "backbone_lr_scale",
            "--backbone-lr-scale",
        ),
        (
            &["--opt", "adamw", "--opt-betas", "1.5", "0.9"][..],
            "betas",
            "--opt-betas",
        ),
        (
            &["--opt", "adamw", "--opt-eps", "0"][..],
            "eps",
            "--opt-eps",
        ),
        (&["--min-lr", "0.5"][..], "min_lr", "--min-lr"),
    ] {
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend(extra);
        let bad = dir.join("bad2");
        args.extend(["--output", bad.to_str().unwrap()]);
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(
            err.contains(field) && err.contains(flag),
            "{extra:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
