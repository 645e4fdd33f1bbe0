//! Pillow's resampling, reproduced exactly for 8-bit RGB images (Pillow's `Resample.c`): separable
//! convolution with an antialiasing support that widens with the downscale factor, 22-bit
//! fixed-point coefficients, and rounding to 8 bits between the horizontal and vertical passes.
//! timm's eval transform resizes with it (PIL bicubic), so matching it bit for bit makes sknet's
//! preprocessing equal timm's.

use std::ops::Range;

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resampling filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Pillow's BICUBIC (a = -0.5), support 2.
    Bicubic,
    /// Pillow's BILINEAR (triangle), support 1.
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output pixel of a window: first input index and fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// The coefficients of output pixels `window` of a resize from `in_size` to `out_size`. Each
/// output pixel's coefficients depend on its index alone, so a window gives the same values as
/// the whole row.
fn coefficients(in_size: usize, out_size: usize, window: Range<usize>, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(window.len());
    let mut weights = vec![0i32; window.len() * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in window.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

/// Columns `window` of a horizontal resize to `out_w`.
fn horizontal(src: &Rgb8, out_w: usize, window: Range<usize>, filter: Filter) -> Rgb8 {
    let c = coefficients(src.width, out_w, window.clone(), filter);
    let out_w = window.len();
    let mut data = vec![0u8; src.height * out_w * 3];
    for y in 0..src.height {
        let row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            for ch in 0..3 {
                let mut acc = 1i32 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    acc += row[(xmin + x) * 3 + ch] as i32 * w;
                }
                data[(y * out_w + xx) * 3 + ch] = clip8(acc);
            }
        }
    }
    Rgb8 {
        width: out_w,
        height: src.height,
        data,
    }
}

/// Rows `window` of a vertical resize to `out_h`.
fn vertical(src: &Rgb8, out_h: usize, window: Range<usize>, filter: Filter) -> Rgb8 {
    let c = coefficients(src.height, out_h, window.clone(), filter);
    let out_h = window.len();
    let w = src.width;
    let mut data = vec![0u8; out_h * w * 3];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        for i in 0..w * 3 {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &wt) in k.iter().enumerate() {
                acc += src.data[(ymin + y) * w * 3 + i] as i32 * wt;
            }
            data[yy * w * 3 + i] = clip8(acc);
        }
    }
    Rgb8 {
        width: w,
        height: out_h,
        data,
    }
}

/// Resizes like Pillow's `Image.resize((out_w, out_h), filter)`: horizontal pass first, each
/// pass skipped when its size does not change.
pub fn resize(src: &Rgb8, out_w: usize, out_h: usize, filter: Filter) -> Rgb8 {
    resize_window(src, [out_w, out_h], [0..out_w, 0..out_h], filter)
}

/// The `[columns, rows]` window of `resize(src, size[0], size[1], filter)`, computed without
/// the rest: a resize-then-crop costs its crop, not its resized size (a 1x16384 image resized
/// to a short side of 256 would be 4 million rows).
pub fn resize_window(
    src: &Rgb8,
    size: [usize; 2],
    window: [Range<usize>; 2],
    filter: Filter,
) -> Rgb8 {
    let [out_w, out_h] = size;
    let [columns, rows] = window;
    debug_assert!(columns.end <= out_w && rows.end <= out_h);
    let img = if out_w != src.width {
        horizontal(src, out_w, columns, filter)
    } else {
        crop(src, columns.start, 0, columns.len(), src.height)
    };
    if out_h != img.height {
        vertical(&img, out_h, rows, filter)
    } else {
        crop(&img, 0, rows.start, img.width, rows.len())
    }
}

/// Crops `(left, top, width, height)`.
pub fn crop(src: &Rgb8, left: usize, top: usize, width: usize, height: usize) -> Rgb8 {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in top..top + height {
        let start = (y * src.width + left) * 3;
        data.extend_from_slice(&src.data[start..start + width * 3]);
    }
    Rgb8 {
        width,
        height,
        data,
    }
}

/// The largest side [`enlarge`] crops to: a scale far below 1 would zero-pad without bound.
pub const MAX_ENLARGED_SIDE: usize = 16384;

/// Enlarges the central object by `scale`: the centered `round(w / scale) x round(h / scale)`
/// window, as Pillow's `Image.crop` takes it (offsets `round((w - cw) / 2)`, rounding half to
/// even as Python does; pixels outside the image are zero, for scales below 1). The eval
/// transform then resizes it back to the network's input. Sides are kept within
/// `1..=MAX_ENLARGED_SIDE` (callers check scales against their input first).
pub fn enlarge(src: &Rgb8, scale: f64) -> Rgb8 {
    let side =
        |len: usize| ((len as f64 / scale).round_ties_even() as usize).clamp(1, MAX_ENLARGED_SIDE);
    let (cw, ch) = (side(src.width), side(src.height));
    let offset = |len: usize, c: usize| ((len as f64 - c as f64) / 2.0).round_ties_even() as i64;
    let (left, top) = (offset(src.width, cw), offset(src.height, ch));
    let mut data = vec![0u8; cw * ch * 3];
    for y in 0..ch {
        let sy = top + y as i64;
        if sy < 0 || sy >= src.height as i64 {
            continue;
        }
        // The columns of the window that fall inside the image.
        let x0 = (-left).clamp(0, cw as i64) as usize;
        let x1 = (src.width as i64 - left).clamp(0, cw as i64) as usize;
        if x0 >= x1 {
            continue;
        }
        let from = (sy as usize * src.width + (left + x0 as i64) as usize) * 3;
        data[(y * cw + x0) * 3..(y * cw + x1) * 3]
            .copy_from_slice(&src.data[from..from + (x1 - x0) * 3]);
    }
    Rgb8 {
        width: cw,
        height: ch,
        data,
    }
}
