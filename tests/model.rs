//! Model behaviour beyond parity: features, attention, odd inputs, training-mode corner cases.

mod common;

use burn::tensor::{Device, Tensor};
use common::{input, to_vec};
use sknet::model::InputError;
use sknet::{presets, SkNet};

fn tiny(name: &str, device: &Device) -> SkNet {
    let mut config = presets::by_name(name).unwrap();
    // Same structure, fewer units, so the test stays quick.
    config.layers = config.layers.iter().map(|_| 1).collect();
    sknet::weights::deterministic_init(SkNet::new(&config, device).unwrap())
}

#[test]
fn features_have_strides_2_to_32() {
    let device = Device::flex();
    let model = tiny("skresnet18", &device);
    let feats = model.features(input(&[1, 3, 64, 96], &device));
    let shapes: Vec<[usize; 4]> = feats.iter().map(|f| f.dims()).collect();
    assert_eq!(
        shapes,
        vec![
            [1, 64, 32, 48],
            [1, 64, 16, 24],
            [1, 128, 8, 12],
            [1, 256, 4, 6],
            [1, 512, 2, 3]
        ]
    );
}

#[test]
fn attention_sums_to_one_over_branches_for_every_unit() {
    let device = Device::flex();
    let model = tiny("sknet50", &device);
    let (logits, attention) = model.forward_with_attention(input(&[2, 3, 64, 64], &device));
    assert_eq!(logits.dims(), [2, 1000]);
    let names: Vec<&str> = attention.iter().map(|a| a.paper_name.as_str()).collect();
    assert_eq!(names, ["SK_2_1", "SK_3_1", "SK_4_1", "SK_5_1"]);
    assert_eq!(attention[1].path, "layer2.0.conv2");
    for a in &attention {
        let [b, m, c] = a.weights.dims();
        assert_eq!((b, m), (2, 2));
        let sums = to_vec(a.weights.clone().sum_dim(1));
        assert_eq!(sums.len(), b * c);
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{}", a.path);
    }
}

#[test]
fn keras_seed_takes_odd_sizes_like_keras_same_padding() {
    let device = Device::flex();
    let model = tiny("keras-seed", &device);
    // 'same' padding: every stride-2 layer maps n to ceil(n / 2).
    let feats = model.features(input(&[1, 3, 45, 33], &device));
    assert_eq!(feats[0].dims(), [1, 64, 23, 17]);
    assert_eq!(feats[1].dims(), [1, 256, 12, 9]);
    assert_eq!(feats[4].dims(), [1, 2048, 2, 2]);
}

#[test]
fn too_small_input_is_an_error_naming_the_layer() {
    let device = Device::flex();
    let model = tiny("sknet50", &device);
    let err = model.check_input(&[1, 3, 4, 4]).unwrap_err();
    match &err {
        InputError::TooSmall {
            layer, min_side, ..
        } => {
            assert_eq!(layer, "maxpool");
            assert_eq!(*min_side, 5);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(model.check_input(&[1, 3, 5, 5]).is_ok());
    assert!(matches!(
        model.check_input(&[1, 1, 64, 64]),
        Err(InputError::Shape { channels: 3, .. })
    ));
}

#[test]
fn batch_of_one_trains_without_nan() {
    // With batch 1 the BN on z sees one value per channel; PyTorch refuses, sknet must not fail.
    let device = Device::flex().autodiff();
    let model = tiny("skresnet18", &device);
    let logits = model.forward(input(&[1, 3, 32, 32], &device));
    let loss = logits.powf_scalar(2.0).mean();
    let grads = loss.backward();
    let tensors = sknet::weights::flat_tensors(&model, Some(&grads));
    let grad = tensors
        .iter()
        .find(|t| t.named.path == "layer1.0.conv1.attn.fc_reduce.weight")
        .and_then(|t| t.grad.clone())
        .expect("gradient");
    assert!(to_vec(grad).iter().all(|v| v.is_finite()));
    for t in &tensors {
        assert!(
            to_vec(t.value.clone()).iter().all(|v| v.is_finite()),
            "{} not finite",
            t.named.path
        );
    }
}

#[test]
fn eval_mode_uses_running_statistics() {
    // A batch and its first image alone give the same first row in inference mode.
    let device = Device::flex();
    let model = tiny("skresnet18", &device);
    let x = input(&[3, 3, 32, 32], &device);
    let all = to_vec(model.forward(x.clone()));
    let first = to_vec(model.forward(x.narrow(0, 0, 1)));
    let err = common::rel_err(&first, &all[..first.len()]);
    assert!(err < 1e-5, "{err}");
    let _: Tensor<2> = model.predict_proba(input(&[1, 3, 32, 32], &device));
}

#[test]
fn folding_batchnorm_folds_every_conv_bn_pair_and_keeps_the_logits() {
    use sknet::blocks::Block;
    let device = Device::flex();
    for name in ["skresnet18", "skresnext50_32x4d", "keras-seed"] {
        let model = tiny(name, &device);
        let x = input(&[2, 3, 64, 64], &device);
        let want = to_vec(model.forward(x.clone()));
        let folded = model.fold_batchnorm();
        assert!(folded.bn1.folded, "{name}: stem");
        for (i, block) in folded.layer1.iter().chain(&folded.layer2).enumerate() {
            let sk = block.selective_kernel();
            assert!(
                sk.paths.iter().all(|p| p.bn.folded),
                "{name} block {i}: SK branches"
            );
            assert!(
                sk.attn.bn.as_ref().is_none_or(|bn| bn.folded),
                "{name} block {i}: z"
            );
            let (convs, projection) = match block {
                Block::Basic(b) => (vec![&b.conv2], &b.downsample),
                Block::Bottleneck(b) => (vec![&b.conv1, &b.conv3], &b.downsample),
                Block::KerasSeed(b) => {
                    // The BN after the SK unit follows no convolution: it stays.
                    assert!(!b.bn2.folded, "{name} block {i}: bn2");
                    (vec![&b.conv1, &b.conv3], &b.downsample)
                }
            };
            assert!(
                convs.iter().all(|c| c.bn.folded && c.conv.bias.is_some()),
                "{name} block {i}"
            );
            assert!(
                projection.as_ref().is_none_or(|(_, bn)| bn.folded),
                "{name} block {i}: projection"
            );
        }
        // Its weights no longer mean what a checkpoint's do: saving it is refused.
        let refused = sknet::weights::load::state_dict(&folded);
        assert!(
            matches!(
                refused,
                Err(sknet::weights::checkpoint::WeightsError::Folded { .. })
            ),
            "{name}: a folded network must not be saved"
        );
        let got = to_vec(folded.clone().forward(x.clone()));
        let err = common::rel_err(&got, &want);
        assert!(err < 1e-5, "{name}: folded logits rel err {err:.2e}");
        // Where the CPU has AVX-512, skresnet18's dense 3x3 convs of 64 channels or more went
        // through the Winograd kernel on the 16x16 maps and through the packed kernel on the 8x8
        // to 2x2 ones, their weights transformed or packed on first use.
        if let (Block::Basic(first), Block::Basic(second)) = (&folded.layer1[0], &folded.layer2[0])
        {
            let winograd = first.conv2.conv.packed.as_ref();
            assert!(
                winograd.is_none_or(|p| p.is_winograd() && !p.is_packed()),
                "{name}: 16x16 conv2 not through Winograd"
            );
            let packed = second.conv2.conv.packed.as_ref();
            assert!(
                packed.is_none_or(|p| p.is_packed() && !p.is_winograd()),
                "{name}: 8x8 conv2 not packed"
            );
        }
        // Folding twice changes nothing.
        let again = to_vec(folded.fold_batchnorm().forward(x));
        assert_eq!(again, got, "{name}: second fold");
    }
}
