//! Building blocks below the residual block: convolution, normalization, the classifier layer and
//! the selective kernel unit.

pub mod add_relu;
pub mod channel_ops;
mod conv;
mod conv_norm_act;
pub mod direct_conv;
mod linear;
pub mod max_pool;
mod norm;
pub mod packed_conv;
mod pointwise;
pub mod selective_kernel;
pub mod sk_select;
pub mod train_conv;
pub mod train_norm;
mod weight_grad;
mod winograd;

pub use conv::{Conv2d, ConvGeometry};
pub use conv_norm_act::ConvNormAct;
pub use linear::Linear;
pub use norm::{fold_into_conv, BatchNorm2d};
pub use selective_kernel::{SelectiveKernel, SelectiveKernelAttn};

/// Whether training uses sknet's CPU kernels ([`train_conv`], [`train_norm`]) rather than
/// burn's derived backward passes: in builds without a GPU backend, whose only device is Flex.
pub(crate) fn cpu_training_kernels() -> bool {
    cfg!(not(any(
        feature = "vulkan",
        feature = "wgpu",
        feature = "cuda"
    )))
}

/// Whether a forward pass may use sknet's CPU inference kernels ([`direct_conv`], [`max_pool`]):
/// f32 on the Flex backend (the only device of builds without a GPU feature), without autodiff.
pub(crate) fn cpu_inference_kernels(input: &burn::tensor::Tensor<4>) -> bool {
    cpu_training_kernels()
        && !input.device().is_autodiff()
        && input.dtype() == burn::tensor::DType::F32
}

/// `relu(x + shortcut)`, the end of a residual block: one pass ([`add_relu`]) where sknet's CPU
/// kernels run, tensor ops elsewhere.
pub(crate) fn residual_relu(
    x: burn::tensor::Tensor<4>,
    shortcut: burn::tensor::Tensor<4>,
) -> burn::tensor::Tensor<4> {
    if cpu_training_kernels() && add_relu::supports(&x, &shortcut) {
        add_relu::add_relu(x, shortcut)
    } else {
        burn::tensor::activation::relu(x.add(shortcut))
    }
}

/// `f()`, run on a thread of the CPU kernels' thread pool (rayon's global pool) when called from
/// outside it. Each kernel's parallel loop then starts from a pool thread, which shares the work
/// with the other threads directly, instead of being sent to the pool and waited for by a
/// thread outside it: one cross-thread hand-off per call instead of one per layer.
/// [`SkNet`](crate::model::SkNet)'s forward passes do this themselves (skresnet18 at batch 1:
/// 7% less time); a training step is worth wrapping whole, forward, backward and update
/// (sknet-tiny at batch 32: 5% less time), as `sknet train` does.
pub fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if cpu_training_kernels() && rayon::current_thread_index().is_none() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// An output buffer that parallel tasks share, each writing its own disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the tasks that share it write disjoint elements, and the buffer outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A contiguous `f32` Flex tensor of `shape` holding `data` (row-major).
pub(crate) fn flex_f32(data: Vec<f32>, shape: &[usize]) -> burn::backend::flex::FlexTensor {
    burn::backend::flex::FlexTensor::from_data(burn::tensor::TensorData::new(
        data,
        burn::tensor::Shape::from(shape.to_vec()),
    ))
}

/// `t` itself when contiguous (moved, so that a buffer it holds alone stays unshared), else a
/// contiguous copy. `what` names the op in the message if `t` is not `f32`.
pub(crate) fn into_contiguous_f32(
    t: burn::backend::flex::FlexTensor,
    what: &str,
) -> burn::backend::flex::FlexTensor {
    assert_eq!(
        t.dtype(),
        burn::tensor::DType::F32,
        "{what} takes f32 tensors"
    );
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The values of contiguous `t` for writing in place: `Some` when `t` holds its whole buffer
/// (`len` floats) alone, so that an op can reuse it instead of allocating its output.
pub(crate) fn unique_f32_mut(
    t: &mut burn::backend::flex::FlexTensor,
    len: usize,
) -> Option<&mut [f32]> {
    if t.layout().contiguous_offsets() != Some((0, len)) {
        return None;
    }
    t.try_storage_mut::<f32>().filter(|s| s.len() == len)
}

/// `dst = srcᵀ` for `src` of `rows x cols` (row-major), in 8x8 blocks: a row-by-row transposition
/// strides through memory on one side, and reading many rows a cache line at a time defeats the
/// prefetcher, while a block reads 8 lines and writes 8.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const BLOCK: usize = 8;
    assert_eq!(src.len(), rows * cols);
    assert_eq!(dst.len(), rows * cols);
    let (full_rows, full_cols) = (rows - rows % BLOCK, cols - cols % BLOCK);
    for c0 in (0..full_cols).step_by(BLOCK) {
        for r0 in (0..full_rows).step_by(BLOCK) {
            let block: [&[f32]; BLOCK] =
                std::array::from_fn(|i| &src[(r0 + i) * cols + c0..][..BLOCK]);
            for j in 0..BLOCK {
                let out = &mut dst[(c0 + j) * rows + r0..][..BLOCK];
                for (o, row) in out.iter_mut().zip(&block) {
                    *o = row[j];
                }
            }
        }
    }
    // The ragged edges: the last columns of the full rows, then the last rows.
    for r in 0..rows {
        let columns = if r < full_rows {
            full_cols..cols
        } else {
            0..cols
        };
        for c in columns {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// A buffer of `len` floats for an op that writes every one of them before any is read, without
/// `vec![0.0; len]`'s zero fill: that was a memset pass over each output of the training kernels
/// (2 to 3% of a sknet-tiny step). Test builds fill it with NaN instead, so that an element left
/// unwritten fails the comparisons with the reference ops.
///
/// # Safety
/// The caller writes every element before reading any.
#[allow(clippy::uninit_vec)] // deliberate: see above; every caller's safety note says why
pub(crate) unsafe fn output_buffer(len: usize) -> Vec<f32> {
    if cfg!(debug_assertions) {
        return vec![f32::NAN; len];
    }
    let mut buffer = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; f32 has no invalid bit patterns, and the caller writes every
    // element before reading it.
    unsafe { buffer.set_len(len) };
    buffer
}

/// The four dimensions of a 4-d Flex tensor.
pub(crate) fn dims4(t: &burn::backend::flex::FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

#[cfg(test)]
mod tests {
    /// Every block and edge case lands where an element-by-element transposition puts it.
    #[test]
    fn transpose_matches_elementwise() {
        for (rows, cols) in [(8, 8), (32, 1024), (24, 49), (13, 7), (1, 9), (16, 3)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            super::transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}

/// Asserts that two float tensors have the same length and differ by less than `tolerance`
/// anywhere; the message names `what` and the largest difference.
#[cfg(test)]
pub(crate) fn assert_close(
    what: &str,
    a: burn::tensor::TensorData,
    b: burn::tensor::TensorData,
    tolerance: f32,
) {
    let (a, b) = (
        a.try_to_vec::<f32>().unwrap(),
        b.try_to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    // A NaN on either side (an output element never written, see `output_buffer`) fails too.
    let diff = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0f32, f32::max);
    assert!(diff < tolerance, "{what} differs by {diff}");
}

/// `dst[m x n] (+)= lhs[m x k] · rhs[k x n]`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    [dst_rs, dst_cs]: [usize; 2],
    accumulate: bool,
    lhs: &[f32],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[f32],
    [rhs_rs, rhs_cs]: [usize; 2],
    parallelism: gemm::Parallelism,
) {
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    // The bounds the raw-pointer call below relies on.
    assert!(m == 0 || n == 0 || last(dst_rs, dst_cs, m, n) < dst.len());
    assert!(m == 0 || k == 0 || last(lhs_rs, lhs_cs, m, k) < lhs.len());
    assert!(k == 0 || n == 0 || last(rhs_rs, rhs_cs, k, n) < rhs.len());
    // SAFETY: every index the GEMM touches is within the slices, checked above; `dst` is borrowed
    // mutably and so does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
