//! `sknet bench`: median latency, throughput and peak memory of inference or a training step.

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use serde::Serialize;

use sknet::config::NetworkConfig;
use sknet::device::default_device;
use sknet::presets;

use super::args::parse_input_size;
use super::CliError;
use sknet::model::SkNet;
use sknet::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};

/// `sknet bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Preset (see `sknet archs`).
    #[arg(long, default_value = "sknet50")]
    pub arch: String,
    /// A JSON or TOML config; overrides --arch.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Input size `S` or `HxW` (default: the network's).
    #[arg(long)]
    pub input: Option<String>,
    /// Time a training step (forward, backward, SGD update) instead of inference.
    #[arg(long)]
    pub train: bool,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Builds the network, checks the input, times it.
pub fn run(args: BenchArgs) -> Result<String, CliError> {
    let mut config = match &args.config {
        Some(path) => NetworkConfig::from_file(path)?,
        None => presets::by_name(&args.arch)?,
    };
    if let Some(size) = &args.input {
        config.default_input = parse_input_size(size)?;
    }
    if args.batch == 0 || args.runs == 0 {
        return Err(CliError::Argument {
            arg: "--batch / --runs".into(),
            message: "must be >= 1".into(),
        });
    }
    if args.batch > sknet::train::MAX_BATCH || args.runs > MAX_RUNS || args.warmup > MAX_RUNS {
        return Err(CliError::Argument {
            arg: "--batch / --runs / --warmup".into(),
            message: format!(
                "at most {} images a batch and {MAX_RUNS} runs",
                sknet::train::MAX_BATCH
            ),
        });
    }
    let model = SkNet::new(&config, &default_device())?;
    let [h, w] = config.default_input;
    model.check_input(&[args.batch, config.in_channels, h, w])?;
    let r = bench(&config, args.batch, args.train, args.warmup, args.runs);
    Ok(if args.json {
        serde_json::to_string(&r).expect("result") + "\n"
    } else {
        format!(
            "{} {} batch {} at {}x{} on {}: median {:.1} ms, {:.1} images/s, peak RSS {:.0} MiB\n",
            r.arch, r.mode, r.batch, h, w, r.backend, r.median_ms, r.images_per_s, r.peak_rss_mb
        )
    })
}

/// Most timed (or warm-up) runs.
const MAX_RUNS: usize = 100_000;

/// One benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Network.
    pub arch: String,
    /// `inference` or `train`.
    pub mode: &'static str,
    /// Batch size.
    pub batch: usize,
    /// Input `[height, width]`.
    pub input: [usize; 2],
    /// Timed repetitions (after warm-up).
    pub runs: usize,
    /// Median wall time of one forward (or training step), in milliseconds.
    pub median_ms: f64,
    /// `batch / median`.
    pub images_per_s: f64,
    /// Peak resident memory of the process, in MiB (Linux `VmHWM`).
    pub peak_rss_mb: f64,
    /// Compute backend.
    pub backend: &'static str,
}

/// Peak resident set size of this process in MiB, when the OS reports it.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Times `runs` forwards (or SGD steps with `train`) after `warmup` untimed ones.
pub fn bench(
    config: &NetworkConfig,
    batch: usize,
    train: bool,
    warmup: usize,
    runs: usize,
) -> BenchResult {
    let [h, w] = config.default_input;
    let mut times = Vec::with_capacity(runs);
    if train {
        let device = sknet::device::training_device();
        let mut model = sknet::weights::seeded_init(
            SkNet::new(config, &device).expect("run() built it once already"),
            0,
        );
        let mut sgd = Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            weight_decay: 1e-4,
            backbone_lr_scale: 1.0,
        });
        for i in 0..warmup + runs {
            let x = Tensor::<4>::random(
                [batch, config.in_channels, h, w],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let t = Instant::now();
            model = sknet::ops::on_cpu_pool(|| {
                let loss = model.forward(x).powf_scalar(2.0).mean();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                sgd.step(model, grads, 0.01)
            });
            // Wait for the update to be computed.
            let _ = model.fc.weight.val().into_data();
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    } else {
        let device = sknet::device::default_device();
        // Inference runs the BN-folded network, as `sknet predict` and `sknet eval` do.
        let model = sknet::weights::seeded_init(
            SkNet::new(config, &device).expect("run() built it once already"),
            0,
        )
        .fold_batchnorm();
        let x = Tensor::<4>::random(
            [batch, config.in_channels, h, w],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        for i in 0..warmup + runs {
            let t = Instant::now();
            let _ = model.forward(x.clone()).into_data();
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    BenchResult {
        arch: config.name.clone(),
        mode: if train { "train" } else { "inference" },
        batch,
        input: [h, w],
        runs,
        median_ms: median * 1e3,
        images_per_s: batch as f64 / median,
        peak_rss_mb: peak_rss_mb(),
        backend: sknet::device::backend_name(),
    }
}
