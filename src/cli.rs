//! The `sknet` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;
use thiserror::Error;

use crate::config::{ConfigError, NetworkConfig};
use crate::device::default_device;
use crate::model::{InputError, SkNet};
use crate::presets;
use crate::summary::{summarize, thousands};

/// Anything a command can fail with.
#[derive(Debug, Error)]
pub enum CliError {
    /// Bad architecture or config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad input size.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Bad argument.
    #[error("invalid argument `{arg}`: {message}")]
    Argument {
        /// The argument.
        arg: String,
        /// What was expected.
        message: String,
    },
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
    Summary(ModelArgs),
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

/// Which network, at which size.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Preset name (see `sknet archs`).
    #[arg(long, default_value = "keras-seed")]
    pub arch: String,
    /// A JSON or TOML config file; overrides --arch.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input size: `S` or `HxW` (default: the architecture's own).
    #[arg(long)]
    pub input: Option<String>,
    /// Number of classes (default: the architecture's own).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `224` or `224x160` into `[height, width]`.
pub fn parse_input_size(text: &str) -> Result<[usize; 2], CliError> {
    let bad = || CliError::Argument {
        arg: format!("--input {text}"),
        message: "expected a size like 224 or 224x160 (height x width), each >= 1".into(),
    };
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let nums: Vec<usize> = parts
        .iter()
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match nums.as_slice() {
        [s] if *s > 0 => Ok([*s, *s]),
        [h, w] if *h > 0 && *w > 0 => Ok([*h, *w]),
        _ => Err(bad()),
    }
}

impl ModelArgs {
    /// The config these arguments describe.
    pub fn network_config(&self) -> Result<NetworkConfig, CliError> {
        let mut config = match &self.config {
            Some(path) => NetworkConfig::from_file(path)?,
            None => presets::by_name(&self.arch)?,
        };
        if let Some(classes) = self.classes {
            config.num_classes = classes;
        }
        if let Some(size) = &self.input {
            config.default_input = parse_input_size(size)?;
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Serialize)]
struct ArchRow {
    name: &'static str,
    description: &'static str,
    input: [usize; 2],
    classes: usize,
    params: usize,
    macs: u64,
    reference: Option<ArchReference>,
}

#[derive(Serialize)]
struct ArchReference {
    dataset: &'static str,
    top1: f64,
    source: &'static str,
}

fn archs(json: bool) -> Result<String, CliError> {
    let device = default_device();
    let mut rows = Vec::new();
    for p in presets::all() {
        let config = (p.build)();
        let model = SkNet::new(&config, &device)?;
        let [h, w] = config.default_input;
        let s = summarize(&model, h, w)?;
        rows.push(ArchRow {
            name: p.name,
            description: p.description,
            input: config.default_input,
            classes: config.num_classes,
            params: s.trainable_params,
            macs: s.macs,
            reference: p.reference.map(|(dataset, top1, source)| ArchReference {
                dataset,
                top1,
                source,
            }),
        });
    }
    if json {
        return Ok(serde_json::to_string_pretty(&rows).expect("rows serialize"));
    }
    let mut out = format!(
        "{:<18} {:>7} {:>12} {:>9} {:>22}  {}\n",
        "arch", "input", "params", "GMACs", "reference top-1", "description"
    );
    for r in rows {
        let reference = r
            .reference
            .map(|x| format!("{:.2}% {}", x.top1, x.dataset))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:>7} {:>12} {:>9.2} {:>22}  {}\n",
            r.name,
            format!("{}x{}", r.input[0], r.input[1]),
            thousands(r.params as u64),
            r.macs as f64 / 1e9,
            reference,
            r.description
        ));
    }
    Ok(out)
}

/// Runs a parsed command and returns what it prints.
pub fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Archs { json } => archs(json),
        Command::Summary(args) => {
            let config = args.network_config()?;
            let model = SkNet::new(&config, &default_device())?;
            let [h, w] = config.default_input;
            let summary = summarize(&model, h, w)?;
            Ok(if args.json {
                summary.json()
            } else {
                summary.table()
            })
        }
        Command::Config { arch, toml } => {
            let config = presets::by_name(&arch)?;
            Ok(if toml {
                toml::to_string(&config).expect("config serializes")
            } else {
                config.to_json()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sizes() {
        assert_eq!(parse_input_size("224").unwrap(), [224, 224]);
        assert_eq!(parse_input_size("224x160").unwrap(), [224, 160]);
        assert!(parse_input_size("0").is_err());
        assert!(parse_input_size("axb").is_err());
        assert!(parse_input_size("1x2x3").is_err());
    }
}
