//! The `sknet` command line: one module per command, each with its arguments. The library
//! reports through return values; this module turns them into text and exit codes.

mod archs;
mod args;
mod attention;
mod bench;
mod config;
mod eval;
mod export;
mod predict;
#[cfg(feature = "serve")]
mod serve;
mod summary;
mod train;

use clap::{Parser, Subcommand};
use thiserror::Error;

use sknet::config::ConfigError;
use sknet::infer::InferError;
use sknet::model::InputError;
use sknet::weights::checkpoint::WeightsError;

/// Anything a command can fail with.
#[derive(Debug, Error)]
pub enum CliError {
    /// Bad architecture or config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad input size.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Bad weights file.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Bad image.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] sknet::train::TrainError),
    /// Bad dataset.
    #[error(transparent)]
    Data(#[from] sknet::data::DataError),
    /// Evaluation without a meaningful result.
    #[error("{data}: {source}")]
    Eval {
        /// The dataset.
        data: String,
        /// Why.
        source: sknet::eval::EvalError,
    },
    /// The attention analysis cannot run.
    #[error(transparent)]
    Attention(#[from] sknet::attention::AttentionError),
    /// The ONNX export failed.
    #[error(transparent)]
    Onnx(#[from] sknet::onnx::OnnxError),
    /// The server could not start or stopped on an error.
    #[cfg(feature = "serve")]
    #[error(transparent)]
    Serve(#[from] sknet::serve::ServeError),
    /// Terminal or runtime I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Bad argument.
    #[error("invalid argument `{arg}`: {message}")]
    Argument {
        /// The argument.
        arg: String,
        /// What was expected.
        message: String,
    },
}

impl CliError {
    /// What to pass on the command line to get past the error, where there is such a thing.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Weights(WeightsError::Mismatch {
                fits: Some(name), ..
            })
            | CliError::Train(sknet::train::TrainError::Weights(WeightsError::Mismatch {
                fits: Some(name),
                ..
            })) => Some(format!("pass --arch {name}")),
            CliError::Weights(WeightsError::NonFinite { .. }) => {
                Some("pass --allow-nonfinite to load them anyway".into())
            }
            CliError::Weights(WeightsError::UnknownArchitecture { .. }) => {
                Some("pass --arch NAME or --config FILE to see what differs".into())
            }
            CliError::Train(
                sknet::train::TrainError::NotFinite { .. }
                | sknet::train::TrainError::NonFiniteWeights { .. },
            ) => Some("try a lower --lr".into()),
            CliError::Train(sknet::train::TrainError::Invalid { field, .. }) => {
                // Flags are the fields' names, but for timm's names of AdamW's settings.
                let flag = match *field {
                    "betas" => "opt-betas".to_string(),
                    "eps" => "opt-eps".to_string(),
                    "auto_augment" => "aa".to_string(),
                    other => other.replace('_', "-"),
                };
                Some(format!("see --{flag} in `sknet train --help`"))
            }
            _ => None,
        }
    }
}

/// Selective Kernel Networks: build, inspect and run SKNets.
#[derive(Debug, Parser)]
#[command(name = "sknet", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the preset architectures with parameters, multiply-adds and reference accuracy.
    Archs {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a Keras-style summary of a network.
    Summary(args::ModelArgs),
    /// Classify images with trained weights (timm's evaluation transform, top-k labels).
    Predict(predict::PredictArgs),
    /// Write weights as a timm-compatible safetensors file (loads with strict=True in timm), or
    /// the network as an ONNX model.
    Export(export::ExportArgs),
    /// Serve predictions over HTTP, with dynamic batching, metrics and a web page.
    #[cfg(feature = "serve")]
    Serve(Box<serve::ServeArgs>),
    /// Train on an image dataset (default: the CIFAR-10 subset shipped in data/cifar10-mini).
    Train(Box<train::TrainArgs>),
    /// Evaluate weights on a labelled image folder: top-1, top-5, loss, per class, confusion.
    Eval(eval::EvalArgs),
    /// What the SK selection picks (the paper's sec. 4.3): branch weights against object size
    /// and class, as CSV, JSON and figures.
    Attention(Box<attention::AttentionArgs>),
    /// Time inference or a training step: median ms, images/s, peak memory.
    Bench(bench::BenchArgs),
    /// Print the config of a preset (JSON, or TOML with --toml), to edit and pass to --config.
    Config {
        /// Preset name.
        #[arg(long)]
        arch: String,
        /// Print TOML instead of JSON.
        #[arg(long)]
        toml: bool,
    },
}

/// Runs a parsed command and returns what it prints.
pub fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Archs { json } => archs::run(json),
        Command::Summary(args) => summary::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(*args),
        Command::Train(args) => train::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Attention(args) => attention::run(*args),
        Command::Config { arch, toml } => config::run(&arch, toml),
    }
}
