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
//! - Dense 1x1 convs read the input as it is: with AVX-512 through `layers/pointwise.rs`,
//!   otherwise as one GEMM per image.
//! - The bias (a folded BatchNorm's shift) and an optional ReLU are applied as the results are
//!   stored, so conv + BN + ReLU is one pass over the output.
//!
//! It is a Flex backend extension, so it reads burn-flex's buffers in place, a window of a
//! tensor's channels too (the SK unit's split input: see [`Images`]). It computes forward
//! passes only: inference (see [`Conv2d::forward`](crate::layers::Conv2d::forward)) and the forward half
//! of CPU training's convs ([`super::backward`]). The GPU backends keep burn's convolution.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::gemm_strided;

/// Everything the kernel needs besides the data.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) batch: usize,
    pub(super) in_channels: usize,
    pub(super) in_h: usize,
    pub(super) in_w: usize,
    pub(super) out_channels: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    pub(super) group_in: usize,
    pub(super) group_out: usize,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) dilation: usize,
    /// (begin, end) padding of height and width.
    pub(super) pads: [(usize, usize); 2],
}

/// A conv's input as the kernels read it: image `n` is the `image_len` values from
/// `n * image_stride` of `data`. Besides a contiguous tensor, this is a window of the channels of
/// a contiguous one (what `narrow(1, ..)` makes: the SK unit's split input), read in place
/// instead of copied.
#[derive(Debug, Clone, Copy)]
pub(super) struct Images<'a> {
    data: &'a [f32],
    image_stride: usize,
    image_len: usize,
}

impl<'a> Images<'a> {
    /// The images of `x` (`[batch, channels, h, w]`, f32) where `x` is contiguous or a channel
    /// window of a contiguous tensor; `None` for other layouts.
    pub(super) fn of(x: &'a FlexTensor) -> Option<Self> {
        let layout = x.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        if x.dtype() != DType::F32 || shape.num_dims() != 4 {
            return None;
        }
        let [batch, channels, h, w] = [shape[0], shape[1], shape[2], shape[3]];
        let image_len = channels * h * w;
        let inner = [(h * w) as isize, w as isize, 1];
        // Strides of size-1 dims do not matter (and views may set them to anything).
        let inner_ok = (1..4).all(|d| shape[d] == 1 || strides[d] == inner[d - 1]);
        let image_stride = match (batch, strides[0]) {
            (1, _) => image_len,
            (_, s) if s >= image_len as isize => s as usize,
            _ => return None,
        };
        let start = layout.start_offset();
        let end = start + batch.saturating_sub(1) * image_stride + image_len;
        let storage = x.storage::<f32>();
        (inner_ok && end <= storage.len()).then(|| Self {
            data: &storage[start..end],
            image_stride,
            image_len,
        })
    }

    /// Image `n`'s `part`-th run of `len` values (a group's channels when `len` is its size).
    pub(super) fn part(&self, n: usize, part: usize, len: usize) -> &'a [f32] {
        debug_assert!((part + 1) * len <= self.image_len);
        &self.data[n * self.image_stride + part * len..][..len]
    }

    /// The images one after another: the data itself when they are, else a copy.
    pub(super) fn compact(&self) -> std::borrow::Cow<'a, [f32]> {
        if self.image_stride == self.image_len {
            std::borrow::Cow::Borrowed(self.data)
        } else {
            std::borrow::Cow::Owned(
                self.data
                    .chunks(self.image_stride)
                    .flat_map(|image| &image[..self.image_len])
                    .copied()
                    .collect(),
            )
        }
    }
}

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
            return <Flex as crate::cpu::add_relu::AddReluOps>::add_relu(out, residual);
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

/// A new output tensor of `plan`'s shape computed by `kernel(images, bias, out)`: the input
/// read in place where it is contiguous or a channel window (the SK unit's split input), copied
/// otherwise.
///
/// # Safety
/// `kernel` writes every element of `out`, which starts uninitialized
/// ([`super::output_buffer`]).
pub(super) unsafe fn conv_output(
    plan: &Plan,
    x: FlexTensor,
    bias: FlexTensor,
    kernel: impl FnOnce(Images, &[f32], &mut [f32]),
) -> FlexTensor {
    let x = if Images::of(&x).is_some() {
        x
    } else {
        x.to_contiguous()
    };
    let bias = bias.to_contiguous();
    let mut out = super::output_buffer(plan.batch * plan.out_channels * plan.out_h * plan.out_w);
    kernel(
        Images::of(&x).expect("contiguous f32"),
        bias.as_slice::<f32>().expect("contiguous f32"),
        &mut out,
    );
    FlexTensor::from_data(TensorData::new(
        out,
        Shape::new([plan.batch, plan.out_channels, plan.out_h, plan.out_w]),
    ))
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

impl Plan {
    /// The plan of `conv2d(x, w, options)` (shapes `x` and `w`) where the kernels apply: square
    /// kernel, stride and dilation (all that sknet's layers make), and a padded input that holds
    /// at least one window. `None` otherwise.
    pub(super) fn checked(x: &[usize], w: &[usize], options: &ConvOptions<2>) -> Option<Self> {
        let square = w[2] == w[3]
            && options.stride[0] == options.stride[1]
            && options.dilation[0] == options.dilation[1];
        let span = options.dilation[0] * (w[2].max(1) - 1) + 1;
        let fits = (0..2).all(|i| x[2 + i] + options.padding[i].0 + options.padding[i].1 >= span);
        (square && fits).then(|| Self::new(x, w, options))
    }

    fn new(x: &[usize], w: &[usize], options: &ConvOptions<2>) -> Self {
        let (stride, dilation) = (options.stride[0], options.dilation[0]);
        let kernel = w[2];
        let span = dilation * (kernel - 1) + 1;
        let out_len = |len: usize, (a, b): (usize, usize)| (len + a + b - span) / stride + 1;
        Plan {
            batch: x[0],
            in_channels: x[1],
            in_h: x[2],
            in_w: x[3],
            out_channels: w[0],
            out_h: out_len(x[2], options.padding[0]),
            out_w: out_len(x[3], options.padding[1]),
            group_in: w[1],
            group_out: w[0] / options.groups,
            kernel,
            stride,
            dilation,
            pads: options.padding,
        }
    }
}

/// Where the zero-padded input of one group lives, split for a stride `s > 1` into its `s * s`
/// phases: `phase[py][px][i][j] = padded[i * s + py][j * s + px]`. Every kernel tap then reads one
/// contiguous run of a phase plane, whatever the stride, dilation or padding.
#[derive(Debug, Clone, Copy)]
pub(super) struct PhaseLayout {
    /// Rows of a phase plane.
    height: usize,
    /// Columns of a phase plane: the row pitch of every run computed over it.
    pub(super) width: usize,
    /// Floats of one input channel's phases.
    pub(super) channel: usize,
}

impl PhaseLayout {
    pub(super) fn new(plan: &Plan) -> Self {
        let s = plan.stride;
        let padded_h = plan.in_h + plan.pads[0].0 + plan.pads[0].1;
        let padded_w = plan.in_w + plan.pads[1].0 + plan.pads[1].1;
        let (height, width) = (padded_h.div_ceil(s), padded_w.div_ceil(s));
        Self {
            height,
            width,
            channel: s * s * height * width,
        }
    }

    /// The output positions computed per output channel: every output row, with the phase plane's
    /// extra columns in between, rounded up to whole blocks of `block` (the phase buffer has
    /// [`SLACK`] floats after the last channel for them).
    fn padded_run(&self, plan: &Plan, block: usize) -> usize {
        let run = (plan.out_h - 1) * self.width + plan.out_w;
        let padded = run.div_ceil(block) * block;
        debug_assert!(padded - run <= SLACK);
        padded
    }

    /// Writes the phases of `input` (one group's channels) into `phases`, padding included,
    /// with [`SLACK`] zeros after them. `phases` is empty or holds an earlier fill with this
    /// layout (a per-thread buffer reused across the tasks of one conv): `fill_into` writes only
    /// input positions, so the padding of an earlier fill is still zero and is not cleared again
    /// (clearing whole buffers was 2 to 5% of a training step).
    pub(super) fn fill(&self, plan: &Plan, input: &[f32], phases: &mut Vec<f32>) {
        let len = plan.group_in * self.channel + SLACK;
        if phases.len() != len {
            phases.clear();
            phases.resize(len, 0.0);
        }
        self.fill_into(plan, input, phases);
    }

    /// Writes the phases of `input` into `phases`, which holds zeros where the padding goes.
    fn fill_into(&self, plan: &Plan, input: &[f32], phases: &mut [f32]) {
        let s = plan.stride;
        let (pad_top, pad_left) = (plan.pads[0].0, plan.pads[1].0);
        let phase_plane = self.height * self.width;
        let in_plane = plan.in_h * plan.in_w;
        for (channel, input) in phases.chunks_mut(self.channel).zip(input.chunks(in_plane)) {
            for (y, row) in input.chunks(plan.in_w).enumerate() {
                if s == 1 {
                    let start = (y + pad_top) * self.width + pad_left;
                    channel[start..start + plan.in_w].copy_from_slice(row);
                    continue;
                }
                let (i, py) = ((y + pad_top) / s, (y + pad_top) % s);
                if s == 2 {
                    // Even columns land in phase column pad_left % 2 from column pad_left / 2,
                    // odd ones in the other phase from (pad_left + 1) / 2: one pass over the row
                    // as pairs, which vectorizes (the general loop below is a scalar strided
                    // copy, and was most of a stride-2 grouped conv's time).
                    let start =
                        |px: usize, j0: usize| (py * 2 + px) * phase_plane + i * self.width + j0;
                    let even = start(pad_left % 2, pad_left / 2);
                    let odd = start((pad_left + 1) % 2, (pad_left + 1) / 2);
                    let (evens, odds) = (plan.in_w.div_ceil(2), plan.in_w / 2);
                    // The two runs lie in different phase planes.
                    let (low, high) = channel.split_at_mut(even.max(odd));
                    let (e, o) = if even < odd {
                        (&mut low[even..even + evens], &mut high[..odds])
                    } else {
                        (&mut high[..evens], &mut low[odd..odd + odds])
                    };
                    for ((pair, e), o) in row.chunks_exact(2).zip(e.iter_mut()).zip(o.iter_mut()) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                    if evens > odds {
                        e[odds] = row[plan.in_w - 1];
                    }
                    continue;
                }
                for px in 0..s {
                    // First input column that lands in phase column px.
                    let x0 = (px + s - pad_left % s) % s;
                    let j0 = (x0 + pad_left) / s;
                    let start = (py * s + px) * phase_plane + i * self.width + j0;
                    let values = row.iter().skip(x0).step_by(s);
                    for (dst, &value) in channel[start..].iter_mut().zip(values) {
                        *dst = value;
                    }
                }
            }
        }
    }

    /// Where each (input channel, kernel tap) of a group starts its run in the group's phases, in
    /// the weights' order (channel, then tap row, then tap column).
    pub(super) fn tap_starts(&self, plan: &Plan) -> Vec<usize> {
        let (k, s, d) = (plan.kernel, plan.stride, plan.dilation);
        let phase_plane = self.height * self.width;
        let mut starts = Vec::with_capacity(plan.group_in * k * k);
        for i in 0..plan.group_in {
            for ky in 0..k {
                let (dy, py) = ((ky * d) / s, (ky * d) % s);
                for kx in 0..k {
                    let (dx, px) = ((kx * d) / s, (kx * d) % s);
                    starts.push(
                        i * self.channel + (py * s + px) * phase_plane + dy * self.width + dx,
                    );
                }
            }
        }
        starts
    }
}

/// Floats after the last phase channel: room for the whole blocks the kernels compute past the
/// end of a run (at most 47 with the AVX-512 kernel, 63 with the portable one).
const SLACK: usize = CHUNK;

/// Per-thread buffers of [`run`].
#[derive(Default)]
struct Scratch {
    phases: Vec<f32>,
    acc: Vec<f32>,
}

/// Input channels up to which a dense (one-group) conv goes through the AVX2 blocked kernel
/// rather than one GEMM per tap: the ResNet stem (3 channels, 7x7) took 3x less time there. Dense
/// 3x3 convs with 32 to 256 channels on maps of 14x14 and more took 1.1 to 1.6x less time as GEMMs
/// than in burn-flex, and less than in the AVX2 kernel (`examples/grouped_conv.rs`, and per layer
/// in skresnet18). The AVX-512 kernel beat the GEMMs on all of skresnet18's dense convs, at batch 1
/// (1.1 to 2x) and 8 (up to 1.3x), and takes them all.
const DENSE_BLOCKED_MAX_CHANNELS: usize = 4;
/// Output positions a channel up to which dense convs go through the blocked kernel anyway: on 7x7
/// maps the GEMMs have little to work on per pass over the weights, which are large there (256 to
/// 512 channels) and are read once per tap; the blocked kernel reads them once. In skresnet18 at
/// batch 1, 1.4x less time than per-tap GEMMs (AVX2).
const DENSE_BLOCKED_MAX_PLANE: usize = 64;

/// Tasks the work is cut into at least, per thread, so that threads finish together.
const TASKS_PER_THREAD: usize = 4;

/// One task per (image, group) when there are enough of them: the group's input is padded (and
/// phase-split) into a small per-thread buffer that stays in cache while all of the group's output
/// channels are computed from it, so the input makes one trip through memory. With few groups
/// (dense convs, small batches), each group's output channels are split over several tasks, which
/// read one shared copy of the padded input.
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
        // A strided 1x1 conv (the projection shortcut) is a 1x1 conv of the subsampled input.
        // SAFETY: each channel's plane is written from every stride-th row and column.
        let mut subsampled =
            unsafe { super::output_buffer(x.len() / (plan.in_h * plan.in_w) * plane) };
        subsampled
            .par_chunks_mut(plane)
            .zip(x.par_chunks(plan.in_h * plan.in_w))
            .for_each(|(dst, channel)| {
                let rows = channel.chunks(plan.in_w).step_by(plan.stride);
                let values = rows.flat_map(|row| row.iter().step_by(plan.stride));
                for (d, &v) in dst.iter_mut().zip(values) {
                    *d = v;
                }
            });
        let plan = Plan {
            in_h: plan.out_h,
            in_w: plan.out_w,
            stride: 1,
            ..*plan
        };
        return run_pointwise(&plan, &subsampled, w, bias, relu, out);
    }
    let kernel = Kernel::for_plan(plan);
    if dense
        && kernel != Kernel::Avx512
        && plan.group_in > DENSE_BLOCKED_MAX_CHANNELS
        && plane > DENSE_BLOCKED_MAX_PLANE
    {
        return run_tapwise_gemm(plan, &images.compact(), w, bias, relu, out);
    }
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
    // Output channels of a task: the group's, or a part of them in whole kernel blocks.
    let unit = if blocked { BLOCK_CHANNELS } else { 1 };
    let units = plan.group_out / unit;
    let wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    let parts = (1..=units)
        .filter(|&p| units.is_multiple_of(p))
        .find(|p| plan.batch * groups * p >= wanted)
        .unwrap_or(units);
    let task_channels = plan.group_out / parts;
    let shared = (parts > 1).then(|| {
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
    });
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

/// A dense conv as one GEMM per kernel tap, accumulated: `acc[o][j] += sum over input channels i
/// of w[o][i][tap] * phases[i][start(tap) + j]`. The padded, phase-split input is the GEMM's
/// right-hand side as it is (rows one channel apart), so there is no im2col copy and no layout
/// change. Threads split the work by images and bands of output rows, not inside the GEMMs: one
/// synchronisation per conv instead of one per tap.
fn run_tapwise_gemm(plan: &Plan, x: &[f32], w: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    let plane = plan.out_h * plan.out_w;
    let layout = PhaseLayout::new(plan);
    let kk = plan.kernel * plan.kernel;
    // The start of each tap's run in channel 0: the first `kk` tap starts.
    let starts: Vec<usize> = layout.tap_starts(plan).into_iter().take(kk).collect();
    let epilogue = Epilogue {
        plan,
        width: layout.width,
        relu,
    };
    let in_plane = plan.in_h * plan.in_w;
    let (m, k) = (plan.out_channels, plan.in_channels);
    let image_phases = plan.in_channels * layout.channel;
    let mut phases = vec![0f32; plan.batch * image_phases + SLACK];
    phases[..plan.batch * image_phases]
        .par_chunks_mut(layout.channel)
        .zip(x.par_chunks(in_plane))
        .for_each(|(dst, src)| layout.fill_into(plan, src, dst));
    // Tasks are bands of output rows of an image, enough of them to keep every thread busy; each
    // runs its GEMMs on one thread into its own buffer.
    let wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    let bands = wanted.div_ceil(plan.batch).clamp(1, plan.out_h);
    let band_rows = plan.out_h.div_ceil(bands);
    let bands = plan.out_h.div_ceil(band_rows);
    // The run of output rows [r0, r1): the last row ends at its last output column.
    let band_run = |band: usize| {
        let (r0, r1) = (band * band_rows, ((band + 1) * band_rows).min(plan.out_h));
        (r0, r1, (r1 - r0 - 1) * layout.width + plan.out_w)
    };
    let accs: Vec<Vec<f32>> = (0..plan.batch * bands)
        .into_par_iter()
        .map(|task| {
            let (image, band) = (task / bands, task % bands);
            let (r0, _, n) = band_run(band);
            let offset = image * image_phases + r0 * layout.width;
            let mut acc = vec![0f32; m * n];
            for (tap, &start) in starts.iter().enumerate() {
                gemm_strided(
                    [m, n, k],
                    &mut acc,
                    [n, 1],
                    tap > 0,
                    &w[tap..],
                    [k * kk, kk],
                    &phases[offset + start..],
                    [layout.channel, 1],
                    gemm::Parallelism::None,
                );
            }
            acc
        })
        .collect();
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(index, out_plane)| {
            let (image, o) = (index / m, index % m);
            for band in 0..bands {
                let (r0, r1, n) = band_run(band);
                let acc = &accs[image * bands + band][o * n..][..n];
                let rows = &mut out_plane[r0 * plan.out_w..r1 * plan.out_w];
                epilogue.store(acc, bias[o], rows);
            }
        });
}

/// A dense 1x1 conv: per image, `out = w · x` with `x` as `[in_channels, positions]`, as it is.
/// With AVX-512, [`super::pointwise`] computes it with the bias and ReLU. Otherwise it is a GEMM
/// straight into the output, then the bias (and the ReLU) added in one pass: no zeroed
/// buffer and no separate bias and activation passes. With an image per thread or more, each
/// image's GEMM runs on one thread and its epilogue follows while the output is in cache; with
/// fewer images, the GEMM itself is split over the threads (splitting the output channels
/// instead made every thread pack the whole input).
fn run_pointwise(plan: &Plan, x: &[f32], w: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    let plane = plan.out_h * plan.out_w;
    let (m, k) = (plan.out_channels, plan.in_channels);
    if Kernel::chosen() == Kernel::Avx512 && super::pointwise::available() {
        let finish = super::pointwise::Finish {
            bias,
            residual: None,
            relu,
        };
        return super::pointwise::pointwise(plan.batch, [m, k, plane], x, w, finish, out);
    }
    let store = |out_image: &mut [f32], parallel: bool| {
        let epilogue = |(o, row): (usize, &mut [f32])| {
            let shift = bias[o];
            if relu {
                row.iter_mut().for_each(|v| *v = (*v + shift).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += shift);
            }
        };
        if parallel {
            out_image
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(epilogue);
        } else {
            out_image.chunks_mut(plane).enumerate().for_each(epilogue);
        }
    };
    let gemm = |image: &[f32], out_image: &mut [f32], parallelism| {
        gemm_strided(
            [m, plane, k],
            out_image,
            [plane, 1],
            false,
            w,
            [k, 1],
            image,
            [plane, 1],
            parallelism,
        );
    };
    if plan.batch >= rayon::current_num_threads() {
        let images = x.par_chunks(k * plane).zip(out.par_chunks_mut(m * plane));
        images.for_each(|(image, out_image)| {
            gemm(image, out_image, gemm::Parallelism::None);
            store(out_image, false);
        });
    } else {
        for (image, out_image) in x.chunks(k * plane).zip(out.chunks_mut(m * plane)) {
            gemm(image, out_image, gemm::Parallelism::Rayon(0));
            store(out_image, true);
        }
    }
}

/// What happens to a computed run on its way to the output.
struct Epilogue<'a> {
    plan: &'a Plan,
    /// The run's row pitch: the phase plane's width.
    width: usize,
    relu: bool,
}

impl Epilogue<'_> {
    /// Copies a run computed over the phase plane's width into an output plane, dropping the
    /// extra columns between rows, adding the bias and applying the ReLU if any.
    fn store(&self, acc: &[f32], shift: f32, out_plane: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::pointwise::available() {
            // SAFETY: AVX-512 was detected.
            return unsafe { self.store_avx512(acc, shift, out_plane) };
        }
        self.store_any(acc, shift, out_plane)
    }

    /// [`Self::store`] with AVX-512 vectors, a row's last one masked: the rows of small maps are
    /// too short for the compiler's vector loops (a 14x14 map's rows went all scalar), and the
    /// stores took a fifth as long as the grouped convs' FMAs.
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_avx512(&self, acc: &[f32], shift: f32, out_plane: &mut [f32]) {
        use std::arch::x86_64::*;
        let (out_w, width) = (self.plan.out_w, self.width);
        let rows = out_plane.len() / out_w.max(1);
        assert!(out_w <= width && rows * out_w == out_plane.len());
        assert!(rows == 0 || (rows - 1) * width + out_w <= acc.len());
        let (shift, zero) = (_mm512_set1_ps(shift), _mm512_setzero_ps());
        for y in 0..rows {
            let (src, dst) = (
                acc.as_ptr().add(y * width),
                out_plane.as_mut_ptr().add(y * out_w),
            );
            let mut x = 0;
            while x < out_w {
                let n = (out_w - x).min(16);
                let mask: __mmask16 = if n == 16 { 0xffff } else { (1 << n) - 1 };
                let mut v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, src.add(x)), shift);
                if self.relu {
                    v = _mm512_max_ps(v, zero);
                }
                _mm512_mask_storeu_ps(dst.add(x), mask, v);
                x += 16;
            }
        }
    }

    #[inline(always)]
    fn store_any(&self, acc: &[f32], shift: f32, out_plane: &mut [f32]) {
        let rows = out_plane
            .chunks_mut(self.plan.out_w)
            .zip(acc.chunks(self.width));
        if self.relu {
            for (dst, src) in rows {
                for (d, &v) in dst.iter_mut().zip(src) {
                    // A plain compare: one vector instruction (`f32::max` adds a NaN test, and
                    // a NaN gives 0 either way).
                    let v = v + shift;
                    *d = if v > 0.0 { v } else { 0.0 };
                }
            }
        } else {
            for (dst, src) in rows {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v + shift;
                }
            }
        }
    }
}

/// Outputs of one channel computed together by the portable kernel, in registers, before they
/// are stored: eight AVX vectors, enough independent chains to hide the FMA latency.
const CHUNK: usize = 64;

/// The portable kernel, one output channel at a time:
/// `acc[j] = sum over taps t of weights[t] * data[starts[t] + j]`, a chunk at a time (each chunk
/// stays in registers across all the taps and is stored once). Used without AVX2/FMA and for
/// groups whose output channels are not a multiple of [`BLOCK_CHANNELS`].
fn accumulate(data: &[f32], starts: &[usize], weights: &[f32], acc: &mut [f32]) {
    for (j, chunk) in acc.chunks_exact_mut(CHUNK).enumerate() {
        let mut sum = [0f32; CHUNK];
        for (&start, &weight) in starts.iter().zip(weights) {
            let src: &[f32; CHUNK] = data[start + j * CHUNK..][..CHUNK]
                .try_into()
                .expect("a chunk");
            for q in 0..CHUNK {
                sum[q] += weight * src[q];
            }
        }
        chunk.copy_from_slice(&sum);
    }
}

/// Output channels computed together by the blocked kernel: each input vector it loads feeds this
/// many FMAs.
const BLOCK_CHANNELS: usize = 4;

/// The kernels for [`run`]'s per-group path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// One output channel at a time, in whatever the compiler makes of it.
    Portable,
    /// [`BLOCK_CHANNELS`] output channels at a time in AVX2 registers.
    Avx2,
    /// The same in AVX-512 registers: half the instructions and loads of [`Kernel::Avx2`] for the
    /// same FMAs. On the 2-core AMD machine of BENCHMARKS.md, 1.5 to 2x less time for
    /// skresnext50's grouped convs and the stem than the AVX2 kernel.
    Avx512,
}

#[cfg(test)]
thread_local! {
    /// Tests run every kernel the CPU has, not only the best.
    pub(super) static FORCED_KERNEL: std::cell::Cell<Option<Kernel>> = const { std::cell::Cell::new(None) };
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(super) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// [`Kernel::best`], or in tests the kernel a test forces.
    pub(super) fn chosen() -> Self {
        #[cfg(test)]
        return FORCED_KERNEL.get().unwrap_or_else(Kernel::best);
        #[cfg(not(test))]
        Kernel::best()
    }

    /// The kernel for `plan`: the blocked ones need whole blocks of output channels a group.
    pub(super) fn for_plan(plan: &Plan) -> Self {
        let best = Kernel::chosen();
        if plan.group_out.is_multiple_of(BLOCK_CHANNELS) {
            best
        } else {
            Kernel::Portable
        }
    }

    /// Floats a vector register holds.
    pub(super) fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => 16,
            _ => 8,
        }
    }

    /// `acc[c][j] = sum over taps t of weights[c][t] * data[starts[t] + j]` for the block's
    /// channels, through this (blocked) kernel with `vectors` registers a channel.
    fn accumulate_block(
        self,
        vectors: usize,
        data: &[f32],
        starts: &[usize],
        weights: &[f32],
        padded_run: usize,
        acc: &mut [f32],
    ) {
        // SAFETY: `Kernel::best` found these instruction sets on this CPU (the blocked kernels
        // are only chosen through it); the kernels check their bounds themselves.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (self, vectors) {
                (Kernel::Avx512, 1) => avx512::<1>(data, starts, weights, padded_run, acc),
                (Kernel::Avx512, 2) => avx512::<2>(data, starts, weights, padded_run, acc),
                (Kernel::Avx512, _) => avx512::<3>(data, starts, weights, padded_run, acc),
                (_, 1) => avx2::<1>(data, starts, weights, padded_run, acc),
                (_, 2) => avx2::<2>(data, starts, weights, padded_run, acc),
                (_, _) => avx2::<3>(data, starts, weights, padded_run, acc),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (vectors, data, starts, weights, padded_run, acc);
            unreachable!("{self:?} is an x86-64 kernel, chosen only there");
        }
    }
}

/// Vector registers of outputs per channel that the blocked kernels hold: 3 (with
/// [`BLOCK_CHANNELS`], 12 accumulators, 3 input vectors and a broadcast weight fill AVX2's 16
/// registers) unless the output is so small that rounding its run up to whole blocks wastes more
/// than fewer vectors cost (7x7 maps: a run of 61 or 73 outputs).
fn block_vectors(plan: &Plan, layout: &PhaseLayout, lanes: usize) -> usize {
    // Relative cost per output of 1 and 2 vectors: more loads per FMA.
    let cost =
        |vectors: usize, factor: f64| layout.padded_run(plan, lanes * vectors) as f64 * factor;
    [(3, 1.0), (2, 1.1), (1, 1.35)]
        .into_iter()
        .min_by(|a, b| cost(a.0, a.1).total_cmp(&cost(b.0, b.1)))
        .map_or(3, |(vectors, _)| vectors)
}

/// Defines a blocked kernel for one instruction set: [`BLOCK_CHANNELS`] output channels of one
/// group at a time, which share their input taps.
/// `acc[c][j] = sum over taps t of weights[c][t] * data[starts[t] + j]`, for `j` in whole blocks
/// of `LANES * VECTORS` up to `padded_run`: per tap, `VECTORS` input vectors and four broadcast
/// weights feed `4 * VECTORS` FMAs into accumulators that stay in registers across all taps. (The
/// portable kernel does one load per FMA and is bound by loads.)
macro_rules! blocked_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        #[doc = concat!("The CPU must have ", $features, ". (Sizes are checked.)")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const VECTORS: usize>(
            data: &[f32],
            starts: &[usize],
            weights: &[f32],
            padded_run: usize,
            acc: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            let taps = starts.len();
            let block = $lanes * VECTORS;
            assert!(weights.len() == taps * BLOCK_CHANNELS);
            assert!(acc.len() >= BLOCK_CHANNELS * padded_run && padded_run.is_multiple_of(block));
            assert!(starts.iter().all(|&s| s + padded_run <= data.len()));
            let src = data.as_ptr();
            let dst = acc.as_mut_ptr();
            for j in (0..padded_run).step_by(block) {
                let mut sum = [[$zero(); VECTORS]; BLOCK_CHANNELS];
                for (t, &start) in starts.iter().enumerate() {
                    let p = src.add(start + j);
                    let mut v = [$zero(); VECTORS];
                    for (q, v) in v.iter_mut().enumerate() {
                        *v = $load(p.add($lanes * q));
                    }
                    let wt = weights.as_ptr().add(t);
                    for (c, row) in sum.iter_mut().enumerate() {
                        let weight = $splat(*wt.add(c * taps));
                        for (s, &value) in row.iter_mut().zip(&v) {
                            *s = $fma(weight, value, *s);
                        }
                    }
                }
                for (c, row) in sum.iter().enumerate() {
                    for (q, &s) in row.iter().enumerate() {
                        $store(dst.add(c * padded_run + j + $lanes * q), s);
                    }
                }
            }
        }
    };
}

blocked_kernel!(
    /// The blocked kernel in AVX2 registers (8 floats).
    avx2, "avx2,fma", 8,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps
);
blocked_kernel!(
    /// The blocked kernel in AVX-512 registers (16 floats).
    avx512, "avx512f", 16,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
);

#[cfg(test)]
mod tests {
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

    /// A channel window of a contiguous tensor is read in place, image by image; other views are
    /// not taken for one.
    #[test]
    fn images_of_channel_windows() {
        let values: Vec<f32> = (0..2 * 5 * 2 * 3).map(|v| v as f32).collect();
        let x = FlexTensor::from_data(TensorData::new(values, Shape::new([2, 5, 2, 3])));
        let window = x.narrow(1, 1, 3);
        let images = Images::of(&window).expect("a channel window");
        // Image 1, channels 1..4 of the full tensor: from 30 + 6.
        let expected: Vec<f32> = (36..54).map(|v| v as f32).collect();
        assert_eq!(images.part(1, 0, 18), expected.as_slice());
        let compact = images.compact();
        assert_eq!(&compact[18..], expected.as_slice());
        for view in [x.transpose(2, 3), x.narrow(2, 1, 1)] {
            assert!(Images::of(&view).is_none());
        }
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
