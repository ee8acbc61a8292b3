//! The warmup-stable-decay learning-rate schedule: a linear warmup to the peak, a long plateau,
//! and a linear decay to `min_lr` over the last `decay_steps` steps.

/// WSD over `total_steps` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WsdSchedule {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub decay_steps: usize,
    pub total_steps: usize,
}

impl WsdSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let s = self;
        if step < s.warmup_steps {
            return s.peak_lr * (step + 1) as f64 / s.warmup_steps as f64;
        }
        let decay_start = s
            .total_steps
            .saturating_sub(s.decay_steps)
            .max(s.warmup_steps);
        if step < decay_start || s.decay_steps == 0 {
            return s.peak_lr;
        }
        let done = ((step - decay_start) as f64 / s.decay_steps as f64).min(1.0);
        s.peak_lr + (s.min_lr - s.peak_lr) * done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_holds_and_decays() {
        let s = WsdSchedule {
            peak_lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 4,
            decay_steps: 10,
            total_steps: 100,
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(50), 1.0);
        assert_eq!(s.lr(89), 1.0);
        assert!((s.lr(95) - 0.55).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
        assert!((s.lr(1000) - 0.1).abs() < 1e-12);
    }
}
