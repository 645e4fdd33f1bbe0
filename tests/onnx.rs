//! ONNX export, checked by an independent runtime (tract): the exported graph computes sknet's
//! logits and attention on every network family, with BatchNorms folded and kept, at more than
//! one batch size; the metadata carries the preprocessing and the classes.

mod common;

use burn::tensor::Device;
use common::{input, rel_err, sknet, to_vec};
use sknet::infer::Preprocess;
use sknet::onnx::{to_onnx, write_onnx, OnnxOptions};
use sknet::{presets, SkNet};
use tract_onnx::prelude::*;

/// The preset's structure with one block per stage, deterministic weights and BN statistics.
fn small(name: &str, device: &Device) -> SkNet {
    let mut config = presets::by_name(name).unwrap();
    config.layers = config.layers.iter().map(|_| 1).collect();
    sknet::weights::deterministic_init(SkNet::new(&config, device).unwrap())
}

fn side(name: &str) -> usize {
    match name {
        "sknet-tiny" => 32,
        // Odd: the Keras 'same' padding is uneven on both convs and the max pool.
        "keras-seed" => 67,
        _ => 64,
    }
}

/// Runs an encoded ONNX model in tract on `x` (`[batch, c, h, w]`), returning every output.
fn run_tract(bytes: &[u8], x: &[f32], shape: [usize; 4]) -> Vec<Vec<f32>> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .expect("tract parses the file")
        .into_optimized()
        .expect("tract optimizes the graph")
        .into_runnable()
        .expect("tract plans the graph");
    let input = tract_ndarray::Array4::from_shape_vec(shape, x.to_vec()).unwrap();
    let outputs = model
        .run(tvec!(input.into_tensor().into_tvalue()))
        .expect("tract runs the graph");
    outputs
        .iter()
        .map(|t| {
            let view = t.to_plain_array_view::<f32>().expect("f32 output");
            view.iter().copied().collect()
        })
        .collect()
}

fn encode(model: &SkNet, options: &OnnxOptions) -> Vec<u8> {
    use prost::Message;
    let pre = Preprocess::imagenet(options.input_size);
    let classes: Vec<String> = (0..model.config.num_classes)
        .map(|i| format!("class {i}"))
        .collect();
    to_onnx(model, options, &pre, &classes)
        .unwrap()
        .encode_to_vec()
}

#[test]
fn every_family_exports_and_tract_computes_the_same_logits_and_attention() {
    let device = Device::flex();
    for name in [
        "sknet-tiny",
        "skresnet18",
        "skresnext50_32x4d",
        "sknet26",
        "sknet29",
        "keras-seed",
    ] {
        let model = small(name, &device);
        let s = side(name);
        for keep_batchnorm in [false, true] {
            let options = OnnxOptions::new([s, s])
                .with_keep_batchnorm(keep_batchnorm)
                .with_attention(true);
            let bytes = encode(&model, &options);
            // Two batch sizes through one file: the batch dimension is dynamic.
            for batch in [1, 3] {
                let x = input(&[batch, 3, s, s], &device);
                let data = to_vec(x.clone());
                let (logits, attention) = model.forward_with_attention(x);
                let got = run_tract(&bytes, &data, [batch, 3, s, s]);
                let tag = format!("{name} keep_bn={keep_batchnorm} batch={batch}");
                assert_eq!(got.len(), 1 + attention.len(), "{tag}: outputs");
                let err = rel_err(&got[0], &to_vec(logits));
                assert!(err < 1e-4, "{tag}: logits differ by {err:e}");
                for (unit, values) in attention.into_iter().zip(&got[1..]) {
                    let err = rel_err(values, &to_vec(unit.weights));
                    assert!(
                        err < 1e-4,
                        "{tag} {}: attention differs by {err:e}",
                        unit.path
                    );
                }
            }
        }
    }
}

#[test]
fn folding_removes_every_batchnorm_that_follows_a_conv() {
    let device = Device::flex();
    let count = |bytes: &[u8], op: &str| {
        use prost::Message;
        let proto = sknet::onnx::proto::ModelProto::decode(bytes).unwrap();
        let graph = proto.graph.unwrap();
        graph.node.iter().filter(|n| n.op_type == op).count()
    };
    let model = small("skresnet18", &device);
    let folded = encode(&model, &OnnxOptions::new([64, 64]));
    let kept = encode(
        &model,
        &OnnxOptions::new([64, 64]).with_keep_batchnorm(true),
    );
    assert_eq!(count(&folded, "BatchNormalization"), 0);
    // Stem + 4 x (2 branches + z + conv2) + 3 projections.
    assert_eq!(count(&kept, "BatchNormalization"), 1 + 4 * 4 + 3);
    assert_eq!(count(&folded, "Conv"), count(&kept, "Conv"));
    // The Keras notebook's input BN and its BN after each SK unit follow no conv: they stay.
    let keras = small("keras-seed", &device);
    let units = keras.unit_names().len();
    let keras = encode(&keras, &OnnxOptions::new([67, 67]));
    assert_eq!(count(&keras, "BatchNormalization"), 1 + units);
}

#[test]
fn metadata_carries_preprocessing_and_classes_and_the_batch_is_symbolic() {
    let device = Device::flex();
    let model = small("sknet-tiny", &device);
    let dir = std::env::temp_dir().join(format!("sknet-onnx-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.onnx");
    let pre = Preprocess::cifar([32, 32]);
    let classes: Vec<String> = (0..10).map(|i| format!("label-{i}")).collect();
    let summary = write_onnx(&path, &model, &OnnxOptions::new([32, 32]), &pre, &classes).unwrap();
    assert_eq!(summary.outputs, ["logits"]);
    let inference = tract_onnx::onnx().model_for_path(&path).unwrap();
    let prop = |key: &str| {
        let t = &inference.properties[&format!("onnx.metadata_props.{key}")];
        let view = t.try_as_plain_ram().unwrap();
        view.to_scalar::<String>().unwrap().clone()
    };
    assert_eq!(prop("size"), "32,32");
    assert_eq!(prop("mean"), pre.mean.map(|m| m.to_string()).join(","));
    assert_eq!(prop("std"), pre.std.map(|m| m.to_string()).join(","));
    assert_eq!(prop("crop_pct"), pre.crop_pct.to_string());
    let listed: Vec<String> = serde_json::from_str(&prop("classes")).unwrap();
    assert_eq!(listed, classes);
    let stored: Preprocess = serde_json::from_str(&prop("sknet.preprocess")).unwrap();
    assert_eq!(stored, pre);
    let config: sknet::NetworkConfig = serde_json::from_str(&prop("sknet.config")).unwrap();
    assert_eq!(config, model.config);
    let fact = inference.input_fact(0).unwrap().clone();
    let shape = format!("{fact:?}");
    assert!(shape.contains("batch"), "input fact {shape}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The shipped CIFAR-10 model through the binary: the file runs in tract with the logits
/// `predict` computes from the same weights, and bad requests leave no file behind.
#[test]
fn cli_exports_the_shipped_model_and_refuses_bad_requests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let weights = format!("{root}/models/cifar10.safetensors");
    let dir = std::env::temp_dir().join(format!("sknet-onnx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("model.onnx");
    let out_s = out.to_str().unwrap();
    let (code, stdout, stderr) = sknet(&[
        "export",
        "--weights",
        &weights,
        "--format",
        "onnx",
        "--attention",
        "-o",
        out_s,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("opset 17") && stdout.contains("attention maps"),
        "{stdout}"
    );

    let device = Device::flex();
    let loaded = sknet::load_pretrained(&weights, &Default::default(), &device).unwrap();
    let x = input(&[2, 3, 32, 32], &device);
    let want = to_vec(loaded.model.forward(x.clone()));
    let got = run_tract(&std::fs::read(&out).unwrap(), &to_vec(x), [2, 3, 32, 32]);
    let err = rel_err(&got[0], &want);
    assert!(err < 1e-4, "logits differ by {err:e}");

    // An unknown format, an unwritable folder, and ONNX flags on another format.
    let (code, _, stderr) = sknet(&[
        "export",
        "--weights",
        &weights,
        "--format",
        "tflite",
        "-o",
        out_s,
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("tflite") && stderr.contains("onnx"),
        "{stderr}"
    );
    let missing = dir.join("no/such/folder/model.onnx");
    let (code, _, stderr) = sknet(&[
        "export",
        "--weights",
        &weights,
        "--format",
        "onnx",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no/such/folder"), "{stderr}");
    let (code, _, stderr) = sknet(&["export", "--weights", &weights, "--keep-bn", "-o", out_s]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--keep-bn") && stderr.contains("onnx"),
        "{stderr}"
    );
    let (code, _, stderr) = sknet(&[
        "export",
        "--weights",
        &weights,
        "--format",
        "onnx",
        "--input",
        "0x32",
        "-o",
        out_s,
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--input 0x32"), "{stderr}");
    // Only the successful export is in the folder: no temporary files were left.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.onnx"], "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
