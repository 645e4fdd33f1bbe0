//! Convolution on the CPU without burn-flex's layout changes: grouped, dense kxk and 1x1 convs.
//!
//! burn-flex runs a grouped convolution as one im2col and one small gemm per group. With the
//! SK unit's typical 32 groups of 4 to 32 channels, those gemms are too small to use the machine,
//! and the grouped 3x3 convs dominate ResNeXt-style SK inference. This kernel computes the output
//! directly from a zero-padded copy of the input, split into stride phases, so that every
//! (input channel, kernel tap) pair reads one contiguous run of that copy for a whole output
//! plane, whatever the stride, dilation or padding: `out[j] += w * in[j + offset]`.
//!
//! - Work is cut by (image, group): the group's padded input is built in a per-thread buffer and
//!   stays in cache while all of its output channels are computed. With few groups (dense convs),
//!   output channels are split over tasks that share one padded copy.
//! - With AVX2 and FMA (detected at run time), four output channels of a group are computed
//!   together: each input vector loaded feeds four FMAs, and up to 12 accumulators stay in
//!   registers across all the taps. Otherwise a portable kernel does one channel at a time.
//! - Dense convs with more than a few input channels, on maps larger than 8x8, are one GEMM per
//!   kernel tap over the same padded copy (its rows are channels a fixed distance apart, so it
//!   is the GEMM's operand as it is), accumulated: no im2col copy and no layout change.
//! - Dense 1x1 convs read the input as it is: with AVX-512 through [`super::pointwise`],
//!   otherwise as one GEMM per image.
//! - The bias (a folded BatchNorm's shift) and an optional ReLU are applied as the results are
//!   stored, so conv + BN + ReLU is one pass over the output.
//!
//! It is a Flex backend extension, so it reads burn-flex's buffers in place, a window of a
//! tensor's channels too (the SK unit's split input: see [`Images`]). It computes forward
//! passes only: inference (see [`Conv2d::forward`](crate::layers::Conv2d::forward)) and the forward half
//! of CPU training's convs ([`super::backward`]). The GPU backends keep burn's convolution.
//!
//! This file holds the extension, the choice of path and the per-group path with its epilogue;
//! the geometry and padded input are [`super::plan`]'s, the inner loops per instruction set
//! [`super::isa`]'s, the dense GEMM paths [`super::dense_gemm`]'s.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::dense_gemm::{run_pointwise, run_strided_pointwise, run_tapwise_gemm};
use super::isa::{accumulate, block_vectors, Epilogue, Kernel, BLOCK_CHANNELS, TASKS_PER_THREAD};
use super::plan::{conv_output, Images, PhaseLayout, Plan, CHUNK, SLACK};

/// The direct convolution as a Flex backend extension, so that it reads burn-flex's buffers in
/// place instead of copying them through `TensorData`.
#[backend_extension(Flex)]
pub trait DirectConvOps: Backend {
    /// `conv2d(x, weight) + bias`, followed by a ReLU when `relu` is set.
    fn direct_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(conv2d(x, weight) + bias + residual)`: a residual block's last conv and ending.
    /// `residual` has the output's shape.
    fn direct_conv2d_add_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl DirectConvOps for Flex {
    fn direct_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FloatTensor<Self> {
        direct_conv2d_flex(x, weight, Some(bias), options, relu)
    }

    fn direct_conv2d_add_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let f32s = [&x, &weight, &bias, &residual]
            .iter()
            .all(|t| t.dtype() == DType::F32);
        let plan = Plan::checked(x.layout().shape(), weight.layout().shape(), &options);
        // Where the 1x1 kernel runs, the residual is added as the outputs are stored.
        let fused = plan.filter(|plan| {
            let out_shape = [plan.batch, plan.out_channels, plan.out_h, plan.out_w];
            f32s && plan.group_in == plan.in_channels
                && (plan.kernel, plan.stride, plan.pads) == (1, 1, [(0, 0); 2])
                && Kernel::chosen() == Kernel::Avx512
                && super::pointwise::available()
                && residual.layout().shape().to_vec() == out_shape
        });
        let Some(plan) = fused else {
            let out = direct_conv2d_flex(x, weight, Some(bias), options, false);
            if f32s && out.layout().shape() == residual.layout().shape() {
                return <Flex as crate::cpu::add_relu::AddReluOps>::add_relu(out, residual);
            }
            // Another dtype or a broadcast residual: burn's ops, with their rules.
            return Flex::relu(Flex::float_add(out, residual));
        };
        let (weight, residual) = (weight.to_contiguous(), residual.to_contiguous());
        // SAFETY: the 1x1 kernel writes every output element.
        unsafe {
            conv_output(&plan, x, bias, |images, bias, out| {
                let finish = super::pointwise::Finish {
                    bias,
                    residual: Some(residual.as_slice::<f32>().expect("contiguous f32")),
                    relu: true,
                };
                let weight = weight.as_slice::<f32>().expect("contiguous f32");
                let shape = [plan.out_channels, plan.in_channels, plan.out_h * plan.out_w];
                super::pointwise::pointwise(
                    plan.batch,
                    shape,
                    &images.compact(),
                    weight,
                    finish,
                    out,
                )
            })
        }
    }
}

/// The direct convolution on Flex tensors: `conv2d(x, weight) + bias`, then a ReLU if `relu` is
/// set. Also the forward pass of CPU training's convs ([`super::backward`]).
pub(crate) fn direct_conv2d_flex(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: ConvOptions<2>,
    relu: bool,
) -> FlexTensor {
    let is_f32 = |t: &FlexTensor| t.dtype() == DType::F32;
    let plan = Plan::checked(x.layout().shape(), weight.layout().shape(), &options);
    let f32s = is_f32(&x) && is_f32(&weight) && bias.as_ref().is_none_or(is_f32);
    let Some(plan) = plan.filter(|_| f32s) else {
        // The kernels are f32 (all that sknet's layers make); anything else keeps burn-flex's
        // convolution (and its errors).
        let out = Flex::conv2d(x, weight, bias, options);
        return if relu { Flex::relu(out) } else { out };
    };
    let weight = weight.to_contiguous();
    let bias = match bias {
        Some(bias) => bias,
        None => FlexTensor::from_data(TensorData::new(
            vec![0f32; plan.out_channels],
            Shape::new([plan.out_channels]),
        )),
    };
    // SAFETY: every path of `run` writes each output element: `Epilogue::store` every row of
    // every plane, the 1x1 GEMM (which does not read its destination) every position.
    unsafe {
        conv_output(&plan, x, bias, |images, bias, out| {
            let weight = weight.as_slice::<f32>().expect("contiguous f32");
            run(&plan, images, weight, bias, relu, out)
        })
    }
}

/// `conv2d(input, weight, bias)`, then a ReLU if `relu` is set, computed directly, for the forward
/// pass on the Flex CPU backend without autodiff.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - weight: `[out_channels, in_channels / groups, kernel, kernel]` (square kernels)
/// - bias: `[out_channels]`
/// - output: `[batch, out_channels, height', width']`, sized as burn's (and PyTorch's) conv
pub fn conv2d_direct(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    relu: bool,
) -> Tensor<4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    Tensor::from_dispatch(<Dispatch as DirectConvOps>::direct_conv2d(
        input.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        options,
        relu,
    ))
}

/// `relu(conv2d(input, weight, bias) + residual)`, computed directly, for the forward pass on
/// the Flex CPU backend without autodiff: with AVX-512, a dense 1x1 conv adds the residual as it
/// stores its outputs (a bottleneck block's last conv and ending in one pass over the output);
/// other convs are followed by one add-and-ReLU pass.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - weight: `[out_channels, in_channels / groups, kernel, kernel]`
/// - residual and output: `[batch, out_channels, height', width']`
pub fn conv2d_direct_add_relu(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    residual: Tensor<4>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    Tensor::from_dispatch(<Dispatch as DirectConvOps>::direct_conv2d_add_relu(
        input.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        options,
    ))
}

/// Per-thread buffers of [`run_per_group`].
#[derive(Default)]
struct Scratch {
    phases: Vec<f32>,
    acc: Vec<f32>,
}

/// Input channels up to which a dense (one-group) conv goes through the AVX2 blocked kernel
/// rather than one GEMM per tap: the ResNet stem (3 channels, 7x7) runs much faster there, while
/// dense 3x3 convs of 32 to 256 channels on maps of 14x14 and more run faster as GEMMs than in
/// burn-flex or the AVX2 kernel (`examples/grouped_conv.rs`, and per layer in skresnet18). The
/// AVX-512 kernel beat the GEMMs on all of skresnet18's dense convs, at batch 1 and 8, and takes
/// them all. (Figures in BENCHMARKS.md.)
const DENSE_BLOCKED_MAX_CHANNELS: usize = 4;
/// Output positions a channel up to which dense convs go through the blocked kernel anyway: on 7x7
/// maps the GEMMs have little to work on per pass over the weights, which are large there (256 to
/// 512 channels) and are read once per tap; the blocked kernel reads them once, and was the faster
/// on skresnet18's 7x7 maps (AVX2, batch 1).
const DENSE_BLOCKED_MAX_PLANE: usize = 64;

/// The direct conv's paths: a dense 1x1 conv without padding is a product of the input as it
/// lies ([`run_pointwise`]; a strided one of the subsampled input, [`run_strided_pointwise`]);
/// without AVX-512, a dense conv of more than a few input channels on a map larger than 8x8 is
/// one GEMM per kernel tap ([`run_tapwise_gemm`]); every other conv goes group by group through
/// the blocked or portable kernel ([`run_per_group`]).
fn run(plan: &Plan, images: Images, w: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    let plane = plan.out_h * plan.out_w;
    if out.is_empty() {
        return;
    }
    let dense = plan.group_in == plan.in_channels;
    if dense && plan.kernel == 1 && plan.pads == [(0, 0); 2] {
        let x = &images.compact();
        if plan.stride == 1 {
            return run_pointwise(plan, x, w, bias, relu, out);
        }
        return run_strided_pointwise(plan, x, w, bias, relu, out);
    }
    let kernel = Kernel::for_plan(plan);
    if dense
        && kernel != Kernel::Avx512
        && plan.group_in > DENSE_BLOCKED_MAX_CHANNELS
        && plane > DENSE_BLOCKED_MAX_PLANE
    {
        return run_tapwise_gemm(plan, &images.compact(), w, bias, relu, out);
    }
    run_per_group(plan, kernel, images, w, bias, relu, out)
}

/// One task per (image, group) when there are enough of them: the group's input is padded (and
/// phase-split) into a small per-thread buffer that stays in cache while all of the group's output
/// channels are computed from it, so the input makes one trip through memory. With few groups
/// (dense convs, small batches), each group's output channels are split over several tasks, which
/// read one shared copy of the padded input.
fn run_per_group(
    plan: &Plan,
    kernel: Kernel,
    images: Images,
    w: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let plane = plan.out_h * plan.out_w;
    let layout = PhaseLayout::new(plan);
    let starts = layout.tap_starts(plan);
    let epilogue = Epilogue {
        plan,
        width: layout.width,
        relu,
    };
    let groups = plan.in_channels / plan.group_in;
    let group_input = plan.group_in * plan.in_h * plan.in_w;
    let taps = starts.len();
    let blocked = kernel != Kernel::Portable;
    let parts = task_parts(plan, groups, blocked);
    let task_channels = plan.group_out / parts;
    let shared = (parts > 1).then(|| shared_phases(plan, &layout, images, groups));
    out.par_chunks_mut(task_channels * plane)
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (index, out_task)| {
            let (group_index, part) = (index / parts, index % parts);
            let data: &[f32] = match &shared {
                Some(phases) => &phases[group_index * plan.group_in * layout.channel..],
                None => {
                    let input =
                        images.part(group_index / groups, group_index % groups, group_input);
                    layout.fill(plan, input, &mut scratch.phases);
                    &scratch.phases
                }
            };
            let first = (group_index % groups) * plan.group_out + part * task_channels;
            if blocked {
                let vectors = block_vectors(plan, &layout, kernel.lanes());
                let padded_run = layout.padded_run(plan, kernel.lanes() * vectors);
                scratch.acc.resize(BLOCK_CHANNELS * padded_run, 0.0);
                for (block, out_block) in out_task.chunks_mut(BLOCK_CHANNELS * plane).enumerate() {
                    let o = first + block * BLOCK_CHANNELS;
                    let weights = &w[o * taps..][..BLOCK_CHANNELS * taps];
                    kernel.accumulate_block(
                        vectors,
                        data,
                        &starts,
                        weights,
                        padded_run,
                        &mut scratch.acc,
                    );
                    for (c, out_plane) in out_block.chunks_mut(plane).enumerate() {
                        let acc = &scratch.acc[c * padded_run..][..padded_run];
                        epilogue.store(acc, bias[o + c], out_plane);
                    }
                }
            } else {
                let padded_run = layout.padded_run(plan, CHUNK);
                scratch.acc.resize(padded_run, 0.0);
                for (c, out_plane) in out_task.chunks_mut(plane).enumerate() {
                    let o = first + c;
                    let weights = &w[o * taps..][..taps];
                    accumulate(data, &starts, weights, &mut scratch.acc);
                    epilogue.store(&scratch.acc[..padded_run], bias[o], out_plane);
                }
            }
        });
}

/// Tasks each (image, group)'s output channels are split into: the fewest that split them into
/// whole kernel blocks and make at least [`TASKS_PER_THREAD`] tasks a thread over the batch's
/// groups; one task a block where even that is too few.
fn task_parts(plan: &Plan, groups: usize, blocked: bool) -> usize {
    // Output channels of a task: the group's, or a part of them in whole kernel blocks.
    let unit = if blocked { BLOCK_CHANNELS } else { 1 };
    let units = plan.group_out / unit;
    let wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    (1..=units)
        .filter(|&p| units.is_multiple_of(p))
        .find(|p| plan.batch * groups * p >= wanted)
        .unwrap_or(units)
}

/// The padded, phase-split input of every (image, group), one after another with [`SLACK`] after
/// the last, for the tasks that split a group's output channels to read.
fn shared_phases(plan: &Plan, layout: &PhaseLayout, images: Images, groups: usize) -> Vec<f32> {
    let group_input = plan.group_in * plan.in_h * plan.in_w;
    let mut phases = vec![0f32; plan.batch * groups * plan.group_in * layout.channel + SLACK];
    phases
        .par_chunks_mut(plan.group_in * layout.channel)
        .take(plan.batch * groups)
        .enumerate()
        .for_each(|(index, dst)| {
            let src = images.part(index / groups, index % groups, group_input);
            layout.fill_into(plan, src, dst)
        });
    phases
}

#[cfg(test)]
mod tests {
    use super::super::isa::FORCED_KERNEL;
    use super::*;
    use burn::tensor::activation::relu;
    use burn::tensor::module::conv2d;
    use burn::tensor::{Device, Distribution};

    /// (in, out, groups, kernel, stride, dilation, pads, h, w)
    #[allow(clippy::type_complexity)]
    const CASES: [(
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [(usize, usize); 2],
        usize,
        usize,
    ); 18] = [
        (8, 8, 4, 3, 1, 1, [(1, 1), (1, 1)], 9, 7),
        (8, 16, 4, 3, 2, 1, [(1, 1), (1, 1)], 9, 8),
        (8, 8, 2, 3, 1, 2, [(2, 2), (2, 2)], 7, 10),
        (12, 6, 3, 5, 2, 1, [(1, 2), (2, 2)], 11, 6),
        (4, 8, 1, 3, 1, 1, [(0, 0), (0, 0)], 5, 5),
        (6, 6, 6, 3, 3, 2, [(0, 1), (1, 0)], 13, 12),
        (4, 4, 2, 3, 1, 1, [(1, 1), (1, 1)], 1, 1),
        // the ResNet stem's shape, smaller
        (3, 16, 1, 7, 2, 1, [(3, 3), (3, 3)], 23, 21),
        (64, 64, 32, 3, 1, 2, [(2, 2), (2, 2)], 7, 7),
        (32, 32, 1, 1, 1, 1, [(0, 0), (0, 0)], 6, 5),
        // dense convs with more than 4 channels on maps of more than 64 positions: one GEMM
        // per tap, in bands of output rows (several per image at batch 1)
        (8, 12, 1, 3, 2, 2, [(2, 2), (2, 2)], 19, 17),
        (16, 8, 1, 3, 1, 1, [(1, 1), (1, 1)], 9, 11),
        (6, 8, 1, 5, 1, 1, [(1, 3), (2, 2)], 12, 10),
        // 1x1 convs: with AVX-512 the pointwise kernel (here: partial register blocks of rows
        // and of positions, two bands of positions), otherwise one GEMM per image, on one
        // thread (batch 2) or split (batch 1)
        (24, 40, 1, 1, 1, 1, [(0, 0), (0, 0)], 7, 9),
        (40, 24, 1, 1, 1, 1, [(0, 0), (0, 0)], 9, 7),
        (20, 13, 1, 1, 1, 1, [(0, 0), (0, 0)], 19, 17),
        // strided 1x1 convs (projection shortcuts): the subsampled input's 1x1 conv
        (16, 24, 1, 1, 2, 1, [(0, 0), (0, 0)], 9, 8),
        (8, 8, 1, 1, 3, 1, [(0, 0), (0, 0)], 7, 7),
    ];

    /// Compares with burn's convolution (and ReLU) over strides, dilations, groups, kernel sizes
    /// and asymmetric (Keras 'same') padding, on odd sizes; through each kernel this CPU has (the
    /// blocked ones where output channels a group are a multiple of 4), with per-group and shared padded
    /// inputs (few groups: the output channels are split over tasks), as one GEMM per tap, and as
    /// one GEMM (1x1 convs); each also as a residual block's ending, `relu(conv + residual)`.
    #[test]
    fn matches_burn_conv2d() {
        let device = Device::flex();
        let best = Kernel::best();
        let kernels = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|&k| k == Kernel::Portable || k == best || best == Kernel::Avx512);
        for kernel in kernels {
            FORCED_KERNEL.set(Some(kernel));
            check_cases(&device, kernel);
        }
        FORCED_KERNEL.set(None);
    }

    fn check_cases(device: &Device, kernel: Kernel) {
        for (n, (cin, cout, g, k, s, d, pads, h, w)) in CASES.into_iter().enumerate() {
            let batch = 1 + n % 2;
            // Two cases in three read a window of a larger input's channels, in place.
            let extra = if n % 3 == 0 { 0 } else { 5 };
            let x = Tensor::<4>::random(
                [batch, cin + extra, h, w],
                Distribution::Normal(0.0, 1.0),
                device,
            )
            .narrow(1, extra.min(1), cin);
            let wt = Tensor::<4>::random(
                [cout, cin / g, k, k],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let bias = Tensor::<1>::random([cout], Distribution::Normal(0.0, 1.0), device);
            let options = ConvOptions::new_with_padding([s, s], pads, [d, d], g);
            let conv = conv2d(x.clone(), wt.clone(), Some(bias.clone()), options.clone());
            let with_relu = n % 2 == 1;
            let expected = if with_relu {
                relu(conv.clone())
            } else {
                conv.clone()
            };
            let got = conv2d_direct(
                x.clone(),
                wt.clone(),
                Some(bias.clone()),
                options.clone(),
                with_relu,
            );
            assert_eq!(got.dims(), expected.dims(), "{kernel:?} case {n}");
            let err: f32 = (got - expected).abs().max().into_scalar();
            assert!(err < 1e-4, "{kernel:?} case {n}: max difference {err}");
            // The same conv ending a residual block (fused into the 1x1 kernel's stores).
            let residual = Tensor::<4>::random(conv.dims(), Distribution::Normal(0.0, 1.0), device);
            let expected = relu(conv + residual.clone());
            let got = conv2d_direct_add_relu(x, wt, Some(bias), residual, options);
            let err: f32 = (got - expected).abs().max().into_scalar();
            assert!(
                err < 1e-4,
                "{kernel:?} case {n} + residual: max difference {err}"
            );
        }
    }
}
