//! The fused tensor operations the layers are made of.
//!
//! Each op computes one step of the network the way burn's tensor ops would, and picks one of
//! sknet's CPU kernels (`src/cpu`) where it applies: f32 tensors on the Flex backend, the
//! forward kernels without autodiff, the training kernels (with their own backward passes) with
//! it. Elsewhere (the GPU backends, other dtypes) it falls back to burn's ops, so every op gives
//! the same result on every backend. This is the only module that knows the kernels exist.

use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm_train as burn_batch_norm_train, conv2d as burn_conv2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Tensor};

use crate::cpu;
pub use crate::cpu::conv::packed::PackedWeights;
pub use crate::cpu::sgd::SgdUpdate;

/// What follows an op, applied as the op stores its output where a kernel can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Nothing: the op's output as it is.
    #[default]
    Identity,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Applies the activation with burn's tensor ops.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Identity => x,
            Activation::Relu => relu(x),
        }
    }

    fn is_relu(self) -> bool {
        self == Activation::Relu
    }
}

/// `act(conv2d(input, weight) + bias)`.
///
/// `packed` is the weights' packed form for the CPU inference kernel ([`pack_conv_weights`]),
/// used only while it was made from this very `weight` tensor.
///
/// # Shapes
/// - input: `[batch, in_channels, height, width]`
/// - weight: `[out_channels, in_channels / groups, kernel_h, kernel_w]`
/// - bias: `[out_channels]`
/// - output: `[batch, out_channels, height', width']`
pub fn conv2d(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    packed: Option<&PackedWeights>,
    options: ConvOptions<2>,
    activation: Activation,
) -> Tensor<4> {
    let relu = activation.is_relu();
    if cpu::inference_applies(&input) {
        return match packed {
            Some(packed) => {
                cpu::conv::packed::conv2d_packed(input, weight, packed, bias, options, relu)
            }
            None => cpu::conv::direct::conv2d_direct(input, weight, bias, options, relu),
        };
    }
    let out = if input.device().is_autodiff() && cpu::available() {
        let out = cpu::conv::backward::train_conv2d(input, weight, options);
        match bias {
            Some(bias) => out + bias.reshape([1, -1, 1, 1]),
            None => out,
        }
    } else {
        burn_conv2d(input, weight, bias, options)
    };
    activation.apply(out)
}

/// `relu(conv2d(input, weight) + bias + residual)`: a residual block's last conv and its ending,
/// in one pass over the output where the CPU inference kernel for unpacked weights runs.
///
/// # Shapes
/// - input, weight, bias: as [`conv2d`]
/// - residual: the conv's output shape
/// - output: the conv's output shape
pub fn conv2d_add_relu(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    packed: Option<&PackedWeights>,
    options: ConvOptions<2>,
    residual: Tensor<4>,
) -> Tensor<4> {
    // The kernel adds the residual as it stores where it can, and in a second pass elsewhere.
    if cpu::inference_applies(&input) && packed.is_none() {
        return cpu::conv::direct::conv2d_direct_add_relu(input, weight, bias, residual, options);
    }
    let out = conv2d(input, weight, bias, packed, options, Activation::Identity);
    add_relu(out, residual)
}

/// Packs a conv's weights for the CPU inference kernel that computes kxk convs with output
/// channels in vector lanes, where that kernel applies (a CPU with AVX-512, k > 1, a multiple of
/// 16 output channels per group); `None` elsewhere. Nothing is computed until a call uses them.
pub fn pack_conv_weights(weight: &Tensor<4>, groups: usize) -> Option<PackedWeights> {
    PackedWeights::of(weight, groups)
}

/// `relu(x + shortcut)`, a residual block's end, in one pass where the CPU kernels run.
///
/// # Shapes
/// - x, shortcut, output: the same shape
pub fn add_relu<const D: usize>(x: Tensor<D>, shortcut: Tensor<D>) -> Tensor<D> {
    if cpu::available() && cpu::add_relu::supports(&x, &shortcut) {
        cpu::add_relu::add_relu(x, shortcut)
    } else {
        relu(x.add(shortcut))
    }
}

/// What a batch-statistics BatchNorm returns.
pub struct BatchNormOutput<const D: usize> {
    /// The normalized input, with the activation applied.
    pub output: Tensor<D>,
    /// The batch mean per channel.
    pub mean: Tensor<1>,
    /// The biased batch variance per channel.
    pub variance: Tensor<1>,
}

/// BatchNorm with batch statistics (training), then `activation`: one pass forward and one
/// backward for both on the CPU, with the ReLU's mask recomputed in the backward pass.
///
/// # Shapes
/// - input, output: `[batch, channels, ...]`
/// - weight, bias, mean, variance: `[channels]`
pub fn batch_norm_train<const D: usize>(
    input: Tensor<D>,
    weight: Tensor<1>,
    bias: Tensor<1>,
    epsilon: f64,
    activation: Activation,
) -> BatchNormOutput<D> {
    if cpu::available() {
        // The ReLU is fused for f32; other dtypes take it as a tensor op afterwards.
        let fuse = activation.is_relu() && input.dtype() == DType::F32;
        let r = cpu::batch_norm::train_batch_norm(input, weight, bias, epsilon, fuse);
        let output = if fuse {
            r.output
        } else {
            activation.apply(r.output)
        };
        return BatchNormOutput {
            output,
            mean: r.mean,
            variance: r.variance,
        };
    }
    let r = burn_batch_norm_train(input, weight, bias, epsilon);
    BatchNormOutput {
        output: activation.apply(r.output),
        mean: r.mean,
        variance: r.variance,
    }
}

/// The global average of each channel's map.
///
/// # Shapes
/// - x: `[batch, channels, height, width]`
/// - output: `[batch, channels]`
pub fn spatial_mean(x: Tensor<4>) -> Tensor<2> {
    if cpu::available() && cpu::channel_ops::supports(&x) {
        // One pass backward instead of a tensor of ones, a scale and a broadcast multiply.
        return cpu::channel_ops::spatial_mean(x);
    }
    let [b, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([b, c])
}

/// Channels `[start, start + len)` of `x`.
///
/// # Shapes
/// - x: `[batch, channels, height, width]`
/// - output: `[batch, len, height, width]`
pub fn channel_window(x: Tensor<4>, start: usize, len: usize) -> Tensor<4> {
    if cpu::available() && cpu::channel_ops::supports(&x) {
        // The input gradient written once, instead of zeroed and then filled in.
        return cpu::channel_ops::channel_window(x, start, len);
    }
    x.narrow(1, start, len)
}

/// The SK select: `V = sum_m a_m * U_m`, the branches weighted per channel. Two branches are one
/// pass, forward and backward, on the CPU.
///
/// # Shapes
/// - branches: M tensors `[batch, C, height, width]`
/// - attention: `[batch, M, C]`
/// - output: `[batch, C, height, width]`
///
/// # Panics
/// If `branches` is empty.
pub fn sk_select(branches: Vec<Tensor<4>>, attention: Tensor<3>) -> Tensor<4> {
    if let [u0, u1] = branches.as_slice() {
        if cpu::available() && cpu::sk_select::supports(u0, u1, &attention) {
            return cpu::sk_select::sk_select2(u0.clone(), u1.clone(), attention);
        }
    }
    let [b, _, c] = attention.dims();
    branches
        .into_iter()
        .enumerate()
        .map(|(i, u)| u.mul(attention.clone().narrow(1, i, 1).reshape([b, c, 1, 1])))
        .reduce(|acc, v| acc.add(v))
        .expect("the SK select takes at least one branch")
}

/// Max pooling with a square window. `out` is the output's `(height, width)` as the caller's
/// convention computes it (Caffe's ceil mode, say); the CPU inference kernel runs when it is
/// given, burn's pool otherwise.
///
/// # Shapes
/// - x: `[batch, channels, height, width]`
/// - output: `[batch, channels, out_h, out_w]`
pub fn max_pool2d(x: Tensor<4>, options: MaxPoolOptions<2>, out: Option<[usize; 2]>) -> Tensor<4> {
    if let (true, Some(out)) = (cpu::inference_applies(&x), out) {
        let window = cpu::max_pool::PoolWindow {
            kernel: options.kernel_size[0],
            stride: options.stride[0],
            pad: [options.padding[0].0, options.padding[1].0],
            out,
        };
        return cpu::max_pool::max_pool2d_direct(x, window);
    }
    burn::tensor::module::max_pool2d(x, options)
}

/// `torch.optim.SGD`'s update of one parameter: `d = g + decay * p`; with momentum,
/// `buf = momentum * buf + d` (`buf = d` on the first step, when `buffer` is `None`) and
/// `d = d + momentum * buf` (Nesterov) or `d = buf`; then `p -= lr * d`. Returns the new value
/// and the new momentum buffer (`None` without momentum), and whether every new value is finite
/// (a diverging run is caught at the step that broke it). On the CPU, one pass over the values
/// instead of five or six tensor ops.
///
/// # Shapes
/// - value, grad, output value: the parameter's shape
/// - buffer: the parameter's element count, flattened
pub fn sgd_update<const D: usize>(
    value: Tensor<D>,
    grad: Tensor<D>,
    buffer: Option<Tensor<1>>,
    update: SgdUpdate,
) -> (Tensor<D>, Option<Tensor<1>>, bool) {
    if cpu::available() && value.dtype() == DType::F32 && grad.dtype() == DType::F32 {
        return cpu::sgd::sgd_update(value, grad, buffer, update);
    }
    let dims = value.dims();
    let n: usize = dims.iter().product();
    let mut g = grad;
    if update.weight_decay > 0.0 {
        g = g.add(value.clone().mul_scalar(update.weight_decay));
    }
    if update.momentum <= 0.0 {
        let value = value.sub(g.mul_scalar(update.lr));
        let finite = all_finite(&value);
        return (value, None, finite);
    }
    let buf = match buffer {
        Some(b) => b.reshape(dims).mul_scalar(update.momentum).add(g.clone()),
        None => g.clone(),
    };
    let step = if update.nesterov {
        g.add(buf.clone().mul_scalar(update.momentum))
    } else {
        buf.clone()
    };
    let value = value.sub(step.mul_scalar(update.lr));
    let finite = all_finite(&value);
    (value, Some(buf.reshape([n])), finite)
}

fn all_finite<const D: usize>(t: &Tensor<D>) -> bool {
    t.clone().is_finite().all().into_scalar::<bool>()
}

/// A tensor's values as `f32`, in row-major order (converted from any float dtype).
pub fn values_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        // `convert` has just made the data f32, so reading it as f32 cannot fail.
        .unwrap_or_default()
}

/// `f()`, run on a thread of the CPU kernels' thread pool (rayon's global pool) when called from
/// outside it. Each kernel's parallel loop then starts from a pool thread, which shares the work
/// with the other threads directly, instead of being sent to the pool and waited for by a
/// thread outside it: one cross-thread hand-off per call instead of one per layer.
/// [`SkNet`](crate::SkNet)'s forward passes do this themselves; a training step is worth wrapping
/// whole, forward, backward and update, as the [`Trainer`](crate::train::Trainer) does.
pub fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if cpu::available() && rayon::current_thread_index().is_none() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// A `[1, channels, size, size]` input of ones with one NaN.
    fn input_with_nan(channels: usize, size: usize, device: &Device) -> Tensor<4> {
        let mut values = vec![1f32; channels * size * size];
        values[size * size / 2] = f32::NAN;
        Tensor::from_data(TensorData::new(values, [1, channels, size, size]), device)
    }

    fn has_nan<const D: usize>(t: Tensor<D>) -> bool {
        let values = t.into_data().try_to_vec::<f32>().unwrap();
        values.iter().any(|v| v.is_nan())
    }

    /// A NaN reaching a ReLU stays NaN, in every kernel that applies one (negative weights make
    /// every finite output 0, so a flushed NaN would leave no trace).
    #[test]
    fn relu_keeps_nan() {
        let device = Device::flex();
        // (in, out, kernel, groups, size): grouped direct, 1x1, dense 3x3 (Winograd or packed
        // where the CPU has AVX-512, direct elsewhere), a 5x5 on a small map (packed).
        for (cin, cout, k, groups, size) in [
            (8, 8, 3, 2, 9),
            (16, 32, 1, 1, 7),
            (16, 32, 3, 1, 16),
            (16, 32, 5, 1, 7),
        ] {
            let x = input_with_nan(cin, size, &device);
            let weight = Tensor::<4>::ones([cout, cin / groups, k, k], &device).neg();
            let options = ConvOptions::new([1, 1], [(k - 1) / 2, (k - 1) / 2], [1, 1], groups);
            let packed = pack_conv_weights(&weight, groups);
            for packed in [None, packed.as_ref()] {
                let y = conv2d(
                    x.clone(),
                    weight.clone(),
                    None,
                    packed,
                    options.clone(),
                    Activation::Relu,
                );
                assert!(
                    has_nan(y),
                    "conv {k}x{k} g{groups} packed {}",
                    packed.is_some()
                );
            }
            let residual = Tensor::<4>::zeros([1, cout, size, size], &device);
            let y = conv2d_add_relu(x.clone(), weight, None, None, options, residual);
            assert!(has_nan(y), "conv {k}x{k} + residual");
        }
        let x = input_with_nan(4, 5, &device);
        let y = add_relu(x.clone(), Tensor::zeros([1, 4, 5, 5], &device));
        assert!(has_nan(y), "add_relu");
        let (gamma, beta) = (Tensor::ones([4], &device), Tensor::zeros([4], &device));
        let y = batch_norm_train(x, gamma, beta, 1e-5, Activation::Relu).output;
        assert!(has_nan(y), "batch_norm_train + relu");
    }

    /// The training conv's weight gradient is the same to the bit however the thread pool's
    /// threads happen to share the work: here one of two threads joins late, after a different
    /// delay each time, and takes over a different part of the work.
    #[test]
    fn conv_weight_gradient_does_not_depend_on_scheduling() {
        let device = crate::device::training_device();
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32)
                .map(|v| v / (1u32 << 24) as f32 - 0.5)
                .collect()
        };
        let shape_x = [64, 32, 28, 28];
        let shape_w = [32, 32, 3, 3];
        let gradient = || {
            let x = Tensor::<4>::from_data(
                TensorData::new(values(shape_x.iter().product(), 1), shape_x),
                &device,
            );
            let w = Tensor::<4>::from_data(
                TensorData::new(values(shape_w.iter().product(), 2), shape_w),
                &device,
            )
            .require_grad();
            let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let y = conv2d(x, w.clone(), None, None, options, Activation::Identity);
            let grads = y.powi_scalar(2).sum().backward();
            w.grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let with_late_thread = |delay_us: u64| {
            pool.install(|| {
                rayon::join(
                    || std::thread::sleep(std::time::Duration::from_micros(delay_us)),
                    gradient,
                )
                .1
            })
        };
        let first = with_late_thread(0);
        for delay_us in [50, 200, 500, 1000, 2000, 4000, 8000, 16000] {
            let bits = |g: &[f32]| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&with_late_thread(delay_us)) == bits(&first),
                "gradient differs with the second thread {delay_us} us late"
            );
        }
    }
}
