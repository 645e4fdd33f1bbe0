//! What every conv kernel shares: the conv's geometry ([`Plan`]), its input as the kernels read
//! it ([`Images`]: in place, a channel window too), the zero-padded input split into stride
//! phases ([`PhaseLayout`]), and the output tensor they write ([`conv_output`]).

use burn::backend::flex::FlexTensor;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, TensorData};

/// A conv's geometry: everything the kernels need besides the data.
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
    pub(super) fn padded_run(&self, plan: &Plan, block: usize) -> usize {
        let run = (plan.out_h - 1) * self.width + plan.out_w;
        let padded = run.div_ceil(block) * block;
        debug_assert!(padded - run <= SLACK);
        padded
    }

    /// Writes the phases of `input` (one group's channels) into `phases`, padding included,
    /// with [`SLACK`] zeros after them. `phases` is empty or holds an earlier fill with this
    /// layout (a per-thread buffer reused across the tasks of one conv): `fill_into` writes only
    /// input positions, so the padding of an earlier fill is still zero and is not cleared again
    /// (clearing whole buffers was a measurable part of a training step).
    pub(super) fn fill(&self, plan: &Plan, input: &[f32], phases: &mut Vec<f32>) {
        let len = plan.group_in * self.channel + SLACK;
        if phases.len() != len {
            phases.clear();
            phases.resize(len, 0.0);
        }
        self.fill_into(plan, input, phases);
    }

    /// Writes the phases of `input` into `phases`, which holds zeros where the padding goes.
    pub(super) fn fill_into(&self, plan: &Plan, input: &[f32], phases: &mut [f32]) {
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
                    let odd = start((pad_left + 1) % 2, pad_left.div_ceil(2));
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

/// Outputs of one channel computed together by the portable kernel, in registers, before they
/// are stored: eight AVX vectors, enough independent chains to hide the FMA latency.
pub(super) const CHUNK: usize = 64;

/// Floats after the last phase channel: room for the whole blocks the kernels compute past the
/// end of a run (at most 47 with the AVX-512 kernel, 63 with the portable one).
pub(super) const SLACK: usize = CHUNK;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
