//! Splits the work over rows and chunks and runs the kernels.

use crate::element::Element;
use crate::options::{Activation, CrossEntropyOptions};
use crate::shape::Shape;

/// Elements per chunk.
pub const CHUNK: usize = 4096;

pub(crate) fn forward<T: Element>(_a: Activation, _s: Shape, _src: Option<&[T]>, _dst: &mut [T], _log: bool) {
    todo!()
}

pub(crate) fn backward<T: Element>(_a: Activation, _s: Shape, _z: &[T], _y: &[T], _dy: &[T], _dz: &mut [T], _log: bool) {
    todo!()
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_entropy<T: Element>(
    _a: Activation,
    _s: Shape,
    _src: Option<&[T]>,
    _grad: Option<&mut [T]>,
    _targets: &[i64],
    _options: &CrossEntropyOptions<'_>,
    _counted: usize,
    _losses: &mut [T::Accum],
) {
    todo!()
}
