//! Named architectures: the Keras notebook's model, the paper's SKNets and timm's SK-ResNets.

use crate::config::{
    AttnWidth, BlockKind, ConfigError, NetworkConfig, NormConfig, Padding, SkConfig, StemConfig,
};

/// A named architecture.
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line on what it is.
    pub description: &'static str,
    /// Published accuracy, when there is one: (dataset, top-1 %, source).
    pub reference: Option<(&'static str, f64, &'static str)>,
    /// Builds its config.
    pub build: fn() -> NetworkConfig,
}

fn imagenet(name: &str, block: BlockKind, layers: [usize; 4], sk: SkConfig) -> NetworkConfig {
    NetworkConfig {
        name: name.to_string(),
        in_channels: 3,
        num_classes: 1000,
        stem: StemConfig::Imagenet {
            width: 64,
            caffe_pool: false,
        },
        block,
        layers: layers.to_vec(),
        planes: vec![64, 128, 256, 512],
        strides: vec![1, 2, 2, 2],
        base_width: 64,
        cardinality: 1,
        sk,
        norm: NormConfig::pytorch(),
        padding: Padding::Symmetric,
        conv_bias: false,
        default_input: [224, 224],
    }
}

/// The paper's SKNet-26/50/101: ResNeXt 32x4d with SK[M=2, G=32, r=16, L=32] units, and the
/// official implementation's Caffe max-pool (no padding, ceil mode).
fn paper(name: &str, layers: [usize; 4]) -> NetworkConfig {
    NetworkConfig {
        stem: StemConfig::Imagenet {
            width: 64,
            caffe_pool: true,
        },
        base_width: 4,
        cardinality: 32,
        ..imagenet(name, BlockKind::Bottleneck, layers, SkConfig::paper())
    }
}

fn keras_seed() -> NetworkConfig {
    NetworkConfig {
        name: "keras-seed".into(),
        in_channels: 3,
        num_classes: 1000,
        stem: StemConfig::KerasSeed { width: 64 },
        block: BlockKind::KerasSeed,
        layers: vec![3, 4, 6, 3],
        planes: vec![128, 256, 512, 1024],
        strides: vec![1, 2, 2, 2],
        base_width: 64,
        cardinality: 1,
        sk: SkConfig::keras(),
        norm: NormConfig::keras(),
        padding: Padding::Same,
        conv_bias: true,
        default_input: [224, 224],
    }
}

/// SKNet-29 for CIFAR (paper sec. 4.2): ResNeXt-29 16x32d (3 stages of 3 bottlenecks, widths
/// 512/1024/2048) with SK units of G = 32 groups.
fn sknet29() -> NetworkConfig {
    NetworkConfig {
        name: "sknet29".into(),
        num_classes: 10,
        stem: StemConfig::Cifar { width: 64 },
        layers: vec![3, 3, 3],
        planes: vec![64, 128, 256],
        strides: vec![1, 2, 2],
        base_width: 32,
        cardinality: 16,
        default_input: [32, 32],
        ..paper("sknet29", [3, 3, 3, 0])
    }
}

/// A small SK-ResNet for 32x32 inputs that trains in minutes on a CPU: three stages of two
/// SK basic blocks, widths 32/64/128.
fn sknet_tiny() -> NetworkConfig {
    NetworkConfig {
        name: "sknet-tiny".into(),
        num_classes: 10,
        stem: StemConfig::Cifar { width: 32 },
        layers: vec![2, 2, 2],
        planes: vec![32, 64, 128],
        strides: vec![1, 2, 2],
        default_input: [32, 32],
        sk: SkConfig {
            attn_width: AttnWidth::Divisible {
                ratio: 1.0 / 4.0,
                divisor: 8,
            },
            ..SkConfig::timm_basic()
        },
        ..imagenet(
            "sknet-tiny",
            BlockKind::Basic,
            [2, 2, 2, 0],
            SkConfig::timm_basic(),
        )
    }
}

/// Every preset, in the order `sknet archs` lists them.
pub fn all() -> Vec<Preset> {
    vec![
        Preset {
            name: "keras-seed",
            description: "the Keras notebook's SKNet((224,224,3), 1000): real 5x5 kernels, biased \
                          convs, no BN on z",
            reference: None,
            build: keras_seed,
        },
        Preset {
            name: "sknet26",
            description: "paper: SK-ResNeXt 32x4d, [2,2,2,2] units",
            reference: None,
            build: || paper("sknet26", [2, 2, 2, 2]),
        },
        Preset {
            name: "sknet50",
            description: "paper: SK-ResNeXt 32x4d, [3,4,6,3] units, SK[M=2,G=32,r=16,L=32]",
            reference: Some(("ImageNet", 79.21, "paper, 224 single crop")),
            build: || paper("sknet50", [3, 4, 6, 3]),
        },
        Preset {
            name: "sknet101",
            description: "paper: SK-ResNeXt 32x4d, [3,4,23,3] units",
            reference: Some(("ImageNet", 79.81, "paper, 224 single crop")),
            build: || paper("sknet101", [3, 4, 23, 3]),
        },
        Preset {
            name: "skresnet18",
            description: "timm: SK basic blocks [2,2,2,2], split input, d = C/8 (divisor 16)",
            reference: Some(("ImageNet", 73.02, "timm skresnet18.ra_in1k")),
            build: || {
                imagenet(
                    "skresnet18",
                    BlockKind::Basic,
                    [2, 2, 2, 2],
                    SkConfig::timm_basic(),
                )
            },
        },
        Preset {
            name: "skresnet34",
            description: "timm: SK basic blocks [3,4,6,3], split input, d = C/8 (divisor 16)",
            reference: Some(("ImageNet", 76.96, "timm skresnet34.ra_in1k")),
            build: || {
                imagenet(
                    "skresnet34",
                    BlockKind::Basic,
                    [3, 4, 6, 3],
                    SkConfig::timm_basic(),
                )
            },
        },
        Preset {
            name: "skresnext50_32x4d",
            description: "timm: SK bottlenecks [3,4,6,3], 32x4d, d = C/16 (divisor 32)",
            reference: Some(("ImageNet", 80.17, "timm skresnext50_32x4d.ra_in1k")),
            build: || NetworkConfig {
                base_width: 4,
                cardinality: 32,
                ..imagenet(
                    "skresnext50_32x4d",
                    BlockKind::Bottleneck,
                    [3, 4, 6, 3],
                    SkConfig::timm_resnext(),
                )
            },
        },
        Preset {
            name: "sknet29",
            description: "paper: SKNet-29 for CIFAR (ResNeXt-29 16x32d base), 32x32 input",
            reference: Some(("CIFAR-10", 96.53, "paper")),
            build: sknet29,
        },
        Preset {
            name: "sknet-tiny",
            description: "small SK-ResNet for 32x32 input that trains fast on a CPU",
            reference: None,
            build: sknet_tiny,
        },
    ]
}

/// The config of a preset.
pub fn by_name(name: &str) -> Result<NetworkConfig, ConfigError> {
    all()
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| (p.build)())
        .ok_or_else(|| ConfigError::UnknownPreset {
            name: name.to_string(),
            known: all().iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let err = by_name("sknet51").unwrap_err().to_string();
        assert!(
            err.contains("sknet51") && err.contains("skresnet18"),
            "{err}"
        );
    }
}
