//! `sknet config`: a preset's config as JSON or TOML, to edit and pass back.

use sknet::presets;

use super::CliError;

/// The preset's config, as TOML with `toml`, else JSON.
pub fn run(arch: &str, toml: bool) -> Result<String, CliError> {
    let config = presets::by_name(arch)?;
    Ok(if toml {
        toml::to_string(&config).expect("config serializes")
    } else {
        config.to_json()
    })
}
