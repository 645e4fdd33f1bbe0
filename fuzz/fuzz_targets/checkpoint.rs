#![no_main]

#[path = "../bodies/checkpoint.rs"]
mod checkpoint;
#[path = "../bodies/scratch_file.rs"]
mod scratch_file;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checkpoint::run(data));
