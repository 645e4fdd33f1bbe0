//! Reading and writing checkpoint files: safetensors, and PyTorch's `.pth` / `.bin` / `.pt`
//! (zip-pickled state dicts, also legacy pickles; a state dict nested under `state_dict`, `model`
//! or `module` is found, and a DataParallel `module.` prefix is removed).
//!
//! All floating-point tensors are converted to f32; integer tensors (BatchNorm's
//! `num_batches_tracked`) are kept aside, since sknet has no use for them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use thiserror::Error;

/// Largest checkpoint file read (a 101-layer SKNet in f32 is about 200 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 4 << 30;

/// How many times its own length a PyTorch file's tensors may take. `torch.save` stores its
/// entries uncompressed, so only storages shared between tensors make them larger than the file.
pub const MAX_PYTORCH_EXPANSION: u64 = 16;

/// Errors of checkpoint files and weight loading.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a readable checkpoint (corrupt, truncated, another format).
    #[error("{path}: not a readable checkpoint: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A network whose BatchNorms are folded into its convs (inference only) cannot be saved:
    /// its weights no longer have the checkpoint's meaning.
    #[error("cannot save `{arch}`: its BatchNorms are folded into the convolutions (inference only); save the network before `fold_batchnorm`")]
    Folded {
        /// The network.
        arch: String,
    },
    /// The file's tensors do not fit the network.
    #[error("{path}: the weights do not fit `{arch}`{}\n{report}", fits_note(.fits))]
    Mismatch {
        /// The file.
        path: String,
        /// The network.
        arch: String,
        /// The preset the file does fit, when one does.
        fits: Option<String>,
        /// Every missing, unexpected and mis-shaped key.
        report: String,
    },
    /// The file carries no sknet config and its tensors fit no preset exactly.
    #[error("{path}: the weights fit no preset and carry no config; name the architecture or give its config to see which keys differ")]
    UnknownArchitecture {
        /// The file.
        path: String,
    },
    /// Tensors holding NaN or infinite values: a network loaded from them computes garbage.
    #[error("{path}: {} tensors hold NaN or infinite values: {}", .keys.len(), list_keys(.keys))]
    NonFinite {
        /// The file.
        path: String,
        /// Their keys, in key order.
        keys: Vec<String>,
    },
    /// The network named for the file is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The file carries an sknet config that cannot be used.
    #[error("{path}: bad metadata `{key}`: {message}")]
    Metadata {
        /// The file.
        path: String,
        /// The metadata key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Hugging Face hub resolution failed.
    #[error("{spec}: {message}")]
    Hub {
        /// The `hf:` spec.
        spec: String,
        /// What went wrong, and what to do.
        message: String,
    },
}

fn list_keys(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", keys.len() - SHOWN));
    }
    text
}

fn fits_note(fits: &Option<String>) -> String {
    fits.as_ref()
        .map(|name| format!(" (they fit the preset `{name}`)"))
        .unwrap_or_default()
}

/// One tensor of a checkpoint, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The tensors and metadata of a checkpoint file.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: String,
    /// Floating-point tensors by key.
    pub tensors: BTreeMap<String, RawTensor>,
    /// Keys of integer tensors that were skipped (e.g. `num_batches_tracked`).
    pub skipped: Vec<String>,
    /// String metadata (safetensors `__metadata__`).
    pub metadata: BTreeMap<String, String>,
}

fn format_err(path: &Path, message: impl Into<String>) -> WeightsError {
    WeightsError::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Whether a file of `len` bytes starting with `head` is laid out as safetensors: a
/// little-endian u64 header length that fits the file, then the header's JSON object. The first
/// byte of that length can be anything, `0x80` (a pickle's first byte) and `P` included, so the
/// PyTorch formats are recognised only where this does not hold.
fn is_safetensors_start(head: &[u8], len: u64) -> bool {
    let Some((size, rest)) = head.split_first_chunk::<8>() else {
        return false;
    };
    let header = u64::from_le_bytes(*size);
    header.checked_add(8).is_some_and(|end| end <= len) && rest.first() == Some(&b'{')
}

fn file_err(path: &Path, problem: crate::files::FileProblem) -> WeightsError {
    match problem {
        crate::files::FileProblem::Io(source) => io_err(path, source),
        other => format_err(path, other.to_string()),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> WeightsError {
    WeightsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Converts little-endian bytes of a float dtype to f32; `None` for non-float dtypes.
fn floats_from_le(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        _ => return None,
    })
}

/// IEEE half to f32.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

impl Checkpoint {
    /// Keys of the tensors that hold a NaN or an infinity, sorted.
    pub fn non_finite_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .tensors
            .iter()
            .filter(|(_, t)| !t.data.iter().all(|v| v.is_finite()))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Reads a checkpoint, telling the format from the file's first bytes.
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let len = crate::files::regular_file_len(path, MAX_CHECKPOINT_BYTES)
            .map_err(|e| file_err(path, e))?;
        let mut head = [0u8; 9];
        let n = {
            use std::io::Read;
            let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
            let mut taken = f.take(head.len() as u64);
            let mut n = 0;
            loop {
                match taken.read(&mut head[n..]).map_err(|e| io_err(path, e))? {
                    0 => break n,
                    k => n += k,
                }
            }
        };
        let head = &head[..n];
        let pytorch = !is_safetensors_start(head, len)
            && (head.starts_with(b"PK") || head.first() == Some(&0x80));
        let mut ckpt = if pytorch {
            Self::read_pytorch(path, len)?
        } else {
            Self::read_safetensors(path)?
        };
        ckpt.strip_prefixes();
        if ckpt.tensors.is_empty() {
            return Err(format_err(path, "it holds no floating-point tensors"));
        }
        Ok(ckpt)
    }

    fn read_safetensors(path: &Path) -> Result<Self, WeightsError> {
        let bytes = crate::files::read_bounded(path, MAX_CHECKPOINT_BYTES)
            .map_err(|e| file_err(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            format_err(
                path,
                format!("not a PyTorch zip/pickle, and not safetensors ({e})"),
            )
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| format_err(path, format!("safetensors header: {e}")))?;
        let mut ckpt = Checkpoint {
            path: path.display().to_string(),
            metadata: header
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            match floats_from_le(view.data(), view.dtype()) {
                Some(data) => {
                    ckpt.tensors.insert(
                        name,
                        RawTensor {
                            shape: view.shape().to_vec(),
                            data,
                        },
                    );
                }
                None => ckpt.skipped.push(name),
            }
        }
        Ok(ckpt)
    }

    /// Reads a PyTorch file of `file_len` bytes. Its tensors may hold at most
    /// [`MAX_PYTORCH_EXPANSION`] times that many bytes (and [`MAX_CHECKPOINT_BYTES`] in all),
    /// checked from their shapes before any is read: a compressed zip entry cannot make a small
    /// file claim gigabytes.
    fn read_pytorch(path: &Path, file_len: u64) -> Result<Self, WeightsError> {
        use pytorch_reader::{DType, PytorchReader};
        let budget = file_len
            .saturating_mul(MAX_PYTORCH_EXPANSION)
            .min(MAX_CHECKPOINT_BYTES);
        let mut claimed: u64 = 0;
        let reader = PytorchReader::new(path)
            .map_err(|e| format_err(path, format!("PyTorch checkpoint: {e}")))?;
        let mut ckpt = Checkpoint {
            path: path.display().to_string(),
            ..Default::default()
        };
        for (name, t) in reader.tensors() {
            let dtype = match t.dtype() {
                DType::F32 => Dtype::F32,
                DType::F64 => Dtype::F64,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                _ => {
                    ckpt.skipped.push(name.clone());
                    continue;
                }
            };
            let elements = t
                .shape()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let bytes = elements.and_then(|n| n.checked_mul(t.dtype().size() as u64));
            claimed = match bytes.and_then(|b| claimed.checked_add(b)) {
                Some(total) if total <= budget => total,
                total => {
                    let needed = total.map_or("over 2^64".into(), |t| t.to_string());
                    return Err(format_err(
                        path,
                        format!(
                            "tensor `{name}` of shape {:?} brings the tensors to {needed} bytes, \
                             above the {budget} allowed for this file ({MAX_PYTORCH_EXPANSION} \
                             times its {file_len} bytes, and {} GiB at most): a compressed or \
                             corrupt archive",
                            t.shape(),
                            MAX_CHECKPOINT_BYTES >> 30
                        ),
                    ));
                }
            };
            let bytes = t
                .read()
                .map_err(|e| format_err(path, format!("tensor `{name}`: {e}")))?;
            let data = floats_from_le(&bytes, dtype)
                .ok_or_else(|| format_err(path, format!("tensor `{name}`: not floating point")))?;
            if Some(data.len() as u64) != elements {
                return Err(format_err(
                    path,
                    format!(
                        "tensor `{name}`: data does not match its shape {:?}",
                        t.shape()
                    ),
                ));
            }
            ckpt.tensors.insert(
                name.clone(),
                RawTensor {
                    shape: t.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(ckpt)
    }

    /// Removes a prefix every key shares: a nesting key (`state_dict.`, `model.`) or
    /// DataParallel's `module.`.
    fn strip_prefixes(&mut self) {
        for prefix in ["state_dict.", "model.", "module."] {
            if !self.tensors.is_empty() && self.tensors.keys().all(|k| k.starts_with(prefix)) {
                self.tensors = std::mem::take(&mut self.tensors)
                    .into_iter()
                    .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                    .collect();
                self.skipped = self
                    .skipped
                    .iter()
                    .map(|k| k.strip_prefix(prefix).unwrap_or(k).to_string())
                    .collect();
            }
        }
    }
}

/// What to write: key, shape, values (f32) or an int64 scalar.
pub enum OutTensor {
    /// f32 values.
    F32(Vec<usize>, Vec<f32>),
    /// A zero int64 scalar (PyTorch's `num_batches_tracked`).
    I64Zero,
}

/// Writes a safetensors file atomically: a temporary file beside it, then a rename.
///
/// The same tensors and metadata always give the same bytes. `safetensors::serialize` takes
/// the metadata as a `HashMap`, whose order changes from run to run, so the header is composed
/// here instead: metadata keys sorted, the 8-byte int64 tensors first so that every tensor
/// stays aligned to its element size (as `safetensors::serialize` orders them), then the rest in
/// the order given, and the header padded with spaces to a multiple of 8 bytes. The reader's tests read it back with the
/// `safetensors` crate.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, OutTensor)>,
    metadata: BTreeMap<String, String>,
) -> Result<(), WeightsError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta = metadata
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let (int64, f32s): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(_, t)| matches!(t, OutTensor::I64Zero));
    let mut data = Vec::new();
    for (key, tensor) in int64.into_iter().chain(f32s) {
        if header.contains_key(&key) {
            return Err(format_err(path, format!("tensor `{key}` is given twice")));
        }
        let start = data.len();
        let (dtype, shape) = match tensor {
            OutTensor::F32(shape, values) => {
                if shape.iter().product::<usize>() != values.len() {
                    return Err(format_err(
                        path,
                        format!(
                            "tensor `{key}`: {} values for shape {shape:?}",
                            values.len()
                        ),
                    ));
                }
                data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                ("F32", shape)
            }
            OutTensor::I64Zero => {
                data.extend(0i64.to_le_bytes());
                ("I64", vec![])
            }
        };
        header.insert(
            key,
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| format_err(path, format!("header: {e}")))?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut file = Vec::with_capacity(8 + head.len() + data.len());
    file.extend((head.len() as u64).to_le_bytes());
    file.extend(head);
    file.extend(data);
    write_atomic(path, &file)
}

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so that
/// `path` is never half-written.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), WeightsError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file whose header length begins with a pickle's or a zip's first byte is
    /// still read as safetensors.
    #[test]
    fn safetensors_with_any_header_length() {
        let dir = std::env::temp_dir().join(format!("sknet-sniff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let mut found = Vec::new();
        for pad in 0..600 {
            let tensors = vec![("w".to_string(), OutTensor::F32(vec![2], vec![1.0, 2.0]))];
            let meta = BTreeMap::from([("pad".to_string(), "x".repeat(pad))]);
            write_safetensors(&path, tensors, meta).unwrap();
            let first = std::fs::read(&path).unwrap()[0];
            if first != 0x80 && first != b'P' {
                continue;
            }
            let ckpt = Checkpoint::read(&path).unwrap_or_else(|e| panic!("pad {pad}: {e}"));
            assert_eq!(ckpt.tensors["w"].data, vec![1.0, 2.0]);
            found.push(first);
        }
        assert!(found.contains(&0x80) && found.contains(&b'P'), "{found:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The same tensors and metadata give the same bytes (a `HashMap` header did not), and the
    /// `safetensors` crate reads them back: values, shapes, the int64 scalar and the metadata.
    #[test]
    fn written_files_are_byte_identical_and_readable() {
        let dir = std::env::temp_dir().join(format!("sknet-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str| {
            let tensors = vec![
                (
                    "a".to_string(),
                    OutTensor::F32(vec![3], vec![1.0, -2.0, 3.5]),
                ),
                ("b.num_batches_tracked".to_string(), OutTensor::I64Zero),
                ("c".to_string(), OutTensor::F32(vec![1, 2], vec![0.25, 4.0])),
            ];
            let meta = (0..12)
                .map(|i| (format!("key{i}"), format!("value {i}")))
                .collect();
            let path = dir.join(name);
            write_safetensors(&path, tensors, meta).unwrap();
            std::fs::read(path).unwrap()
        };
        let (first, second) = (write("1.safetensors"), write("2.safetensors"));
        assert_eq!(first, second);
        let st = SafeTensors::deserialize(&first).unwrap();
        let c = st.tensor("c").unwrap();
        assert_eq!((c.dtype(), c.shape()), (Dtype::F32, &[1usize, 2][..]));
        assert_eq!(
            floats_from_le(c.data(), Dtype::F32).unwrap(),
            vec![0.25, 4.0]
        );
        let n = st.tensor("b.num_batches_tracked").unwrap();
        assert_eq!((n.dtype(), n.data()), (Dtype::I64, &[0u8; 8][..]));
        let (_, header) = SafeTensors::read_metadata(&first).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!((meta.len(), meta["key7"].as_str()), (12, "value 7"));
        let ckpt = Checkpoint::read(&dir.join("1.safetensors")).unwrap();
        assert_eq!(ckpt.tensors["a"].data, vec![1.0, -2.0, 3.5]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused() {
        let err = Checkpoint::read(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn half_precision_values() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8);
        assert!(half_to_f32(0x7e00).is_nan());
    }
}
