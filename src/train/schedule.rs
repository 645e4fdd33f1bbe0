//! Learning-rate schedules with linear warmup, evaluated per step.

use serde::{Deserialize, Serialize};

/// Schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine decay to `min_lr` at the end of training.
    Cosine,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step,
}

/// A schedule with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Kind.
    pub kind: Schedule,
    /// Warmup epochs (linear from lr / steps to lr).
    pub warmup_epochs: f64,
    /// Step schedule: epochs between decays.
    pub step_epochs: usize,
    /// Step schedule: decay factor.
    pub gamma: f64,
    /// Total epochs.
    pub epochs: usize,
    /// Cosine schedule: the learning rate it decays to (timm's `min_lr`).
    #[serde(default)]
    pub min_lr: f64,
}

impl LrSchedule {
    /// Learning rate at `step` of `steps_per_epoch`-step epochs.
    pub fn at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        let t = step as f64 / spe; // epochs elapsed
        let warmup_steps = (self.warmup_epochs * spe).round();
        if (step as f64) < warmup_steps {
            return self.lr * (step as f64 + 1.0) / warmup_steps;
        }
        match self.kind {
            Schedule::Cosine => {
                let total = self.epochs as f64 * spe - warmup_steps;
                let done = (step as f64 - warmup_steps) / total.max(1.0);
                let min = self.min_lr;
                min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos())
            }
            Schedule::Step => {
                let k = (t / self.step_epochs.max(1) as f64).floor() as i32;
                self.lr * self.gamma.powi(k)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        let s = LrSchedule {
            lr: 0.1,
            kind: Schedule::Cosine,
            warmup_epochs: 1.0,
            step_epochs: 30,
            gamma: 0.1,
            epochs: 10,
            min_lr: 0.0,
        };
        assert!((s.at(0, 100) - 0.001).abs() < 1e-12);
        assert!((s.at(99, 100) - 0.1).abs() < 1e-12);
        assert!((s.at(100, 100) - 0.1).abs() < 1e-12);
        assert!(s.at(550, 100) < 0.051 && s.at(550, 100) > 0.049);
        assert!(s.at(999, 100) < 1e-4);
    }

    #[test]
    fn cosine_ends_at_the_minimum() {
        let s = LrSchedule {
            lr: 0.1,
            kind: Schedule::Cosine,
            warmup_epochs: 0.0,
            step_epochs: 30,
            gamma: 0.1,
            epochs: 10,
            min_lr: 0.01,
        };
        assert!((s.at(0, 100) - 0.1).abs() < 1e-12);
        // Halfway: the mean of the peak and the minimum (timm's CosineLRScheduler).
        assert!((s.at(500, 100) - 0.055).abs() < 1e-12);
        assert!((s.at(1000, 100) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn step_decay() {
        let s = LrSchedule {
            lr: 0.1,
            kind: Schedule::Step,
            warmup_epochs: 0.0,
            step_epochs: 30,
            gamma: 0.1,
            epochs: 100,
            min_lr: 0.0,
        };
        assert_eq!(s.at(0, 10), 0.1);
        assert!((s.at(300, 10) - 0.01).abs() < 1e-12);
        assert!((s.at(650, 10) - 0.001).abs() < 1e-12);
    }
}
