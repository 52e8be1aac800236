//! The candle custom ops: forward, backward and the cross-entropy with its backward.
//!
//! Every op receives contiguous inputs (the public functions call `contiguous` first) and
//! checks that again, because a layout with strides would make the flat slices wrong.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Tensor};

use crate::options::{Activation, Reduction};
use crate::shape::Shape;

/// `y = sigsoftmax(z)`, or `l = log sigsoftmax(z)` when `log_output` is true.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forward {
    pub activation: Activation,
    pub log_output: bool,
    pub shape: Shape,
}

impl Forward {
    pub fn op_name(log_output: bool) -> &'static str {
        if log_output {
            "log_sigsoftmax"
        } else {
            "sigsoftmax"
        }
    }
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        Self::op_name(self.log_output)
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape2)> {
        let output = super::cpu::forward(self, storage, layout)?;
        Ok((output, layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape2)> {
        let output = super::cuda::forward(self, storage, layout)?;
        Ok((output, layout.shape().clone()))
    }

    fn bwd(&self, z: &Tensor, out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        // candle hands in broadcast gradients (stride 0) after a sum, for example.
        let dout = dout.contiguous()?;
        let op = Backward {
            activation: self.activation,
            log_output: self.log_output,
            shape: self.shape,
        };
        z.apply_op3(out, &dout, op).map(Some)
    }
}

/// candle's shape type, named apart from this crate's [`Shape`].
type Shape2 = candle_core::Shape;

/// The gradient with respect to `z` from `(z, y, dy)`, or from `(z, l, dl)` when `log_output`
/// is true.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backward {
    pub activation: Activation,
    pub log_output: bool,
    pub shape: Shape,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        if self.log_output {
            "log_sigsoftmax_backward"
        } else {
            "sigsoftmax_backward"
        }
    }

    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        z_layout: &Layout,
        out: &CpuStorage,
        out_layout: &Layout,
        dout: &CpuStorage,
        dout_layout: &Layout,
    ) -> Result<(CpuStorage, Shape2)> {
        let inputs = [(z, z_layout), (out, out_layout), (dout, dout_layout)];
        let dz = super::cpu::backward(self, inputs)?;
        Ok((dz, z_layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        z: &candle_core::CudaStorage,
        z_layout: &Layout,
        out: &candle_core::CudaStorage,
        out_layout: &Layout,
        dout: &candle_core::CudaStorage,
        dout_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape2)> {
        let inputs = [(z, z_layout), (out, out_layout), (dout, dout_layout)];
        let dz = super::cuda::backward(self, inputs)?;
        Ok((dz, z_layout.shape().clone()))
    }

    /// The second derivative, composed of candle ops.
    ///
    /// With `f = 1 + s(-z)` (1 for softmax), `f' = -s(z) s(-z)` and `g` the gradient of `dz`:
    /// - from `dz = f y (dy - sum_j dy_j y_j)`:
    ///   `d/dz = g f' y u`, `d/dy = g f u - dy sum_i g_i f_i y_i`,
    ///   `d/ddy = g f y - y sum_i g_i f_i y_i`, with `u = dy - sum_j dy_j y_j`;
    /// - from `dz = f (dl - exp(l) sum_j dl_j)`:
    ///   `d/dz = g f' (dl - exp(l) S)`, `d/dl = -g f exp(l) S`,
    ///   `d/ddl = g f - sum_i g_i f_i exp(l_i)`, with `S = sum_j dl_j`.
    ///
    /// Masked entries (`z = -inf`) give `f' = 0` and `y = exp(l) = 0`, so their terms vanish
    /// except `d/ddl = g f`, which is harmless because the forward pass ignores `dl` there.
    fn bwd(
        &self,
        z: &Tensor,
        out: &Tensor,
        dout: &Tensor,
        _dz: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let last = z.rank() - 1;
        // s(-z) = 1 / (1 + exp(z)) is exact at both ends: exp(z) = inf gives 0, exp(-inf) = 0
        // gives 1.
        let sigmoid_neg = (z.exp()? + 1.0)?.recip()?;
        let (factor, factor_derivative) = match self.activation {
            Activation::Sigsoftmax => {
                let factor = (&sigmoid_neg + 1.0)?;
                // -s(z) s(-z) = s(-z)^2 - s(-z).
                let derivative = (sigmoid_neg.sqr()? - &sigmoid_neg)?;
                (factor, Some(derivative))
            }
            Activation::Softmax => (sigmoid_neg.ones_like()?, None),
        };
        let grad_factor = (grad * &factor)?;
        let probabilities = if self.log_output {
            out.exp()?
        } else {
            out.clone()
        };
        let weighted = (&grad_factor * &probabilities)?.sum_keepdim(last)?;

        let (d_z, d_out, d_dout);
        if self.log_output {
            let dl_sum = dout.sum_keepdim(last)?;
            let centered = (dout - probabilities.broadcast_mul(&dl_sum)?)?;
            d_z = factor_derivative
                .map(|derivative| (grad * derivative)? * centered)
                .transpose()?;
            d_out = (&grad_factor * &probabilities)?
                .broadcast_mul(&dl_sum)?
                .neg()?;
            d_dout = grad_factor.broadcast_sub(&weighted)?;
        } else {
            let dy_dot_y = (dout * out)?.sum_keepdim(last)?;
            let centered = dout.broadcast_sub(&dy_dot_y)?;
            d_z = factor_derivative
                .map(|derivative| ((grad * derivative)? * out)? * &centered)
                .transpose()?;
            d_out = ((&grad_factor * &centered)? - dout.broadcast_mul(&weighted)?)?;
            d_dout = ((&grad_factor * out)? - out.broadcast_mul(&weighted)?)?;
        }
        Ok((d_z, Some(d_out), Some(d_dout)))
    }
}

/// The fused cross-entropy of `(logits, targets)`; targets are i64, one per row.
#[derive(Debug, Clone, Copy)]
pub(super) struct CrossEntropy {
    pub activation: Activation,
    pub shape: Shape,
    pub ignore_index: Option<i64>,
    pub label_smoothing: f64,
    pub reduction: Reduction,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "sigsoftmax_cross_entropy"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
    ) -> Result<(CpuStorage, Shape2)> {
        let loss =
            super::cpu::cross_entropy(self, (logits, logits_layout), (targets, targets_layout))?;
        Ok((
            loss,
            super::loss_shape(logits_layout.shape(), self.reduction),
        ))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        logits: &candle_core::CudaStorage,
        logits_layout: &Layout,
        targets: &candle_core::CudaStorage,
        targets_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape2)> {
        let loss =
            super::cuda::cross_entropy(self, (logits, logits_layout), (targets, targets_layout))?;
        Ok((
            loss,
            super::loss_shape(logits_layout.shape(), self.reduction),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_logits = logits.apply_op3(targets, &grad, CrossEntropyBackward(*self))?;
        Ok((Some(d_logits), None))
    }
}

/// The gradient of [`CrossEntropy`] with respect to the logits, from `(logits, targets,
/// upstream)`, where `upstream` is the gradient of the loss: a scalar, or one value per row for
/// [`Reduction::None`].
///
/// It has no backward pass of its own, so a second derivative through the cross-entropy fails
/// with candle's `BackwardNotSupported` error instead of returning a wrong value.
#[derive(Debug, Clone, Copy)]
pub(super) struct CrossEntropyBackward(pub CrossEntropy);

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "sigsoftmax_cross_entropy_backward"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
        upstream: &CpuStorage,
        upstream_layout: &Layout,
    ) -> Result<(CpuStorage, Shape2)> {
        let grad = super::cpu::cross_entropy_backward(
            &self.0,
            (logits, logits_layout),
            (targets, targets_layout),
            (upstream, upstream_layout),
        )?;
        Ok((grad, logits_layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        logits: &candle_core::CudaStorage,
        logits_layout: &Layout,
        targets: &candle_core::CudaStorage,
        targets_layout: &Layout,
        upstream: &candle_core::CudaStorage,
        upstream_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape2)> {
        let grad = super::cuda::cross_entropy_backward(
            &self.0,
            (logits, logits_layout),
            (targets, targets_layout),
            (upstream, upstream_layout),
        )?;
        Ok((grad, logits_layout.shape().clone()))
    }
}
