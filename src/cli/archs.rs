//! `sknet archs`: the presets with parameters, multiply-adds and reference accuracy.

use serde::Serialize;

use sknet::device::default_device;
use sknet::model::SkNet;
use sknet::presets;
use sknet::summary::{summarize, thousands};

use super::CliError;

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

/// The table, or JSON.
pub fn run(json: bool) -> Result<String, CliError> {
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
