//! Sizes computed from a module's own dimensions, without running it: output size, multiply-adds
//! and parameter counts. Summaries and input checks use them, so they never allocate activations.

/// Sizes of a layer or block for one image.
pub trait Sizes {
    /// Output `(height, width)` for an input of `(height, width)`; `None` when the input is too
    /// small.
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)>;

    /// Multiply-adds of conv and linear layers for one image of `(height, width)`.
    fn macs(&self, h: usize, w: usize) -> u64;

    /// (trainable, non-trainable) parameters; BatchNorm running statistics are non-trainable,
    /// as Keras counts them.
    fn params(&self) -> (usize, usize);
}

/// Absent: the input passes through.
impl<T: Sizes> Sizes for Option<T> {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.as_ref().map_or(Some((h, w)), |s| s.out_hw(h, w))
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        self.as_ref().map_or(0, |s| s.macs(h, w))
    }

    fn params(&self) -> (usize, usize) {
        self.as_ref().map_or((0, 0), Sizes::params)
    }
}

/// Layers applied one after the other.
impl Sizes for [&dyn Sizes] {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.iter()
            .try_fold((h, w), |(h, w), layer| layer.out_hw(h, w))
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let mut size = Some((h, w));
        let mut total = 0;
        for layer in self {
            // A layer past the point where the map vanished does no work.
            let Some((h, w)) = size else { break };
            total += layer.macs(h, w);
            size = layer.out_hw(h, w);
        }
        total
    }

    fn params(&self) -> (usize, usize) {
        sum_params(self.iter().map(|layer| layer.params()))
    }
}

/// Adds (trainable, non-trainable) pairs.
pub(crate) fn sum_params(parts: impl IntoIterator<Item = (usize, usize)>) -> (usize, usize) {
    parts
        .into_iter()
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}
