//! timm's evaluation transform: resize the shorter side to `floor(size / crop_pct)` (Pillow
//! bicubic), center-crop `size`, scale to [0, 1], normalize per channel.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::resize::{resize_window, Filter, Rgb8};
use super::InferError;

/// Largest image side decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Most bytes a decoded image may take.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// The evaluation transform's settings (timm's pretrained_cfg).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Crop side (height and width).
    pub size: [usize; 2],
    /// The crop is this fraction of the resized image.
    pub crop_pct: f64,
    /// Resampling filter.
    pub interpolation: Filter,
    /// Per-channel mean, on [0, 1] values.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl Preprocess {
    /// Checks the settings a file may carry: sides within
    /// [`MAX_INPUT_SIDE`](crate::config::MAX_INPUT_SIDE), `crop_pct` in (0, 1], finite means
    /// and positive finite standard deviations. The error says which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let max = crate::config::MAX_INPUT_SIDE;
        if !self.size.iter().all(|s| (1..=max).contains(s)) {
            return Err(format!(
                "size {:?}: each side must be within 1..={max}",
                self.size
            ));
        }
        if !(self.crop_pct.is_finite() && self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return Err(format!("crop_pct {} must be within (0, 1]", self.crop_pct));
        }
        if !self.mean.iter().all(|m| m.is_finite()) {
            return Err(format!("mean {:?} must be finite", self.mean));
        }
        if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(format!("std {:?} must be finite and > 0", self.std));
        }
        Ok(())
    }

    /// timm's ImageNet defaults: 224, crop_pct 0.875, bicubic, ImageNet mean and std.
    pub fn imagenet(size: [usize; 2]) -> Self {
        Self {
            size,
            crop_pct: 0.875,
            interpolation: Filter::Bicubic,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Small images at their own size: no resize or crop, CIFAR-10's mean and std.
    pub fn cifar(size: [usize; 2]) -> Self {
        Self {
            size,
            crop_pct: 1.0,
            interpolation: Filter::Bicubic,
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
        }
    }

    /// Resize and center crop, on 8-bit pixels (what timm hands to `ToTensor`).
    pub fn resize_crop(&self, img: &Rgb8) -> Rgb8 {
        let [ch, cw] = self.size;
        // torchvision Resize(int): shorter side to `scale`, longer side int(scale * long / short).
        let scale = ((ch.max(cw) as f64) / self.crop_pct).floor() as usize;
        let (w, h) = (img.width, img.height);
        let (nw, nh) = if w <= h {
            (scale, (scale as f64 * h as f64 / w as f64) as usize)
        } else {
            ((scale as f64 * w as f64 / h as f64) as usize, scale)
        };
        let (nw, nh) = (nw.max(1), nh.max(1));
        // torchvision CenterCrop: zero-pad a side smaller than the crop, then take offsets
        // int(round((size - crop) / 2)), rounding half to even. Only the crop is resized.
        let window = |resized: usize, crop: usize| {
            if resized <= crop {
                0..resized
            } else {
                let start = round_half_even((resized - crop) as f64 / 2.0);
                start..start + crop
            }
        };
        let cropped = resize_window(
            img,
            [nw, nh],
            [window(nw, cw), window(nh, ch)],
            self.interpolation,
        );
        pad_to(cropped, cw, ch)
    }

    /// The normalized `[3, H, W]` values of a cropped image.
    pub fn normalize(&self, img: &Rgb8) -> Vec<f32> {
        let plane = img.width * img.height;
        let mut out = vec![0f32; 3 * plane];
        for i in 0..plane {
            for c in 0..3 {
                let v = img.data[i * 3 + c] as f32 / 255.0;
                out[c * plane + i] = (v - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// A batch `[N, 3, H, W]` from decoded images.
    pub fn batch(&self, images: &[Rgb8], device: &Device) -> Tensor<4> {
        let [h, w] = self.size;
        let mut data = Vec::with_capacity(images.len() * 3 * h * w);
        for img in images {
            data.extend(self.normalize(&self.resize_crop(img)));
        }
        Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device)
    }
}

fn round_half_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    };
    r as usize
}

/// Pads each side shorter than `w` x `h` with zeros, `(crop - size) / 2` before, as torchvision.
fn pad_to(img: Rgb8, w: usize, h: usize) -> Rgb8 {
    if img.width >= w && img.height >= h {
        return img;
    }
    let (nw, nh) = (img.width.max(w), img.height.max(h));
    let left = (nw - img.width) / 2;
    let top = (nh - img.height) / 2;
    let mut data = vec![0u8; nw * nh * 3];
    for y in 0..img.height {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        let start = ((y + top) * nw + left) * 3;
        data[start..start + img.width * 3].copy_from_slice(src);
    }
    Rgb8 {
        width: nw,
        height: nh,
        data,
    }
}

/// Decodes an image file (jpg, png, webp, gif, bmp, tiff) to RGB, refusing images over
/// [`MAX_SIDE`] pixels a side or [`MAX_DECODED_BYTES`] decoded.
pub fn load_image(path: &Path) -> Result<Rgb8, InferError> {
    let shown = path.display().to_string();
    // Compressed images are far smaller than their decoded pixels: a file larger than the decoded
    // limit is no image sknet would decode.
    let bytes =
        crate::files::read_bounded(path, MAX_DECODED_BYTES).map_err(|e| InferError::Image {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    decode_image(&bytes, &shown)
}

/// Decodes an encoded image held in memory, with the limits of [`load_image`]; `name` is what
/// errors call it.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<Rgb8, InferError> {
    let bad = |message: String| InferError::Image {
        path: name.to_string(),
        message,
    };
    if bytes.is_empty() {
        return Err(bad("empty: no image data".into()));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad(
            "not an image sknet can read (expected jpg, png, webp, gif, bmp or tiff)".into(),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => bad(format!(
            "image too large: sknet decodes at most {MAX_SIDE}x{MAX_SIDE} pixels and \
             {} MiB ({e})",
            MAX_DECODED_BYTES >> 20
        )),
        other => bad(format!("cannot decode: {other}")),
    })?;
    let rgb = img.to_rgb8();
    Ok(Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(width: usize, height: usize) -> Rgb8 {
        let data = (0..width * height * 3)
            .map(|i| ((i * 37) ^ (i >> 3)) as u8)
            .collect();
        Rgb8 {
            width,
            height,
            data,
        }
    }

    /// Resizing only the crop window gives torchvision's resize, then center crop (with zero
    /// padding where the resized image is smaller), byte for byte.
    #[test]
    fn windowed_resize_equals_resize_then_crop() {
        use super::super::resize::{crop, resize};
        for (w, h) in [(50, 40), (40, 50), (7, 90), (224, 224), (3, 2), (300, 1)] {
            for (size, crop_pct) in [([32, 32], 0.875), ([24, 40], 1.0), ([64, 16], 0.9)] {
                for interpolation in [Filter::Bicubic, Filter::Bilinear] {
                    let p = Preprocess {
                        size,
                        crop_pct,
                        interpolation,
                        ..Preprocess::imagenet(size)
                    };
                    let img = pattern(w, h);
                    let [ch, cw] = size;
                    let scale = ((ch.max(cw) as f64) / crop_pct).floor() as usize;
                    let (nw, nh) = if w <= h {
                        (scale, (scale as f64 * h as f64 / w as f64) as usize)
                    } else {
                        ((scale as f64 * w as f64 / h as f64) as usize, scale)
                    };
                    let whole = pad_to(resize(&img, nw.max(1), nh.max(1), interpolation), cw, ch);
                    let top = round_half_even((whole.height - ch) as f64 / 2.0);
                    let left = round_half_even((whole.width - cw) as f64 / 2.0);
                    let want = crop(&whole, left, top, cw, ch);
                    assert_eq!(
                        p.resize_crop(&img),
                        want,
                        "{w}x{h} to {size:?} at {crop_pct}"
                    );
                }
            }
        }
    }

    /// An extreme aspect ratio costs the crop: a 1 x 16384 image resized to a short side of
    /// 256 would be 4 million rows (3 GiB) before the crop.
    #[test]
    fn a_thin_image_is_cropped_without_its_resized_size() {
        let img = pattern(1, 16_384);
        let out = Preprocess::imagenet([224, 224]).resize_crop(&img);
        assert_eq!(
            (out.width, out.height, out.data.len()),
            (224, 224, 224 * 224 * 3)
        );
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(58.5), 58);
        assert_eq!(round_half_even(59.5), 60);
        assert_eq!(round_half_even(16.0), 16);
        assert_eq!(round_half_even(0.5), 0);
    }

    #[test]
    fn shorter_side_and_center() {
        let p = Preprocess::imagenet([224, 224]);
        let img = Rgb8 {
            width: 640,
            height: 480,
            data: vec![7; 640 * 480 * 3],
        };
        let out = p.resize_crop(&img);
        assert_eq!((out.width, out.height), (224, 224));
        assert!(out.data.iter().all(|&v| v == 7));
    }
}
