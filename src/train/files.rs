//! The files a run writes and reads in its output folder: weights, the training checkpoint and
//! the metrics. Every write is atomic (a temporary file, then a rename).

use std::collections::BTreeMap;
use std::path::Path;

use super::optim::{Optimizer, STATE_BUFFERS};
use super::{plot, EpochMetrics, TrainError, TrainState, META_PREPROCESS, META_STATE};
use crate::infer::Preprocess;
use crate::model::SkNet;
use crate::weights::checkpoint::WeightsError;
use crate::weights::checkpoint::{write_atomic, write_safetensors, Checkpoint, OutTensor};
use crate::weights::load;

/// The prefix of the EMA weights' keys in a training checkpoint.
const EMA_PREFIX: &str = "ema.";

/// Writes the training checkpoint (weights, EMA weights, optimizer buffers, state) atomically.
pub(super) fn save_checkpoint(
    path: &Path,
    model: &SkNet,
    ema: Option<&SkNet>,
    optimizer: &Optimizer,
    state: &TrainState,
    classes: &[String],
) -> Result<(), WeightsError> {
    let mut tensors: Vec<(String, OutTensor)> = load::state_dict(model)?
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    if let Some(ema) = ema {
        for (k, t) in load::state_dict(ema)? {
            tensors.push((format!("{EMA_PREFIX}{k}"), t));
        }
    }
    for (k, v) in optimizer.state() {
        let n = v.len();
        tensors.push((k, OutTensor::F32(vec![n], v)));
    }
    let mut meta = weights_metadata(model, classes, &state.settings.preprocess);
    meta.insert(
        META_STATE.into(),
        serde_json::to_string(state).expect("state"),
    );
    write_safetensors(path, tensors, meta)
}

fn weights_metadata(
    model: &SkNet,
    classes: &[String],
    pre: &Preprocess,
) -> BTreeMap<String, String> {
    let mut meta = load::export_metadata(model, Some(classes));
    meta.insert(
        META_PREPROCESS.into(),
        serde_json::to_string(pre).expect("preprocess"),
    );
    meta
}

/// Writes timm-compatible weights with the config, class names and preprocessing in their
/// metadata.
pub(super) fn save_weights(
    path: &Path,
    model: &SkNet,
    classes: &[String],
    pre: &Preprocess,
) -> Result<(), WeightsError> {
    write_safetensors(
        path,
        load::state_dict(model)?,
        weights_metadata(model, classes, pre),
    )
}

/// What a training checkpoint holds.
pub(super) struct TrainCheckpoint {
    /// The model's tensors, keyed as in weights files.
    pub model: Checkpoint,
    /// The optimizer's buffers, named `<buffer>.<parameter key>`.
    pub optimizer: Vec<(String, Vec<f32>)>,
    /// The EMA weights, when the run keeps them.
    pub ema: Option<Checkpoint>,
    /// Where training stood.
    pub state: TrainState,
}

/// Reads a training checkpoint: model tensors, optimizer buffers, state.
pub(super) fn read_checkpoint(path: &Path) -> Result<TrainCheckpoint, TrainError> {
    let ckpt = Checkpoint::read(path)?;
    let resume_err = |message: String| TrainError::Resume {
        path: path.display().to_string(),
        message,
    };
    let state: TrainState = ckpt
        .metadata
        .get(META_STATE)
        .ok_or_else(|| {
            resume_err("not a training checkpoint (no training state in its metadata)".into())
        })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| resume_err(format!("bad training state: {e}")))
        })?;
    let mut model = Checkpoint {
        path: ckpt.path.clone(),
        metadata: ckpt.metadata.clone(),
        ..Default::default()
    };
    let mut optimizer = Vec::new();
    let mut ema = Checkpoint {
        path: ckpt.path.clone(),
        metadata: ckpt.metadata.clone(),
        ..Default::default()
    };
    for (k, t) in ckpt.tensors {
        if let Some(key) = k.strip_prefix("model.") {
            model.tensors.insert(key.to_string(), t);
        } else if let Some(key) = k.strip_prefix(EMA_PREFIX) {
            ema.tensors.insert(key.to_string(), t);
        } else if k
            .split_once('.')
            .is_some_and(|(buffer, _)| STATE_BUFFERS.contains(&buffer))
        {
            optimizer.push((k, t.data));
        }
    }
    Ok(TrainCheckpoint {
        model,
        optimizer,
        ema: (!ema.tensors.is_empty()).then_some(ema),
        state,
    })
}

/// The metrics of epochs `1..=upto` in `metrics.jsonl` (none when there is no such file).
pub(super) fn read_history(path: &Path, upto: usize) -> Vec<EpochMetrics> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<EpochMetrics>(l).ok())
        .filter(|m| m.epoch <= upto)
        .collect()
}

/// Writes `metrics.jsonl`, `metrics.csv` and `curves.png` for `history`.
pub(super) fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<(), TrainError> {
    let mut jsonl = String::new();
    let with_ema = history.iter().any(|m| m.ema.is_some());
    let mut csv = String::from(
        "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,images_per_s,seconds",
    );
    csv.push_str(if with_ema {
        ",ema_val_loss,ema_val_top1,ema_val_top5\n"
    } else {
        "\n"
    });
    for m in history {
        jsonl.push_str(&serde_json::to_string(m).expect("metrics"));
        jsonl.push('\n');
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1},{:.1}",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_top1,
            m.val_loss,
            m.val_top1,
            m.val_top5,
            m.images_per_s,
            m.seconds
        ));
        if with_ema {
            let e = m.ema.as_ref();
            let cell = |f: fn(&super::EmaMetrics) -> f64| {
                e.map_or(String::new(), |e| format!("{:.6}", f(e)))
            };
            csv.push_str(&format!(
                ",{},{},{}",
                cell(|e| e.val_loss),
                cell(|e| e.val_top1),
                cell(|e| e.val_top5)
            ));
        }
        csv.push('\n');
    }
    write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
    write_atomic(&dir.join("curves.png"), &plot::curves_png(history)?)?;
    Ok(())
}
