//! Loading checkpoint tensors into a network, with a full report of what does not fit, and the
//! reverse: a network's tensors as a timm-compatible state dict.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::Device;

use super::checkpoint::{Checkpoint, OutTensor, WeightsError};
use super::paths::{flat_tensors, named_tensors, replace_tensors, NamedTensor, TensorSource};
use crate::config::NetworkConfig;
use crate::model::SkNet;
use crate::presets;

pub use super::metadata::{META_CLASSES, META_CONFIG};

/// How a checkpoint's keys compare with a network's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Tensors loaded.
    pub loaded: usize,
    /// In the network, not in the file: (key, shape).
    pub missing: Vec<(String, Vec<usize>)>,
    /// In the file, not in the network: (key, shape).
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// In both with different shapes: (key, network shape, file shape).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// Whether every key matched.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// Every problem, one per line.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (k, s) in &self.missing {
            out.push(format!("  missing from the file: {k} {s:?}"));
        }
        for (k, s) in &self.unexpected {
            out.push(format!("  unexpected in the file: {k} {s:?}"));
        }
        for (k, ours, theirs) in &self.mismatched {
            out.push(format!(
                "  shape mismatch: {k}: the network has {ours:?}, the file {theirs:?}"
            ));
        }
        out.push(format!(
            "  ({} missing, {} unexpected, {} mis-shaped; {} match)",
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len(),
            self.loaded
        ));
        out.join("\n")
    }
}

/// Compares a network's tensors with a checkpoint's.
pub fn compare(ours: &[NamedTensor], ckpt: &Checkpoint) -> LoadReport {
    let mut report = LoadReport::default();
    let mut seen = std::collections::HashSet::new();
    for t in ours {
        seen.insert(t.path.as_str());
        match ckpt.tensors.get(&t.path) {
            None => report.missing.push((t.path.clone(), t.shape.clone())),
            Some(raw) if raw.shape != t.shape => {
                report
                    .mismatched
                    .push((t.path.clone(), t.shape.clone(), raw.shape.clone()))
            }
            Some(_) => report.loaded += 1,
        }
    }
    for (k, raw) in &ckpt.tensors {
        if !seen.contains(k.as_str()) {
            report.unexpected.push((k.clone(), raw.shape.clone()));
        }
    }
    report
}

struct FromCheckpoint {
    tensors: HashMap<String, Vec<f32>>,
}

impl TensorSource for FromCheckpoint {
    fn values(&mut self, tensor: &NamedTensor) -> Option<Vec<f32>> {
        self.tensors.remove(&tensor.path)
    }
}

/// Loads the tensors of `ckpt` into `model`. Any missing, unexpected or mis-shaped key is an
/// error listing all of them, unless `allow_partial`, in which case matching tensors are loaded,
/// the rest keep their initial values, and the report says which.
pub fn load_into(
    model: SkNet,
    ckpt: Checkpoint,
    allow_partial: bool,
) -> Result<(SkNet, LoadReport), WeightsError> {
    load_except(model, ckpt, allow_partial, &[])
}

/// The classifier's keys: what fine-tuning on other classes initialises anew.
pub const CLASSIFIER_KEYS: [&str; 2] = ["fc.weight", "fc.bias"];

/// What fine-tuning loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneReport {
    /// How the file's keys compared with the network's, the classifier included.
    pub report: LoadReport,
    /// The classifier's tensors kept as initialised, with the file's shapes (empty when the
    /// file's classifier fits and was loaded).
    pub reinitialised: Vec<(String, Vec<usize>)>,
}

/// Loads `ckpt` into `model` for fine-tuning: as [`load_into`], except that a classifier shaped
/// for another number of classes keeps its initial values instead of being an error.
pub fn load_for_fine_tuning(
    model: SkNet,
    ckpt: Checkpoint,
    allow_partial: bool,
) -> Result<(SkNet, FineTuneReport), WeightsError> {
    let (model, report) = load_except(model, ckpt, allow_partial, &CLASSIFIER_KEYS)?;
    let reinitialised = report
        .mismatched
        .iter()
        .filter(|(k, _, _)| CLASSIFIER_KEYS.contains(&k.as_str()))
        .map(|(k, _, file)| (k.clone(), file.clone()))
        .collect();
    Ok((
        model,
        FineTuneReport {
            report,
            reinitialised,
        },
    ))
}

/// [`load_into`], where the mis-shaped keys in `tolerated` keep their initial values without
/// needing `allow_partial`.
fn load_except(
    model: SkNet,
    ckpt: Checkpoint,
    allow_partial: bool,
    tolerated: &[&str],
) -> Result<(SkNet, LoadReport), WeightsError> {
    let ours = named_tensors(&model);
    let report = compare(&ours, &ckpt);
    let mut strict = report.clone();
    strict
        .mismatched
        .retain(|(k, _, _)| !tolerated.contains(&k.as_str()));
    if !strict.is_exact() && !allow_partial {
        let fits = infer_preset(&ckpt).filter(|name| *name != model.config.name);
        return Err(WeightsError::Mismatch {
            path: ckpt.path.clone(),
            arch: model.config.name.clone(),
            fits,
            report: strict.describe(),
        });
    }
    let shapes: HashMap<&str, &Vec<usize>> =
        ours.iter().map(|t| (t.path.as_str(), &t.shape)).collect();
    let tensors = ckpt
        .tensors
        .into_iter()
        .filter(|(k, raw)| shapes.get(k.as_str()) == Some(&&raw.shape))
        .map(|(k, raw)| (k, raw.data))
        .collect();
    let model = replace_tensors(model, &mut FromCheckpoint { tensors });
    Ok((model, report))
}

/// Classes of a checkpoint's classifier, from `fc.weight`.
pub fn checkpoint_classes(ckpt: &Checkpoint) -> Option<usize> {
    ckpt.tensors
        .get("fc.weight")
        .filter(|t| t.shape.len() == 2)
        .map(|t| t.shape[0])
}

/// The preset whose tensors (with the checkpoint's class count) the checkpoint matches exactly.
/// timm's models are tried before the paper's, which share their keys.
pub fn infer_preset(ckpt: &Checkpoint) -> Option<String> {
    let classes = checkpoint_classes(ckpt)?;
    let device = Device::flex();
    let order = [
        "skresnet18",
        "skresnet34",
        "skresnext50_32x4d",
        "sknet26",
        "sknet50",
        "sknet101",
        "keras-seed",
        "sknet29",
        "sknet-tiny",
    ];
    order.into_iter().find_map(|name| {
        let mut config = presets::by_name(name).ok()?;
        config.num_classes = classes;
        let model = SkNet::new(&config, &device).ok()?;
        compare(&named_tensors(&model), ckpt)
            .is_exact()
            .then(|| name.to_string())
    })
}

/// The network a checkpoint is for: an explicit config wins, then the named preset (with the
/// file's class count), then the config stored in the file's metadata, then the preset the
/// tensors fit.
pub fn resolve_config(
    ckpt: &Checkpoint,
    arch: Option<&str>,
    explicit: Option<NetworkConfig>,
) -> Result<NetworkConfig, WeightsError> {
    if let Some(config) = explicit {
        return Ok(config);
    }
    if let Some(name) = arch {
        let mut config = presets::by_name(name)?;
        if let Some(classes) = checkpoint_classes(ckpt) {
            config.num_classes = classes;
        }
        return Ok(config);
    }
    if let Some(config) = super::metadata::config(ckpt)? {
        return Ok(config);
    }
    let name = infer_preset(ckpt).ok_or_else(|| WeightsError::UnknownArchitecture {
        path: ckpt.path.clone(),
    })?;
    let mut config = presets::by_name(&name)?;
    config.num_classes = checkpoint_classes(ckpt).unwrap_or(config.num_classes);
    Ok(config)
}

/// Class names stored in a checkpoint's metadata.
pub fn checkpoint_class_names(ckpt: &Checkpoint) -> Result<Option<Vec<String>>, WeightsError> {
    super::metadata::class_names(ckpt)
}

/// Which network to build for a weights file, and how strictly to load it.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A preset name; the file's class count is kept.
    pub arch: Option<String>,
    /// A config; wins over `arch`.
    pub config: Option<NetworkConfig>,
    /// Load what matches and keep the rest as initialised (a new classifier, say) instead of
    /// failing on any missing, unexpected or mis-shaped key.
    pub allow_partial: bool,
    /// Load tensors that hold NaN or infinite values instead of refusing the file.
    pub allow_nonfinite: bool,
}

/// A network with weights loaded, and what its file says about them.
pub struct Pretrained {
    /// The network.
    pub model: SkNet,
    /// Class names from the file's metadata.
    pub classes: Option<Vec<String>>,
    /// Preprocessing from the file's metadata (sknet-trained weights).
    pub preprocess: Option<crate::infer::Preprocess>,
    /// What matched.
    pub report: LoadReport,
}

/// Reads a weights file (a path, or `hf:OWNER/NAME[/FILE]` through the Hugging Face hub cache);
/// unless `allow_nonfinite`, a tensor holding NaN or infinite values is an error naming it.
pub fn read_weights(spec: &str, allow_nonfinite: bool) -> Result<Checkpoint, WeightsError> {
    let path = super::hub::local_path(spec)?;
    let ckpt = Checkpoint::read(&path)?;
    if !allow_nonfinite {
        let keys = ckpt.non_finite_keys();
        if !keys.is_empty() {
            return Err(WeightsError::NonFinite {
                path: ckpt.path.clone(),
                keys,
            });
        }
    }
    Ok(ckpt)
}

/// Reads a weights file (a path, or `hf:OWNER/NAME[/FILE]` through the Hugging Face hub cache),
/// builds the network it is for (see [`resolve_config`]) and loads it.
///
/// # Errors
/// A file that cannot be read, metadata that does not parse, a network that cannot be built,
/// (unless `allow_nonfinite`) tensors with NaN or infinite values, and (unless `allow_partial`)
/// any key that does not fit.
pub fn load_pretrained(
    spec: &str,
    options: &LoadOptions,
    device: &Device,
) -> Result<Pretrained, WeightsError> {
    let ckpt = read_weights(spec, options.allow_nonfinite)?;
    let config = resolve_config(&ckpt, options.arch.as_deref(), options.config.clone())?;
    let classes = super::metadata::class_names(&ckpt)?;
    let preprocess = super::metadata::preprocess(&ckpt)?;
    let model = SkNet::new(&config, device)?;
    let (model, report) = load_into(model, ckpt, options.allow_partial)?;
    Ok(Pretrained {
        model,
        classes,
        preprocess,
        report,
    })
}

/// The network's tensors as a PyTorch state dict: timm's keys, plus a zero
/// `num_batches_tracked` for every BatchNorm so that `load_state_dict(strict=True)` accepts it.
/// A BN-folded network is refused ([`WeightsError::Folded`]).
pub fn state_dict(model: &SkNet) -> Result<Vec<(String, OutTensor)>, WeightsError> {
    if model.is_batchnorm_folded() {
        return Err(WeightsError::Folded {
            arch: model.config.name.clone(),
        });
    }
    let mut out = Vec::new();
    for t in flat_tensors(model, None) {
        let key = t.named.path.clone();
        let data = t
            .value
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 tensor");
        let is_var = t.named.role == super::paths::TensorRole::RunningVar;
        out.push((key.clone(), OutTensor::F32(t.named.shape, data)));
        if is_var {
            let prefix = key.trim_end_matches("running_var");
            out.push((format!("{prefix}num_batches_tracked"), OutTensor::I64Zero));
        }
    }
    Ok(out)
}

/// Metadata written with exported weights.
pub fn export_metadata(model: &SkNet, classes: Option<&[String]>) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert(
        META_CONFIG.into(),
        serde_json::to_string(&model.config).expect("config"),
    );
    if let Some(c) = classes {
        meta.insert(
            META_CLASSES.into(),
            serde_json::to_string(c).expect("classes"),
        );
    }
    meta
}
