//! SGD with momentum (optionally Nesterov), as `torch.optim.SGD` computes it, with weight decay
//! on conv and linear weights only: BatchNorm parameters and biases are not decayed.

use std::collections::HashMap;

use burn::module::{ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::model::SkNet;
use crate::weights::paths::{PathTracker, TensorRole};

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct SgdConfig {
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay on conv / linear weights.
    pub weight_decay: f64,
}

/// Momentum buffers, by parameter key (so that they can be checkpointed by name).
pub struct Sgd {
    /// Settings.
    pub config: SgdConfig,
    /// `key -> flattened momentum buffer`.
    pub buffers: HashMap<String, Tensor<1>>,
}

struct Step<'a> {
    tracker: PathTracker,
    grads: GradientsParams,
    config: SgdConfig,
    lr: f64,
    buffers: &'a mut HashMap<String, Tensor<1>>,
}

impl ModuleMapper for Step<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.tracker.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (path, role) = self.tracker.current();
        if !role.trainable() {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let value = tensor.inner();
        let dims = value.dims();
        let n: usize = dims.iter().product();
        let decay = if role == TensorRole::Weight {
            self.config.weight_decay
        } else {
            0.0
        };
        if crate::layers::cpu_training_kernels()
            && value.dtype() == DType::F32
            && grad.dtype() == DType::F32
        {
            // One pass over plain buffers instead of five or six tensor ops per parameter.
            let device = value.device();
            let mut values = f32_vec(value);
            let grad = f32_vec(grad);
            let mut buffer = self.buffers.remove(&path).map(f32_vec);
            update_in_place(&mut values, &grad, &mut buffer, self.config, decay, self.lr);
            if let Some(buffer) = buffer {
                self.buffers.insert(
                    path,
                    Tensor::from_data(TensorData::new(buffer, [n]), &device),
                );
            }
            let updated = Tensor::from_inner(Tensor::from_data(
                TensorData::new(values, dims.to_vec()),
                &device,
            ));
            let updated = if require_grad {
                updated.require_grad()
            } else {
                updated
            };
            return Param::from_mapped_value(id, updated, mapper);
        }
        let mut g = grad;
        if decay > 0.0 {
            g = g.add(value.clone().mul_scalar(decay));
        }
        let update = if self.config.momentum > 0.0 {
            let buf = match self.buffers.remove(&path) {
                Some(b) => b
                    .reshape(dims)
                    .mul_scalar(self.config.momentum)
                    .add(g.clone()),
                None => g.clone(),
            };
            self.buffers.insert(path, buf.clone().reshape([n]));
            if self.config.nesterov {
                g.add(buf.mul_scalar(self.config.momentum))
            } else {
                buf
            }
        } else {
            g
        };
        let updated = Tensor::from_inner(value.sub(update.mul_scalar(self.lr)));
        let updated = if require_grad {
            updated.require_grad()
        } else {
            updated
        };
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// A tensor's values as an `f32` vector.
fn f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("an f32 tensor (checked by the caller)")
}

/// `torch.optim.SGD`'s update of one parameter, in place: `d = g + decay * p`; with momentum,
/// `buf = momentum * buf + d` (`buf = d` on the first step, when `buffer` is `None`) and
/// `d = d + momentum * buf` (Nesterov) or `d = buf`; then `p -= lr * d`. `buffer` holds the
/// momentum buffer afterwards (stays `None` without momentum).
fn update_in_place(
    values: &mut [f32],
    grad: &[f32],
    buffer: &mut Option<Vec<f32>>,
    config: SgdConfig,
    decay: f64,
    lr: f64,
) {
    assert_eq!(values.len(), grad.len(), "SGD: gradient size");
    let (decay, lr, momentum) = (decay as f32, lr as f32, config.momentum as f32);
    if config.momentum <= 0.0 {
        for (p, &g) in values.iter_mut().zip(grad) {
            let d = if decay > 0.0 { g + *p * decay } else { g };
            *p -= d * lr;
        }
        return;
    }
    let first = buffer.is_none();
    let buf = buffer.get_or_insert_with(|| vec![0f32; values.len()]);
    assert_eq!(buf.len(), values.len(), "SGD: momentum buffer size");
    for ((p, &g), b) in values.iter_mut().zip(grad).zip(buf.iter_mut()) {
        let d = if decay > 0.0 { g + *p * decay } else { g };
        *b = if first { d } else { *b * momentum + d };
        let step = if config.nesterov {
            d + *b * momentum
        } else {
            *b
        };
        *p -= step * lr;
    }
}

impl Sgd {
    /// A new optimizer.
    pub fn new(config: SgdConfig) -> Self {
        Self {
            config,
            buffers: HashMap::new(),
        }
    }

    /// One step at learning rate `lr`.
    pub fn step(&mut self, model: SkNet, grads: GradientsParams, lr: f64) -> SkNet {
        let mut step = Step {
            tracker: PathTracker::default(),
            grads,
            config: self.config,
            lr,
            buffers: &mut self.buffers,
        };
        burn::module::Module::map(model, &mut step)
    }

    /// Buffers as plain data, for checkpoints.
    pub fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut out: Vec<(String, Vec<f32>)> = self
            .buffers
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.to_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .expect("f32"),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores buffers from checkpoint data.
    pub fn restore(&mut self, state: Vec<(String, Vec<f32>)>, device: &Device) {
        self.buffers = state
            .into_iter()
            .map(|(k, v)| {
                let n = v.len();
                (k, Tensor::from_data(TensorData::new(v, [n]), device))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps of `update_in_place` against `torch.optim.SGD`'s documented update, written
    /// out separately in f64, with and without Nesterov, decay and momentum.
    #[test]
    fn update_matches_torch_sgd() {
        let grads = [[0.5f32, -1.0, 2.0], [0.25, 0.75, -0.5], [-1.5, 0.1, 0.3]];
        for (momentum, nesterov, decay) in
            [(0.9, true, 5e-4), (0.9, false, 0.0), (0.0, false, 1e-2)]
        {
            let config = SgdConfig {
                momentum,
                nesterov,
                weight_decay: decay,
            };
            let lr = 0.1;
            let mut values = vec![1.0f32, -2.0, 0.5];
            let mut buffer = None;
            let mut expected: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            let mut expected_buf: Option<Vec<f64>> = None;
            for grad in grads {
                update_in_place(&mut values, &grad, &mut buffer, config, decay, lr);
                let d: Vec<f64> = grad
                    .iter()
                    .zip(&expected)
                    .map(|(&g, &p)| g as f64 + decay * p)
                    .collect();
                let step: Vec<f64> = if momentum > 0.0 {
                    let buf: Vec<f64> = match &expected_buf {
                        None => d.clone(),
                        Some(b) => b.iter().zip(&d).map(|(b, d)| momentum * b + d).collect(),
                    };
                    expected_buf = Some(buf.clone());
                    if nesterov {
                        d.iter().zip(&buf).map(|(d, b)| d + momentum * b).collect()
                    } else {
                        buf
                    }
                } else {
                    d
                };
                for (p, s) in expected.iter_mut().zip(&step) {
                    *p -= lr * s;
                }
                for (got, want) in values.iter().zip(&expected) {
                    assert!(
                        (*got as f64 - want).abs() < 1e-5,
                        "momentum {momentum} nesterov {nesterov}: {got} against {want}"
                    );
                }
            }
            assert_eq!(buffer.is_some(), momentum > 0.0);
        }
    }
}
