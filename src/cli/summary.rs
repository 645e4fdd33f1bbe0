//! `sknet summary`: a Keras-style summary of a network.

use sknet::device::default_device;
use sknet::model::SkNet;
use sknet::summary::summarize;

use super::args::ModelArgs;
use super::CliError;

/// The table, or JSON.
pub fn run(args: ModelArgs) -> Result<String, CliError> {
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
