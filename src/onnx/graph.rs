//! A graph under construction: nodes in the order they are added (which is topological, since a
//! node can only name values that exist), constant tensors, and unique value names.

use std::collections::HashSet;

use super::proto::{
    data_type, tensor_shape_proto, type_proto, AttributeProto, AttributeType, NodeProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Nodes and initializers, named after the module paths they come from.
#[derive(Debug, Default)]
pub(crate) struct GraphBuilder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    names: HashSet<String>,
}

impl GraphBuilder {
    /// `name`, or `name_1`, `name_2`, ... if it is taken: every value has one producer.
    fn unique(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut n = 0;
        while self.names.contains(&candidate) {
            n += 1;
            candidate = format!("{name}_{n}");
        }
        self.names.insert(candidate.clone());
        candidate
    }

    /// Declares a graph input's name.
    pub fn input(&mut self, name: &str) -> String {
        self.unique(name)
    }

    /// A float32 constant; `name` is usually its checkpoint key.
    pub fn constant_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, dims, data_type::FLOAT, raw_data)
    }

    /// An int64 constant (shapes, axes).
    pub fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, &[values.len()], data_type::INT64, raw_data)
    }

    fn constant(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        let name = self.unique(name);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// Adds a node with `outputs` outputs, named `name` (one output) or `name:0`, `name:1`, ...
    pub fn node_n(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let name = self.unique(name);
        let output: Vec<String> = match outputs {
            1 => vec![name.clone()],
            n => (0..n)
                .map(|i| self.unique(&format!("{name}:{i}")))
                .collect(),
        };
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name,
            op_type: op_type.into(),
            domain: String::new(),
            attribute,
        });
        output
    }

    /// Adds a node with one output, named `name`.
    pub fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.node_n(op_type, name, inputs, attribute, 1).remove(0)
    }
}

/// An integer attribute.
pub(crate) fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub(crate) fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub(crate) fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// One dimension of a value's shape: fixed, or named (symbolic, e.g. the batch).
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// A float32 graph input or output with this shape.
pub(crate) fn float_value(name: &str, shape: &[Dim], doc: &str) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    let dim = shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Named(s) => Value::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: doc.into(),
    }
}
