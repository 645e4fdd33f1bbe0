//! ONNX export: any [`SkNet`] as an ONNX model (opset 17), for ONNX Runtime, TensorRT, OpenVINO,
//! CoreML or a browser.
//!
//! The graph follows the network module by module, and its names are the checkpoint keys: the
//! weights of `layer1.0.conv2.paths.1.conv` are the initializer `layer1.0.conv2.paths.1.conv.weight`
//! and its output is the value `layer1.0.conv2.paths.1.conv`.
//!
//! - Input `input`: `[batch, channels, height, width]`, float32, normalized as the preprocessing
//!   in the metadata says; the batch is dynamic, the spatial size fixed at export.
//! - Output `logits`: `[batch, classes]`.
//! - With [`OnnxOptions::with_attention`], one output per SK unit, `attention.{unit path}`:
//!   `[batch, M, C]`, the branch weights (summing to 1 over M).
//! - BatchNorms that follow a convolution are folded into it unless
//!   [`OnnxOptions::with_keep_batchnorm`]; BNs with no convolution before them (the Keras
//!   notebook's input BN and its BN after the SK unit) stay `BatchNormalization` nodes.
//! - `metadata_props` carry the preprocessing (`size`, `crop_pct`, `interpolation`, `mean`,
//!   `std`), the class names, and sknet's own keys (`sknet.config`, `sknet.classes`,
//!   `sknet.preprocess`, as in its safetensors files).

mod graph;
pub mod proto;

use std::path::Path;

use burn::tensor::Tensor;
use prost::Message;
use thiserror::Error;

use crate::blocks::{Block, Projection};
use crate::config::LogitLayout;
use crate::infer::Preprocess;
use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvNormAct, Selection, SelectiveKernel};
use crate::model::{InputError, SkNet};
use crate::sizes::Sizes;
use crate::weights::metadata::{META_CLASSES, META_CONFIG, META_PREPROCESS};
use crate::weights::WeightsError;
use graph::{attr_float, attr_int, attr_ints, float_value, Dim, GraphBuilder};
use proto::{GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto};

/// The operator set the graph uses.
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// Why a network could not be exported.
#[derive(Debug, Error)]
pub enum OnnxError {
    /// The input size does not fit the network.
    #[error(transparent)]
    Input(#[from] InputError),
    /// An SK unit selects by fixed weights (an ablation), which the graph cannot express.
    #[error(
        "`{unit}` selects with fixed branch weights (an ablation); only the learned selection \
         can be exported"
    )]
    Ablated {
        /// The unit's module path.
        unit: String,
    },
    /// The folded BatchNorms cannot be unfolded for `keep_batchnorm`.
    #[error(
        "the network's BatchNorms are already folded into its convolutions, so they cannot be \
         kept: export the unfolded network"
    )]
    AlreadyFolded,
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] WeightsError),
}

/// What goes into the exported graph.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    /// The fixed spatial size, `[height, width]`.
    pub input_size: [usize; 2],
    /// Keep BatchNorms as nodes instead of folding them into the convolutions.
    pub keep_batchnorm: bool,
    /// Add each SK unit's branch weights as an output.
    pub attention: bool,
}

impl OnnxOptions {
    /// Folded BatchNorms, logits only, at this input size.
    pub fn new(input_size: [usize; 2]) -> Self {
        Self {
            input_size,
            keep_batchnorm: false,
            attention: false,
        }
    }

    /// Keeps the BatchNorms as `BatchNormalization` nodes.
    pub fn with_keep_batchnorm(mut self, keep: bool) -> Self {
        self.keep_batchnorm = keep;
        self
    }

    /// Adds the per-unit branch weights as outputs.
    pub fn with_attention(mut self, attention: bool) -> Self {
        self.attention = attention;
        self
    }
}

/// What [`write_onnx`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxSummary {
    /// Nodes in the graph.
    pub nodes: usize,
    /// Constant tensors (weights, shapes).
    pub initializers: usize,
    /// The graph's output names.
    pub outputs: Vec<String>,
    /// The file's size.
    pub bytes: usize,
}

/// The network as an ONNX model.
///
/// `model` may be folded already (as for inference), unless `options.keep_batchnorm`; `classes`
/// and `preprocess` go into the metadata.
pub fn to_onnx(
    model: &SkNet,
    options: &OnnxOptions,
    preprocess: &Preprocess,
    classes: &[String],
) -> Result<ModelProto, OnnxError> {
    let [h, w] = options.input_size;
    model.check_input(&[1, model.config.in_channels, h, w])?;
    if options.keep_batchnorm && model.is_batchnorm_folded() {
        return Err(OnnxError::AlreadyFolded);
    }
    for (block, (unit, _)) in all_blocks(model).zip(model.unit_names()) {
        if block.selective_kernel().selection != Selection::Learned {
            return Err(OnnxError::Ablated { unit });
        }
    }
    let folded;
    let model = match options.keep_batchnorm || model.is_batchnorm_folded() {
        true => model,
        false => {
            folded = model.clone().fold_batchnorm();
            &folded
        }
    };
    let mut exporter = Exporter::default();
    let input = exporter.g.input("input");
    let logits = exporter.network(model, &input, (h, w));
    let batch = Dim::Named("batch");
    let mut outputs = vec![float_value(
        &logits,
        &[batch.clone(), Dim::Fixed(model.config.num_classes)],
        "logits (no softmax)",
    )];
    if options.attention {
        let units = model.unit_names().into_iter().zip(&exporter.attention);
        for ((_, paper_name), (value, m, c)) in units {
            let doc = format!("{paper_name}: branch weights [batch, M, C], summing to 1 over M");
            outputs.push(float_value(
                value,
                &[batch.clone(), Dim::Fixed(*m), Dim::Fixed(*c)],
                &doc,
            ));
        }
    }
    let c = model.config.in_channels;
    let graph = GraphProto {
        node: exporter.g.nodes,
        name: model.config.name.clone(),
        initializer: exporter.g.initializers,
        doc_string: String::new(),
        input: vec![float_value(
            &input,
            &[batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)],
            "normalized image batch",
        )],
        output: outputs,
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "sknet".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!(
            "{}: a Selective Kernel Network (Li et al., CVPR 2019)",
            model.config.name
        ),
        graph: Some(graph),
        metadata_props: metadata(
            model,
            &Preprocess {
                size: [h, w],
                ..preprocess.clone()
            },
            classes,
        ),
    })
}

/// Exports the network to `path` (atomically: a failed write leaves no file).
pub fn write_onnx(
    path: &Path,
    model: &SkNet,
    options: &OnnxOptions,
    preprocess: &Preprocess,
    classes: &[String],
) -> Result<OnnxSummary, OnnxError> {
    let proto = to_onnx(model, options, preprocess, classes)?;
    let bytes = proto.encode_to_vec();
    crate::weights::checkpoint::write_atomic(path, &bytes)?;
    let graph = proto.graph.as_ref().expect("graph");
    Ok(OnnxSummary {
        nodes: graph.node.len(),
        initializers: graph.initializer.len(),
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        bytes: bytes.len(),
    })
}

fn metadata(model: &SkNet, pre: &Preprocess, classes: &[String]) -> Vec<StringStringEntryProto> {
    let list = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
    let entries = [
        ("size", format!("{},{}", pre.size[0], pre.size[1])),
        ("crop_pct", pre.crop_pct.to_string()),
        (
            "interpolation",
            json(&pre.interpolation).trim_matches('"').to_string(),
        ),
        ("mean", list(&pre.mean)),
        ("std", list(&pre.std)),
        ("classes", json(classes)),
        (META_CONFIG, json(&model.config)),
        (META_CLASSES, json(classes)),
        (META_PREPROCESS, json(pre)),
    ];
    entries
        .into_iter()
        .map(|(key, value)| StringStringEntryProto {
            key: key.into(),
            value,
        })
        .collect()
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata serializes")
}

fn all_blocks(model: &SkNet) -> impl Iterator<Item = &Block> {
    model.stages().into_iter().flatten()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor")
}

/// Emits the network's nodes, module by module.
#[derive(Default)]
struct Exporter {
    g: GraphBuilder,
    /// Each SK unit's branch-weight value, with its M and C.
    attention: Vec<(String, usize, usize)>,
}

type Hw = (usize, usize);

impl Exporter {
    fn network(&mut self, model: &SkNet, input: &str, hw: Hw) -> String {
        let mut x = input.to_string();
        if let Some(bn) = &model.input_bn {
            x = self.batch_norm("input_bn", bn, &x);
        }
        let (mut x, hw) = self.conv("conv1", &model.conv1, &x, hw);
        x = self.batch_norm("bn1", &model.bn1, &x);
        x = self.activation("act1", Activation::Relu, &x);
        let mut hw = hw;
        if let Some(pool) = model.stem_pool(hw.0, hw.1) {
            let [(t, b), (l, r)] = pool.padding;
            let mut attrs = vec![
                attr_ints("kernel_shape", &to_i64(&pool.kernel_size)),
                attr_ints("strides", &to_i64(&pool.stride)),
                attr_ints("pads", &to_i64(&[t, l, b, r])),
            ];
            if pool.ceil_mode {
                attrs.push(attr_int("ceil_mode", 1));
            }
            x = self.g.node("MaxPool", "maxpool", &[&x], attrs);
            hw = (
                model.pool_out_len(hw.0).expect("checked input"),
                model.pool_out_len(hw.1).expect("checked input"),
            );
        }
        for (i, stage) in model.stages().iter().enumerate() {
            for (j, block) in stage.iter().enumerate() {
                (x, hw) = self.block(&format!("layer{}.{j}", i + 1), block, &x, hw);
            }
        }
        let pooled = self
            .g
            .node("GlobalAveragePool", "global_pool", &[&x], vec![]);
        let flat = self.g.node(
            "Flatten",
            "global_pool.flatten",
            &[&pooled],
            vec![attr_int("axis", 1)],
        );
        let fc = &model.fc;
        let [o, i] = fc.weight.lazy_shape().dims::<2>();
        let weight = self
            .g
            .constant_f32("fc.weight", &[o, i], &values(fc.weight.val()));
        let mut inputs = vec![flat, weight];
        if let Some(b) = &fc.bias {
            inputs.push(self.g.constant_f32("fc.bias", &[o], &values(b.val())));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.g
            .node("Gemm", "logits", &inputs, vec![attr_int("transB", 1)])
    }

    fn conv(&mut self, path: &str, conv: &Conv2d, x: &str, hw: Hw) -> (String, Hw) {
        let shape = conv.weight.lazy_shape().dims::<4>();
        let weight = self.g.constant_f32(
            &format!("{path}.weight"),
            &shape,
            &values(conv.weight.val()),
        );
        let mut inputs = vec![x.to_string(), weight];
        if let Some(b) = &conv.bias {
            inputs.push(self.g.constant_f32(
                &format!("{path}.bias"),
                &[shape[0]],
                &values(b.val()),
            ));
        }
        let g = conv.geometry;
        let ((t, b), (l, r)) = (g.pads(hw.0), g.pads(hw.1));
        let attrs = vec![
            attr_ints("kernel_shape", &to_i64(&[g.kernel, g.kernel])),
            attr_ints("strides", &to_i64(&[g.stride, g.stride])),
            attr_ints("dilations", &to_i64(&[g.dilation, g.dilation])),
            attr_ints("pads", &to_i64(&[t, l, b, r])),
            attr_int("group", g.groups as i64),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = self.g.node("Conv", path, &inputs, attrs);
        (out, conv.out_hw(hw.0, hw.1).expect("checked input"))
    }

    /// A `BatchNormalization` node, or nothing for a BN folded into the conv before it.
    fn batch_norm(&mut self, path: &str, bn: &BatchNorm2d, x: &str) -> String {
        if bn.folded {
            return x.to_string();
        }
        let c = bn.channels();
        let mut constant = |name: &str, t: Tensor<1>| {
            self.g
                .constant_f32(&format!("{path}.{name}"), &[c], &values(t))
        };
        let inputs = [
            x.to_string(),
            constant("weight", bn.weight.val()),
            constant("bias", bn.bias.val()),
            constant("running_mean", bn.running_mean.value()),
            constant("running_var", bn.running_var.value()),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let eps = vec![attr_float("epsilon", bn.config.eps as f32)];
        self.g.node("BatchNormalization", path, &inputs, eps)
    }

    fn activation(&mut self, path: &str, activation: Activation, x: &str) -> String {
        match activation {
            Activation::Identity => x.to_string(),
            Activation::Relu => self.g.node("Relu", path, &[x], vec![]),
        }
    }

    fn conv_norm_act(&mut self, path: &str, layer: &ConvNormAct, x: &str, hw: Hw) -> (String, Hw) {
        let (x, hw) = self.conv(&format!("{path}.conv"), &layer.conv, x, hw);
        let x = self.batch_norm(&format!("{path}.bn"), &layer.bn, &x);
        (
            self.activation(&format!("{path}.act"), layer.activation, &x),
            hw,
        )
    }

    /// Split, fuse, select, as `SelectiveKernel::forward_with_attention`.
    fn selective_kernel(
        &mut self,
        path: &str,
        sk: &SelectiveKernel,
        x: &str,
        hw: Hw,
    ) -> (String, Hw) {
        let m = sk.paths.len();
        let c = sk.out_channels();
        let part = sk.paths[0].conv.in_channels();
        let mut branches = Vec::with_capacity(m);
        let mut out_hw = hw;
        for (i, branch) in sk.paths.iter().enumerate() {
            let input = match sk.split_input {
                true => {
                    let name = format!("{path}.paths.{i}.input");
                    let starts = self
                        .g
                        .constant_i64(&format!("{name}.starts"), &[(i * part) as i64]);
                    let ends = self
                        .g
                        .constant_i64(&format!("{name}.ends"), &[((i + 1) * part) as i64]);
                    let axes = self.g.constant_i64(&format!("{name}.axes"), &[1]);
                    self.g
                        .node("Slice", &name, &[x, &starts, &ends, &axes], vec![])
                }
                false => x.to_string(),
            };
            let (u, hw) = self.conv_norm_act(&format!("{path}.paths.{i}"), branch, &input, hw);
            branches.push(u);
            out_hw = hw;
        }
        let refs: Vec<&str> = branches.iter().map(String::as_str).collect();
        let fused = self.g.node("Sum", &format!("{path}.fuse"), &refs, vec![]);
        let s = self.g.node(
            "GlobalAveragePool",
            &format!("{path}.attn.pool"),
            &[&fused],
            vec![],
        );
        let attn = &sk.attn;
        let (mut z, _) = self.conv(
            &format!("{path}.attn.fc_reduce"),
            &attn.fc_reduce,
            &s,
            (1, 1),
        );
        if let Some(bn) = &attn.bn {
            z = self.batch_norm(&format!("{path}.attn.bn"), bn, &z);
            z = self.activation(&format!("{path}.attn.act"), Activation::Relu, &z);
        }
        let (logits, _) = self.conv(
            &format!("{path}.attn.fc_select"),
            &attn.fc_select,
            &z,
            (1, 1),
        );
        let logits = match attn.layout {
            LogitLayout::BranchMajor => self.reshape(
                &format!("{path}.attn.logits"),
                &logits,
                &[0, m as i64, c as i64],
            ),
            LogitLayout::ChannelMajor => {
                let name = format!("{path}.attn.logits");
                let by_channel = self.reshape(
                    &format!("{name}.channel_major"),
                    &logits,
                    &[0, c as i64, m as i64],
                );
                self.g.node(
                    "Transpose",
                    &name,
                    &[&by_channel],
                    vec![attr_ints("perm", &[0, 2, 1])],
                )
            }
        };
        let unit = path.to_string();
        let weights = self.g.node(
            "Softmax",
            &format!("attention.{unit}"),
            &[&logits],
            vec![attr_int("axis", 1)],
        );
        self.attention.push((weights.clone(), m, c));
        let per_branch = self.g.node_n(
            "Split",
            &format!("{path}.select.split"),
            &[&weights],
            vec![attr_int("axis", 1)],
            m,
        );
        let weighted: Vec<String> = per_branch
            .iter()
            .zip(&branches)
            .enumerate()
            .map(|(i, (a, u))| {
                let a = self.reshape(&format!("{path}.select.weight{i}"), a, &[0, -1, 1, 1]);
                self.g
                    .node("Mul", &format!("{path}.select.branch{i}"), &[u, &a], vec![])
            })
            .collect();
        let refs: Vec<&str> = weighted.iter().map(String::as_str).collect();
        (
            self.g.node("Sum", &format!("{path}.select"), &refs, vec![]),
            out_hw,
        )
    }

    fn reshape(&mut self, name: &str, x: &str, shape: &[i64]) -> String {
        let shape = self.g.constant_i64(&format!("{name}.shape"), shape);
        self.g.node("Reshape", name, &[x, &shape], vec![])
    }

    fn shortcut(&mut self, path: &str, projection: &Option<Projection>, x: &str, hw: Hw) -> String {
        match projection {
            Some((conv, bn)) => {
                let (y, _) = self.conv(&format!("{path}.downsample.0"), conv, x, hw);
                self.batch_norm(&format!("{path}.downsample.1"), bn, &y)
            }
            None => x.to_string(),
        }
    }

    fn add_relu(&mut self, path: &str, x: &str, shortcut: &str) -> String {
        let sum = self
            .g
            .node("Add", &format!("{path}.add"), &[x, shortcut], vec![]);
        self.activation(&format!("{path}.act"), Activation::Relu, &sum)
    }

    fn block(&mut self, path: &str, block: &Block, x: &str, hw: Hw) -> (String, Hw) {
        let p = |name: &str| format!("{path}.{name}");
        let (y, out_hw, downsample) = match block {
            Block::Basic(b) => {
                let (y, out_hw) = self.selective_kernel(&p("conv1"), &b.conv1, x, hw);
                let (y, out_hw) = self.conv_norm_act(&p("conv2"), &b.conv2, &y, out_hw);
                (y, out_hw, &b.downsample)
            }
            Block::Bottleneck(b) => {
                let (y, hw1) = self.conv_norm_act(&p("conv1"), &b.conv1, x, hw);
                let (y, hw2) = self.selective_kernel(&p("conv2"), &b.conv2, &y, hw1);
                let (y, out_hw) = self.conv_norm_act(&p("conv3"), &b.conv3, &y, hw2);
                (y, out_hw, &b.downsample)
            }
            Block::KerasSeed(b) => {
                let (y, hw1) = self.conv_norm_act(&p("conv1"), &b.conv1, x, hw);
                let (y, hw2) = self.selective_kernel(&p("conv2"), &b.conv2, &y, hw1);
                let y = self.batch_norm(&p("bn2"), &b.bn2, &y);
                let (y, out_hw) = self.conv_norm_act(&p("conv3"), &b.conv3, &y, hw2);
                (y, out_hw, &b.downsample)
            }
        };
        let shortcut = self.shortcut(path, downsample, x, hw);
        (self.add_relu(path, &y, &shortcut), out_hw)
    }
}

fn to_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}
