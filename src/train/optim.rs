//! SGD with momentum (optionally Nesterov), as `torch.optim.SGD` computes it, with weight decay
//! on conv and linear weights only: BatchNorm parameters and biases are not decayed.

use std::collections::HashMap;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::SkNet;
use crate::ops::SgdUpdate;
use crate::weights::load::CLASSIFIER_KEYS;
use crate::weights::paths::{map_keyed, KeyedMapper, TensorRole};

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct SgdConfig {
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay on conv / linear weights.
    pub weight_decay: f64,
    /// The learning rate of every parameter outside the classifier, as a multiple of the step's.
    pub backbone_lr_scale: f64,
}

/// Momentum buffers, by parameter key (so that they can be checkpointed by name).
pub struct Sgd {
    /// Settings.
    pub config: SgdConfig,
    /// `key -> flattened momentum buffer`.
    pub buffers: HashMap<String, Tensor<1>>,
    non_finite: Option<String>,
}

struct Step<'a> {
    grads: GradientsParams,
    config: SgdConfig,
    lr: f64,
    buffers: &'a mut HashMap<String, Tensor<1>>,
    /// The first parameter whose new value holds a NaN or an infinity.
    non_finite: Option<String>,
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
        let decay = if role == TensorRole::Weight {
            self.config.weight_decay
        } else {
            0.0
        };
        let lr = if CLASSIFIER_KEYS.contains(&path.as_str()) {
            self.lr
        } else {
            self.lr * self.config.backbone_lr_scale
        };
        let update = SgdUpdate {
            lr,
            momentum: self.config.momentum,
            nesterov: self.config.nesterov,
            weight_decay: decay,
        };
        let buffer = self.buffers.remove(&path);
        let (updated, buffer, finite) = crate::ops::sgd_update(value, grad, buffer, update);
        if !finite && self.non_finite.is_none() {
            self.non_finite = Some(path.clone());
        }
        if let Some(buffer) = buffer {
            self.buffers.insert(path, buffer);
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

impl Sgd {
    /// A new optimizer.
    pub fn new(config: SgdConfig) -> Self {
        Self {
            config,
            buffers: HashMap::new(),
            non_finite: None,
        }
    }

    /// One step at learning rate `lr`. Afterwards, [`Sgd::non_finite`] names the first
    /// parameter the step left with a NaN or an infinity, if any.
    pub fn step(&mut self, model: SkNet, grads: GradientsParams, lr: f64) -> SkNet {
        let mut step = Step {
            grads,
            config: self.config,
            lr,
            buffers: &mut self.buffers,
            non_finite: None,
        };
        let model = map_keyed(model, &mut step);
        self.non_finite = step.non_finite;
        model
    }

    /// The first parameter the last step left with a NaN or an infinity.
    pub fn non_finite(&self) -> Option<&str> {
        self.non_finite.as_deref()
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
