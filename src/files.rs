//! Files from outside, read with bounds: only regular files (a FIFO or a device would block or
//! never end), never more than a stated size. Each caller turns a [`FileProblem`] into its own
//! error, which names the file.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Why a file cannot be read.
#[derive(Debug)]
pub(crate) enum FileProblem {
    /// The operating system's error (missing, no permission, a symlink loop, ...).
    Io(std::io::Error),
    /// A folder, FIFO, socket or device.
    NotRegular,
    /// Larger than the reader takes.
    TooLarge {
        /// The file's length.
        len: u64,
        /// The most the reader takes.
        max: u64,
    },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Io(e) => write!(f, "{e}"),
            FileProblem::NotRegular => write!(f, "not a regular file"),
            FileProblem::TooLarge { len, max } => {
                write!(
                    f,
                    "{len} bytes is more than the {max} bytes read from such a file"
                )
            }
        }
    }
}

/// The length of `path`, a regular file (symlinks followed) of at most `max` bytes.
pub(crate) fn regular_file_len(path: &Path, max: u64) -> Result<u64, FileProblem> {
    let meta = std::fs::metadata(path).map_err(FileProblem::Io)?;
    if !meta.is_file() {
        return Err(FileProblem::NotRegular);
    }
    if meta.len() > max {
        return Err(FileProblem::TooLarge {
            len: meta.len(),
            max,
        });
    }
    Ok(meta.len())
}

/// The bytes of `path`, a regular file of at most `max` bytes; a file that grows past `max`
/// while it is read is refused too.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, FileProblem> {
    let len = regular_file_len(path, max)?;
    let mut bytes = Vec::with_capacity(len as usize);
    std::fs::File::open(path)
        .map_err(FileProblem::Io)?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(FileProblem::Io)?;
    if bytes.len() as u64 > max {
        return Err(FileProblem::TooLarge {
            len: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_special_files() {
        let dir = std::env::temp_dir().join(format!("sknet-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, [1u8, 2, 3]).unwrap();
        assert_eq!(read_bounded(&path, 3).unwrap(), vec![1, 2, 3]);
        let err = read_bounded(&path, 2).unwrap_err().to_string();
        assert!(err.contains("3 bytes is more than the 2"), "{err}");
        assert!(matches!(
            read_bounded(&dir, 10),
            Err(FileProblem::NotRegular)
        ));
        #[cfg(unix)]
        {
            let fifo = dir.join("fifo.jpg");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                // Opening a FIFO for reading would block until a writer came: refused first.
                assert!(matches!(
                    regular_file_len(&fifo, 10),
                    Err(FileProblem::NotRegular)
                ));
            }
            let link = dir.join("loop");
            std::os::unix::fs::symlink(&link, &link).unwrap();
            assert!(matches!(
                regular_file_len(&link, 10),
                Err(FileProblem::Io(_))
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
