//! A kxk convolution with output channels in AVX-512 lanes, from weights packed once.
//!
//! The direct kernel ([`super::direct`]) puts output positions in vector lanes: a run over
//! the padded input's rows, padding columns included, rounded up to whole vectors. On the small
//! maps of a network's last stages that wastes a quarter to a half of every FMA (a 7x7 map with
//! a padded width of 9 or 11 is a run of 61 or 77 for 49 outputs). Here the lanes hold 16 output
//! channels instead, so no lane is wasted whatever the map: a register block of up to `VECTORS`
//! x 16 output channels by `ROWS` rows of up to `POSITIONS` positions, 28 accumulators, takes
//! per (input channel, tap) `VECTORS` weight loads and `ROWS * POSITIONS` broadcast inputs.
//!
//! The weights must then be read as `[out / 32][in / groups * k * k][32]` (blocks never cross a
//! group). Repacking them on every call would cost as much as the conv itself on these layers
//! (their weights are the network's largest), so [`PackedWeights`] are packed once, by the first
//! call that uses them after an inference model folds its BatchNorms
//! ([`crate::layers::fold_into_conv`]), and kept beside the conv's own weights.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

use super::direct::direct_conv2d_flex;
use super::plan::{conv_output, Images, PhaseLayout, Plan};

/// Output channels in one register: the lanes of an AVX-512 vector.
const LANES: usize = 16;
/// Registers of output channels in one block (32 channels).
const VECTORS: usize = 2;
/// Output rows in one block.
const ROWS: usize = 2;
/// Consecutive positions of each output row in one block.
const POSITIONS: usize = 7;

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
    /// it: CPU inference builds on a CPU with AVX-512, f32 weights of a conv it [`applies`] to.
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
/// On skresnet18 at batch 1, the packed kernel took 0.75 to 0.95 of the direct kernel's time on
/// convs of 28x28, 14x14 and 7x7 maps; on 56x56 maps and the stem (3 channels) it took more.
/// skresnext50's grouped convs of 7x7 maps (32 channels a group, 288 taps) at batch 8 took 0.92
/// (3x3) and 0.70 (dilated) of the direct kernel's time; the stride-2 ones onto 7x7 maps 1.1 to
/// 1.2 where 12% of the direct kernel's outputs are padding (the dilated one, with 24%, about
/// even); those of 16 channels a group on 14x14 maps 1.2.
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

/// Whether this CPU runs the packed kernel.
pub(crate) fn available() -> bool {
    super::pointwise::available()
}

/// Whether a conv of this weight shape (`[out, in / groups, k, k]`) and `groups` is one the
/// packed kernel computes: a square kernel larger than 1x1, whole vectors of output channels in
/// each group.
pub(crate) fn applies(weight_shape: [usize; 4], groups: usize) -> bool {
    let [out, _, kh, kw] = weight_shape;
    let group_out = out.checked_div(groups).unwrap_or(0);
    kh == kw && kh > 1 && group_out > 0 && group_out.is_multiple_of(LANES)
}

/// `[out, in / groups, k, k]` weights regrouped for the kernel: blocks of up to `VECTORS *
/// LANES` output channels of one group, each `[in / groups * k * k][block channels]`, in output
/// channel order.
pub(crate) fn pack(weight: &[f32], [out_channels, groups]: [usize; 2]) -> Vec<f32> {
    let taps = weight.len() / out_channels;
    let group_out = out_channels / groups;
    let mut packed = Vec::with_capacity(weight.len());
    for group in 0..groups {
        let end = (group + 1) * group_out;
        for first in (group * group_out..end).step_by(VECTORS * LANES) {
            let width = (end - first).min(VECTORS * LANES);
            for t in 0..taps {
                packed.extend((first..first + width).map(|o| weight[o * taps + t]));
            }
        }
    }
    packed
}

/// The conv of `plan` (square kernel, output channels of each group a multiple of 16) from
/// `packed` weights ([`pack`]): `out = conv(images) + bias`, ReLU'd if `relu`, every element
/// written.
///
/// # Panics
/// If [`available`] is false or the sizes do not match the plan.
pub(super) fn run_packed(
    plan: &Plan,
    images: Images,
    packed: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    assert!(available(), "the packed conv needs AVX-512");
    assert!(plan.group_out.is_multiple_of(LANES));
    let taps = plan.group_in * plan.kernel * plan.kernel;
    assert_eq!(packed.len(), plan.out_channels * taps);
    assert_eq!(bias.len(), plan.out_channels);
    let plane = plan.out_h * plan.out_w;
    assert_eq!(out.len(), plan.batch * plan.out_channels * plane);
    let layout = PhaseLayout::new(plan);
    // One group's taps; the groups' phases follow one another.
    let starts = layout.tap_starts(plan);
    let group_phases = plan.group_in * layout.channel;
    let all_channels = Plan {
        group_in: plan.in_channels,
        ..*plan
    };
    let image_len = plan.in_channels * plan.in_h * plan.in_w;
    // Blocks of output channels, none across groups: (first channel, channels).
    let blocks: Vec<[usize; 2]> = (0..plan.out_channels)
        .step_by(plan.group_out)
        .flat_map(|group_first| {
            (0..plan.group_out)
                .step_by(VECTORS * LANES)
                .map(move |o| [group_first + o, (plan.group_out - o).min(VECTORS * LANES)])
        })
        .collect();
    let bands = plan.out_h.div_ceil(ROWS);
    let mut phases = Vec::new();
    for (n, out_image) in out.chunks_mut(plan.out_channels * plane).enumerate() {
        layout.fill(&all_channels, images.part(n, 0, image_len), &mut phases);
        let out_ptr = super::SendPtr(out_image.as_mut_ptr());
        let phases = &phases;
        (0..blocks.len() * bands).into_par_iter().for_each(|task| {
            let ([first, width], y) = (blocks[task / bands], task % bands * ROWS);
            let rows = (plan.out_h - y).min(ROWS);
            let group = first / plan.group_out;
            let data = &phases[group * group_phases + y * layout.width..];
            // SAFETY: `available` checked AVX-512; the task writes output rows `y..y + rows`
            // of channels `first..first + width` of this image, which no other task writes.
            unsafe {
                row_task(
                    plan,
                    [rows, layout.width],
                    &starts,
                    data,
                    &packed[first * taps..][..width * taps],
                    &bias[first..first + width],
                    relu,
                    out_ptr.get().add(first * plane + y * plan.out_w),
                )
            }
        });
    }
}

/// Up to [`ROWS`] output rows of one block of output channels, [`POSITIONS`] positions at a
/// time.
///
/// # Safety
/// AVX-512F; `out` points to the block's first channel at the row's first position, in the
/// image's output (channels `plane` apart), and no one else writes those elements meanwhile.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_task(
    plan: &Plan,
    [rows, pitch]: [usize; 2],
    starts: &[usize],
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    relu: bool,
    out: *mut f32,
) {
    let plane = plan.out_h * plan.out_w;
    let vectors = bias.len() / LANES;
    let last = starts.iter().max().copied().unwrap_or(0) + (rows - 1) * pitch + plan.out_w;
    assert!(last <= data.len() && weights.len() == starts.len() * bias.len());
    let mut block = [[0f32; VECTORS * LANES]; ROWS * POSITIONS];
    let mut x = 0;
    while x < plan.out_w {
        let p = (plan.out_w - x).min(POSITIONS);
        let args = (
            starts,
            data.as_ptr().add(x),
            pitch,
            weights.as_ptr(),
            &mut block,
        );
        macro_rules! by_positions {
            ($v:literal, $r:literal) => {
                match p {
                    1 => tile::<$v, $r, 1>(args),
                    2 => tile::<$v, $r, 2>(args),
                    3 => tile::<$v, $r, 3>(args),
                    4 => tile::<$v, $r, 4>(args),
                    5 => tile::<$v, $r, 5>(args),
                    6 => tile::<$v, $r, 6>(args),
                    _ => tile::<$v, $r, 7>(args),
                }
            };
        }
        match (vectors, rows) {
            (1, 1) => by_positions!(1, 1),
            (1, _) => by_positions!(1, 2),
            (_, 1) => by_positions!(2, 1),
            (_, _) => by_positions!(2, 2),
        }
        // The block holds positions by channels; the output is channels by positions.
        for (c, &shift) in bias.iter().enumerate() {
            for r in 0..rows {
                let dst = out.add(c * plane + r * plan.out_w + x);
                for (i, sums) in block[r * POSITIONS..][..p].iter().enumerate() {
                    let v = sums[c] + shift;
                    *dst.add(i) = if relu { v.max(0.0) } else { v };
                }
            }
        }
        x += p;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn row_task(
    _: &Plan,
    _: [usize; 2],
    _: &[usize],
    _: &[f32],
    _: &[f32],
    _: &[f32],
    _: bool,
    _: *mut f32,
) {
    unreachable!("the packed conv is x86-64 only, and chosen only there")
}

/// `block[i][c] = sum over t of weights[t][c] * data[starts[t] + i]` for `V * 16` channels and `P`
/// positions, in registers over all taps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // indices pair registers across arrays
unsafe fn tile<const V: usize, const R: usize, const P: usize>(
    (starts, data, pitch, weights, block): (
        &[usize],
        *const f32,
        usize,
        *const f32,
        &mut [[f32; VECTORS * LANES]; ROWS * POSITIONS],
    ),
) {
    use std::arch::x86_64::*;
    let mut acc = [[[_mm512_setzero_ps(); V]; P]; R];
    let mut wp = weights;
    for &start in starts {
        let mut w = [_mm512_setzero_ps(); V];
        for v in 0..V {
            w[v] = _mm512_loadu_ps(wp.add(LANES * v));
        }
        for r in 0..R {
            let d = data.add(start + r * pitch);
            for i in 0..P {
                let x = _mm512_set1_ps(*d.add(i));
                for v in 0..V {
                    acc[r][i][v] = _mm512_fmadd_ps(w[v], x, acc[r][i][v]);
                }
            }
        }
        wp = wp.add(LANES * V);
    }
    for r in 0..R {
        for i in 0..P {
            for v in 0..V {
                let dst = block[r * POSITIONS + i].as_mut_ptr().add(LANES * v);
                _mm512_storeu_ps(dst, acc[r][i][v]);
            }
        }
    }
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
