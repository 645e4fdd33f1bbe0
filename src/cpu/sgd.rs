//! The SGD update on the CPU: one pass over a parameter's values instead of five or six tensor
//! ops (each a pass and an allocation) per parameter.

use burn::tensor::{Tensor, TensorData};

/// One parameter's SGD update settings, as `torch.optim.SGD` computes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdUpdate {
    /// Learning rate.
    pub lr: f64,
    /// Momentum (0 for none).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay on this parameter (0 for none).
    pub weight_decay: f64,
}

/// [`crate::ops::sgd_update`] on host buffers. Both tensors are f32 (checked by the caller).
pub(crate) fn sgd_update<const D: usize>(
    value: Tensor<D>,
    grad: Tensor<D>,
    buffer: Option<Tensor<1>>,
    update: SgdUpdate,
) -> (Tensor<D>, Option<Tensor<1>>, bool) {
    let device = value.device();
    let dims = value.dims();
    let n: usize = dims.iter().product();
    let mut values = f32_vec(value);
    let grad = f32_vec(grad);
    let mut buffer = buffer.map(f32_vec);
    let finite = update_in_place(&mut values, &grad, &mut buffer, update);
    let buffer = buffer.map(|b| Tensor::from_data(TensorData::new(b, [n]), &device));
    let value = Tensor::from_data(TensorData::new(values, dims.to_vec()), &device);
    (value, buffer, finite)
}

/// A tensor's values as an `f32` vector.
fn f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("an f32 tensor (checked by the caller)")
}

/// The update in place; `buffer` holds the momentum buffer afterwards (stays `None` without
/// momentum). Returns whether every updated value is finite, found in the same pass.
fn update_in_place(
    values: &mut [f32],
    grad: &[f32],
    buffer: &mut Option<Vec<f32>>,
    update: SgdUpdate,
) -> bool {
    assert_eq!(values.len(), grad.len(), "SGD: gradient size");
    let (decay, lr, momentum) = (
        update.weight_decay as f32,
        update.lr as f32,
        update.momentum as f32,
    );
    if update.momentum <= 0.0 {
        let mut finite = true;
        for (p, &g) in values.iter_mut().zip(grad) {
            let d = if decay > 0.0 { g + *p * decay } else { g };
            *p -= d * lr;
            finite &= p.is_finite();
        }
        return finite;
    }
    let first = buffer.is_none();
    let buf = buffer.get_or_insert_with(|| vec![0f32; values.len()]);
    assert_eq!(buf.len(), values.len(), "SGD: momentum buffer size");
    let mut finite = true;
    for ((p, &g), b) in values.iter_mut().zip(grad).zip(buf.iter_mut()) {
        let d = if decay > 0.0 { g + *p * decay } else { g };
        *b = if first { d } else { *b * momentum + d };
        let step = if update.nesterov {
            d + *b * momentum
        } else {
            *b
        };
        *p -= step * lr;
        finite &= p.is_finite();
    }
    finite
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
            let lr = 0.1;
            let update = SgdUpdate {
                lr,
                momentum,
                nesterov,
                weight_decay: decay,
            };
            let mut values = vec![1.0f32, -2.0, 0.5];
            let mut buffer = None;
            let mut expected: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            let mut expected_buf: Option<Vec<f64>> = None;
            for grad in grads {
                assert!(update_in_place(&mut values, &grad, &mut buffer, update));
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
