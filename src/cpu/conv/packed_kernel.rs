//! A kxk convolution with output channels in AVX-512 lanes, from weights packed once
//! ([`super::packed::PackedWeights`]).
//!
//! The direct kernel ([`super::direct`]) puts output positions in vector lanes: a run over
//! the padded input's rows, padding columns included, rounded up to whole vectors. On the small
//! maps of a network's last stages that wastes a quarter to a half of every FMA (a 7x7 map with
//! a padded width of 9 or 11 is a run of 61 or 77 for 49 outputs). Here the lanes hold 16 output
//! channels instead, so no lane is wasted whatever the map: a register block of up to `VECTORS`
//! x 16 output channels by `ROWS` rows of up to `POSITIONS` positions, 28 accumulators, takes
//! per (input channel, tap) `VECTORS` weight loads and `ROWS * POSITIONS` broadcast inputs. The
//! weights are then read as `[out / 32][in / groups * k * k][32]` (blocks never cross a group):
//! [`pack`] lays them out so.

use rayon::prelude::*;

use super::plan::{Images, PhaseLayout, Plan};

/// Whether this CPU runs the packed kernel.
pub(crate) fn available() -> bool {
    super::pointwise::available()
}

/// Output channels in one register: the lanes of an AVX-512 vector.
pub(super) const LANES: usize = 16;
/// Registers of output channels in one block (32 channels).
const VECTORS: usize = 2;
/// Output rows in one block.
const ROWS: usize = 2;
/// Consecutive positions of each output row in one block.
const POSITIONS: usize = 7;

/// `[out, in / groups, k, k]` weights regrouped for the kernel: blocks of up to `VECTORS *
/// LANES` output channels of one group, each `[in / groups * k * k][block channels]`, in output
/// channel order.
pub(super) fn pack(weight: &[f32], [out_channels, groups]: [usize; 2]) -> Vec<f32> {
    let taps = weight.len() / out_channels;
    let group_out = out_channels / groups;
    let mut packed = Vec::with_capacity(weight.len());
    for group in 0..groups {
        let end = (group + 1) * group_out;
        for first in (group * group_out..end).step_by(VECTORS * LANES) {
            let width = (end - first).min(VECTORS * LANES);
            for t in 0..taps {
                packed.extend((first..first + width).map(|o| weight[o * taps + t]));
            }
        }
    }
    packed
}

/// The conv of `plan` (square kernel, output channels of each group a multiple of 16) from
/// `packed` weights ([`pack`]): `out = conv(images) + bias`, ReLU'd if `relu`, every element
/// written.
///
/// # Panics
/// If [`available`] is false or the sizes do not match the plan.
pub(super) fn run_packed(
    plan: &Plan,
    images: Images,
    packed: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    assert!(available(), "the packed conv needs AVX-512");
    assert!(plan.group_out.is_multiple_of(LANES));
    let taps = plan.group_in * plan.kernel * plan.kernel;
    assert_eq!(packed.len(), plan.out_channels * taps);
    assert_eq!(bias.len(), plan.out_channels);
    let plane = plan.out_h * plan.out_w;
    assert_eq!(out.len(), plan.batch * plan.out_channels * plane);
    let layout = PhaseLayout::new(plan);
    // One group's taps; the groups' phases follow one another.
    let starts = layout.tap_starts(plan);
    let group_phases = plan.group_in * layout.channel;
    let all_channels = Plan {
        group_in: plan.in_channels,
        ..*plan
    };
    let image_len = plan.in_channels * plan.in_h * plan.in_w;
    // Blocks of output channels, none across groups: (first channel, channels).
    let blocks: Vec<[usize; 2]> = (0..plan.out_channels)
        .step_by(plan.group_out)
        .flat_map(|group_first| {
            (0..plan.group_out)
                .step_by(VECTORS * LANES)
                .map(move |o| [group_first + o, (plan.group_out - o).min(VECTORS * LANES)])
        })
        .collect();
    let bands = plan.out_h.div_ceil(ROWS);
    let mut phases = Vec::new();
    for (n, out_image) in out.chunks_mut(plan.out_channels * plane).enumerate() {
        layout.fill(&all_channels, images.part(n, 0, image_len), &mut phases);
        let out_ptr = super::SendPtr(out_image.as_mut_ptr());
        let phases = &phases;
        (0..blocks.len() * bands).into_par_iter().for_each(|task| {
            let ([first, width], y) = (blocks[task / bands], task % bands * ROWS);
            let rows = (plan.out_h - y).min(ROWS);
            let group = first / plan.group_out;
            let data = &phases[group * group_phases + y * layout.width..];
            // SAFETY: `available` checked AVX-512; the task writes output rows `y..y + rows`
            // of channels `first..first + width` of this image, which no other task writes.
            unsafe {
                row_task(
                    plan,
                    [rows, layout.width],
                    &starts,
                    data,
                    &packed[first * taps..][..width * taps],
                    &bias[first..first + width],
                    relu,
                    out_ptr.get().add(first * plane + y * plan.out_w),
                )
            }
        });
    }
}

/// Up to [`ROWS`] output rows of one block of output channels, [`POSITIONS`] positions at a
/// time.
///
/// # Safety
/// The CPU supports AVX-512F (checked by [`run_packed`] through [`available`]); `out` points to
/// the block's first channel at the row's first position, in the image's output (channels
/// `plane` apart), and no one else writes those elements meanwhile. The bounds of `data` and
/// `weights` are asserted here.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_task(
    plan: &Plan,
    [rows, pitch]: [usize; 2],
    starts: &[usize],
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    relu: bool,
    out: *mut f32,
) {
    let plane = plan.out_h * plan.out_w;
    let vectors = bias.len() / LANES;
    let last = starts.iter().max().copied().unwrap_or(0) + (rows - 1) * pitch + plan.out_w;
    assert!(last <= data.len() && weights.len() == starts.len() * bias.len());
    let mut block = [[0f32; VECTORS * LANES]; ROWS * POSITIONS];
    let mut x = 0;
    while x < plan.out_w {
        let p = (plan.out_w - x).min(POSITIONS);
        let args = (
            starts,
            data.as_ptr().add(x),
            pitch,
            weights.as_ptr(),
            &mut block,
        );
        macro_rules! by_positions {
            ($v:literal, $r:literal) => {
                match p {
                    1 => tile::<$v, $r, 1>(args),
                    2 => tile::<$v, $r, 2>(args),
                    3 => tile::<$v, $r, 3>(args),
                    4 => tile::<$v, $r, 4>(args),
                    5 => tile::<$v, $r, 5>(args),
                    6 => tile::<$v, $r, 6>(args),
                    _ => tile::<$v, $r, 7>(args),
                }
            };
        }
        match (vectors, rows) {
            (1, 1) => by_positions!(1, 1),
            (1, _) => by_positions!(1, 2),
            (_, 1) => by_positions!(2, 1),
            (_, _) => by_positions!(2, 2),
        }
        // The block holds positions by channels; the output is channels by positions.
        for (c, &shift) in bias.iter().enumerate() {
            for r in 0..rows {
                let dst = out.add(c * plane + r * plan.out_w + x);
                for (i, sums) in block[r * POSITIONS..][..p].iter().enumerate() {
                    let v = sums[c] + shift;
                    *dst.add(i) = if relu { crate::cpu::relu(v) } else { v };
                }
            }
        }
        x += p;
    }
}

/// The stand-in for the x86-64 kernel on other targets, where the packed kernel is never chosen.
///
/// # Safety
/// Never to be called: it panics.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn row_task(
    _: &Plan,
    _: [usize; 2],
    _: &[usize],
    _: &[f32],
    _: &[f32],
    _: &[f32],
    _: bool,
    _: *mut f32,
) {
    unreachable!("the packed conv is x86-64 only, and chosen only there")
}

/// `block[i][c] = sum over t of weights[t][c] * data[starts[t] + i]` for `V * 16` channels and `P`
/// positions, in registers over all taps.
///
/// # Safety
/// The CPU supports AVX-512F; for every tap `t`, `data + starts[t] + r * pitch` is readable for
/// `P` floats for each row `r < R`, and `weights` holds `V * 16` floats per tap, tap after tap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // indices pair registers across arrays
unsafe fn tile<const V: usize, const R: usize, const P: usize>(
    (starts, data, pitch, weights, block): (
        &[usize],
        *const f32,
        usize,
        *const f32,
        &mut [[f32; VECTORS * LANES]; ROWS * POSITIONS],
    ),
) {
    use std::arch::x86_64::*;
    let mut acc = [[[_mm512_setzero_ps(); V]; P]; R];
    let mut wp = weights;
    for &start in starts {
        let mut w = [_mm512_setzero_ps(); V];
        for v in 0..V {
            w[v] = _mm512_loadu_ps(wp.add(LANES * v));
        }
        for r in 0..R {
            let d = data.add(start + r * pitch);
            for i in 0..P {
                let x = _mm512_set1_ps(*d.add(i));
                for v in 0..V {
                    acc[r][i][v] = _mm512_fmadd_ps(w[v], x, acc[r][i][v]);
                }
            }
        }
        wp = wp.add(LANES * V);
    }
    for r in 0..R {
        for i in 0..P {
            for v in 0..V {
                let dst = block[r * POSITIONS + i].as_mut_ptr().add(LANES * v);
                _mm512_storeu_ps(dst, acc[r][i][v]);
            }
        }
    }
}
