//! Training augmentations (CIFAR style: pad 4, random crop, flip; ImageNet style:
//! random-resized-crop, flip) and the evaluation transform, on 8-bit RGB images.

use serde::{Deserialize, Serialize};

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
    /// Applies the augmentation, then the normalization of `eval`, giving `[3, H, W]` values.
    pub fn apply(&self, img: &Rgb8, eval: &Preprocess, rng: &mut Rng) -> Vec<f32> {
        let out = match self {
            Augment::None => return eval.normalize(&eval.resize_crop(img)),
            Augment::Cifar => pad_crop(img, 4, eval.size, rng),
            Augment::Imagenet => random_resized_crop(img, eval.size, rng),
        };
        let mut out = out;
        if rng.uniform() < 0.5 {
            flip(&mut out);
        }
        eval.normalize(&out)
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
    fn random_resized_crop_gives_the_size() {
        let img = ramp(50, 40);
        let mut rng = Rng::new(1);
        let out = random_resized_crop(&img, [24, 24], &mut rng);
        assert_eq!((out.width, out.height), (24, 24));
    }
}
