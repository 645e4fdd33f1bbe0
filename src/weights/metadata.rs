//! The metadata keys sknet writes into its safetensors files, in one place, and their readers.
//!
//! Weights files (`best.safetensors`, `last.safetensors`, exports) carry the network config, the
//! class names and the preprocessing; `checkpoint.safetensors` also carries the training state.

use serde::de::DeserializeOwned;

use super::checkpoint::{Checkpoint, WeightsError};
use crate::config::NetworkConfig;
use crate::infer::Preprocess;

/// Metadata key holding the network config as JSON.
pub const META_CONFIG: &str = "sknet.config";
/// Metadata key holding the class names as a JSON array.
pub const META_CLASSES: &str = "sknet.classes";
/// Metadata key holding the preprocessing settings as JSON.
pub const META_PREPROCESS: &str = "sknet.preprocess";
/// Metadata key holding the training state of `checkpoint.safetensors` as JSON.
pub const META_STATE: &str = "sknet.train_state";

/// The JSON value under `key`, if the file has one; an error naming the file and the key if it
/// does not parse as `T` (`expected` says what it should be).
pub fn read_json<T: DeserializeOwned>(
    ckpt: &Checkpoint,
    key: &str,
    expected: &str,
) -> Result<Option<T>, WeightsError> {
    ckpt.metadata
        .get(key)
        .map(|json| {
            serde_json::from_str(json).map_err(|e| WeightsError::Metadata {
                path: ckpt.path.clone(),
                key: key.into(),
                message: format!("expected {expected}: {e}"),
            })
        })
        .transpose()
}

/// The network config stored in the file, validated.
pub fn config(ckpt: &Checkpoint) -> Result<Option<NetworkConfig>, WeightsError> {
    let config: Option<NetworkConfig> = read_json(ckpt, META_CONFIG, "an sknet network config")?;
    if let Some(config) = &config {
        config.validate()?;
    }
    Ok(config)
}

/// The class names stored in the file.
pub fn class_names(ckpt: &Checkpoint) -> Result<Option<Vec<String>>, WeightsError> {
    read_json(ckpt, META_CLASSES, "a JSON array of strings")
}

/// The preprocessing stored in the file (sknet-trained weights), checked
/// ([`Preprocess::validate`]): its size decides what is allocated for every image.
pub fn preprocess(ckpt: &Checkpoint) -> Result<Option<Preprocess>, WeightsError> {
    let preprocess: Option<Preprocess> =
        read_json(ckpt, META_PREPROCESS, "sknet preprocessing settings")?;
    if let Some(p) = &preprocess {
        p.validate().map_err(|message| WeightsError::Metadata {
            path: ckpt.path.clone(),
            key: META_PREPROCESS.into(),
            message,
        })?;
    }
    Ok(preprocess)
}
