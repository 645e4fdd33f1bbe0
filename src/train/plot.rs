//! The training curves as a PNG: loss (train, validation) on the left, accuracy (train,
//! validation top-1) on the right, drawn without a plotting library.

use super::EpochMetrics;

const W: usize = 900;
const H: usize = 380;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            for dx in 0..2 {
                for dy in 0..2 {
                    self.set(x as i64 + dx, y as i64 + dy, c);
                }
            }
        }
    }

    /// Text in a 3x5 pixel font, scaled by 2.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for d in 0..4 {
                            self.set(
                                x + k as i64 * 8 + col * 2 + d % 2,
                                y + row as i64 * 2 + d / 2,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '%' => [5, 1, 2, 4, 5],
        '-' => [0, 0, 7, 0, 0],
        'a' => [2, 5, 7, 5, 5],
        'c' => [7, 4, 4, 4, 7],
        'e' => [7, 4, 6, 4, 7],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'l' => [4, 4, 4, 4, 7],
        'n' => [6, 5, 5, 5, 5],
        'o' => [7, 5, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'r' => [6, 5, 6, 5, 5],
        's' => [7, 4, 7, 1, 7],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'y' => [5, 5, 2, 2, 2],
        _ => [0, 0, 0, 0, 0],
    }
}

const TRAIN: [u8; 3] = [31, 119, 180];
const VAL: [u8; 3] = [214, 39, 40];
const AXIS: [u8; 3] = [60, 60, 60];

fn panel(
    cv: &mut Canvas,
    x0: f64,
    title: &str,
    series: [(&[f64], [u8; 3]); 2],
    fixed: Option<(f64, f64)>,
) {
    let (pw, ph, top) = (380.0, 280.0, 50.0);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.0.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = fixed.unwrap_or_else(|| {
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
        let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, if hi > lo { hi } else { lo + 1.0 })
    });
    cv.text(x0 as i64, 15, title, AXIS);
    cv.line((x0, top), (x0, top + ph), AXIS);
    cv.line((x0, top + ph), (x0 + pw, top + ph), AXIS);
    cv.text(
        x0 as i64 - 4,
        (top + ph + 10.0) as i64,
        &format!("{lo:.2}"),
        AXIS,
    );
    cv.text(x0 as i64 + 6, top as i64 - 14, &format!("{hi:.2}"), AXIS);
    for (values, color) in series {
        let n = values.len();
        let px = |i: usize| {
            x0 + if n > 1 {
                pw * i as f64 / (n - 1) as f64
            } else {
                pw / 2.0
            }
        };
        let py = |v: f64| top + ph - ph * ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        for i in 1..n {
            cv.line(
                (px(i - 1), py(values[i - 1])),
                (px(i), py(values[i])),
                color,
            );
        }
        for (i, &v) in values.iter().enumerate() {
            cv.line((px(i) - 2.0, py(v)), (px(i) + 2.0, py(v)), color);
        }
    }
}

/// The PNG bytes of the curves.
pub fn curves_png(history: &[EpochMetrics]) -> Vec<u8> {
    let mut cv = Canvas {
        px: vec![255; W * H * 3],
    };
    let col = |f: fn(&EpochMetrics) -> f64| history.iter().map(f).collect::<Vec<_>>();
    let (tl, vl) = (col(|m| m.train_loss), col(|m| m.val_loss));
    let (ta, va) = (col(|m| m.train_top1), col(|m| m.val_top1));
    panel(&mut cv, 60.0, "loss", [(&tl, TRAIN), (&vl, VAL)], None);
    panel(
        &mut cv,
        500.0,
        "acc",
        [(&ta, TRAIN), (&va, VAL)],
        Some((0.0, 1.0)),
    );
    cv.text(60, H as i64 - 22, "train", TRAIN);
    cv.text(120, H as i64 - 22, "val", VAL);
    cv.text(
        500,
        H as i64 - 22,
        &format!("epochs 1-{}", history.len()),
        AXIS,
    );
    let mut out = Vec::new();
    let img = image::RgbImage::from_raw(W as u32, H as u32, cv.px).expect("canvas");
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png encodes");
    out
}
