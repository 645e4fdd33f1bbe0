mod cli;

use clap::Parser;
use cli::{run, Cli};

/// Keeps freed tensor buffers in the heap for reuse. glibc otherwise serves every buffer above its
/// mmap threshold with fresh pages and unmaps it on free, so a training step of a small network
/// spent a fifth of its time in the kernel zeroing pages.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // One heap for all threads: forward passes run on the thread pool's threads, and a heap
        // per thread kept a cache of freed buffers for each.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            std::process::exit(2);
        }
    }
}
