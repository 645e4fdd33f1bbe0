//! Keras-style model summaries: one row per top-level layer with its output shape and parameter
//! count, then total / trainable / non-trainable parameters (BN running statistics are
//! non-trainable, as Keras counts them) and the multiply-adds of conv and linear layers.
//!
//! The `keras-seed` preset is described with the notebook's Keras layer names, class names and
//! channels-last shapes, so that its table equals `model.summary()` of the notebook's model;
//! the others use timm's module names and channels-first shapes.

use serde::Serialize;

use crate::blocks::Block;
use crate::config::{BlockKind, StemConfig};
use crate::model::{InputError, SkNet};

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRow {
    /// Layer name.
    pub name: String,
    /// Layer class.
    #[serde(rename = "type")]
    pub kind: String,
    /// Output shape, batch first as `null`.
    pub output_shape: Vec<Option<usize>>,
    /// Parameters, BN running statistics included (as Keras counts them).
    pub params: usize,
}

/// A whole summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Architecture name.
    pub arch: String,
    /// `NHWC` (Keras) or `NCHW` (PyTorch): the layout of `output_shape`.
    pub layout: &'static str,
    /// Input `[height, width]`.
    pub input: [usize; 2],
    /// All parameters.
    pub total_params: usize,
    /// Parameters an optimiser trains.
    pub trainable_params: usize,
    /// BN running statistics.
    pub non_trainable_params: usize,
    /// Multiply-accumulates of conv and linear layers for one image.
    pub macs: u64,
    /// The rows.
    pub layers: Vec<LayerRow>,
}

/// Row builder that numbers repeated Keras names (`conv2d`, `conv2d_1`, ...).
struct Rows {
    keras: bool,
    rows: Vec<LayerRow>,
    counts: std::collections::HashMap<String, usize>,
}

impl Rows {
    fn shape(&self, c: usize, hw: Option<(usize, usize)>) -> Vec<Option<usize>> {
        match (hw, self.keras) {
            (None, _) => vec![None, Some(c)],
            (Some((h, w)), true) => vec![None, Some(h), Some(w), Some(c)],
            (Some((h, w)), false) => vec![None, Some(c), Some(h), Some(w)],
        }
    }

    fn push(
        &mut self,
        name: &str,
        kind: &str,
        c: usize,
        hw: Option<(usize, usize)>,
        params: usize,
    ) {
        let name = if self.keras {
            let n = self.counts.entry(name.to_string()).or_insert(0);
            let unique = if *n == 0 {
                name.to_string()
            } else {
                format!("{name}_{n}")
            };
            *n += 1;
            unique
        } else {
            name.to_string()
        };
        let output_shape = self.shape(c, hw);
        self.rows.push(LayerRow {
            name,
            kind: kind.to_string(),
            output_shape,
            params,
        });
    }
}

fn block_type(block: &Block, keras: bool) -> &'static str {
    match (block, keras) {
        (_, true) => "SKConv",
        (Block::Basic(_), _) => "SelectiveKernelBasic",
        (Block::Bottleneck(_), _) => "SelectiveKernelBottleneck",
        (Block::KerasSeed(_), _) => "SKConv",
    }
}

/// Summarizes `model` for an input of `height x width`.
pub fn summarize(model: &SkNet, height: usize, width: usize) -> Result<Summary, InputError> {
    let config = &model.config;
    let trace = model.trace_shapes(height, width)?;
    let keras = config.block == BlockKind::KerasSeed;
    let mut rows = Rows {
        keras,
        rows: Vec::new(),
        counts: Default::default(),
    };
    let mut trainable = 0usize;
    let mut frozen = 0usize;
    let mut macs = 0u64;
    let mut count = |(t, n): (usize, usize)| {
        trainable += t;
        frozen += n;
        t + n
    };

    let cin = config.in_channels;
    let stem_c = config.stem.width();
    let input_hw = Some((height, width));
    if keras {
        rows.push("input", "InputLayer", cin, input_hw, 0);
        // Keras numbers the first InputLayer `input_1`.
        rows.rows.last_mut().expect("row").name = "input_1".into();
    }
    if let Some(bn) = &model.input_bn {
        let p = count(bn.params());
        rows.push(
            "batch_normalization",
            "BatchNormalization",
            cin,
            input_hw,
            p,
        );
    }
    let p = count((model.conv1.params(), 0));
    macs += model.conv1.macs(height, width);
    let (conv_name, conv_type) = if keras {
        ("conv2d", "Conv2D")
    } else {
        ("conv1", "Conv2d")
    };
    rows.push(conv_name, conv_type, stem_c, Some(trace.stem), p);
    let p = count(model.bn1.params());
    if keras {
        rows.push(
            "batch_normalization",
            "BatchNormalization",
            stem_c,
            Some(trace.stem),
            p,
        );
        rows.push("activation", "Activation", stem_c, Some(trace.stem), 0);
    } else {
        rows.push("bn1", "BatchNorm2d", stem_c, Some(trace.stem), p);
        rows.push("act1", "ReLU", stem_c, Some(trace.stem), 0);
    }
    if !matches!(config.stem, StemConfig::Cifar { .. }) {
        let (name, kind) = if keras {
            ("max_pooling2d", "MaxPooling2D")
        } else {
            ("maxpool", "MaxPool2d")
        };
        rows.push(name, kind, stem_c, Some(trace.pooled), 0);
    }

    let mut hw = trace.pooled;
    let mut k = 0;
    let mut channels = stem_c;
    for (i, stage) in model.stages().iter().enumerate() {
        for (j, block) in stage.iter().enumerate() {
            macs += block.macs(hw.0, hw.1);
            hw = trace.blocks[k];
            k += 1;
            channels = config.stage_channels(i);
            let p = count(block.params());
            let name = if keras {
                "sk_conv".to_string()
            } else {
                format!("layer{}.{j}", i + 1)
            };
            rows.push(&name, block_type(block, keras), channels, Some(hw), p);
        }
    }
    if keras {
        // Keras numbers layers by class across the whole model, nested ones included: each SK unit
        // made one GlobalAveragePooling2D and 1 + M Dense layers before the head's.
        let units = model.stages().iter().map(|s| s.len()).sum::<usize>();
        let m = config.sk.branches();
        *rows
            .counts
            .entry("global_average_pooling2d".into())
            .or_insert(0) += units;
        *rows.counts.entry("dense".into()).or_insert(0) += units * (1 + m);
    }
    let (name, kind) = if keras {
        ("global_average_pooling2d", "GlobalAveragePooling2D")
    } else {
        ("global_pool", "AdaptiveAvgPool2d")
    };
    rows.push(name, kind, channels, None, 0);
    let p = count((model.fc.params(), 0));
    macs += (model.fc.in_features() * model.fc.out_features()) as u64;
    let (name, kind) = if keras {
        ("dense", "Dense")
    } else {
        ("fc", "Linear")
    };
    rows.push(name, kind, config.num_classes, None, p);

    Ok(Summary {
        arch: config.name.clone(),
        layout: if keras { "NHWC" } else { "NCHW" },
        input: [height, width],
        total_params: trainable + frozen,
        trainable_params: trainable,
        non_trainable_params: frozen,
        macs,
        layers: rows.rows,
    })
}

/// `12345678` -> `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn shape_text(shape: &[Option<usize>]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|d| d.map_or("None".to_string(), |v| v.to_string()))
        .collect();
    format!("({})", parts.join(", "))
}

impl Summary {
    /// The Keras-style table. Columns widen to fit (Keras truncates long names; this does not).
    pub fn table(&self) -> String {
        let cells: Vec<(String, String, String)> = self
            .layers
            .iter()
            .map(|r| {
                let shape = shape_text(&r.output_shape);
                let shape = if r.kind == "InputLayer" {
                    format!("[{shape}]")
                } else {
                    shape
                };
                (
                    format!("{} ({})", r.name, r.kind),
                    shape,
                    r.params.to_string(),
                )
            })
            .collect();
        let w0 = cells.iter().map(|c| c.0.len()).max().unwrap_or(0).max(12) + 2;
        let w1 = cells.iter().map(|c| c.1.len()).max().unwrap_or(0).max(12) + 2;
        let w2 = cells.iter().map(|c| c.2.len()).max().unwrap_or(0).max(7);
        let width = w0 + w1 + w2;
        let mut out = String::new();
        out.push_str(&format!("Model: \"{}\"\n", self.arch));
        out.push_str(&"_".repeat(width));
        out.push('\n');
        out.push_str(&format!(
            "{:w0$}{:w1$}{}\n",
            "Layer (type)", "Output Shape", "Param #"
        ));
        out.push_str(&"=".repeat(width));
        out.push('\n');
        for (i, (a, b, c)) in cells.iter().enumerate() {
            out.push_str(&format!("{a:w0$}{b:w1$}{c}\n"));
            let sep = if i + 1 == cells.len() { "=" } else { "_" };
            out.push_str(&sep.repeat(width));
            out.push('\n');
        }
        out.push_str(&format!(
            "Total params: {}\n",
            thousands(self.total_params as u64)
        ));
        out.push_str(&format!(
            "Trainable params: {}\n",
            thousands(self.trainable_params as u64)
        ));
        out.push_str(&format!(
            "Non-trainable params: {}\n",
            thousands(self.non_trainable_params as u64)
        ));
        out.push_str(&format!(
            "Multiply-adds (conv + linear, {}x{}): {} ({:.2} G)\n",
            self.input[0],
            self.input[1],
            thousands(self.macs),
            self.macs as f64 / 1e9
        ));
        out.push_str(&"_".repeat(width));
        out.push('\n');
        out
    }

    /// The JSON object printed by `sknet summary --json`.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("summary serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(27479784), "27,479,784");
    }
}
