//! Mixup and CutMix of a batch, with timm's semantics (`timm.data.Mixup` in its default `batch`
//! mode): with probability `prob` the batch is mixed with itself reversed, by mixup (a blend
//! with weight `lam ~ Beta(mixup_alpha, mixup_alpha)`) or CutMix (a box pasted from the
//! reversed batch, `lam` corrected to the box's area), chosen by `switch_prob` when both are on.
//! The targets are the two labels' label-smoothed one-hot vectors, weighted `lam` and `1 - lam`.

use crate::data::rng::Rng;

/// Mixup and CutMix settings (timm's `--mixup`, `--cutmix`, `--mixup-prob`,
/// `--mixup-switch-prob`), with the label smoothing the targets get.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixup {
    /// Mixup's Beta alpha; 0 turns mixup off.
    pub mixup_alpha: f64,
    /// CutMix's Beta alpha; 0 turns CutMix off.
    pub cutmix_alpha: f64,
    /// The probability that a batch is mixed at all.
    pub prob: f64,
    /// With both on: the probability of CutMix rather than mixup.
    pub switch_prob: f64,
    /// Label smoothing of the targets.
    pub label_smoothing: f64,
}

/// How one batch was mixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixParams {
    /// The weight of each image's own label (1: not mixed).
    pub lam: f64,
    /// CutMix's box `[y0, y1, x0, x1]` (end-exclusive), taken from the reversed batch.
    pub cutmix_box: Option<[usize; 4]>,
}

impl Mixup {
    /// Whether mixup or CutMix is on.
    pub fn enabled(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    /// Draws a batch's mixing for images of `h x w`, as timm's `_params_per_batch` and
    /// `rand_bbox` (with `correct_lam`).
    pub fn draw(&self, h: usize, w: usize, rng: &mut Rng) -> MixParams {
        let unmixed = MixParams {
            lam: 1.0,
            cutmix_box: None,
        };
        if !self.enabled() || rng.uniform() >= self.prob {
            return unmixed;
        }
        let cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.uniform() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        if !cutmix {
            let a = self.mixup_alpha;
            return MixParams {
                lam: rng.beta(a, a),
                cutmix_box: None,
            };
        }
        let a = self.cutmix_alpha;
        let lam = rng.beta(a, a);
        let cy = rng.below(h);
        let cx = rng.below(w);
        let (b, lam) = cutmix_box(h, w, lam, cy, cx);
        MixParams {
            lam,
            cutmix_box: Some(b),
        }
    }

    /// Mixes `pixels` (`[n, c, h, w]`) in place as `params` say and returns the `[n, classes]`
    /// targets of `labels`.
    pub fn apply(
        &self,
        params: &MixParams,
        pixels: &mut [f32],
        [n, c, h, w]: [usize; 4],
        labels: &[usize],
        classes: usize,
    ) -> Vec<f32> {
        let image = c * h * w;
        debug_assert_eq!(pixels.len(), n * image);
        if let Some([y0, y1, x0, x1]) = params.cutmix_box {
            let source = pixels.to_vec();
            for i in 0..n {
                let partner = &source[(n - 1 - i) * image..(n - i) * image];
                let own = &mut pixels[i * image..(i + 1) * image];
                for plane in 0..c {
                    for y in y0..y1 {
                        let row = plane * h * w + y * w;
                        own[row + x0..row + x1].copy_from_slice(&partner[row + x0..row + x1]);
                    }
                }
            }
        } else if params.lam < 1.0 {
            // As timm: x * lam + flip(x) * (1 - lam), in f32, each pair from the originals.
            let (keep, take) = (params.lam as f32, (1.0 - params.lam) as f32);
            for i in 0..n.div_ceil(2) {
                let j = n - 1 - i;
                for k in 0..image {
                    let (a, b) = (pixels[i * image + k], pixels[j * image + k]);
                    pixels[i * image + k] = a * keep + b * take;
                    pixels[j * image + k] = b * keep + a * take;
                }
            }
        }
        mix_targets(labels, classes, params.lam, self.label_smoothing)
    }
}

/// CutMix's box for an `h x w` image, centred at `(cy, cx)`, as timm's `rand_bbox`: sides
/// `int(h * sqrt(1 - lam))` and `int(w * sqrt(1 - lam))` (`cut / 2` before the centre,
/// `(cut + 1) / 2` from it), clipped to the image. Returns the
/// box `[y0, y1, x0, x1]` and `lam` corrected to `1 - box area / image area`.
pub fn cutmix_box(h: usize, w: usize, lam: f64, cy: usize, cx: usize) -> ([usize; 4], f64) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
    let span = |centre: usize, cut: usize, size: usize| {
        (
            centre.saturating_sub(cut / 2).min(size),
            (centre + cut.div_ceil(2)).min(size),
        )
    };
    let (y0, y1) = span(cy, cut_h, h);
    let (x0, x1) = span(cx, cut_w, w);
    let area = ((y1 - y0) * (x1 - x0)) as f64;
    ([y0, y1, x0, x1], 1.0 - area / (h * w) as f64)
}

/// The `[n, classes]` targets: `lam` times each label's smoothed one-hot vector plus `1 - lam`
/// times that of the reversed batch's label, as timm's `mixup_target`.
pub fn mix_targets(labels: &[usize], classes: usize, lam: f64, smoothing: f64) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let n = labels.len();
    let mut targets = vec![0f32; n * classes];
    for (i, row) in targets.chunks_mut(classes).enumerate() {
        let (own, partner) = (labels[i], labels[n - 1 - i]);
        for (k, t) in row.iter_mut().enumerate() {
            let a = if k == own { on } else { off };
            let b = if k == partner { on } else { off };
            // torch: y1 * lam + y2 * (1 - lam), in f32.
            *t = (a as f32) * lam as f32 + (b as f32) * (1.0 - lam) as f32;
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/mixup.json")).expect("fixture")
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    }

    fn usizes(v: &serde_json::Value) -> Vec<usize> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("integer") as usize)
            .collect()
    }

    /// The batch, the boxes and the targets equal timm's for the same `lam` and box centre.
    #[test]
    fn mixing_matches_timm() {
        let f = fixture();
        let shape: Vec<usize> = usizes(&f["shape"]);
        let shape = [shape[0], shape[1], shape[2], shape[3]];
        let input = floats(&f["input"]);
        let labels = usizes(&f["labels"]);
        let classes = f["classes"].as_u64().expect("classes") as usize;
        let smoothing = f["smoothing"].as_f64().expect("smoothing");
        let cases = f["cases"].as_array().expect("cases");
        assert!(cases.len() >= 4);
        for case in cases {
            let lam = case["lam"].as_f64().expect("lam");
            let params = if case["cutmix"].as_bool().expect("cutmix") {
                let centre = usizes(&case["centre"]);
                let (b, lam) = cutmix_box(shape[2], shape[3], lam, centre[0], centre[1]);
                assert_eq!(b.to_vec(), usizes(&case["box"]), "lam {lam}");
                let want = case["lam_corrected"].as_f64().expect("lam");
                assert!((lam - want).abs() < 1e-12, "{lam} vs {want}");
                MixParams {
                    lam,
                    cutmix_box: Some(b),
                }
            } else {
                MixParams {
                    lam,
                    cutmix_box: None,
                }
            };
            let mixup = Mixup {
                mixup_alpha: 1.0,
                cutmix_alpha: 1.0,
                prob: 1.0,
                switch_prob: 0.5,
                label_smoothing: smoothing,
            };
            let mut pixels = input.clone();
            let targets = mixup.apply(&params, &mut pixels, shape, &labels, classes);
            assert_eq!(pixels, floats(&case["mixed"]), "pixels, lam {lam}");
            let want = floats(&case["targets"]);
            for (a, b) in targets.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-7, "targets, lam {lam}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn draws_follow_the_settings() {
        let mut rng = Rng::new(5);
        let off = Mixup {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.0,
        };
        assert_eq!(off.draw(8, 8, &mut rng).lam, 1.0);
        let never = Mixup {
            mixup_alpha: 0.8,
            prob: 0.0,
            ..off
        };
        assert_eq!(never.draw(8, 8, &mut rng).lam, 1.0);
        let cutmix_only = Mixup {
            cutmix_alpha: 1.0,
            ..off
        };
        let mixup_only = Mixup {
            mixup_alpha: 1.0,
            ..off
        };
        for _ in 0..100 {
            let p = cutmix_only.draw(8, 8, &mut rng);
            assert!(p.cutmix_box.is_some());
            assert!((0.0..=1.0).contains(&p.lam));
            let p = mixup_only.draw(8, 8, &mut rng);
            assert!(p.cutmix_box.is_none() && (0.0..=1.0).contains(&p.lam));
        }
        // Both on: the switch probability splits the batches.
        let both = Mixup {
            mixup_alpha: 1.0,
            cutmix_alpha: 1.0,
            switch_prob: 0.25,
            ..off
        };
        let cut = (0..4000)
            .filter(|_| both.draw(8, 8, &mut rng).cutmix_box.is_some())
            .count();
        assert!((800..1200).contains(&cut), "{cut}");
    }
}
