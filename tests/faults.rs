//! Faults during training, through the binary: kill -9 at random moments (in the middle of
//! writing files too), a second run on the same output folder, an output that cannot be written,
//! a disk that fills up.
//! After every fault each file in the output folder loads, and `--resume` continues exactly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sknet::weights::checkpoint::Checkpoint;

const EPOCHS: &str = "4";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sknet-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 3 classes x 10 real images, and a tiny network's config.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = common::small_dataset(dir);
    let out = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(["config", "--arch", "sknet-tiny"])
        .output()
        .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    config["num_classes"] = 3.into();
    config["layers"] = serde_json::json!([1, 1]);
    config["planes"] = serde_json::json!([8, 16]);
    config["strides"] = serde_json::json!([1, 2]);
    config["stem"]["width"] = 8.into();
    let path = dir.join("tiny.json");
    std::fs::write(&path, config.to_string()).unwrap();
    (data, path)
}

fn train(data: &Path, config: &Path, output: &Path, resume: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sknet"));
    command.args([
        "train",
        "--epochs",
        EPOCHS,
        "--batch",
        "8",
        "--val-per-class",
        "2",
    ]);
    command.arg("--data").arg(data).arg("--config").arg(config);
    command.arg("--output").arg(output);
    let checkpoint = output.join("checkpoint.safetensors");
    if resume && checkpoint.exists() {
        command.arg("--resume").arg(checkpoint);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let ckpt = Checkpoint::read(path).unwrap_or_else(|e| panic!("{e}"));
    ckpt.tensors
        .into_iter()
        .map(|(k, t)| (k, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Every file in `dir` is whole: the safetensors load, the metrics parse, no temporary is left
/// after a finished run.
fn assert_files_whole(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") {
            Checkpoint::read(&path).unwrap_or_else(|e| panic!("{e}"));
        } else if name == "metrics.jsonl" {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    }
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A small deterministic sequence in [0, 1).
fn uniform(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

#[test]
fn kill_at_random_moments_then_resume_equals_the_uninterrupted_run() {
    let dir = scratch("kill");
    let (data, config) = setup(&dir);
    let whole = dir.join("whole");
    let started = Instant::now();
    let (code, err) = finish(train(&data, &config, &whole, false));
    assert_eq!(code, 0, "{err}");
    let run_time = started.elapsed();

    let broken = dir.join("broken");
    let (mut kills, mut in_writes) = (0, 0);
    let mut attempt = 0u64;
    while kills < 20 || in_writes < 10 {
        attempt += 1;
        assert!(
            attempt < 400,
            "only {kills} kills, {in_writes} of them during a write"
        );
        let mut child = train(&data, &config, &broken, true);
        let during_write = attempt.is_multiple_of(2);
        if during_write {
            // The moment the n-th temporary file of the run exists: that output is being
            // written, after the renames of the ones before it (an epoch writes up to six).
            let nth = (uniform(attempt) * 6.0) as usize;
            let mut seen = std::collections::BTreeSet::new();
            while child.try_wait().unwrap().is_none() {
                seen.extend(temporaries(&broken));
                if seen.len() > nth {
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        } else {
            // Anywhere in a whole run's time, so that every phase (start, steps, validation)
            // is hit now and then.
            std::thread::sleep(run_time.mul_f64(uniform(attempt)));
        }
        let finished = match child.try_wait().unwrap() {
            Some(status) => status.success(),
            None => {
                child.kill().unwrap();
                kills += 1;
                in_writes += during_write as usize;
                false
            }
        };
        let _ = child.wait();
        assert_files_whole(&broken);
        if finished {
            // The chain reached its end between kills: check it, then begin a new one so that
            // the kills keep landing.
            assert_same_run(&broken, &whole);
            std::fs::remove_dir_all(&broken).unwrap();
        }
    }
    let (code, err) = finish(train(&data, &config, &broken, true));
    assert_eq!(code, 0, "{err}");
    assert_same_run(&broken, &whole);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A finished chain of killed and resumed runs left what the uninterrupted run left.
fn assert_same_run(broken: &Path, whole: &Path) {
    assert_files_whole(broken);
    assert_eq!(
        tensors(&broken.join("checkpoint.safetensors")),
        tensors(&whole.join("checkpoint.safetensors")),
        "resumed after kills, the run differs from the uninterrupted one"
    );
    // Weights files hold no path or time, so they repeat byte for byte.
    assert_eq!(
        std::fs::read(broken.join("best.safetensors")).unwrap(),
        std::fs::read(whole.join("best.safetensors")).unwrap(),
        "best.safetensors differs byte-wise from the uninterrupted run's"
    );
    let epochs: Vec<u64> = std::fs::read_to_string(broken.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            row["epoch"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4], "an epoch's row was lost");
    let leftovers = temporaries(broken);
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

#[test]
fn a_second_run_on_the_same_output_is_refused_while_the_first_runs() {
    let dir = scratch("lock");
    let (data, config) = setup(&dir);
    let out = dir.join("run");
    let first = train(&data, &config, &out, false);
    // The first run holds the lock from its start: wait for the lock file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join(sknet::train::lock::LOCK_FILE).exists() {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, err) = finish(train(&data, &config, &out, false));
    let (first_code, first_err) = finish(first);
    assert_eq!(first_code, 0, "{first_err}");
    if code == 0 {
        // The first run had already finished and let go of the folder: nothing to test here.
        return;
    }
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another training run"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_output_that_cannot_be_written_is_refused_before_training() {
    let dir = scratch("unwritable");
    let (data, config) = setup(&dir);
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let started = Instant::now();
    let (code, err) = finish(train(&data, &config, &file.join("run"), false));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a-file"), "{err}");
    assert!(
        !err.contains("epoch"),
        "the error came after training: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tmpfs of a given size, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` where this process may not mount (not root).
    fn mount(path: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let size = format!("size={bytes}");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(path.to_path_buf()))
    }

    fn resize(&self, bytes: u64) {
        let options = format!("remount,size={bytes}");
        let status = Command::new("mount")
            .args(["-o", &options])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Bytes a folder's files take on a tmpfs: whole pages.
fn footprint(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len().next_multiple_of(4096))
        .sum()
}

#[test]
fn a_full_disk_stops_the_run_cleanly_and_resume_continues_exactly() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = scratch("full");
    let (data, config) = setup(&dir);
    let whole = dir.join("whole");
    let (code, err) = finish(train(&data, &config, &whole, false));
    assert_eq!(code, 0, "{err}");
    // Room for one epoch's files, but not for a second checkpoint beside the first: the first
    // epoch completes, and a write of the second finds the disk full.
    let checkpoint = std::fs::metadata(whole.join("checkpoint.safetensors"))
        .unwrap()
        .len();
    let room = footprint(&whole) + checkpoint / 2;
    let out = dir.join("disk");
    let Some(disk) = SmallDisk::mount(&out, room) else {
        panic!("root could not mount a tmpfs at {}", out.display());
    };
    let (code, err) = finish(train(&data, &config, &out, false));
    assert_ne!(code, 0, "the run succeeded on a full disk: {err}");
    assert_ne!(code, 70, "the full disk made sknet panic: {err}");
    assert!(
        err.contains("No space left on device") && err.contains(&out.display().to_string()),
        "{err}"
    );
    assert_files_whole(&out);
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    let state = Checkpoint::read(&out.join("checkpoint.safetensors")).unwrap();
    let epoch: serde_json::Value =
        serde_json::from_str(&state.metadata[sknet::weights::metadata::META_STATE]).unwrap();
    assert_eq!(epoch["epoch"], 1, "the run should stop in its second epoch");

    disk.resize(64 << 20);
    let (code, err) = finish(train(&data, &config, &out, true));
    assert_eq!(code, 0, "{err}");
    assert_same_run(&out, &whole);
    drop(disk);
    std::fs::remove_dir_all(&dir).unwrap();
}
