//! Replays the fuzzers' corpora (`fuzz/corpus/<target>/`) through the same bodies the fuzz
//! targets run, so that every input a fuzzer once found interesting stays handled without a
//! panic. The fuzzers themselves need libFuzzer (see `fuzz/README.md`); this needs nothing.

#[path = "../fuzz/bodies/checkpoint.rs"]
mod checkpoint;
#[path = "../fuzz/bodies/config.rs"]
mod config;
#[path = "../fuzz/bodies/image.rs"]
mod image;
#[path = "../fuzz/bodies/scratch_file.rs"]
mod scratch_file;

use std::path::Path;

/// Runs `body` on every file of the target's corpus; the count guards against an empty or
/// missing folder passing unnoticed.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 5,
        "{}: only {} inputs",
        dir.display(),
        entries.len()
    );
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{} panicked", path.display());
    }
}

#[test]
fn checkpoint_corpus() {
    replay("checkpoint", checkpoint::run);
}

#[test]
fn config_corpus() {
    replay("config", config::run);
}

#[test]
fn image_corpus() {
    replay("image", image::run);
}
