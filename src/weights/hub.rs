//! `hf:owner/name[/file]` weight specs: files from the Hugging Face hub, in the hub's standard
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), shared with
//! Python's `huggingface_hub`. A cached file is used without any network access; with
//! `HF_HUB_OFFLINE=1` nothing is downloaded.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use super::checkpoint::WeightsError;

/// The default file of a timm model repository.
pub const DEFAULT_FILE: &str = "model.safetensors";

/// A parsed `hf:` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    /// `owner/name`.
    pub repo: String,
    /// File inside the repository.
    pub file: String,
}

impl HubSpec {
    /// Parses `hf:owner/name` or `hf:owner/name/file`; `None` when `spec` has no `hf:` prefix.
    pub fn parse(spec: &str) -> Option<Result<Self, WeightsError>> {
        let rest = spec.strip_prefix("hf:")?;
        let parts: Vec<&str> = rest.split('/').collect();
        if let Some(bad) = parts.iter().find(|p| !is_plain_segment(p)) {
            return Some(Err(WeightsError::Hub {
                spec: spec.into(),
                message: format!(
                    "`{bad}` is not a plain name: each part of a hub spec is letters, digits, \
                     `-`, `_` and `.`, and neither `.` nor `..` (which would leave the cache)"
                ),
            }));
        }
        Some(match parts.as_slice() {
            [owner, name] if !owner.is_empty() && !name.is_empty() => Ok(Self {
                repo: format!("{owner}/{name}"),
                file: DEFAULT_FILE.into(),
            }),
            [owner, name, file @ ..]
                if !owner.is_empty() && !name.is_empty() && !file.is_empty() =>
            {
                Ok(Self {
                    repo: format!("{owner}/{name}"),
                    file: file.join("/"),
                })
            }
            _ => Err(WeightsError::Hub {
                spec: spec.into(),
                message: "expected hf:OWNER/NAME or hf:OWNER/NAME/FILE, e.g. \
                          hf:timm/skresnet18.ra_in1k"
                    .into(),
            }),
        })
    }
}

/// A repository, owner or file-path segment the hub accepts, which cannot name a folder above it.
fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn cache() -> Cache {
    match std::env::var("HF_HUB_CACHE") {
        Ok(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref(),
        Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes") | Ok("ON") | Ok("on")
    )
}

/// The local path of a hub file: from the cache, else downloaded into it.
pub fn resolve(spec_text: &str, spec: &HubSpec) -> Result<PathBuf, WeightsError> {
    let cache = cache();
    if let Some(path) = cache.model(spec.repo.clone()).get(&spec.file) {
        return Ok(path);
    }
    if offline() {
        return Err(WeightsError::Hub {
            spec: spec_text.into(),
            message: format!(
                "`{}` is not in the hub cache {} and HF_HUB_OFFLINE is set, so it cannot be \
                 downloaded; fetch it once while online, or pass a local file",
                spec.file,
                cache.path().display()
            ),
        });
    }
    let api = ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| WeightsError::Hub {
            spec: spec_text.into(),
            message: format!("cannot start the hub client: {e}"),
        })?;
    api.model(spec.repo.clone())
        .get(&spec.file)
        .map_err(|e| WeightsError::Hub {
            spec: spec_text.into(),
            message: format!(
                "download failed ({e}); the file is not in the hub cache {} either. Check the \
                 name and the network, or pass a local file",
                cache.path().display()
            ),
        })
}

/// A weights argument as a local path: `hf:` specs are resolved through the hub cache.
pub fn local_path(spec: &str) -> Result<PathBuf, WeightsError> {
    match HubSpec::parse(spec) {
        Some(parsed) => resolve(spec, &parsed?),
        None => Ok(PathBuf::from(spec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(HubSpec::parse("model.safetensors").is_none());
        let s = HubSpec::parse("hf:timm/skresnet18.ra_in1k")
            .unwrap()
            .unwrap();
        assert_eq!(s.repo, "timm/skresnet18.ra_in1k");
        assert_eq!(s.file, "model.safetensors");
        let s = HubSpec::parse("hf:timm/x/pytorch_model.bin")
            .unwrap()
            .unwrap();
        assert_eq!(s.file, "pytorch_model.bin");
        assert!(HubSpec::parse("hf:timm").unwrap().is_err());
        assert!(HubSpec::parse("hf:/x").unwrap().is_err());
    }

    /// Specs that would read outside the hub cache are refused before any path is built.
    #[test]
    fn specs_stay_inside_the_cache() {
        for bad in [
            "hf:timm/../../etc/passwd",
            "hf:../x/model.safetensors",
            "hf:timm/x/../../../secret",
            "hf:timm/x/./model.safetensors",
            "hf:timm/x\\..\\y",
            "hf:timm//x",
        ] {
            let err = HubSpec::parse(bad).unwrap().unwrap_err().to_string();
            assert!(err.contains("not a plain name"), "{bad}: {err}");
        }
        let ok = HubSpec::parse("hf:timm/x/sub/model.v2.safetensors");
        assert_eq!(ok.unwrap().unwrap().file, "sub/model.v2.safetensors");
    }
}
