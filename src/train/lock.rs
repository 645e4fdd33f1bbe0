//! One run per output folder: an advisory lock the kernel drops when the process ends, so a run
//! killed with `kill -9` never leaves a stale lock behind.

use std::fs::File;
use std::path::Path;

use super::TrainError;
use crate::weights::checkpoint::WeightsError;

/// The lock file's name inside the output folder.
pub const LOCK_FILE: &str = ".sknet-train.lock";

/// Held for as long as a [`Trainer`](super::Trainer) lives.
#[derive(Debug)]
pub(crate) struct OutputLock {
    _file: File,
}

impl OutputLock {
    /// Takes the lock of `dir`, which also proves the folder writable before any epoch runs.
    pub(crate) fn take(dir: &Path) -> Result<Self, TrainError> {
        use std::io::Write;
        let path = dir.join(LOCK_FILE);
        let io = |source| WeightsError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if !try_lock(&file) {
            return Err(TrainError::Locked {
                dir: dir.display().to_string(),
            });
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> bool {
    true
}

/// Removes the temporary files an interrupted run left in `dir` (`.NAME.tmp-PID`): with the lock
/// held, no other run is writing them.
pub(crate) fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("sknet-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".last.safetensors.tmp-99999"), b"half").unwrap();
        let first = OutputLock::take(&dir).unwrap();
        let err = OutputLock::take(&dir).unwrap_err().to_string();
        assert!(err.contains("another training run"), "{err}");
        drop(first);
        let _again = OutputLock::take(&dir).unwrap();
        remove_stale_temporaries(&dir);
        assert!(!dir.join(".last.safetensors.tmp-99999").exists());
        assert!(dir.join(LOCK_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
