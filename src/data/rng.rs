//! A small, seedable random number generator (SplitMix64). Training randomness is derived from
//! `(seed, epoch, sample)` so that runs are reproducible whatever the thread schedule, and a
//! resumed run draws exactly what the uninterrupted run would have.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one purpose, derived from several numbers.
    pub fn derive(parts: &[u64]) -> Self {
        let mut r = Rng::new(0x5eed_5eed_5eed_5eed);
        for &p in parts {
            r.0 ^= p;
            r.next_u64();
        }
        r
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        // 1 - uniform() is in (0, 1]: the logarithm stays finite.
        let r = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        r * (std::f64::consts::TAU * self.uniform()).cos()
    }

    /// Gamma(`shape`, 1), by Marsaglia and Tsang's method (with the `shape + 1` boost below 1).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(`a`, `b`), from two gamma draws.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y > 0.0 {
            x / (x + y)
        } else {
            0.5
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    fn moments(draws: impl Iterator<Item = f64>) -> (f64, f64) {
        let v: Vec<f64> = draws.collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var)
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = Rng::new(7);
        let (mean, var) = moments((0..200_000).map(|_| rng.normal()));
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
    }

    #[test]
    fn beta_has_the_moments_of_its_parameters() {
        // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
        for a in [0.2, 0.8, 1.0, 3.0] {
            let mut rng = Rng::new(11);
            let (mean, var) = moments((0..200_000).map(|_| rng.beta(a, a)));
            let want = 1.0 / (4.0 * (2.0 * a + 1.0));
            assert!((mean - 0.5).abs() < 0.005, "a {a}: mean {mean}");
            assert!(
                (var - want).abs() < 0.02 * want + 1e-4,
                "a {a}: var {var} vs {want}"
            );
        }
    }
}
