//! The classic im2col + GEMM backward pass of a convolution on the CPU, for the convs and
//! gradients that [`super::backward`] has no direct kernel for: per image and group,
//! `dW_g += dY_g · col(x)_gᵀ` with `col(x)` the unfolded input patches, and
//! `dX_g = col2im(W_gᵀ · dY_g)`.

use rayon::prelude::*;

use super::gemm_strided;

/// Everything about one conv that the backward pass needs, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConvPlan {
    /// Batch size.
    pub(super) batch: usize,
    /// Input channels.
    pub(super) in_channels: usize,
    /// Input height and width.
    pub(super) in_hw: [usize; 2],
    /// Output channels.
    pub(super) out_channels: usize,
    /// Output height and width.
    pub(super) out_hw: [usize; 2],
    /// Kernel height and width.
    pub(super) kernel: [usize; 2],
    /// Stride.
    pub(super) stride: [usize; 2],
    /// Padding before the first row and column (the end padding is implied by `out_hw`).
    pub(super) pad: [usize; 2],
    /// Dilation.
    pub(super) dilation: [usize; 2],
    /// Groups.
    pub(super) groups: usize,
}

impl ConvPlan {
    pub(super) fn group_in(&self) -> usize {
        self.in_channels / self.groups
    }

    pub(super) fn group_out(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Rows of one group's patch matrix: `group_in * kh * kw`.
    fn col_rows(&self) -> usize {
        self.group_in() * self.kernel[0] * self.kernel[1]
    }

    fn in_pixels(&self) -> usize {
        self.in_hw[0] * self.in_hw[1]
    }

    pub(super) fn out_pixels(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }

    /// A 1x1 conv without stride or padding needs no patch matrix: the input is one already.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// The output columns `o` whose input coordinate `o * stride + tap * dilation - pad` lies in
    /// `0..len`, as a range.
    fn valid_outputs(&self, axis: usize, tap: usize) -> std::ops::Range<usize> {
        let offset = (tap * self.dilation[axis]) as isize - self.pad[axis] as isize;
        let stride = self.stride[axis] as isize;
        let len = self.in_hw[axis] as isize;
        let out = self.out_hw[axis] as isize;
        // o * stride + offset >= 0  and  o * stride + offset < len
        let lo = if offset >= 0 {
            0
        } else {
            (-offset + stride - 1) / stride
        };
        let hi = if len - offset <= 0 {
            0
        } else {
            ((len - offset - 1) / stride + 1).min(out)
        };
        (lo.min(out) as usize)..(hi.max(lo.min(out)) as usize)
    }

    /// Unfolds one group of one image, `x` = `[group_in, h, w]`, into
    /// `col[(c * kh + ky) * kw + kx][oy * ow + ox]`, zero where the window reads padding.
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let [oh, ow] = self.out_hw;
        let [h, w] = self.in_hw;
        let pixels = self.out_pixels();
        for c in 0..self.group_in() {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for ky in 0..kh {
                let rows = self.valid_outputs(0, ky);
                for kx in 0..kw {
                    let cols = self.valid_outputs(1, kx);
                    let r = (c * kh + ky) * kw + kx;
                    let dst = &mut col[r * pixels..][..pixels];
                    let x0 = kx * self.dilation[1];
                    for oy in 0..oh {
                        let line = &mut dst[oy * ow..(oy + 1) * ow];
                        if !rows.contains(&oy) || cols.is_empty() {
                            line.fill(0.0);
                            continue;
                        }
                        let iy = oy * self.stride[0] + ky * self.dilation[0] - self.pad[0];
                        let src = &plane[iy * w..(iy + 1) * w];
                        line[..cols.start].fill(0.0);
                        line[cols.end..].fill(0.0);
                        let sx = self.stride[1];
                        let first = cols.start * sx + x0 - self.pad[1];
                        if sx == 1 {
                            line[cols.clone()].copy_from_slice(&src[first..first + cols.len()]);
                        } else {
                            for (i, v) in line[cols.clone()].iter_mut().enumerate() {
                                *v = src[first + i * sx];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col`]: adds every patch entry back onto the input pixel it was
    /// read from. `dx` = `[group_in, h, w]`.
    fn col2im_add(&self, col: &[f32], dx: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let ow = self.out_hw[1];
        let [h, w] = self.in_hw;
        let pixels = self.out_pixels();
        for c in 0..self.group_in() {
            let plane = &mut dx[c * h * w..(c + 1) * h * w];
            for ky in 0..kh {
                let rows = self.valid_outputs(0, ky);
                for kx in 0..kw {
                    let cols = self.valid_outputs(1, kx);
                    if cols.is_empty() {
                        continue;
                    }
                    let r = (c * kh + ky) * kw + kx;
                    let src = &col[r * pixels..][..pixels];
                    let x0 = kx * self.dilation[1];
                    for oy in rows.clone() {
                        let iy = oy * self.stride[0] + ky * self.dilation[0] - self.pad[0];
                        let line = &src[oy * ow..(oy + 1) * ow];
                        let dst = &mut plane[iy * w..(iy + 1) * w];
                        let sx = self.stride[1];
                        let first = cols.start * sx + x0 - self.pad[1];
                        if sx == 1 {
                            for (d, s) in dst[first..first + cols.len()]
                                .iter_mut()
                                .zip(&line[cols.clone()])
                            {
                                *d += s;
                            }
                        } else {
                            for (i, s) in line[cols.clone()].iter().enumerate() {
                                dst[first + i * sx] += s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Gradients of `y = conv2d(x, w)` (no bias) for the output gradient `dy`, all contiguous NCHW
/// `f32`. Returns `(dx, dw)`, each only when asked for.
///
/// Each thread takes a share of the batch and accumulates its own weight gradient; the partial
/// sums are added at the end. Per image and group: `dW_g += dY_g · patchesᵀ` and
/// `dX_g = col2im(W_gᵀ · dY_g)`. One image at a time keeps the patch matrix in cache: sharing one
/// GEMM between several images measured slower on the 2-core machine of BENCHMARKS.md.
///
/// # Shapes
/// - x: `[batch, in_channels, h, w]`, dx likewise
/// - w: `[out_channels, in_channels / groups, kh, kw]`, dw likewise
/// - dy: `[batch, out_channels, h', w']`
pub(super) fn conv2d_backward(
    plan: &ConvPlan,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let in_len = plan.in_channels * plan.in_pixels();
    let out_len = plan.out_channels * plan.out_pixels();
    let w_len = plan.out_channels * plan.col_rows();
    assert_eq!(x.len(), plan.batch * in_len, "conv backward: input size");
    assert_eq!(
        dy.len(),
        plan.batch * out_len,
        "conv backward: output gradient size"
    );
    assert_eq!(w.len(), w_len, "conv backward: weight size");
    let threads = rayon::current_num_threads().max(1);
    let per_chunk = plan.batch.div_ceil(threads).max(1);
    // A lone share (batch 1) lets the GEMM use every thread instead.
    let parallelism = if per_chunk >= plan.batch && threads > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let pass = BackwardPass {
        plan,
        x,
        w,
        dy,
        need_dw,
        parallelism,
    };

    let mut dx = need_dx.then(|| vec![0f32; plan.batch * in_len]);
    let partials: Vec<Vec<f32>> = match dx.as_deref_mut() {
        Some(dx) => dx
            .par_chunks_mut((per_chunk * in_len).max(1))
            .enumerate()
            .map(|(c, dx_chunk)| {
                let images = dx_chunk.len() / in_len.max(1);
                pass.run_share(c * per_chunk, images, Some(dx_chunk))
            })
            .collect(),
        None => (0..plan.batch.div_ceil(per_chunk))
            .into_par_iter()
            .map(|c| {
                pass.run_share(
                    c * per_chunk,
                    per_chunk.min(plan.batch - c * per_chunk),
                    None,
                )
            })
            .collect(),
    };
    let dw = need_dw.then(|| {
        let mut parts = partials.into_iter();
        let mut total = parts.next().unwrap_or_else(|| vec![0f32; w_len]);
        for part in parts {
            for (t, p) in total.iter_mut().zip(&part) {
                *t += p;
            }
        }
        total
    });
    (dx, dw)
}

/// One [`conv2d_backward`] call's operands, which its shares of the batch read.
struct BackwardPass<'a> {
    plan: &'a ConvPlan,
    x: &'a [f32],
    w: &'a [f32],
    dy: &'a [f32],
    need_dw: bool,
    /// The GEMMs' threads: all of them for a lone share of the batch, else the share's own.
    parallelism: gemm::Parallelism,
}

impl BackwardPass<'_> {
    /// One share of the batch, the `images` images from `first`: returns its weight gradient
    /// (empty unless asked for) and writes its input gradients into `dx_chunk` if given.
    fn run_share(&self, first: usize, images: usize, mut dx_chunk: Option<&mut [f32]>) -> Vec<f32> {
        let Self {
            plan,
            x,
            w,
            dy,
            need_dw,
            parallelism,
        } = *self;
        let in_len = plan.in_channels * plan.in_pixels();
        let out_len = plan.out_channels * plan.out_pixels();
        let w_len = plan.out_channels * plan.col_rows();
        let (gi, go, rows, pixels) = (
            plan.group_in(),
            plan.group_out(),
            plan.col_rows(),
            plan.out_pixels(),
        );
        let group_in_len = gi * plan.in_pixels();
        let mut dw = vec![0f32; if need_dw { w_len } else { 0 }];
        let mut col = vec![
            0f32;
            if plan.is_pointwise() {
                0
            } else {
                rows * pixels
            }
        ];
        for i in 0..images {
            let n = first + i;
            for g in 0..plan.groups {
                let dy_g = &dy[n * out_len + g * go * pixels..][..go * pixels];
                let w_g = &w[g * go * rows..][..go * rows];
                if need_dw {
                    let x_g = &x[n * in_len + g * group_in_len..][..group_in_len];
                    let patches: &[f32] = if plan.is_pointwise() {
                        x_g
                    } else {
                        plan.im2col(x_g, &mut col);
                        &col
                    };
                    // dW_g[go x rows] += dY_g[go x P] · patchesᵀ[P x rows]
                    gemm_strided(
                        [go, rows, pixels],
                        &mut dw[g * go * rows..][..go * rows],
                        [rows, 1],
                        true,
                        dy_g,
                        [pixels, 1],
                        patches,
                        [1, pixels],
                        parallelism,
                    );
                }
                if let Some(dx_chunk) = dx_chunk.as_deref_mut() {
                    let dx_g = &mut dx_chunk[i * in_len + g * group_in_len..][..group_in_len];
                    // dcol[rows x P] = W_gᵀ[rows x go] · dY_g[go x P]; a 1x1 conv's dcol is dX_g.
                    let pointwise = plan.is_pointwise();
                    let target: &mut [f32] = if pointwise { dx_g } else { &mut col };
                    gemm_strided(
                        [rows, pixels, go],
                        target,
                        [pixels, 1],
                        false,
                        w_g,
                        [1, rows],
                        dy_g,
                        [pixels, 1],
                        parallelism,
                    );
                    if !pointwise {
                        let dx_g = &mut dx_chunk[i * in_len + g * group_in_len..][..group_in_len];
                        plan.col2im_add(&col, dx_g);
                    }
                }
            }
        }
        dw
    }
}
