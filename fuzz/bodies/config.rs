//! A network config file of any bytes, as JSON, TOML or unknown (the first byte picks the
//! extension). A config that parses must validate, build a network, survive a JSON round
//! trip unchanged, and have its default input checked without a panic.

use sknet::{NetworkConfig, SkNet};

pub fn run(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let extension = ["json", "toml", "cfg"][usize::from(pick % 3)];
    let path = super::scratch_file::write("config", extension, text);
    let parsed = NetworkConfig::from_file(&path);
    let _ = std::fs::remove_file(&path);
    let Ok(config) = parsed else {
        return;
    };
    config
        .validate()
        .expect("from_file returns validated configs");
    let again: NetworkConfig =
        serde_json::from_str(&config.to_json()).expect("a config reads back its own JSON");
    assert_eq!(again, config, "the JSON round trip changed the config");
    if let Ok(model) = SkNet::new(&config, &sknet::device::default_device()) {
        let [h, w] = config.default_input;
        let _ = model.check_input(&[1, config.in_channels, h, w]);
    }
}
