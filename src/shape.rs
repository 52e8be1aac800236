//! The validated `[rows, cols]` shape that every op takes.

use crate::error::{Error, Result};

/// The shape of a row-major matrix of logits: `rows` independent rows of `cols` classes.
///
/// Built once by [`Shape::new`], which rejects empty shapes and element counts that overflow,
/// so the ops never see either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    rows: usize,
    cols: usize,
}

impl Shape {
    /// Validates and builds a shape.
    ///
    /// # Errors
    /// [`Error::EmptyShape`] when `rows` or `cols` is zero, [`Error::ShapeTooLarge`] when
    /// `rows * cols` overflows 64 bits.
    ///
    /// ```
    /// let shape = sigsoftmax::Shape::new(4, 50257)?;
    /// assert_eq!(shape.len(), 4 * 50257);
    /// assert!(sigsoftmax::Shape::new(0, 10).is_err());
    /// # Ok::<(), sigsoftmax::Error>(())
    /// ```
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(Error::EmptyShape { rows, cols });
        }
        match rows.checked_mul(cols) {
            Some(len) if i64::try_from(len).is_ok() => Ok(Self { rows, cols }),
            _ => Err(Error::ShapeTooLarge { rows, cols }),
        }
    }

    /// Number of rows (independent distributions).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (classes) per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of elements, `rows * cols`.
    #[allow(clippy::len_without_is_empty)] // a validated shape is never empty
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Checks that a buffer called `name` has exactly `rows * cols` elements.
    pub(crate) fn check_matrix(
        &self,
        op: &'static str,
        name: &'static str,
        len: usize,
    ) -> Result<()> {
        self.check_len(op, name, self.len(), len)
    }

    /// Checks that a per-row buffer called `name` has exactly `rows` elements.
    pub(crate) fn check_per_row(
        &self,
        op: &'static str,
        name: &'static str,
        len: usize,
    ) -> Result<()> {
        self.check_len(op, name, self.rows, len)
    }

    fn check_len(
        &self,
        op: &'static str,
        name: &'static str,
        expected: usize,
        actual: usize,
    ) -> Result<()> {
        if expected == actual {
            Ok(())
        } else {
            Err(Error::LengthMismatch {
                op,
                name,
                shape: *self,
                expected,
                actual,
            })
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}
