//! Serializable network configuration.
//!
//! One [`NetworkConfig`] describes every SKNet this crate builds: the paper's SKNet-26/50/101 and
//! SKNet-29, timm's SK-ResNets and SK-ResNeXt, and the Keras notebook's model. It round-trips
//! through JSON and TOML, and [`NetworkConfig::validate`] rejects any config that cannot be
//! built, naming the field and the constraint.

use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

mod parts;
mod sk;

pub use parts::{BlockKind, NormConfig, Padding, StemConfig};
pub use sk::{make_divisible, AttnWidth, LogitLayout, SkConfig};

/// Everything that can be wrong with a config, a config file or a preset name.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A field holds a value the network cannot be built with.
    #[error("invalid config: `{field}` {constraint}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `sk.kernel_sizes`.
        field: String,
        /// What was expected, and what was found.
        constraint: String,
    },
    /// No preset of that name.
    #[error("unknown architecture `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// Comma-separated preset names.
        known: String,
    },
    /// The network would be too large to build.
    #[error("`{network}` would have {parameters} parameters ({gib:.1} GiB as f32); sknet builds at most {max}")]
    TooLarge {
        /// The network's name.
        network: String,
        /// Its parameter count (BatchNorm statistics included).
        parameters: u128,
        /// Their size in GiB.
        gib: f64,
        /// The most sknet builds.
        max: u64,
    },
    /// A config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A config file could not be parsed.
    #[error("cannot parse config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the field and line).
        message: String,
    },
}

fn invalid(field: impl Into<String>, constraint: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        constraint: constraint.into(),
    }
}

/// Most channels of any layer (input, stem, stage, SK unit, groups, attention).
pub const MAX_CHANNELS: usize = 1 << 16;
/// Most classifier outputs.
pub const MAX_CLASSES: usize = 1 << 20;
/// Most units in one stage.
pub const MAX_UNITS_PER_STAGE: usize = 1024;
/// Largest stride of a stage.
pub const MAX_STRIDE: usize = 16;
/// Largest input side, as for decoded images.
pub const MAX_INPUT_SIDE: usize = 16_384;
/// Largest SK kernel size.
pub const MAX_KERNEL: usize = 31;
/// Most SK branches.
pub const MAX_BRANCHES: usize = 16;

/// `min <= value <= max`, or an error naming `field` and the range.
fn within(field: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be within {min}..={max}, found {value}"),
        ))
    }
}

/// Largest config file read: a config is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of a config file: a regular file of at most [`MAX_CONFIG_BYTES`], in UTF-8.
fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    let shown = path.display().to_string();
    let bytes = crate::files::read_bounded(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        crate::files::FileProblem::Io(source) => ConfigError::Io {
            path: shown.clone(),
            source,
        },
        other => ConfigError::Parse {
            path: shown.clone(),
            message: other.to_string(),
        },
    })?;
    String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
        path: shown,
        message: format!("not UTF-8 text: {e}"),
    })
}

/// Parses JSON; errors name the field path (`sk.groups: invalid type ...`).
fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| format!("`{}`: {}", e.path(), e.inner()))
}

/// Parses TOML; errors name the field path.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| format!("`{}`: {}", e.path(), e.inner()))
}

/// A whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Free-form name (the preset's name for presets).
    pub name: String,
    /// Input channels.
    pub in_channels: usize,
    /// Classifier outputs.
    pub num_classes: usize,
    /// The stem.
    pub stem: StemConfig,
    /// Residual block family.
    pub block: BlockKind,
    /// Units per stage.
    pub layers: Vec<usize>,
    /// Base width ("planes") per stage; the stage outputs `planes * expansion` channels.
    pub planes: Vec<usize>,
    /// Stride of each stage's first unit.
    pub strides: Vec<usize>,
    /// Bottleneck only: grouped-conv width is `floor(planes * base_width / 64) * cardinality`.
    /// Ignored (set 64) for other blocks.
    pub base_width: usize,
    /// Bottleneck only: `cardinality` enters the width formula above; the SK branch groups come
    /// from `sk.groups`.
    pub cardinality: usize,
    /// SK unit settings.
    pub sk: SkConfig,
    /// BatchNorm settings.
    pub norm: NormConfig,
    /// Padding convention of every convolution.
    pub padding: Padding,
    /// Biases on the block's 1x1 convs and shortcut conv (Keras Conv2D default).
    pub conv_bias: bool,
    /// Input size the preset is meant for: (height, width). Used as the default for summaries.
    pub default_input: [usize; 2],
}

impl NetworkConfig {
    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.layers.len()
    }

    /// Channels produced by stage `i`.
    pub fn stage_channels(&self, i: usize) -> usize {
        self.planes[i] * self.block.expansion()
    }

    /// Width of the SK unit in a block of stage `i`.
    pub fn sk_width(&self, i: usize) -> usize {
        match self.block {
            BlockKind::Bottleneck => {
                (self.planes[i] as f64 * (self.base_width as f64 / 64.0)).floor() as usize
                    * self.cardinality
            }
            BlockKind::Basic | BlockKind::KerasSeed => self.planes[i],
        }
    }

    /// Channels entering the SK unit of a block of stage `i` whose input has `in_ch` channels.
    pub fn sk_in_channels(&self, i: usize, in_ch: usize) -> usize {
        match self.block {
            BlockKind::Basic => in_ch,
            BlockKind::Bottleneck | BlockKind::KerasSeed => self.sk_width(i),
        }
    }

    /// Total downsampling factor of the stem.
    pub fn stem_stride(&self) -> usize {
        match self.stem {
            StemConfig::Imagenet { .. } | StemConfig::KerasSeed { .. } => 4,
            StemConfig::Cifar { .. } => 1,
        }
    }

    /// Reads a config from a `.json` or `.toml` file (by extension; anything else is tried as
    /// JSON then TOML), then validates it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = read_config_text(path)?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let parsed: Result<Self, String> = match ext.as_str() {
            "toml" => parse_toml(&text),
            "json" => parse_json(&text),
            _ => parse_json(&text).or_else(|json_err| {
                parse_toml(&text)
                    .map_err(|toml_err| format!("not JSON ({json_err}) nor TOML ({toml_err})"))
            }),
        };
        let config = parsed.map_err(|message| ConfigError::Parse {
            path: shown,
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the network can be built; the error names the field and the constraint.
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("in_channels", self.in_channels, 1, MAX_CHANNELS)?;
        within("num_classes", self.num_classes, 1, MAX_CLASSES)?;
        within("stem.width", self.stem.width(), 1, MAX_CHANNELS)?;
        within("default_input[0]", self.default_input[0], 1, MAX_INPUT_SIDE)?;
        within("default_input[1]", self.default_input[1], 1, MAX_INPUT_SIDE)?;
        self.validate_stage_lists()?;
        if self.block == BlockKind::Bottleneck && (self.base_width == 0 || self.cardinality == 0) {
            return Err(invalid(
                "base_width / cardinality",
                "must both be >= 1 for bottleneck blocks",
            ));
        }
        within("base_width", self.base_width, 0, MAX_CHANNELS)?;
        within("cardinality", self.cardinality, 0, MAX_CHANNELS)?;
        if !(self.norm.eps.is_finite() && self.norm.eps > 0.0) {
            return Err(invalid(
                "norm.eps",
                format!("must be finite and > 0, found {}", self.norm.eps),
            ));
        }
        if !(self.norm.momentum.is_finite() && (0.0..=1.0).contains(&self.norm.momentum)) {
            return Err(invalid(
                "norm.momentum",
                format!("must be within [0, 1], found {}", self.norm.momentum),
            ));
        }
        self.sk.validate()?;

        self.validate_units()
    }

    /// One entry per stage in `layers`, `planes` and `strides`, none of them zero.
    fn validate_stage_lists(&self) -> Result<(), ConfigError> {
        let n = self.layers.len();
        if n == 0 {
            return Err(invalid("layers", "needs at least one stage, found none"));
        }
        if self.planes.len() != n {
            return Err(invalid(
                "planes",
                format!(
                    "needs one entry per stage ({n}, as in `layers`), found {}",
                    self.planes.len()
                ),
            ));
        }
        if self.strides.len() != n {
            return Err(invalid(
                "strides",
                format!(
                    "needs one entry per stage ({n}, as in `layers`), found {}",
                    self.strides.len()
                ),
            ));
        }
        for i in 0..n {
            within(
                &format!("layers[{i}]"),
                self.layers[i],
                1,
                MAX_UNITS_PER_STAGE,
            )?;
            within(&format!("planes[{i}]"), self.planes[i], 1, MAX_CHANNELS)?;
            within(&format!("strides[{i}]"), self.strides[i], 1, MAX_STRIDE)?;
        }
        Ok(())
    }

    /// The channel arithmetic of every unit: groups and the input split must divide evenly.
    fn validate_units(&self) -> Result<(), ConfigError> {
        let n = self.layers.len();
        let m = self.sk.branches();
        let mut in_ch = self.stem.width();
        for i in 0..n {
            let width = self.sk_width(i);
            within(
                &format!("planes[{i}]"),
                self.stage_channels(i),
                1,
                MAX_CHANNELS,
            )
            .and(within("the SK unit's width", width, 0, MAX_CHANNELS))?;
            if width == 0 {
                return Err(invalid(
                    format!("planes[{i}]"),
                    "gives a zero-width SK unit with this base_width",
                ));
            }
            let groups = self.sk.groups.min(width);
            for j in 0..self.layers[i] {
                let unit_in = self.sk_in_channels(i, in_ch);
                let branch_in = if self.sk.split_input {
                    if !unit_in.is_multiple_of(m) {
                        return Err(invalid(
                            "sk.split_input",
                            format!(
                                "stage {i} unit {j}: {unit_in} input channels do not split evenly \
                                 into {m} branches"
                            ),
                        ));
                    }
                    unit_in / m
                } else {
                    unit_in
                };
                if !branch_in.is_multiple_of(groups) || !width.is_multiple_of(groups) {
                    return Err(invalid(
                        "sk.groups",
                        format!(
                            "stage {i} unit {j}: {groups} groups must divide the branch input \
                             ({branch_in}) and output ({width}) channels"
                        ),
                    ));
                }
                if self.block == BlockKind::KerasSeed
                    && j == 0
                    && in_ch == self.stage_channels(i)
                    && self.strides[i] != 1
                {
                    return Err(invalid(
                        format!("strides[{i}]"),
                        "the Keras block uses an identity shortcut when input and output widths \
                         match, so its stride must be 1",
                    ));
                }
                in_ch = self.stage_channels(i);
            }
        }
        Ok(())
    }

    /// Serializes to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;

    /// An unknown field anywhere, in a tagged enum too, is an error that names it.
    #[test]
    fn unknown_fields_are_named() {
        let dir = std::env::temp_dir().join(format!("sknet-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = presets::by_name("sknet-tiny").unwrap().to_json();
        let cases = [
            (
                "\"stem\": {",
                "\"stem\": {\"bogus_stem\": 1, ",
                "bogus_stem",
            ),
            (
                "\"attn_width\": {",
                "\"attn_width\": {\"bogus_rule\": 1, ",
                "bogus_rule",
            ),
            ("\"name\"", "\"bogus_top\": 1, \"name\"", "bogus_top"),
        ];
        for (i, (anchor, replaced, field)) in cases.into_iter().enumerate() {
            assert!(good.contains(anchor), "{anchor}");
            let path = dir.join(format!("c{i}.json"));
            std::fs::write(&path, good.replacen(anchor, replaced, 1)).unwrap();
            let err = NetworkConfig::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let path = dir.join("ok.json");
        std::fs::write(&path, &good).unwrap();
        assert!(NetworkConfig::from_file(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn make_divisible_matches_timm() {
        // Values from timm.layers.make_divisible.
        assert_eq!(make_divisible(64.0 / 8.0, 16), 16);
        assert_eq!(make_divisible(512.0 / 8.0, 16), 64);
        assert_eq!(make_divisible(128.0 / 16.0, 32), 32);
        assert_eq!(make_divisible(1024.0 / 16.0, 32), 64);
        assert_eq!(make_divisible(2048.0 / 16.0, 32), 128);
        assert_eq!(make_divisible(100.0, 8), 104);
    }

    #[test]
    fn every_preset_validates_and_round_trips_through_json_and_toml() {
        for p in presets::all() {
            let c = (p.build)();
            c.validate().unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let back: NetworkConfig = serde_json::from_str(&c.to_json()).unwrap();
            assert_eq!(back, c, "{} via JSON", p.name);
            let t = toml::to_string(&c).unwrap();
            let back: NetworkConfig = toml::from_str(&t).unwrap();
            assert_eq!(back, c, "{} via TOML", p.name);
        }
    }

    /// Floats survive JSON exactly (checkpoints store their config as JSON, and `--resume`
    /// compares it): without serde_json's `float_roundtrip`, this eps came back 1 ulp off.
    #[test]
    fn floats_round_trip_through_json_to_the_bit() {
        let mut c = presets::by_name("skresnet34").unwrap();
        for eps in [2.049638230412172e-92, 1e-5, 0.1 + 0.2, f64::MIN_POSITIVE] {
            c.norm.eps = eps;
            let back: NetworkConfig = serde_json::from_str(&c.to_json()).unwrap();
            assert_eq!(back.norm.eps.to_bits(), eps.to_bits(), "{eps:e}");
        }
    }

    fn expect_invalid(c: &NetworkConfig, field: &str) {
        match c.validate() {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid `{field}`, got {other:?}"),
        }
    }

    #[test]
    fn impossible_configs_name_their_field() {
        let base = presets::by_name("skresnext50_32x4d").unwrap();

        let mut c = base.clone();
        c.sk.kernel_sizes = vec![3];
        expect_invalid(&c, "sk.kernel_sizes");

        let mut c = base.clone();
        c.sk.groups = 3; // 128 channels are not divisible by 3 groups
        expect_invalid(&c, "sk.groups");

        let mut c = base.clone();
        c.sk.kernel_sizes = vec![3, 4];
        expect_invalid(&c, "sk.kernel_sizes[1]");

        let mut c = base.clone();
        c.planes.pop();
        expect_invalid(&c, "planes");

        let mut c = base.clone();
        c.num_classes = 0;
        expect_invalid(&c, "num_classes");

        let mut c = presets::by_name("skresnet18").unwrap();
        c.stem = StemConfig::Imagenet {
            width: 63,
            caffe_pool: false,
        };
        expect_invalid(&c, "sk.split_input");

        let mut c = base;
        c.norm.momentum = 1.5;
        expect_invalid(&c, "norm.momentum");
    }

    /// Sizes far beyond any real network are refused by field before anything is allocated.
    #[test]
    fn sizes_beyond_the_limits_name_their_field() {
        let base = presets::by_name("sknet-tiny").unwrap();
        type Change = fn(&mut NetworkConfig);
        let cases: [(&str, Change); 7] = [
            ("num_classes", |c| c.num_classes = 1 << 40),
            ("planes[0]", |c| c.planes[0] = 1 << 30),
            ("layers[1]", |c| c.layers[1] = 1 << 20),
            ("sk.kernel_sizes[1]", |c| c.sk.kernel_sizes[1] = 1001),
            ("default_input[0]", |c| c.default_input = [1 << 20, 32]),
            ("strides[2]", |c| c.strides[2] = 1 << 40),
            ("in_channels", |c| c.in_channels = usize::MAX),
        ];
        for (field, change) in cases {
            let mut c = base.clone();
            change(&mut c);
            expect_invalid(&c, field);
        }
    }

    #[test]
    fn bad_config_file_names_the_file_and_field() {
        let dir = std::env::temp_dir().join(format!("sknet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.json");
        std::fs::write(&path, r#"{"name": "x", "in_channels": "three"}"#).unwrap();
        let err = NetworkConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("in_channels"),
            "{err}"
        );
        let err = NetworkConfig::from_file(&dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
