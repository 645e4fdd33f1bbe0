#![no_main]

#[path = "../bodies/image.rs"]
mod image;
#[path = "../bodies/scratch_file.rs"]
mod scratch_file;

libfuzzer_sys::fuzz_target!(|data: &[u8]| image::run(data));
