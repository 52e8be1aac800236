//! Options shared by the CPU and CUDA ops.

use crate::error::{Error, Result};

/// The normalization an op computes.
///
/// [`Activation::Softmax`] runs the same code with the sigmoid factor off, so a model or a
/// benchmark can switch between the two in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `y_i = sigmoid(z_i) exp(z_i) / sum_j sigmoid(z_j) exp(z_j)`.
    #[default]
    Sigsoftmax,
    /// `y_i = exp(z_i) / sum_j exp(z_j)`.
    Softmax,
}

impl Activation {
    /// `sigsoftmax` or `softmax`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Sigsoftmax => "sigsoftmax",
            Activation::Softmax => "softmax",
        }
    }
}

/// The way cross-entropy combines the per-row losses, as in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// Per-row losses only; the returned scalar is their sum.
    None,
    /// The sum over rows that are not ignored.
    Sum,
    /// The sum divided by the number of rows that are not ignored (NaN when every row is ignored).
    #[default]
    Mean,
}

impl Reduction {
    /// `none`, `sum` or `mean`.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "none" => Ok(Reduction::None),
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            _ => Err(format!("unknown reduction `{s}`; use none, sum or mean")),
        }
    }
}

/// The gradient of the final loss with respect to what cross-entropy returns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Upstream<'a> {
    /// 1, as when the cross-entropy is the loss itself.
    #[default]
    One,
    /// One value for the reduced loss (or for every row with [`Reduction::None`]).
    Scalar(f64),
    /// One value per row; only with [`Reduction::None`].
    PerRow(&'a [f32]),
}

/// Options of the fused cross-entropy.
///
/// With targets `t` and smoothing `eps`, each row's target distribution is
/// `q = (1 - eps) onehot(t) + eps / cols` and its loss `-sum_i q_i log y_i`, summed over the
/// entries that are not masked with `-inf`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropyOptions<'a> {
    /// Rows whose target equals this value get loss 0 and gradient 0 and do not count in the
    /// mean. PyTorch's default is -100, and so is this one.
    pub ignore_index: Option<i64>,
    /// Label smoothing `eps` in `[0, 1]`.
    pub label_smoothing: f64,
    /// The combination of the per-row losses.
    pub reduction: Reduction,
    /// The upstream gradient that scales the logits' gradient.
    pub upstream: Upstream<'a>,
}

impl Default for CrossEntropyOptions<'_> {
    fn default() -> Self {
        Self {
            ignore_index: Some(-100),
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
            upstream: Upstream::One,
        }
    }
}

impl CrossEntropyOptions<'_> {
    /// Checks the options that do not depend on the shape.
    pub(crate) fn validate(&self, op: &'static str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::InvalidLabelSmoothing(self.label_smoothing));
        }
        if matches!(self.upstream, Upstream::PerRow(_)) && self.reduction != Reduction::None {
            return Err(Error::UpstreamNeedsNoReduction {
                op,
                reduction: self.reduction.name(),
            });
        }
        Ok(())
    }
}
