//! Keras-style model summaries: one row per top-level layer with its output shape and parameter
//! count, then total / trainable / non-trainable parameters (BN running statistics are
//! non-trainable, as Keras counts them) and the multiply-adds of conv and linear layers.
//!
//! The `keras-seed` preset is described with the notebook's Keras layer names, class names and
//! channels-last shapes, so that its table equals `model.summary()` of the notebook's model;
//! the others use timm's module names and channels-first shapes.

use crate::sizes::Sizes;
use serde::Serialize;

use crate::blocks::Block;
use crate::config::{BlockKind, StemConfig};
use crate::model::{InputError, ShapeTrace, SkNet};

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

/// Row builder that numbers repeated Keras names (`conv2d`, `conv2d_1`, ...) and adds up the
/// parameters and multiply-adds of the layers it is given.
struct Rows {
    keras: bool,
    rows: Vec<LayerRow>,
    counts: std::collections::HashMap<String, usize>,
    trainable: usize,
    frozen: usize,
    macs: u64,
}

impl Rows {
    fn shape(&self, c: usize, hw: Option<(usize, usize)>) -> Vec<Option<usize>> {
        match (hw, self.keras) {
            (None, _) => vec![None, Some(c)],
            (Some((h, w)), true) => vec![None, Some(h), Some(w), Some(c)],
            (Some((h, w)), false) => vec![None, Some(c), Some(h), Some(w)],
        }
    }

    /// The Keras name (numbered by class across the model) or timm's name.
    fn unique_name(&mut self, name: &str) -> String {
        if !self.keras {
            return name.to_string();
        }
        let n = self.counts.entry(name.to_string()).or_insert(0);
        let unique = if *n == 0 {
            name.to_string()
        } else {
            format!("{name}_{n}")
        };
        *n += 1;
        unique
    }

    /// A row without parameters (an activation, a pool, the input).
    fn push(&mut self, name: &str, kind: &str, c: usize, hw: Option<(usize, usize)>) {
        self.push_layer(name, kind, c, hw, (0, 0), 0);
    }

    /// A row for a layer with `params` (trainable, non-trainable) and `macs`.
    fn push_layer(
        &mut self,
        name: &str,
        kind: &str,
        c: usize,
        hw: Option<(usize, usize)>,
        (trainable, frozen): (usize, usize),
        macs: u64,
    ) {
        self.trainable += trainable;
        self.frozen += frozen;
        self.macs += macs;
        let name = self.unique_name(name);
        let output_shape = self.shape(c, hw);
        self.rows.push(LayerRow {
            name,
            kind: kind.to_string(),
            output_shape,
            params: trainable + frozen,
        });
    }

    /// `keras` or timm's (name, class) of a layer.
    fn names(
        &self,
        keras: (&'static str, &'static str),
        timm: (&'static str, &'static str),
    ) -> (&'static str, &'static str) {
        if self.keras {
            keras
        } else {
            timm
        }
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
        trainable: 0,
        frozen: 0,
        macs: 0,
    };
    stem_rows(&mut rows, model, &trace, (height, width));
    let channels = stage_rows(&mut rows, model, &trace);
    head_rows(&mut rows, model, channels);
    Ok(Summary {
        arch: config.name.clone(),
        layout: if keras { "NHWC" } else { "NCHW" },
        input: [height, width],
        total_params: rows.trainable + rows.frozen,
        trainable_params: rows.trainable,
        non_trainable_params: rows.frozen,
        macs: rows.macs,
        layers: rows.rows,
    })
}

/// The input (Keras), the notebook's input BN, the stem conv, BN, ReLU and max-pool.
fn stem_rows(rows: &mut Rows, model: &SkNet, trace: &ShapeTrace, (height, width): (usize, usize)) {
    let config = &model.config;
    let cin = config.in_channels;
    let stem_c = config.stem.width();
    let input_hw = Some((height, width));
    if rows.keras {
        rows.push("input", "InputLayer", cin, input_hw);
        // Keras numbers the first InputLayer `input_1`.
        rows.rows.last_mut().expect("row").name = "input_1".into();
    }
    if let Some(bn) = &model.input_bn {
        let name = ("batch_normalization", "BatchNormalization");
        rows.push_layer(name.0, name.1, cin, input_hw, bn.params(), 0);
    }
    let (name, kind) = rows.names(("conv2d", "Conv2D"), ("conv1", "Conv2d"));
    let (params, macs) = (model.conv1.params(), model.conv1.macs(height, width));
    rows.push_layer(name, kind, stem_c, Some(trace.stem), params, macs);
    let (name, kind) = rows.names(
        ("batch_normalization", "BatchNormalization"),
        ("bn1", "BatchNorm2d"),
    );
    rows.push_layer(name, kind, stem_c, Some(trace.stem), model.bn1.params(), 0);
    let (name, kind) = rows.names(("activation", "Activation"), ("act1", "ReLU"));
    rows.push(name, kind, stem_c, Some(trace.stem));
    if !matches!(config.stem, StemConfig::Cifar { .. }) {
        let (name, kind) = rows.names(("max_pooling2d", "MaxPooling2D"), ("maxpool", "MaxPool2d"));
        rows.push(name, kind, stem_c, Some(trace.pooled));
    }
}

/// One row per block; returns the last stage's channels.
fn stage_rows(rows: &mut Rows, model: &SkNet, trace: &ShapeTrace) -> usize {
    let config = &model.config;
    let mut hw = trace.pooled;
    let mut k = 0;
    let mut channels = config.stem.width();
    for (i, stage) in model.stages().iter().enumerate() {
        for (j, block) in stage.iter().enumerate() {
            let macs = block.macs(hw.0, hw.1);
            hw = trace.blocks[k];
            k += 1;
            channels = config.stage_channels(i);
            let name = if rows.keras {
                "sk_conv".to_string()
            } else {
                format!("layer{}.{j}", i + 1)
            };
            let kind = block_type(block, rows.keras);
            rows.push_layer(&name, kind, channels, Some(hw), block.params(), macs);
        }
    }
    channels
}

/// Global average pooling and the classifier.
fn head_rows(rows: &mut Rows, model: &SkNet, channels: usize) {
    let config = &model.config;
    if rows.keras {
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
    let (name, kind) = rows.names(
        ("global_average_pooling2d", "GlobalAveragePooling2D"),
        ("global_pool", "AdaptiveAvgPool2d"),
    );
    rows.push(name, kind, channels, None);
    let (name, kind) = rows.names(("dense", "Dense"), ("fc", "Linear"));
    let (params, macs) = (model.fc.params(), model.fc.macs(1, 1));
    rows.push_layer(name, kind, config.num_classes, None, params, macs);
}

/// `12345678` -> `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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
