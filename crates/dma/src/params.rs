//! The scalar parameters of one attention call.

use crate::{DmaError, Result};

/// Window, masking and scale of a DMA call.
///
/// `window` is w in SPEC.md (`keep_window_size` in Doge configs): every query keeps at most the
/// w best-ranked keys it can see. `scale` defaults to `1 / sqrt(head_dim)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub window: usize,
    pub causal: bool,
    pub scale: Option<f32>,
}

impl Params {
    /// Causal attention with window `window` and the default scale.
    pub fn new(window: usize) -> Self {
        Params {
            window,
            causal: true,
            scale: None,
        }
    }

    /// The same parameters with causal masking switched on or off.
    pub fn causal(self, causal: bool) -> Self {
        Params { causal, ..self }
    }

    /// The same parameters with an explicit softmax scale.
    pub fn scale(self, scale: f32) -> Self {
        Params {
            scale: Some(scale),
            ..self
        }
    }

    /// The scale actually used for head dim `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (head_dim as f32).sqrt())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(DmaError::ZeroWindow);
        }
        if let Some(s) = self.scale {
            if !s.is_finite() {
                return Err(DmaError::InvalidScale(s));
            }
        }
        Ok(())
    }
}
