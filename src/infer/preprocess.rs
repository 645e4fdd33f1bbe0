//! timm's evaluation transform: resize the shorter side to `floor(size / crop_pct)` (Pillow
//! bicubic), center-crop `size`, scale to [0, 1], normalize per channel.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::resize::{crop, resize, Filter, Rgb8};
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
        let resized = resize(img, nw.max(1), nh.max(1), self.interpolation);
        // torchvision CenterCrop: zero-pad a side smaller than the crop, then take offsets
        // int(round((size - crop) / 2)), rounding half to even.
        let resized = pad_to(resized, cw, ch);
        let top = round_half_even((resized.height - ch) as f64 / 2.0);
        let left = round_half_even((resized.width - cw) as f64 / 2.0);
        crop(&resized, left, top, cw, ch)
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
    let bad = |message: String| InferError::Image {
        path: shown.clone(),
        message,
    };
    // Compressed images are far smaller than their decoded pixels: a file larger than the decoded
    // limit is no image sknet would decode.
    crate::files::regular_file_len(path, MAX_DECODED_BYTES).map_err(|e| bad(e.to_string()))?;
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| bad(e.to_string()))?
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
