//! Summaries and parameter counts against Keras' `model.summary()` and PyTorch's parameter counts.

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::fixture;
use sknet::summary::summarize;
use sknet::{presets, SkNet};

fn preset_model(name: &str) -> SkNet {
    SkNet::new(&presets::by_name(name).unwrap(), &Device::flex()).unwrap()
}

#[test]
fn keras_seed_summary_equals_keras() {
    let want = fixture("keras_seed_summary.json");
    let got = summarize(&preset_model("keras-seed"), 224, 224).unwrap();
    let got_json = serde_json::to_value(&got).unwrap();
    let rows = want["layers"].as_array().unwrap();
    assert_eq!(got.layers.len(), rows.len(), "row count");
    for (g, w) in got_json["layers"].as_array().unwrap().iter().zip(rows) {
        assert_eq!(g, w, "summary row");
    }
    for key in ["total_params", "trainable_params", "non_trainable_params"] {
        assert_eq!(got_json[key], want[key], "{key}");
    }
    // The notebook's printed figures.
    assert_eq!(got.layers[6].params, 92_320);
    assert_eq!(got.layers[7].params, 99_232);
}

#[test]
fn trainable_counts_equal_pytorch() {
    let want = fixture("param_counts.json");
    for (name, count) in want["trainable_params"].as_object().unwrap() {
        let model = preset_model(name);
        let s = summarize(&model, 224, 224).unwrap();
        assert_eq!(s.trainable_params as u64, count.as_u64().unwrap(), "{name}");
        // The summary's total is what the module really holds (BN running stats included).
        assert_eq!(
            s.total_params,
            model.num_params(),
            "{name}: total vs module"
        );
    }
}

#[test]
fn macs_match_published_figures() {
    // timm's GMACs (skresnet18 1.82, skresnet34 3.67, skresnext50_32x4d 4.50) and the paper's
    // SKNet-50 4.47 G count a little more than conv + linear; ours must be within 2%.
    for (name, gmacs) in [
        ("skresnet18", 1.82),
        ("skresnet34", 3.67),
        ("skresnext50_32x4d", 4.50),
        ("sknet50", 4.47),
    ] {
        let s = summarize(&preset_model(name), 224, 224).unwrap();
        let ours = s.macs as f64 / 1e9;
        assert!(
            (ours - gmacs).abs() / gmacs < 0.02,
            "{name}: {ours:.3} vs {gmacs}"
        );
    }
}

#[test]
fn summary_follows_input_size_and_classes() {
    let mut config = presets::by_name("skresnet18").unwrap();
    config.num_classes = 10;
    let model = SkNet::new(&config, &Device::flex()).unwrap();
    let s = summarize(&model, 160, 128).unwrap();
    let last_block = &s.layers[s.layers.len() - 3];
    assert_eq!(
        last_block.output_shape,
        vec![None, Some(512), Some(5), Some(4)]
    );
    assert_eq!(s.layers.last().unwrap().output_shape, vec![None, Some(10)]);
    assert_eq!(s.layers.last().unwrap().params, 512 * 10 + 10);
}
