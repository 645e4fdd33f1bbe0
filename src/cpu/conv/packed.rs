//! Convs from weights prepared once, for CPU inference: [`PackedWeights`] and the op that uses
//! them, which picks the Winograd kernel ([`super::winograd`]) where it applies, the packed
//! kernel ([`super::packed_kernel`]) where it beats the direct one, and the direct kernel
//! otherwise.
//!
//! The packed kernel reads the weights as `[out / 32][in / groups * k * k][32]`, the Winograd one
//! their transform. Making either on every call would cost as much as the conv itself on these
//! layers (their weights are the network's largest), so [`PackedWeights`] are made once, by the
//! first call that uses them after an inference model folds its BatchNorms
//! ([`crate::layers::fold_into_conv`]), and kept beside the conv's own weights.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use std::sync::{Arc, OnceLock};

use super::direct::direct_conv2d_flex;
use super::packed_kernel::{available, pack, run_packed, LANES};
use super::plan::{conv_output, PhaseLayout, Plan};

/// A conv's weights as the packed kernel reads them, packed on the first call that uses them,
/// with the weight tensor they come from: they are used only while the conv's weights are still
/// that tensor (the same buffer, which the clone kept here keeps alive), so replacing the
/// weights cannot make them stale. Clones share the packed copy.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    source: Tensor<4>,
    packed: Arc<OnceLock<Vec<f32>>>,
    /// The Winograd transform of the weights, for the convs [`super::winograd`] computes.
    winograd: Arc<OnceLock<Vec<f32>>>,
}

impl PackedWeights {
    /// Packed weights for `weight` (`[out, in / groups, k, k]`) where the packed kernel may run
    /// it: CPU inference builds on a CPU with AVX-512, f32 weights of a conv it computes (a square
    /// kernel larger than 1x1, whole vectors of 16 output channels in each group).
    /// `None` elsewhere (the conv then runs as before). Nothing is packed yet.
    pub fn of(weight: &Tensor<4>, groups: usize) -> Option<Self> {
        let usable = crate::cpu::available()
            && available()
            && !weight.device().is_autodiff()
            && weight.dtype() == DType::F32
            && applies(weight.dims(), groups);
        usable.then(|| Self {
            source: weight.clone(),
            packed: Arc::default(),
            winograd: Arc::default(),
        })
    }

    /// Whether the weights have been packed (by a call that used them).
    pub fn is_packed(&self) -> bool {
        self.packed.get().is_some()
    }

    /// Whether the weights have been Winograd-transformed (by a call that used them).
    pub fn is_winograd(&self) -> bool {
        self.winograd.get().is_some()
    }
}

/// `conv2d(input, weight) + bias`, ReLU'd if `relu`, through the packed kernel when `packed` was
/// made from `weight` and the input is f32 on Flex; otherwise as [`super::direct::conv2d_direct`].
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - weight: `[out_channels, in_channels, kernel, kernel]`
/// - bias: `[out_channels]`
/// - output: `[batch, out_channels, height', width']`
pub fn conv2d_packed(
    input: Tensor<4>,
    weight: Tensor<4>,
    packed: &PackedWeights,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    relu: bool,
) -> Tensor<4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    Tensor::from_dispatch(<Dispatch as PackedConvOps>::packed_conv2d(
        input.into_dispatch(),
        weight.into_dispatch(),
        packed.source.clone().into_dispatch(),
        [packed.packed.clone(), packed.winograd.clone()],
        bias.into_dispatch(),
        options,
        relu,
    ))
}

/// The packed convolution as a Flex backend extension.
#[backend_extension(Flex)]
pub trait PackedConvOps: Backend {
    /// `conv2d(x, weight) + bias` (ReLU'd if `relu`) from `source` packed ([`pack`], once,
    /// into `packed`): used when `source` is `weight`.
    fn packed_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        source: FloatTensor<Self>,
        packed: [Arc<OnceLock<Vec<f32>>>; 2],
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FloatTensor<Self>;
}

impl PackedConvOps for Flex {
    fn packed_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        source: FlexTensor,
        [packed, winograd]: [Arc<OnceLock<Vec<f32>>>; 2],
        bias: FlexTensor,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FlexTensor {
        let f32s = [&x, &weight, &bias].iter().all(|t| t.dtype() == DType::F32);
        let plan = Plan::checked(x.layout().shape(), weight.layout().shape(), &options)
            .filter(|plan| f32s && plan.group_out.is_multiple_of(LANES) && available())
            .filter(|_| same_tensor(&weight, &source));
        if let Some(plan) = plan.filter(super::winograd::applies) {
            let u = winograd.get_or_init(|| {
                let weight = weight.to_contiguous();
                super::winograd::transform_weights(
                    weight.as_slice::<f32>().expect("contiguous f32"),
                    [plan.out_channels, plan.in_channels],
                )
            });
            // SAFETY: `run_winograd` writes every element.
            return unsafe {
                conv_output(&plan, x, bias, |images, bias, out| {
                    super::winograd::run_winograd(&plan, images, u, bias, relu, out)
                })
            };
        }
        let plan = plan.filter(worth_it);
        let Some(plan) = plan else {
            return direct_conv2d_flex(x, weight, Some(bias), options, relu);
        };
        let packed = packed.get_or_init(|| {
            let weight = weight.to_contiguous();
            let groups = plan.in_channels / plan.group_in;
            pack(
                weight.as_slice::<f32>().expect("contiguous f32"),
                [plan.out_channels, groups],
            )
        });
        // SAFETY: `run_packed` writes every element (each task every position of its rows).
        unsafe {
            conv_output(&plan, x, bias, |images, bias, out| {
                run_packed(&plan, images, packed, bias, relu, out)
            })
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests run the packed kernel on small cases too, where [`worth_it`] would not.
    static FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the packed kernel beats the direct one on `plan`: the direct kernel computes padding
/// columns too (5% more outputs or worse: maps of 28x28 and less), and there are enough input
/// taps (576: 64 channels of 3x3) for the transposition of each block's output to cost little;
/// or half as many taps where the padding is a fifth of the outputs or more (7x7 maps).
/// Timed per conv (figures in BENCHMARKS.md), the packed kernel was the faster on skresnet18's
/// convs of 28x28, 14x14 and 7x7 maps and on skresnext50's grouped convs of 7x7 maps (32 channels
/// a group, 288 taps), the slower on 56x56 maps, the stem (3 channels), the stride-2 grouped convs
/// onto 7x7 maps, where 12% of the direct kernel's outputs are padding, and the grouped convs of
/// 16 channels a group on 14x14 maps.
/// (1x1 convs on 7x7 maps, where the 1x1 kernel computes 64 positions for 49, ran no faster
/// packed: they are not packed.)
fn worth_it(plan: &Plan) -> bool {
    #[cfg(test)]
    if FORCED.get() {
        return true;
    }
    let width = PhaseLayout::new(plan).width;
    let run = (plan.out_h - 1) * width + plan.out_w;
    let plane = plan.out_h * plan.out_w;
    let taps = plan.group_in * plan.kernel * plan.kernel;
    (taps >= 576 && plane * 20 < run * 19) || (taps >= 288 && plane * 6 < run * 5)
}

/// Whether `a` and `b` are views of the same elements of the same buffer.
fn same_tensor(a: &FlexTensor, b: &FlexTensor) -> bool {
    let (la, lb) = (a.layout(), b.layout());
    a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && la.shape() == lb.shape()
        && la.strides() == lb.strides()
        && la.start_offset() == lb.start_offset()
        && std::ptr::eq(a.storage::<f32>(), b.storage::<f32>())
}

/// Whether a conv of this weight shape (`[out, in / groups, k, k]`) and `groups` is one the
/// packed kernel computes: a square kernel larger than 1x1, whole vectors of output channels in
/// each group.
pub(crate) fn applies(weight_shape: [usize; 4], groups: usize) -> bool {
    let [out, _, kh, kw] = weight_shape;
    let group_out = out.checked_div(groups).unwrap_or(0);
    kh == kw && kh > 1 && group_out > 0 && group_out.is_multiple_of(LANES)
}

/// The largest difference between [`conv2d_packed`] and burn's `conv2d` (ReLU'd if `relu`) on
/// the same operands (the packed and Winograd kernels' tests).
#[cfg(test)]
pub(crate) fn max_error_against_burn(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    packed: &PackedWeights,
    bias: &Tensor<1>,
    options: &ConvOptions<2>,
    relu: bool,
) -> f32 {
    let got = conv2d_packed(
        x.clone(),
        weight.clone(),
        packed,
        Some(bias.clone()),
        options.clone(),
        relu,
    );
    let want = burn::tensor::module::conv2d(
        x.clone(),
        weight.clone(),
        Some(bias.clone()),
        options.clone(),
    );
    let want = if relu {
        burn::tensor::activation::relu(want)
    } else {
        want
    };
    assert_eq!(got.dims(), want.dims());
    (got - want).abs().max().into_scalar()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{ConvConfig, ConvGeometry};
    use burn::tensor::module::conv2d;
    use burn::tensor::{Device, Distribution};

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_scalar()
    }

    /// Against burn's convolution, forced past [`worth_it`]: output channels in one, two and
    /// three blocks with a partial last one (16, 48, 80), rows in pairs and alone, rows of 7
    /// positions and of fewer, strides, dilations, Keras' asymmetric padding, groups (of 16, 32
    /// and 48 output channels), an even kernel, batch 2, a channel window input, with and without
    /// the ReLU.
    #[test]
    fn matches_burn_conv2d() {
        if !available() {
            return;
        }
        let device = Device::flex();
        // (in, out, groups, kernel, stride, dilation, pads, h, w)
        let cases = [
            (8, 16, 1, 3, 1, 1, [(1, 1), (1, 1)], 7, 7),
            (5, 48, 1, 3, 1, 2, [(2, 2), (2, 2)], 9, 16),
            (6, 80, 1, 3, 2, 1, [(1, 1), (1, 1)], 11, 12),
            (3, 32, 1, 5, 1, 1, [(1, 3), (2, 2)], 6, 15),
            (4, 16, 1, 3, 2, 2, [(2, 2), (2, 2)], 14, 14),
            (8, 32, 2, 3, 1, 1, [(1, 1), (1, 1)], 7, 7),
            (12, 64, 2, 3, 2, 2, [(2, 2), (2, 2)], 9, 10),
            (6, 96, 2, 3, 1, 1, [(1, 1), (1, 1)], 5, 8),
            (8, 32, 1, 2, 2, 1, [(0, 0), (0, 0)], 9, 8),
        ];
        FORCED.set(true);
        for (n, (cin, cout, g, k, s, d, pads, h, w)) in cases.into_iter().enumerate() {
            let batch = 1 + n % 2;
            let extra = if n % 2 == 0 { 0 } else { 3 };
            let x = random([batch, cin + extra, h, w], &device).narrow(1, extra.min(2), cin);
            let weight = random([cout, cin / g, k, k], &device);
            let bias = random([cout], &device);
            let options = ConvOptions::new_with_padding([s, s], pads, [d, d], g);
            let packed = PackedWeights::of(&weight, g).expect("packable");
            for with_relu in [false, true] {
                let err = max_error_against_burn(&x, &weight, &packed, &bias, &options, with_relu);
                assert!(
                    err < 1e-4,
                    "case {n} relu {with_relu}: max difference {err}"
                );
            }
            assert!(packed.is_packed(), "case {n}");
        }
        FORCED.set(false);
    }

    /// Weights packed from one tensor are not used for another: the conv falls back to the
    /// direct kernel and computes with the weights it is given.
    #[test]
    fn other_weights_are_not_computed_with_stale_packed_ones() {
        if !available() {
            return;
        }
        let device = Device::flex();
        let x = random([1, 8, 7, 7], &device);
        let (old, new) = (
            random([16, 8, 3, 3], &device),
            random([16, 8, 3, 3], &device),
        );
        let packed = PackedWeights::of(&old, 1).expect("packable");
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        FORCED.set(true);
        let used = conv2d_packed(
            x.clone(),
            old.clone(),
            &packed,
            None,
            options.clone(),
            false,
        );
        let got = conv2d_packed(
            x.clone(),
            new.clone(),
            &packed,
            None,
            options.clone(),
            false,
        );
        FORCED.set(false);
        let err = max_diff(used, conv2d(x.clone(), old, None, options.clone()));
        assert!(err < 1e-4, "packed: max difference {err}");
        let err = max_diff(got, conv2d(x, new, None, options));
        assert!(err < 1e-4, "other weights: max difference {err}");
    }

    /// A conv with packed weights computes what it computed before, where the packed kernel
    /// runs (3x3 convs of 64 and 32 channels on a 7x7 map) and where it does not (16 input
    /// channels, a 56x56 map, groups of 2 output channels, a 1x1 conv).
    #[test]
    fn packed_convs_keep_their_output() {
        let device = Device::flex();
        // (in, kernel, groups, size, runs packed)
        let cases = [
            (64, 3, 1, 7, true),
            (32, 3, 1, 7, true),
            (16, 3, 1, 7, false),
            (64, 3, 1, 56, false),
            (64, 3, 32, 7, false),
            (576, 1, 1, 7, false),
        ];
        for (cin, kernel, groups, size, runs_packed) in cases {
            let x = random([1, cin, size, size], &device);
            let geometry = ConvGeometry {
                kernel,
                stride: 1,
                dilation: 1,
                groups,
                padding: crate::config::Padding::Symmetric,
            };
            let conv = ConvConfig::new(cin, 64, geometry)
                .with_bias(true)
                .init(&device);
            let want = conv.forward(x.clone());
            let conv = conv.pack_weights();
            let case = format!("in {cin} k{kernel} g{groups} {size}x{size}");
            let applies = groups == 1 && kernel > 1;
            assert_eq!(conv.packed.is_some(), available() && applies, "{case}");
            let err = max_diff(conv.forward(x.clone()), want);
            assert!(err < 1e-4, "{case}: max difference {err}");
            let packed = conv.packed.as_ref().is_some_and(PackedWeights::is_packed);
            assert_eq!(packed, available() && runs_packed, "{case}");
        }
    }
}
