//! Model EMA, as timm's `ModelEmaV3`: after every optimizer step each float tensor of an
//! averaged copy of the network (parameters and BatchNorm running statistics alike) moves
//! towards the network's, `ema = ema * d + model * (1 - d)`. The first update copies the
//! network (`d = 0`); after it, `d` is the decay, or with warmup
//! `min(decay, 1 - (1 + k)^(-2/3))` at the `k`-th update after the first, so that early
//! updates weigh more.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::model::SkNet;
use crate::weights::paths::{map_keyed, visit_keyed, KeyedMapper, KeyedVisitor, TensorRole};

/// The averaged network and how it averages.
#[derive(Clone)]
pub struct ModelEma {
    /// The average, in inference form (on the device without autodiff).
    model: SkNet,
    /// The decay per update.
    pub decay: f64,
    /// timm's `model_ema_warmup`.
    pub warmup: bool,
}

/// The tensors of a network, flattened, in visiting order.
struct Collect(Vec<(String, Tensor<1>)>);

impl KeyedVisitor for Collect {
    fn visit<const D: usize>(&mut self, key: String, _: TensorRole, param: &Param<Tensor<D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.0.push((key, value.reshape([n])));
    }
}

struct Lerp {
    sources: std::vec::IntoIter<(String, Tensor<1>)>,
    decay: f64,
}

impl KeyedMapper for Lerp {
    fn map<const D: usize>(
        &mut self,
        key: String,
        _: TensorRole,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let (id, average, mapper) = param.consume();
        // Both networks have one structure: their tensors come in the same order.
        let (source_key, source) = self.sources.next().expect("the same network");
        debug_assert_eq!(key, source_key);
        let source: Tensor<D> = source.reshape(average.shape());
        let updated = average
            .mul_scalar(self.decay)
            .add(source.mul_scalar(1.0 - self.decay));
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The decay of the `step`-th update (the first is 1), as `ModelEmaV3.get_decay`.
fn decay_at(decay: f64, warmup: bool, step: usize) -> f64 {
    let k = step.saturating_sub(1);
    if k == 0 {
        return 0.0;
    }
    if !warmup {
        return decay;
    }
    let warm = 1.0 - (1.0 + k as f64).powf(-2.0 / 3.0);
    warm.clamp(0.0, decay)
}

impl ModelEma {
    /// An average starting at `model`'s weights.
    pub fn new(model: &SkNet, decay: f64, warmup: bool) -> Self {
        Self {
            model: model.valid(),
            decay,
            warmup,
        }
    }

    /// The decay of the `step`-th update (the first is 1).
    pub fn decay_at(&self, step: usize) -> f64 {
        decay_at(self.decay, self.warmup, step)
    }

    /// Moves the average towards `model` after its `step`-th optimizer step.
    pub fn update(&mut self, model: &SkNet, step: usize) {
        let mut sources = Collect(Vec::new());
        visit_keyed(&model.valid(), &mut sources);
        let mut lerp = Lerp {
            sources: sources.0.into_iter(),
            decay: self.decay_at(step),
        };
        self.model = map_keyed(self.model.clone(), &mut lerp);
    }

    /// The averaged network (inference form).
    pub fn model(&self) -> &SkNet {
        &self.model
    }

    /// Replaces the average (a resumed run's).
    pub fn set_model(&mut self, model: SkNet) {
        self.model = model;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(model: &SkNet) -> Vec<(String, Vec<f32>)> {
        let mut all = Collect(Vec::new());
        visit_keyed(model, &mut all);
        all.0
            .into_iter()
            .map(|(k, t)| (k, crate::ops::values_f32(t)))
            .collect()
    }

    /// Networks draw their initial weights from the device's seeded generator, which the
    /// trainer's tests rely on: one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        super::super::tests::ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn decays_match_timm_model_ema_v3() {
        let f: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ema.json")).expect("fixture");
        let decay = f["decay"].as_f64().expect("decay");
        for run in f["runs"].as_array().expect("runs") {
            let warmup = run["warmup"].as_bool().expect("warmup");
            for (i, want) in run["decays"].as_array().expect("decays").iter().enumerate() {
                let want = want.as_f64().expect("decay");
                let got = decay_at(decay, warmup, i + 1);
                assert!(
                    (got - want).abs() < 1e-15,
                    "warmup {warmup}, step {}: {got} vs {want}",
                    i + 1
                );
            }
        }
    }

    /// Adds a different constant to each tensor, running statistics included.
    struct Shift(f64);

    impl KeyedMapper for Shift {
        fn map<const D: usize>(
            &mut self,
            _: String,
            _: TensorRole,
            param: Param<Tensor<D>>,
        ) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            self.0 += 0.5;
            Param::from_mapped_value(id, value.add_scalar(self.0), mapper)
        }
    }

    /// Each update moves every tensor, BatchNorm statistics included, by the step's decay.
    #[test]
    fn an_update_is_a_weighted_mean_of_every_tensor() {
        let _serial = serial();
        let device = crate::device::default_device();
        let mut config = crate::presets::by_name("sknet-tiny").expect("preset");
        config.layers = vec![1];
        config.planes = vec![8];
        config.strides = vec![1];
        config.stem = crate::config::StemConfig::Cifar { width: 8 };
        device.seed(1);
        let first = SkNet::new(&config, &device).expect("network");
        let second = SkNet::new(&config, &device).expect("network");
        // Fresh networks share their BatchNorm statistics (0 and 1): shifted, they differ.
        let third = map_keyed(
            SkNet::new(&config, &device).expect("network"),
            &mut Shift(0.0),
        );
        let mut ema = ModelEma::new(&first, 0.75, false);
        // The first update copies; the next ones weigh the model by 1 - 0.75.
        ema.update(&second, 1);
        assert_eq!(values(ema.model()), values(&second));
        ema.update(&third, 2);
        let (e, b, c) = (values(ema.model()), values(&second), values(&third));
        assert!(e.iter().any(|(k, _)| k.ends_with("running_var")));
        assert_ne!(values(&second), values(&third));
        for ((key, got), ((_, old), (_, new))) in e.iter().zip(b.iter().zip(&c)) {
            for ((g, o), n) in got.iter().zip(old).zip(new) {
                let want = 0.75 * o + 0.25 * n;
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{key}: {g} vs {want}"
                );
            }
        }
    }
}
