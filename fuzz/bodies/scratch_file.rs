//! The readers under test take paths, as the CLI gives them: each input is written to a file
//! of this process and thread first, so that replays can run on parallel test threads.

use std::path::PathBuf;

/// Writes `data` to this thread's scratch file with the given extension, and returns its path.
pub fn write(target: &str, extension: &str, data: &[u8]) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let digits: String = thread.chars().filter(char::is_ascii_digit).collect();
    let path = std::env::temp_dir().join(format!(
        "sknet-fuzz-{target}-{}-{digits}.{extension}",
        std::process::id()
    ));
    std::fs::write(&path, data).expect("the scratch file is writable");
    path
}
