//! Weight import (safetensors, PyTorch .pth), export, key reports and bad files.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::{fixture, floats, input, rel_err, to_vec, usizes, TOLERANCE};
use sknet::weights::checkpoint::{write_safetensors, Checkpoint, WeightsError};
use sknet::weights::load::{self, load_into, resolve_config};
use sknet::{presets, NetworkConfig, SkNet};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sknet-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_timm_config() -> NetworkConfig {
    serde_json::from_value(fixture("tiny_timm.json")["config"].clone()).unwrap()
}

fn check_timm_file(name: &str) {
    let fx = fixture("tiny_timm.json");
    let device = Device::flex();
    let ckpt = Checkpoint::read(&fixture_path(name)).unwrap();
    assert!(
        ckpt.skipped.iter().any(|k| k == "bn1.num_batches_tracked"),
        "{name}"
    );
    let model = SkNet::new(&tiny_timm_config(), &device).unwrap();
    let (model, report) = load_into(model, ckpt, false).unwrap();
    assert!(report.is_exact());
    let logits = model.forward(input(&usizes(&fx["input_shape"]), &device));
    let err = rel_err(&to_vec(logits), &floats(&fx["logits"]));
    assert!(err < TOLERANCE, "{name}: {err:.2e}");
}

#[test]
fn timm_safetensors_loads_and_matches_timm() {
    check_timm_file("tiny_timm.safetensors");
}

#[test]
fn timm_pth_loads_and_matches_timm() {
    check_timm_file("tiny_timm.pth");
}

#[test]
fn nested_pth_checkpoint_loads() {
    check_timm_file("tiny_timm_nested.pth");
}

#[test]
fn keras_weights_through_the_converter_match_keras() {
    let fx = fixture("tiny_keras.json");
    let device = Device::flex();
    let ckpt = Checkpoint::read(&fixture_path("tiny_keras.safetensors")).unwrap();
    // The converter stores the config: no --arch needed.
    let config = resolve_config(&ckpt, None, None).unwrap();
    assert_eq!(config.name, "tiny-keras");
    let (model, _) = load_into(SkNet::new(&config, &device).unwrap(), ckpt, false).unwrap();
    let logits = model.forward(input(&usizes(&fx["input_shape"]), &device));
    let err = rel_err(&to_vec(logits), &floats(&fx["logits"]));
    assert!(err < TOLERANCE, "{err:.2e}");
}

#[test]
fn a_file_for_another_architecture_lists_every_difference() {
    let ckpt = Checkpoint::read(&fixture_path("tiny_timm.safetensors")).unwrap();
    let mut config = presets::by_name("skresnet18").unwrap();
    config.num_classes = 10;
    let model = SkNet::new(&config, &Device::flex()).unwrap();
    let err = load_into(model, ckpt.clone(), false).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, WeightsError::Mismatch { .. }));
    assert!(
        text.contains("tiny_timm.safetensors") && text.contains("skresnet18"),
        "{text}"
    );
    // layer1.1 exists in skresnet18 only; layer1.0.conv2 has 64 channels there, 8 in the file.
    assert!(
        text.contains("missing from the file: layer1.1.conv1.attn.fc_select.weight"),
        "{text}"
    );
    assert!(
        text.contains("shape mismatch: layer1.0.conv2.conv.weight: the network has [64, 64, 3, 3], the file [8, 8, 3, 3]"),
        "{text}"
    );
    let model = SkNet::new(&config, &Device::flex()).unwrap();
    let (_, report) = load_into(model, ckpt, true).unwrap();
    assert!(report.loaded > 0 && !report.missing.is_empty() && !report.mismatched.is_empty());
    // The tiny net projects in layer1.0 (64 -> 8 channels); skresnet18 does not.
    assert!(report
        .unexpected
        .iter()
        .any(|(k, _)| k == "layer1.0.downsample.0.weight"));
    assert!(
        text.contains("unexpected in the file: layer1.0.downsample.0.weight"),
        "{text}"
    );
}

#[test]
fn export_round_trips_and_names_the_architecture() {
    let device = Device::flex();
    let config = presets::by_name("skresnet18").unwrap();
    let model = sknet::weights::deterministic_init(SkNet::new(&config, &device).unwrap());
    let dir = temp_dir("export");
    let path = dir.join("r18.safetensors");
    let classes: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    write_safetensors(
        &path,
        load::state_dict(&model).unwrap(),
        load::export_metadata(&model, Some(&classes)),
    )
    .unwrap();
    let ckpt = Checkpoint::read(&path).unwrap();
    // timm's state dict: BN counters included (as int64, skipped on reading).
    assert!(ckpt
        .skipped
        .contains(&"layer4.1.conv2.bn.num_batches_tracked".to_string()));
    assert_eq!(load::infer_preset(&ckpt).as_deref(), Some("skresnet18"));
    let resolved = resolve_config(&ckpt, None, None).unwrap();
    assert_eq!(resolved, config);
    assert_eq!(
        load::checkpoint_class_names(&ckpt).unwrap().unwrap(),
        classes
    );
    let (loaded, _) = load_into(SkNet::new(&resolved, &device).unwrap(), ckpt, false).unwrap();
    let x = input(&[1, 3, 64, 64], &device);
    let a = to_vec(model.forward(x.clone()));
    let b = to_vec(loaded.forward(x));
    assert_eq!(a, b);
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn corrupt_and_truncated_files_are_clear_errors() {
    let dir = temp_dir("corrupt");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage.safetensors",
            b"this is not a checkpoint at all".to_vec(),
        ),
        (
            "truncated.safetensors",
            std::fs::read(fixture_path("tiny_timm.safetensors")).unwrap()[..5000].to_vec(),
        ),
        (
            "truncated.pth",
            std::fs::read(fixture_path("tiny_timm.pth")).unwrap()[..5000].to_vec(),
        ),
        ("empty.bin", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = Checkpoint::read(&path).unwrap_err();
        assert!(matches!(err, WeightsError::Format { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    let err = Checkpoint::read(&dir.join("missing.safetensors")).unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }));
}
