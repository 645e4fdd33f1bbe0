//! Training augmentations (CIFAR style: pad 4, random crop, flip; ImageNet style:
//! random-resized-crop, flip) and the evaluation transform, on 8-bit RGB images; then, as
//! timm's training transform orders them, auto-augmentation, normalization and random erasing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::auto_augment::AutoAugment;
use super::rng::Rng;
use crate::infer::resize::{crop, resize, Filter, Rgb8};
use crate::infer::Preprocess;

/// Which augmentation to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// Zero-pad 4 pixels, random crop back to size, horizontal flip (small images).
    Cifar,
    /// Random-resized-crop (scale 0.08-1, ratio 3/4-4/3, bilinear) to size, horizontal flip.
    Imagenet,
    /// No augmentation: the evaluation transform.
    None,
}

fn flip(img: &mut Rgb8) {
    let w = img.width;
    for y in 0..img.height {
        let row = &mut img.data[y * w * 3..(y + 1) * w * 3];
        for x in 0..w / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
            }
        }
    }
}

fn pad_crop(img: &Rgb8, pad: usize, out: [usize; 2], rng: &mut Rng) -> Rgb8 {
    let [oh, ow] = out;
    // Resize first when the image is not the training size.
    let img = if img.width != ow || img.height != oh {
        resize(img, ow, oh, Filter::Bilinear)
    } else {
        img.clone()
    };
    let (pw, ph) = (ow + 2 * pad, oh + 2 * pad);
    let left = rng.below(pw - ow + 1);
    let top = rng.below(ph - oh + 1);
    let mut data = vec![0u8; oh * ow * 3];
    for y in 0..oh {
        let sy = (y + top) as isize - pad as isize;
        if sy < 0 || sy >= oh as isize {
            continue;
        }
        for x in 0..ow {
            let sx = (x + left) as isize - pad as isize;
            if sx < 0 || sx >= ow as isize {
                continue;
            }
            let s = (sy as usize * ow + sx as usize) * 3;
            data[(y * ow + x) * 3..(y * ow + x) * 3 + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8 {
        width: ow,
        height: oh,
        data,
    }
}

fn random_resized_crop(img: &Rgb8, out: [usize; 2], rng: &mut Rng) -> Rgb8 {
    let (w, h) = (img.width as f64, img.height as f64);
    let area = w * h;
    for _ in 0..10 {
        let target = area * (0.08 + rng.uniform() * 0.92);
        let log_ratio = (3f64 / 4.0).ln() + rng.uniform() * ((4f64 / 3.0).ln() - (3f64 / 4.0).ln());
        let aspect = log_ratio.exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= img.width && ch <= img.height {
            let top = rng.below(img.height - ch + 1);
            let left = rng.below(img.width - cw + 1);
            return resize(
                &crop(img, left, top, cw, ch),
                out[1],
                out[0],
                Filter::Bilinear,
            );
        }
    }
    // Fallback: the largest center crop within the ratio bounds.
    let side = img.width.min(img.height);
    let c = crop(
        img,
        (img.width - side) / 2,
        (img.height - side) / 2,
        side,
        side,
    );
    resize(&c, out[1], out[0], Filter::Bilinear)
}

impl Augment {
    /// The crop (and flip) at the training size.
    fn crop_flip(&self, img: &Rgb8, eval: &Preprocess, rng: &mut Rng) -> Rgb8 {
        let mut out = match self {
            Augment::None => return eval.resize_crop(img),
            Augment::Cifar => pad_crop(img, 4, eval.size, rng),
            Augment::Imagenet => random_resized_crop(img, eval.size, rng),
        };
        if rng.uniform() < 0.5 {
            flip(&mut out);
        }
        out
    }
}

/// What random erasing fills a box with (timm's `--remode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EraseMode {
    /// Zeros (the normalized mean).
    Const,
    /// One standard-normal value per channel.
    Rand,
    /// A standard-normal value per pixel and channel.
    #[default]
    Pixel,
}

/// Random erasing (Zhong et al. 2017), as timm's `RandomErasing` on a normalized image: with
/// probability `prob`, 1 to `max_count` boxes, each of 2% to 1/3 of the image's area divided by
/// the count and of aspect ratio 0.3 to 1/0.3 (log-uniform), filled as `mode` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomErasing {
    /// The probability that an image is erased.
    pub prob: f64,
    /// The fill.
    pub mode: EraseMode,
    /// The most boxes.
    pub max_count: usize,
}

impl RandomErasing {
    const MIN_AREA: f64 = 0.02;
    const MAX_AREA: f64 = 1.0 / 3.0;
    const MIN_ASPECT: f64 = 0.3;

    /// Erases boxes of `chw` (`[channels, h, w]` values) in place.
    pub fn apply(&self, chw: &mut [f32], [h, w]: [usize; 2], rng: &mut Rng) {
        if rng.uniform() >= self.prob || h == 0 || w == 0 {
            return;
        }
        let channels = chw.len() / (h * w);
        // As timm: no draw for the count when it can only be 1.
        let count = if self.max_count <= 1 {
            1
        } else {
            1 + rng.below(self.max_count)
        };
        let area = (h * w) as f64;
        let log_aspect = [Self::MIN_ASPECT.ln(), (1.0 / Self::MIN_ASPECT).ln()];
        for _ in 0..count {
            for _attempt in 0..10 {
                let target = (Self::MIN_AREA + rng.uniform() * (Self::MAX_AREA - Self::MIN_AREA))
                    * area
                    / count as f64;
                let aspect =
                    (log_aspect[0] + rng.uniform() * (log_aspect[1] - log_aspect[0])).exp();
                // Python's round() rounds halves to even.
                let bh = (target * aspect).sqrt().round_ties_even() as usize;
                let bw = (target / aspect).sqrt().round_ties_even() as usize;
                if bw >= w || bh >= h {
                    continue;
                }
                let top = rng.below(h - bh + 1);
                let left = rng.below(w - bw + 1);
                for c in 0..channels {
                    let colour = match self.mode {
                        EraseMode::Rand => rng.normal() as f32,
                        _ => 0.0,
                    };
                    for y in top..top + bh {
                        let start = c * h * w + y * w + left;
                        for v in &mut chw[start..start + bw] {
                            *v = match self.mode {
                                EraseMode::Pixel => rng.normal() as f32,
                                _ => colour,
                            };
                        }
                    }
                }
                break;
            }
        }
    }
}

/// The whole training transform: [`Augment`]'s crop and flip, the auto-augmentation if any,
/// the normalization of the evaluation transform, and random erasing if any.
#[derive(Debug, Clone)]
pub struct TrainTransform {
    /// Crop and flip.
    pub augment: Augment,
    /// RandAugment or TrivialAugment, on the cropped image.
    pub auto_augment: Option<Arc<AutoAugment>>,
    /// Random erasing, on the normalized values.
    pub erasing: Option<RandomErasing>,
}

impl From<Augment> for TrainTransform {
    fn from(augment: Augment) -> Self {
        Self {
            augment,
            auto_augment: None,
            erasing: None,
        }
    }
}

impl TrainTransform {
    /// `[3, H, W]` values of `img`, transformed.
    pub fn apply(&self, img: &Rgb8, eval: &Preprocess, rng: &mut Rng) -> Vec<f32> {
        let mut out = self.augment.crop_flip(img, eval, rng);
        if let Some(policy) = &self.auto_augment {
            out = policy.apply(&out, rng);
        }
        let mut values = eval.normalize(&out);
        if let Some(erasing) = &self.erasing {
            erasing.apply(&mut values, [out.height, out.width], rng);
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Rgb8 {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend([(x * 7) as u8, (y * 5) as u8, 100]);
            }
        }
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn cifar_crop_keeps_size_and_shifts_at_most_4() {
        let img = ramp(32, 32);
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let out = pad_crop(&img, 4, [32, 32], &mut rng);
            assert_eq!((out.width, out.height), (32, 32));
            // The center pixel comes from within 4 pixels of the center.
            let p = &out.data[(16 * 32 + 16) * 3..(16 * 32 + 16) * 3 + 3];
            let (sx, sy) = (p[0] as i32 / 7, p[1] as i32 / 5);
            assert!((sx - 16).abs() <= 4 && (sy - 16).abs() <= 4, "{sx} {sy}");
        }
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut img = ramp(4, 1);
        flip(&mut img);
        assert_eq!(img.data[0], 21);
        assert_eq!(img.data[9], 0);
    }

    #[test]
    fn erasing_fills_boxes_within_the_area_bounds() {
        let (h, w) = (20, 30);
        let mut rng = Rng::new(9);
        for mode in [EraseMode::Const, EraseMode::Rand, EraseMode::Pixel] {
            let erasing = RandomErasing {
                prob: 1.0,
                mode,
                max_count: 1,
            };
            for _ in 0..50 {
                // 7.0 never comes out of the fill (a normal draw of exactly 7 is impossible).
                let mut chw = vec![7.0f32; 3 * h * w];
                erasing.apply(&mut chw, [h, w], &mut rng);
                let erased = chw.iter().filter(|&&v| v != 7.0).count() / 3;
                // One box: at most a third of the area (plus the rounding of its sides).
                assert!(erased <= h * w / 3 + h + w, "{mode:?}: {erased}");
                if mode == EraseMode::Const {
                    assert!(chw.iter().all(|&v| v == 7.0 || v == 0.0));
                }
                if mode == EraseMode::Rand && erased > 0 {
                    // One value per channel.
                    let first: Vec<f32> =
                        chw[..h * w].iter().copied().filter(|&v| v != 7.0).collect();
                    assert!(first.iter().all(|&v| v == first[0]));
                }
            }
        }
        let never = RandomErasing {
            prob: 0.0,
            mode: EraseMode::Pixel,
            max_count: 3,
        };
        let mut chw = vec![7.0f32; 3 * h * w];
        never.apply(&mut chw, [h, w], &mut rng);
        assert!(chw.iter().all(|&v| v == 7.0));
    }

    /// With the same random draws, the boxes equal those of timm's `RandomErasing`
    /// (`tools/gen_recipe_fixtures.py` feeds timm sknet's generator).
    #[test]
    fn erasing_matches_timm() {
        let f: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/random_erasing.json"))
                .expect("fixture");
        let cases = f["cases"].as_array().expect("cases");
        assert!(cases.len() >= 20);
        let mut erased_any = 0;
        for case in cases {
            let seed = case["seed"].as_u64().expect("seed");
            let size = &case["size"];
            let [h, w] = [0, 1].map(|i| size[i].as_u64().expect("size") as usize);
            let erasing = RandomErasing {
                prob: case["prob"].as_f64().expect("prob"),
                mode: EraseMode::Const,
                max_count: case["max_count"].as_u64().expect("count") as usize,
            };
            let mut chw = vec![1.0f32; 3 * h * w];
            erasing.apply(&mut chw, [h, w], &mut Rng::new(seed));
            let got: String = chw[..h * w]
                .iter()
                .map(|&v| if v == 0.0 { '1' } else { '0' })
                .collect();
            assert_eq!(got, case["erased"].as_str().expect("mask"), "seed {seed}");
            // Every channel is erased alike.
            assert_eq!(chw[..h * w], chw[2 * h * w..]);
            erased_any += got.contains('1') as usize;
        }
        assert!(erased_any > cases.len() / 2);
    }

    #[test]
    fn random_resized_crop_gives_the_size() {
        let img = ramp(50, 40);
        let mut rng = Rng::new(1);
        let out = random_resized_crop(&img, [24, 24], &mut rng);
        assert_eq!((out.width, out.height), (24, 24));
    }
}
