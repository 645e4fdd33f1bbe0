#![no_main]

#[path = "../bodies/config.rs"]
mod config;
#[path = "../bodies/scratch_file.rs"]
mod scratch_file;

libfuzzer_sys::fuzz_target!(|data: &[u8]| config::run(data));
