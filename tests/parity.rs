//! Forward and training-step parity against the reference implementations, on fixtures made by
//! tools/gen_torch_fixtures.py (timm and tools/paper_sknet.py) and tools/gen_keras_fixtures.py
//! (the notebook's Keras model).

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;

fn check_eval(name: &str) {
    let fx = fixture(&format!("{name}.json"));
    let device = Device::flex();
    let model = model(&fx, &device);
    assert_same_tensors(&model, &fx);
    let shape = usizes(&fx["input_shape"]);
    let x = input(&shape, &device);
    model.check_input(&shape).expect("fixture input is valid");
    let (logits, attention) = model.forward_with_attention(x);
    let err = rel_err(&to_vec(logits), &floats(&fx["logits"]));
    println!("{name}: logits rel err {err:.2e}");
    assert!(err < TOLERANCE, "{name}: logits rel err {err:.2e}");
    // The BN-folded network that predict, eval and bench run matches as well.
    let folded = model.clone().fold_batchnorm();
    assert!(folded.is_batchnorm_folded() && !model.is_batchnorm_folded());
    let err = rel_err(
        &to_vec(folded.forward(input(&shape, &device))),
        &floats(&fx["logits"]),
    );
    println!("{name}: folded logits rel err {err:.2e}");
    assert!(err < TOLERANCE, "{name}: folded logits rel err {err:.2e}");
    if let Some(expected) = fx.get("attention").and_then(|a| a.as_object()) {
        for (path, want) in expected {
            let unit = attention
                .iter()
                .find(|u| &u.path == path)
                .unwrap_or_else(|| panic!("{name}: no SK unit at {path}"));
            let err = rel_err(&to_vec(unit.weights.clone()), &floats(want));
            println!("{name}: attention {path} rel err {err:.2e}");
            assert!(
                err < TOLERANCE,
                "{name}: attention {path} rel err {err:.2e}"
            );
        }
    }
}

#[test]
fn skresnet18_matches_timm() {
    check_eval("skresnet18_timm");
}

#[test]
fn skresnext50_32x4d_matches_timm() {
    check_eval("skresnext50_timm");
}

#[test]
fn sknet50_matches_the_paper_design() {
    check_eval("sknet50_paper");
}

#[test]
fn four_branch_split_input_basic_matches_timm() {
    check_eval("tiny_basic_m4_timm");
}

#[test]
fn true_5x5_bottleneck_matches_timm() {
    check_eval("tiny_bottleneck_5x5_timm");
}

#[test]
fn cifar_stem_channel_major_biased_attention_matches_pytorch() {
    check_eval("tiny_cifar_paper");
}

#[test]
fn keras_seed_matches_the_notebook() {
    check_eval("keras_seed_keras");
}

#[test]
fn small_keras_seed_variant_matches_keras() {
    check_eval("tiny_keras_m3_keras");
}

#[test]
fn training_step_matches_timm() {
    let fx = fixture("train_step_timm.json");
    let device = Device::flex().autodiff();
    let model = model(&fx, &device);
    assert_same_tensors(&model, &fx);
    let shape = usizes(&fx["input_shape"]);
    let x = input(&shape, &device);
    let labels: Vec<i64> = usizes(&fx["labels"])
        .into_iter()
        .map(|v| v as i64)
        .collect();
    let batch = labels.len();

    let logits = model.forward(x);
    let classes = logits.dims()[1];
    let err = rel_err(&to_vec(logits.clone()), &floats(&fx["logits"]));
    assert!(err < TOLERANCE, "train-mode logits rel err {err:.2e}");

    let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let mask = targets.one_hot::<2>(classes).float();
    let loss = log_softmax(logits, 1)
        .mul(mask)
        .sum()
        .neg()
        .div_scalar(batch as f64);
    let loss_value = to_vec(loss.clone())[0] as f64;
    let want = fx["loss"].as_f64().unwrap();
    assert!(
        (loss_value - want).abs() / want.abs() < TOLERANCE,
        "loss {loss_value} vs {want}"
    );

    let grads = loss.backward();
    let tensors = sknet::weights::flat_tensors(&model, Some(&grads));
    let find = |key: &str| {
        tensors
            .iter()
            .find(|t| t.named.path == key)
            .unwrap_or_else(|| panic!("no tensor {key}"))
    };
    for (key, want) in fx["grads"].as_object().unwrap() {
        let grad = find(key)
            .grad
            .clone()
            .unwrap_or_else(|| panic!("no grad for {key}"));
        let err = rel_err(&to_vec(grad), &floats(want));
        println!("grad {key}: rel err {err:.2e}");
        assert!(err < TOLERANCE, "grad {key}: rel err {err:.2e}");
    }
    for (key, want) in fx["running"].as_object().unwrap() {
        let err = rel_err(&to_vec(find(key).value.clone()), &floats(want));
        println!("running {key}: rel err {err:.2e}");
        assert!(
            err < TOLERANCE,
            "running statistic {key}: rel err {err:.2e}"
        );
    }
}
