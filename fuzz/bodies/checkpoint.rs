//! A weights file of any bytes: read it as `predict` does (format detection, safetensors or
//! PyTorch zip/pickle, metadata, architecture inference, loading). Errors are fine; a panic, an
//! abort or an unbounded allocation is a bug.

use sknet::weights::{load_pretrained, Checkpoint, LoadOptions};

pub fn run(data: &[u8]) {
    let path = super::scratch_file::write("checkpoint", "bin", data);
    if let Ok(ckpt) = Checkpoint::read(&path) {
        for (key, tensor) in &ckpt.tensors {
            let elements = tensor
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d));
            assert_eq!(elements, Some(tensor.data.len()), "tensor `{key}`");
        }
        let _ = sknet::weights::metadata::config(&ckpt);
        let _ = sknet::weights::metadata::class_names(&ckpt);
        let _ = sknet::weights::metadata::preprocess(&ckpt);
    }
    let spec = path.to_str().expect("the scratch path is UTF-8");
    let _ = load_pretrained(
        spec,
        &LoadOptions::default(),
        &sknet::device::default_device(),
    );
    let _ = std::fs::remove_file(&path);
}
