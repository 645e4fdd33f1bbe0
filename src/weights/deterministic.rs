//! Deterministic tensors from a formula that the Python fixture generators (`tools/`) implement
//! too, so that parity tests of full-size models need no stored weights.
//!
//! Element `i` of the tensor with key `k` gets `f = 2 u - 1` with
//! `u = (fmix64((fnv1a32(k) << 32) ^ i) >> 40) / 2^24`, scaled by the tensor's role:
//! weights `f * sqrt(6 / fan_in)` (He-uniform), biases and BN shifts and means `0.1 f`,
//! BN scales `0.5 + 0.25 f` (so that
//! residual streams stay O(1) through deep networks and attention logits do not saturate), BN variances `1 + 0.5 f`. Products are computed in f64 and rounded
//! once to f32 on both sides.

use super::paths::{replace_tensors, NamedTensor, TensorRole, TensorSource};
use burn::module::Module;

/// 32-bit FNV-1a of a string.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// MurmurHash3's 64-bit finalizer.
pub fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The unit value in [-1, 1) of element `i` of the tensor keyed `key`.
pub fn unit(key: &str, i: u64) -> f64 {
    let x = fmix64(((fnv1a32(key) as u64) << 32) ^ i);
    2.0 * ((x >> 40) as f64 / (1u64 << 24) as f64) - 1.0
}

/// `n` unit values of `key`, scaled by `scale` and shifted by `offset`.
pub fn values(key: &str, n: usize, scale: f64, offset: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| (offset + scale * unit(key, i)) as f32)
        .collect()
}

/// The deterministic value of a tensor, by role.
pub fn tensor_values(t: &NamedTensor) -> Vec<f32> {
    let n: usize = t.shape.iter().product();
    let (scale, offset) = match t.role {
        TensorRole::Weight => {
            let fan_in = n / t.shape[0].max(1);
            ((6.0 / fan_in.max(1) as f64).sqrt(), 0.0)
        }
        TensorRole::Bias | TensorRole::NormBias | TensorRole::RunningMean => (0.1, 0.0),
        TensorRole::NormWeight => (0.25, 0.5),
        TensorRole::RunningVar => (0.5, 1.0),
    };
    values(&t.path, n, scale, offset)
}

struct Formula;

impl TensorSource for Formula {
    fn values(&mut self, tensor: &NamedTensor) -> Option<Vec<f32>> {
        Some(tensor_values(tensor))
    }
}

/// Sets every tensor of `module` (BN running statistics included) from the formula.
pub fn deterministic_init<M: Module>(module: M) -> M {
    replace_tensors(module, &mut Formula)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_python_generator() {
        // Values printed by tools/detinit.py (`fnv1a32`, `units`).
        assert_eq!(fnv1a32(""), 0x811c9dc5);
        assert_eq!(fnv1a32("conv1.weight"), 0xbdcec494);
        let want = [
            0.0976405143737793,
            0.5738365650177002,
            0.32658255100250244,
            0.16312897205352783,
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(unit("input", i as u64), *w);
        }
        assert_eq!(
            unit("layer1.0.conv2.attn.fc_select.weight", 1),
            -0.3577007055282593
        );
    }
}
