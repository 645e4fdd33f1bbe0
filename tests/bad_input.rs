//! Bad input as a hostile user gives it: every case ends with exit status 2 and a message naming
//! the culprit, within a memory limit, and never hangs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sknet::weights::checkpoint::{write_safetensors, Checkpoint, OutTensor};

/// Address space a run may take: far above what these small cases need, far below the
/// gigabytes a size taken on trust would ask for.
const MEMORY_LIMIT: u64 = 4 << 30;
/// Wall time a run may take before it counts as a hang.
const TIME_LIMIT: Duration = Duration::from_secs(120);

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cifar10.safetensors");
const IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/cifar10-mini/cat/0000.jpg"
);

/// Runs the binary under the memory limit; (exit status, stderr).
fn sknet(args: &[&str]) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_sknet"));
    command.args(args);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    loop {
        if let Some(status) = child.try_wait().expect("waits") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if started.elapsed() > TIME_LIMIT {
            child.kill().unwrap();
            panic!("sknet {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts exit status 2 and that stderr names every one of `culprits`.
fn refused(args: &[&str], culprits: &[&str]) {
    let (code, err) = sknet(args);
    assert_eq!(code, 2, "sknet {args:?}: exit {code}\n{err}");
    for culprit in culprits {
        assert!(
            err.contains(culprit),
            "sknet {args:?} does not name `{culprit}`:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "sknet {args:?} panicked:\n{err}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sknet-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shipped model with `value` written into the first element of tensor `key`.
fn poisoned_model(dir: &Path, key: &str, value: f32) -> String {
    let ckpt = Checkpoint::read(Path::new(MODEL)).unwrap();
    let tensors = ckpt
        .tensors
        .iter()
        .map(|(k, t)| {
            let mut data = t.data.clone();
            if k == key {
                data[0] = value;
            }
            (k.clone(), OutTensor::F32(t.shape.clone(), data))
        })
        .collect();
    let meta: BTreeMap<String, String> = ckpt.metadata.clone().into_iter().collect();
    let path = dir.join(format!("{}.safetensors", key.replace('.', "_")));
    write_safetensors(&path, tensors, meta).unwrap();
    path.display().to_string()
}

/// The shipped model with its preprocessing metadata replaced by `json`.
fn model_with_preprocess(dir: &Path, json: &str) -> String {
    let ckpt = Checkpoint::read(Path::new(MODEL)).unwrap();
    let tensors = ckpt
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), OutTensor::F32(t.shape.clone(), t.data.clone())))
        .collect();
    let mut meta: BTreeMap<String, String> = ckpt.metadata.clone().into_iter().collect();
    meta.insert("sknet.preprocess".into(), json.into());
    let path = dir.join("preprocess.safetensors");
    write_safetensors(&path, tensors, meta).unwrap();
    path.display().to_string()
}

/// Class 1: a preprocessing size from a checkpoint's metadata is checked before any image is
/// resized to it.
#[test]
fn preprocessing_metadata_out_of_range() {
    let dir = scratch("preprocess");
    let huge = r#"{"size":[1000000000,1000000000],"crop_pct":1.0,"interpolation":"bicubic","mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]}"#;
    let weights = model_with_preprocess(&dir, huge);
    refused(
        &["predict", IMAGE, "--weights", &weights],
        &["sknet.preprocess", "size"],
    );
    let zero_std = huge
        .replace("1000000000,1000000000", "32,32")
        .replace("0.25,0.25,0.25", "0.25,0.0,0.25");
    let weights = model_with_preprocess(&dir, &zero_std);
    refused(
        &["predict", IMAGE, "--weights", &weights],
        &["sknet.preprocess", "std"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 4: non-finite weights are refused by name; loaded anyway, their NaN outputs are an
/// error, not a confident class or an accuracy.
#[test]
fn non_finite_weights_and_outputs() {
    let dir = scratch("nan");
    let nan = poisoned_model(&dir, "conv1.weight", f32::NAN);
    refused(
        &["predict", IMAGE, "--weights", &nan],
        &["conv1.weight", "NaN or infinite", "--allow-nonfinite"],
    );
    refused(
        &["predict", IMAGE, "--weights", &nan, "--allow-nonfinite"],
        &["0000.jpg", "not finite"],
    );
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/cifar10-mini");
    refused(
        &[
            "eval",
            "--weights",
            &nan,
            "--allow-nonfinite",
            "--data",
            data,
            "--val-per-class",
            "2",
        ],
        &["not finite"],
    );
    let inf = poisoned_model(&dir, "fc.bias", f32::INFINITY);
    refused(
        &["export", "--weights", &inf, "-o", "/dev/null"],
        &["fc.bias"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 2: numeric training settings outside their ranges, named before anything runs.
#[test]
fn training_settings_out_of_range() {
    let dir = scratch("settings");
    let out = dir.join("run").display().to_string();
    for (flag, value, field) in [
        ("--lr", "nan", "`lr`"),
        ("--lr", "-1", "`lr`"),
        ("--val-per-class", "0", "`val_per_class`"),
        ("--workers", "0", "`workers`"),
        ("--batch", "100000000", "`batch`"),
        ("--momentum", "1.5", "`momentum`"),
        ("--label-smoothing", "inf", "`label_smoothing`"),
        ("--warmup-epochs", "nan", "`warmup_epochs`"),
        ("--weight-decay", "-0.1", "`weight_decay`"),
        ("--mixup", "-1", "`mixup`"),
        ("--cutmix", "nan", "`cutmix`"),
        ("--mixup-prob", "1.5", "`mixup_prob`"),
        ("--reprob", "2", "`reprob`"),
        ("--recount", "0", "`recount`"),
        ("--model-ema-decay", "1.5", "`model_ema_decay`"),
        ("--aa", "rand-m99", "`auto_augment`"),
        ("--aa", "autoaugment-v9", "`auto_augment`"),
    ] {
        let arg = format!("{flag}={value}");
        refused(&["train", &arg, "--output", &out], &[field, flag]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 3: special files and escaping hub specs are refused at once.
#[test]
fn special_files_and_hub_specs() {
    let dir = scratch("special");
    let fifo = dir.join("weights.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fifo = fifo.display().to_string();
    refused(
        &["predict", IMAGE, "--weights", &fifo],
        &[&fifo, "not a regular file"],
    );
    refused(
        &["predict", &fifo, "--weights", MODEL],
        &[&fifo, "not a regular file"],
    );
    refused(
        &["summary", "--config", &fifo],
        &[&fifo, "not a regular file"],
    );
    refused(
        &["predict", IMAGE, "--weights", "hf:timm/../../etc/passwd"],
        &["not a plain name"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 1: sizes from a config or a flag are checked before anything is allocated; a request
/// merely too big for the machine says how much memory it would need.
#[test]
fn sizes_taken_from_outside() {
    let dir = scratch("sizes");
    let text = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(["config", "--arch", "sknet-tiny"])
        .output()
        .unwrap()
        .stdout;
    let config: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let write = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let mut c = config.clone();
        change(&mut c);
        let path = dir.join(name);
        std::fs::write(&path, c.to_string()).unwrap();
        path.display().to_string()
    };
    let classes = write("classes.json", &|c| c["num_classes"] = (1u64 << 40).into());
    refused(&["summary", "--config", &classes], &["num_classes"]);
    let kernel = write("kernel.json", &|c| {
        c["sk"]["kernel_sizes"][1] = 99_999.into()
    });
    refused(&["summary", "--config", &kernel], &["sk.kernel_sizes[1]"]);
    let wide = write("wide.json", &|c| {
        c["planes"] = serde_json::json!([60000, 60000, 60000])
    });
    refused(&["summary", "--config", &wide], &["parameters", "GiB"]);
    refused(
        &["summary", "--arch", "sknet-tiny", "--input", "99999999"],
        &["--input"],
    );
    refused(
        &["summary", "--arch", "sknet-tiny", "--classes", "0"],
        &["num_classes"],
    );
    refused(
        &[
            "bench",
            "--arch",
            "skresnet18",
            "--batch",
            "4096",
            "--input",
            "4096",
        ],
        &["GiB", "smaller batch"],
    );
    // A sparse CIFAR binary whose length claims 2^27 + 1 records (412 GB).
    let sparse = dir.join("cifar");
    std::fs::create_dir_all(&sparse).unwrap();
    std::fs::File::create(sparse.join("data_batch_1.bin"))
        .unwrap()
        .set_len(((1u64 << 27) + 1) * 3073)
        .unwrap();
    refused(
        &[
            "eval",
            "--weights",
            MODEL,
            "--data",
            sparse.to_str().unwrap(),
        ],
        &["data_batch_1.bin", "CIFAR records"],
    );
    // A 32 KiB .pth whose deflated entry expands to 32 MiB.
    let bomb = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/checkpoint/zip_bomb.pth"
    );
    refused(
        &["predict", "--weights", bomb, IMAGE],
        &["zip_bomb.pth", "fc.weight", "33554432 bytes"],
    );
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/cifar10-mini");
    refused(
        &[
            "eval",
            "--weights",
            MODEL,
            "--data",
            data,
            "--workers",
            "1000000000",
        ],
        &["--workers"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 6: unknown config fields are errors that name them.
#[test]
fn unknown_config_fields() {
    let dir = scratch("config");
    let text = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(["config", "--arch", "sknet-tiny"])
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8(text).unwrap();
    let path = dir.join("c.json");
    std::fs::write(
        &path,
        text.replacen("\"stem\": {", "\"stem\": {\"widht\": 8, ", 1),
    )
    .unwrap();
    let path = path.display().to_string();
    refused(&["summary", "--config", &path], &[&path, "widht"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
