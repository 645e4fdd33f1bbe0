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

/// Exit status of an internal error (a panic): `EX_SOFTWARE` of sysexits.h.
const EXIT_INTERNAL: i32 = 70;

/// Turns any panic into one line naming the command, and exit status 70, instead of a
/// backtrace: a panic is sknet's bug, never the user's input.
fn report_panics_as_internal_errors() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let command: Vec<String> = std::env::args().collect();
        eprintln!(
            "internal error: {message}{location} (running `{}`); please report it",
            command.join(" ")
        );
        std::process::exit(EXIT_INTERNAL);
    }));
}

/// Prints a command's output; a reader that went away (`sknet archs | head -1`) is not an error.
fn print_output(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the output: {e}");
            std::process::exit(2);
        }
        _ => {}
    }
}

fn main() {
    keep_freed_memory();
    report_panics_as_internal_errors();
    let cli = Cli::parse();
    match run(cli) {
        Ok(text) => print_output(&text),
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            std::process::exit(2);
        }
    }
}
