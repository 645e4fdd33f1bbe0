//! Seeded initialisation that depends only on the seed and each tensor's key, not on burn's
//! global random state (which other threads may draw from), so that training runs repeat.
//!
//! As timm initialises ResNets: conv weights Kaiming-normal with `fan_out = out * kh * kw`
//! (ReLU gain), the classifier like `torch.nn.Linear` (uniform +-1/sqrt(in) for weight and
//! bias), other biases zero, BatchNorm scale 1 and shift 0, running mean 0 and variance 1.

use super::deterministic::fnv1a32;
use super::paths::{replace_tensors, NamedTensor, TensorRole, TensorSource};
use crate::data::rng::Rng;

struct Seeded {
    seed: u64,
    /// Input width of the classifier, for its bias bound.
    classifier_in: usize,
}

fn uniform(rng: &mut Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
        .collect()
}

impl TensorSource for Seeded {
    fn values(&mut self, t: &NamedTensor) -> Option<Vec<f32>> {
        let n: usize = t.shape.iter().product();
        let mut rng = Rng::derive(&[self.seed, fnv1a32(&t.path) as u64]);
        Some(match t.role {
            TensorRole::Weight if t.shape.len() == 2 => {
                uniform(&mut rng, n, 1.0 / (t.shape[1] as f64).sqrt())
            }
            TensorRole::Weight => {
                let fan_out: usize = t.shape[0] * t.shape[2..].iter().product::<usize>();
                let std = (2.0 / fan_out as f64).sqrt();
                (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
            }
            TensorRole::Bias if t.path == "fc.bias" => {
                uniform(&mut rng, n, 1.0 / (self.classifier_in as f64).sqrt())
            }
            TensorRole::Bias | TensorRole::NormBias | TensorRole::RunningMean => vec![0.0; n],
            TensorRole::NormWeight | TensorRole::RunningVar => vec![1.0; n],
        })
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = rng.uniform().max(1e-300);
    let u2 = rng.uniform();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Initialises every tensor of `model` from `seed`.
pub fn seeded_init(model: crate::model::SkNet, seed: u64) -> crate::model::SkNet {
    let classifier_in = model.fc.in_features();
    replace_tensors(
        model,
        &mut Seeded {
            seed,
            classifier_in,
        },
    )
}
