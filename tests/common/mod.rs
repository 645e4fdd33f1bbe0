//! Helpers shared by the parity tests: fixtures, deterministic inputs, error measures.

#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use sknet::weights::deterministic::values;
use sknet::{NetworkConfig, SkNet};

/// Parity tolerance: max |diff| / max |reference|.
pub const TOLERANCE: f64 = 1e-4;

pub fn fixture(name: &str) -> Value {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run the generators in tools/)", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// The deterministic input of tools/detinit.py.
pub fn input(shape: &[usize], device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    Tensor::from_data(
        TensorData::new(values("input", n, 1.0, 0.0), shape.to_vec()),
        device,
    )
}

/// The fixture's network with the deterministic weights.
pub fn model(fx: &Value, device: &Device) -> SkNet {
    let config: NetworkConfig =
        serde_json::from_value(fx["config"].clone()).expect("fixture config parses");
    let model = SkNet::new(&config, device).expect("fixture config builds");
    sknet::weights::deterministic_init(model)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// max |a - b| / max |b|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-12);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

/// Our tensor keys and shapes equal the reference's state_dict (BN counters aside).
pub fn assert_same_tensors(model: &SkNet, fx: &Value) {
    let ours: Vec<(String, Vec<usize>)> = sknet::weights::named_tensors(model)
        .into_iter()
        .map(|t| (t.path, t.shape))
        .collect();
    let theirs: Vec<(String, Vec<usize>)> = fx["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|e| (e[0].as_str().expect("key").to_string(), usizes(&e[1])))
        .collect();
    let mut a = ours.clone();
    let mut b = theirs.clone();
    a.sort();
    b.sort();
    let missing: Vec<_> = b.iter().filter(|t| !a.contains(t)).take(5).collect();
    let extra: Vec<_> = a.iter().filter(|t| !b.contains(t)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: keys differ; reference-only {missing:?}, sknet-only {extra:?}",
        fx["name"]
    );
}

/// 3 classes x 10 real images from the shipped subset, as an ImageFolder in `dir/data`.
pub fn small_dataset(dir: &std::path::Path) -> PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-mini");
    let root = dir.join("data");
    for class in ["airplane", "cat", "ship"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(src.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(10) {
            std::fs::copy(f, root.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    root
}

/// Runs the binary: exit code, stdout, stderr.
pub fn sknet(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(args)
        .output()
        .expect("the sknet binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
