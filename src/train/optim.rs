//! The optimizers, as PyTorch computes them: SGD with momentum (optionally Nesterov), as
//! `torch.optim.SGD`, and AdamW, as `torch.optim.AdamW` (decoupled weight decay). Weight decay
//! applies to conv and linear weights only: BatchNorm parameters and biases are not decayed, as
//! timm's parameter groups do. The classifier's learning rate is the schedule's; the backbone's
//! may be scaled.

use std::collections::HashMap;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::SkNet;
use crate::ops::SgdUpdate;
use crate::weights::load::CLASSIFIER_KEYS;
use crate::weights::paths::{map_keyed, KeyedMapper, TensorRole};

/// Which optimizer, with its own hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd {
        /// Momentum (0 for none).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `torch.optim.AdamW` (without amsgrad).
    AdamW {
        /// `(beta1, beta2)`: the decay rates of the gradient's first and second moments.
        betas: [f64; 2],
        /// Added to the second moment's root.
        eps: f64,
    },
}

/// The optimizers by name, as a run's settings and the command line give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    /// SGD with momentum.
    #[default]
    Sgd,
    /// AdamW.
    #[value(name = "adamw")]
    #[serde(rename = "adamw")]
    AdamW,
}

/// Hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    /// SGD or AdamW.
    pub kind: OptimizerKind,
    /// Weight decay on conv / linear weights (L2 for SGD, decoupled for AdamW).
    pub weight_decay: f64,
    /// The learning rate of every parameter outside the classifier, as a multiple of the step's.
    pub backbone_lr_scale: f64,
}

/// The names a checkpoint gives the optimizer's buffers: `<buffer>.<parameter key>`.
pub const STATE_BUFFERS: [&str; 3] = ["momentum", "exp_avg", "exp_avg_sq"];

/// The optimizer and its buffers, by parameter key (so that they can be checkpointed by name).
pub struct Optimizer {
    /// Settings.
    pub config: OptimizerConfig,
    /// `<buffer>.<parameter key> -> flattened buffer`.
    buffers: HashMap<String, Tensor<1>>,
    /// Steps taken (AdamW's bias correction counts them).
    steps: u64,
    non_finite: Option<String>,
}

struct Step<'a> {
    grads: GradientsParams,
    lr: f64,
    optimizer: &'a mut Optimizer,
}

impl KeyedMapper for Step<'_> {
    fn map<const D: usize>(
        &mut self,
        path: String,
        role: TensorRole,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        if !role.trainable() {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let value = tensor.inner();
        let decay = role == TensorRole::Weight;
        let (updated, finite) = self.optimizer.update(&path, decay, value, grad, self.lr);
        if !finite && self.optimizer.non_finite.is_none() {
            self.optimizer.non_finite = Some(path);
        }
        let updated = Tensor::from_inner(updated);
        let updated = if require_grad {
            updated.require_grad()
        } else {
            updated
        };
        Param::from_mapped_value(id, updated, mapper)
    }
}

impl Optimizer {
    /// A new optimizer.
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            buffers: HashMap::new(),
            steps: 0,
            non_finite: None,
        }
    }

    /// One step at learning rate `lr`. Afterwards, [`Optimizer::non_finite`] names the first
    /// parameter the step left with a NaN or an infinity, if any.
    pub fn step(&mut self, model: SkNet, grads: GradientsParams, lr: f64) -> SkNet {
        self.steps += 1;
        self.non_finite = None;
        let mut step = Step {
            grads,
            lr,
            optimizer: self,
        };
        map_keyed(model, &mut step)
    }

    /// The update of one parameter `key` in the step under way (the first is step 1): its new
    /// value, and whether every value is finite. `decay` says whether weight decay applies.
    /// [`Optimizer::step`] calls it for every parameter with a gradient.
    ///
    /// # Shapes
    /// - value, grad, output: the parameter's shape
    pub fn update<const D: usize>(
        &mut self,
        key: &str,
        decay: bool,
        value: Tensor<D>,
        grad: Tensor<D>,
        lr: f64,
    ) -> (Tensor<D>, bool) {
        let lr = if CLASSIFIER_KEYS.contains(&key) {
            lr
        } else {
            lr * self.config.backbone_lr_scale
        };
        let weight_decay = if decay { self.config.weight_decay } else { 0.0 };
        match self.config.kind {
            OptimizerKind::Sgd { momentum, nesterov } => {
                let name = format!("momentum.{key}");
                let update = SgdUpdate {
                    lr,
                    momentum,
                    nesterov,
                    weight_decay,
                };
                let buffer = self.buffers.remove(&name);
                let (value, buffer, finite) = crate::ops::sgd_update(value, grad, buffer, update);
                if let Some(buffer) = buffer {
                    self.buffers.insert(name, buffer);
                }
                (value, finite)
            }
            OptimizerKind::AdamW { betas, eps } => {
                let (m_name, v_name) = (format!("exp_avg.{key}"), format!("exp_avg_sq.{key}"));
                let dims = value.dims();
                let n: usize = dims.iter().product();
                let zeros = || Tensor::<1>::zeros([n], &value.device());
                let m = self.buffers.remove(&m_name).unwrap_or_else(zeros);
                let v = self.buffers.remove(&v_name).unwrap_or_else(zeros);
                let (value, m, v) = adamw_update(
                    value.reshape([n]),
                    grad.reshape([n]),
                    m,
                    v,
                    AdamWStep {
                        lr,
                        betas,
                        eps,
                        weight_decay,
                        step: self.steps.max(1),
                    },
                );
                let finite = value.clone().is_finite().all().into_scalar::<bool>();
                self.buffers.insert(m_name, m);
                self.buffers.insert(v_name, v);
                (value.reshape(dims), finite)
            }
        }
    }

    /// The first parameter the last step left with a NaN or an infinity.
    pub fn non_finite(&self) -> Option<&str> {
        self.non_finite.as_deref()
    }

    /// Buffers as plain data, named `<buffer>.<parameter key>` (see [`STATE_BUFFERS`]), sorted,
    /// for checkpoints.
    pub fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut out: Vec<(String, Vec<f32>)> = self
            .buffers
            .iter()
            .map(|(k, t)| (k.clone(), crate::ops::values_f32(t.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores buffers from checkpoint data, and the number of steps taken.
    pub fn restore(&mut self, state: Vec<(String, Vec<f32>)>, steps: u64, device: &Device) {
        self.steps = steps;
        self.buffers = state
            .into_iter()
            .map(|(k, v)| {
                let n = v.len();
                (k, Tensor::from_data(TensorData::new(v, [n]), device))
            })
            .collect();
    }
}

/// One AdamW update's settings.
#[derive(Debug, Clone, Copy)]
struct AdamWStep {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// 1-based.
    step: u64,
}

/// `torch.optim.AdamW`'s update, in its order of operations: `p *= 1 - lr * wd`;
/// `m = lerp(m, g, 1 - beta1)`; `v = beta2 * v + (1 - beta2) * g * g`; then
/// `p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`.
fn adamw_update(
    value: Tensor<1>,
    grad: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    s: AdamWStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let [beta1, beta2] = s.betas;
    let value = if s.weight_decay > 0.0 {
        value.mul_scalar(1.0 - s.lr * s.weight_decay)
    } else {
        value
    };
    // torch's lerp with a weight below 0.5: m + w * (g - m).
    let m = m.clone().add(grad.clone().sub(m).mul_scalar(1.0 - beta1));
    let v = v
        .mul_scalar(beta2)
        .add(grad.clone().mul(grad).mul_scalar(1.0 - beta2));
    let t = s.step as i32;
    let bias1 = 1.0 - beta1.powi(t);
    let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
    let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(s.eps);
    let value = value.sub(m.clone().div(denom).mul_scalar(s.lr / bias1));
    (value, m, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    /// Every step of both optimizers against `torch.optim` (tools/gen_optim_fixtures.py):
    /// decayed and undecayed parameters, backbone and classifier, a learning rate that changes
    /// every step.
    #[test]
    fn each_step_matches_torch_optim() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/optim_steps.json"
        );
        let fx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let device = Device::flex();
        for case in fx["cases"].as_array().unwrap() {
            let name = case["optimizer"].as_str().unwrap();
            let kind = match name {
                "sgd" => OptimizerKind::Sgd {
                    momentum: case["momentum"].as_f64().unwrap(),
                    nesterov: case["nesterov"].as_bool().unwrap(),
                },
                _ => OptimizerKind::AdamW {
                    betas: [
                        case["betas"][0].as_f64().unwrap(),
                        case["betas"][1].as_f64().unwrap(),
                    ],
                    eps: case["eps"].as_f64().unwrap(),
                },
            };
            let mut opt = Optimizer::new(OptimizerConfig {
                kind,
                weight_decay: case["weight_decay"].as_f64().unwrap(),
                backbone_lr_scale: case["backbone_lr_scale"].as_f64().unwrap(),
            });
            let params = case["params"].as_array().unwrap();
            let mut values: Vec<Tensor<1>> = params
                .iter()
                .map(|p| {
                    let v = floats(&p["initial"]);
                    let n = v.len();
                    Tensor::from_data(TensorData::new(v, [n]), &device)
                })
                .collect();
            for (t, lr) in case["lrs"].as_array().unwrap().iter().enumerate() {
                opt.steps += 1;
                for (i, p) in params.iter().enumerate() {
                    let g = floats(&p["grads"][t]);
                    let n = g.len();
                    let grad = Tensor::from_data(TensorData::new(g, [n]), &device);
                    let (new, finite) = opt.update(
                        p["key"].as_str().unwrap(),
                        p["decay"].as_bool().unwrap(),
                        values[i].clone(),
                        grad,
                        lr.as_f64().unwrap(),
                    );
                    assert!(finite);
                    let got = crate::ops::values_f32(new.clone());
                    let want = floats(&p["after"][t]);
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
                        .fold(0f32, f32::max);
                    assert!(
                        worst < 1e-5,
                        "{name} step {} {}: relative error {worst:.2e}",
                        t + 1,
                        p["key"]
                    );
                    values[i] = new;
                }
            }
            // The buffers a checkpoint keeps, named by buffer and key.
            let names: Vec<String> = opt.state().into_iter().map(|(k, _)| k).collect();
            let prefix = if name == "sgd" {
                "momentum."
            } else {
                "exp_avg"
            };
            assert!(names.iter().all(|k| k.starts_with(prefix)), "{names:?}");
        }
    }
}
