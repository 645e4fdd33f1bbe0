//! Image datasets (ImageFolder and the CIFAR-10/100 binary format), a deterministic
//! train/validation split, augmentations, and a batch loader that decodes on worker threads.
//!
//! Images are read from disk when a batch needs them, so memory stays bounded whatever the
//! dataset's size. An image that cannot be decoded is skipped with a warning and counted.

pub mod augment;
pub mod auto_augment;
pub mod loader;
pub mod rng;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::infer::resize::Rgb8;

/// Dataset errors.
#[derive(Debug, Error)]
pub enum DataError {
    /// The dataset folder or file is unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The folder or file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Where an item's pixels are.
#[derive(Debug, Clone)]
enum Source {
    /// An image file.
    File(PathBuf),
    /// A CIFAR binary record: file index and byte offset of the pixels.
    Record(usize, u64),
}

/// A labelled image collection.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it came from.
    pub root: PathBuf,
    /// Class names, by label.
    pub classes: Vec<String>,
    items: Vec<(Source, usize)>,
    /// CIFAR binary files, read into memory once.
    files: Vec<InMemory>,
}

/// A file's bytes, shared by the loader's threads (`Debug` gives only the length).
#[derive(Clone)]
struct InMemory(Arc<[u8]>);

impl std::fmt::Debug for InMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// Most images a dataset may hold (ImageNet-21k has 14 million): CIFAR record counts come from
/// file lengths, which a sparse file can make anything.
pub const MAX_DATASET_IMAGES: u64 = 1 << 27;
/// Most bytes of CIFAR binary files, which are held in memory (CIFAR-10 and CIFAR-100 take
/// under 200 MB).
pub const MAX_CIFAR_BYTES: u64 = 4 << 30;

const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

impl Dataset {
    /// Opens an ImageFolder (`root/<class>/<image>`) or a CIFAR binary folder (holding
    /// `data_batch_*.bin` / `test_batch.bin`, or `train.bin` / `test.bin` for CIFAR-100).
    pub fn open(root: &Path) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(invalid(
                root,
                "not a folder (expected an ImageFolder or CIFAR binary folder)",
            ));
        }
        let bins = cifar_files(root);
        if !bins.is_empty() {
            return Self::open_cifar(root, &bins);
        }
        Self::open_image_folder(root)
    }

    fn open_image_folder(root: &Path) -> Result<Self, DataError> {
        let mut classes = Vec::new();
        for (path, meta) in entries(root)? {
            if !meta.is_dir() {
                continue;
            }
            let name = path.file_name().unwrap_or_default();
            let Some(name) = name.to_str() else {
                return Err(invalid(
                    &path,
                    "a class folder's name must be UTF-8 text (it becomes a class name)",
                ));
            };
            if !name.starts_with('.') {
                classes.push(name.to_string());
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(invalid(
                root,
                "no class folders (expected root/<class>/<image files>)",
            ));
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files: Vec<PathBuf> = Vec::new();
            for (path, meta) in entries(&dir)? {
                let is_image = path
                    .extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()));
                if !is_image {
                    continue;
                }
                // Only regular files: a FIFO would block a loader thread for good.
                if !meta.is_file() {
                    return Err(invalid(&path, "not a regular file"));
                }
                files.push(path);
            }
            if files.is_empty() {
                return Err(invalid(
                    &dir,
                    format!(
                        "class folder `{class}` holds no images ({})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            files.sort();
            items.extend(files.into_iter().map(|f| (Source::File(f), label)));
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            items,
            files: Vec::new(),
        })
    }

    fn open_cifar(root: &Path, bins: &[PathBuf]) -> Result<Self, DataError> {
        // CIFAR-10 records: 1 label byte + 3072 pixel bytes; CIFAR-100: coarse + fine label.
        let cifar100 = bins
            .iter()
            .any(|b| b.file_name().is_some_and(|n| n == "train.bin"));
        let (label_bytes, classes) = if cifar100 {
            (
                2usize,
                (0..100)
                    .map(|i| format!("class_{i:02}"))
                    .collect::<Vec<_>>(),
            )
        } else {
            let meta = std::fs::read_to_string(root.join("batches.meta.txt")).ok();
            let names: Vec<String> = meta
                .map(|m| {
                    m.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| l.trim().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let names = if names.len() == 10 {
                names
            } else {
                [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            };
            (1usize, names)
        };
        let record = (label_bytes + 3072) as u64;
        let mut items = Vec::new();
        let mut files = Vec::new();
        let mut total = 0u64;
        for (fi, path) in bins.iter().enumerate() {
            let len = crate::files::regular_file_len(path, u64::MAX)
                .map_err(|e| invalid(path, e.to_string()))?;
            if len == 0 || len % record != 0 {
                return Err(invalid(
                    path,
                    format!("{len} bytes is not a whole number of {record}-byte CIFAR records"),
                ));
            }
            let records = len / record;
            if items.len() as u64 + records > MAX_DATASET_IMAGES {
                return Err(invalid(
                    path,
                    format!(
                        "{records} CIFAR records take the dataset past {MAX_DATASET_IMAGES} images"
                    ),
                ));
            }
            total += len;
            if total > MAX_CIFAR_BYTES {
                return Err(invalid(
                    path,
                    format!(
                        "the CIFAR binary files take more than {MAX_CIFAR_BYTES} bytes, the most \
                         held in memory; convert them to an image folder"
                    ),
                ));
            }
            let bytes = read_exactly(path, len).map_err(|e| invalid(path, e.to_string()))?;
            for r in 0..records {
                let start = (r * record) as usize;
                let label = bytes[start + label_bytes - 1] as usize;
                if label >= classes.len() {
                    return Err(invalid(
                        path,
                        format!("record {r}: label {label} out of range"),
                    ));
                }
                items.push((Source::Record(fi, r * record + label_bytes as u64), label));
            }
            files.push(InMemory(Arc::from(bytes)));
        }
        // Group by class, in file order, so that the per-class split is well defined.
        items.sort_by_key(|(_, l)| *l);
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            items,
            files,
        })
    }

    /// Unlabelled image files, in the order given (every label is 0, and there are no classes).
    pub fn from_files(paths: &[PathBuf]) -> Self {
        Self {
            root: PathBuf::new(),
            classes: Vec::new(),
            items: paths.iter().map(|p| (Source::File(p.clone()), 0)).collect(),
            files: Vec::new(),
        }
    }

    /// Whether the items have labels (an ImageFolder or CIFAR binary, not a list of files).
    pub fn is_labelled(&self) -> bool {
        !self.classes.is_empty()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Label of item `i`.
    pub fn label(&self, i: usize) -> usize {
        self.items[i].1
    }

    /// Describes item `i` (its file).
    pub fn describe(&self, i: usize) -> String {
        match &self.items[i].0 {
            Source::File(p) => p.display().to_string(),
            Source::Record(f, off) => {
                format!("{} (binary file #{f}, byte {off})", self.root.display())
            }
        }
    }

    /// Decodes item `i`.
    pub fn load(&self, i: usize) -> Result<Rgb8, String> {
        match &self.items[i].0 {
            Source::File(path) => crate::infer::load_image(path).map_err(|e| e.to_string()),
            Source::Record(f, offset) => {
                let start = *offset as usize;
                let planes = &self.files[*f].0[start..start + 3072];
                let mut data = vec![0u8; 3072];
                for p in 0..1024 {
                    for c in 0..3 {
                        data[p * 3 + c] = planes[c * 1024 + p];
                    }
                }
                Ok(Rgb8 {
                    width: 32,
                    height: 32,
                    data,
                })
            }
        }
    }

    /// Splits into (train, validation) indices: the last `per_class` items of every class
    /// (in sorted file order) are held out. Deterministic.
    pub fn split(&self, per_class: usize) -> Result<(Vec<usize>, Vec<usize>), DataError> {
        // One pass to group indices by class (datasets can hold millions of items).
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.classes.len()];
        for (i, (_, label)) in self.items.iter().enumerate() {
            by_class[*label].push(i);
        }
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (label, idx) in by_class.iter().enumerate() {
            if per_class > 0 && idx.len() <= per_class {
                return Err(invalid(
                    &self.root,
                    format!(
                        "class `{}` has {} images, too few to hold out {per_class} for validation",
                        self.classes[label],
                        idx.len()
                    ),
                ));
            }
            let cut = idx.len() - per_class;
            train.extend_from_slice(&idx[..cut]);
            val.extend_from_slice(&idx[cut..]);
        }
        Ok((train, val))
    }
}

/// The entries of folder `dir` with their metadata (symlinks followed); one that cannot be
/// examined (a symlink loop, a dangling link) is an error naming it, not a silent gap in the
/// dataset.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| invalid(dir, e.to_string()))? {
        let path = entry.map_err(|e| invalid(dir, e.to_string()))?.path();
        let meta = std::fs::metadata(&path).map_err(|e| invalid(&path, e.to_string()))?;
        out.push((path, meta));
    }
    Ok(out)
}

fn cifar_files(root: &Path) -> Vec<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        (n.starts_with("data_batch_")
                            || n == "test_batch.bin"
                            || n == "train.bin"
                            || n == "test.bin")
                            && n.ends_with(".bin")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    bins.sort();
    bins
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn cifar_binaries_are_read_into_memory_and_interleaved() {
        let root = std::env::temp_dir().join(format!("sknet-cifar-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // Three records, labels 7, 2, 7; record r's plane c, pixel p holds (r + 3c + p) % 251.
        let mut bytes = Vec::new();
        for (r, label) in [7u8, 2, 7].into_iter().enumerate() {
            bytes.push(label);
            for c in 0..3 {
                bytes.extend((0..1024).map(|p| ((r + 3 * c + p) % 251) as u8));
            }
        }
        std::fs::write(root.join("data_batch_1.bin"), &bytes).unwrap();
        let data = Dataset::open(&root).unwrap();
        // The file can go: its bytes are in memory.
        std::fs::remove_file(root.join("data_batch_1.bin")).unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data.classes[2], "bird");
        // Sorted by label: record 1 (bird), then records 0 and 2 (horse).
        let labels: Vec<usize> = (0..3).map(|i| data.label(i)).collect();
        assert_eq!(labels, [2, 7, 7]);
        let img = data.load(0).unwrap();
        assert_eq!((img.width, img.height), (32, 32));
        for p in [0, 5, 1023] {
            for c in 0..3 {
                assert_eq!(img.data[p * 3 + c], ((1 + 3 * c + p) % 251) as u8);
            }
        }
        // More bytes than are held in memory: refused before any is read.
        std::fs::File::create(root.join("data_batch_2.bin"))
            .unwrap()
            .set_len((MAX_CIFAR_BYTES / 3073 + 1) * 3073)
            .unwrap();
        std::fs::write(root.join("data_batch_1.bin"), &bytes).unwrap();
        let err = Dataset::open(&root).unwrap_err().to_string();
        assert!(
            err.contains("data_batch_2.bin") && err.contains("held in memory"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A folder with one class of one real image, and `extra` applied to it.
    fn dataset_with(name: &str, extra: impl FnOnce(&Path)) -> Result<Dataset, DataError> {
        let root = std::env::temp_dir().join(format!("sknet-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("cat")).unwrap();
        image::RgbImage::new(4, 4)
            .save(root.join("cat").join("a.png"))
            .unwrap();
        extra(&root);
        let opened = Dataset::open(&root);
        std::fs::remove_dir_all(&root).unwrap();
        opened
    }

    #[test]
    fn plain_folder_opens() {
        let data = dataset_with("plain", |_| {}).unwrap();
        assert_eq!((data.classes.len(), data.len()), (1, 1));
    }

    #[test]
    fn special_and_looping_files_are_named() {
        let err = dataset_with("fifo", |root| {
            let fifo = root.join("cat").join("b.jpg");
            assert!(std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success());
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("b.jpg") && err.contains("not a regular file"),
            "{err}"
        );
        let err = dataset_with("loop", |root| {
            let link = root.join("cat").join("c.jpg");
            std::os::unix::fs::symlink(&link, &link).unwrap();
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("c.jpg"), "{err}");
    }

    #[test]
    fn non_utf8_class_folder_is_named() {
        let err = dataset_with("utf8", |root| {
            let name = std::ffi::OsStr::from_bytes(b"dog\xff");
            std::fs::create_dir_all(root.join(name)).unwrap();
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("must be UTF-8"), "{err}");
    }
}

/// The `len` bytes of `path`, read at once; a file that changed length meanwhile is an error.
fn read_exactly(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len as usize);
    File::open(path)?.take(len + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(std::io::Error::other(format!(
            "the file changed while it was read ({len} bytes, then {})",
            bytes.len()
        )));
    }
    Ok(bytes)
}
