//! Storage types: f32, f64, f16 and bf16, and the precision each is computed in.

use half::{bf16, f16, slice::HalfFloatSliceExt};

/// The storage type of a buffer, for messages, the command line and the GPU launchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// IEEE binary16 ([`half::f16`]).
    F16,
    /// bfloat16 ([`half::bf16`]): f32's exponent range with an 8-bit significand.
    BF16,
}

impl DType {
    /// All storage types, in the order the command line lists them.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    /// The lowercase name used on the command line and in reports (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|dtype| dtype.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}`; use one of f32, f64, f16, bf16"))
    }
}

/// A storage type the ops accept: `f32`, `f64`, [`half::f16`] or [`half::bf16`].
///
/// f16 and bf16 are read, widened to f32, computed in f32 and rounded once on store; f32 is
/// computed in f32 and f64 in f64. The trait is sealed; its hidden methods are the bulk
/// conversions the CPU engine uses chunk by chunk.
pub trait Element:
    sealed::Sealed + Copy + Default + Send + Sync + std::fmt::Debug + 'static
{
    /// The storage type as a value.
    const DTYPE: DType;

    /// The type the CPU computes and accumulates in: `f64` for `f64`, `f32` otherwise.
    type Accum: crate::cpu::Real;

    /// Converts to f64 (exact for every storage type).
    fn to_f64(self) -> f64;

    /// Rounds an f64 to this type (round to nearest even).
    fn from_f64(value: f64) -> Self;

    /// Borrows the buffer as compute precision when the two types are the same.
    #[doc(hidden)]
    fn as_accum(src: &[Self]) -> Option<&[Self::Accum]>;

    /// Mutable twin of [`Element::as_accum`].
    #[doc(hidden)]
    fn as_accum_mut(dst: &mut [Self]) -> Option<&mut [Self::Accum]>;

    /// Widens `src` into `dst` (same length).
    #[doc(hidden)]
    fn widen(src: &[Self], dst: &mut [Self::Accum]);

    /// Rounds `src` into `dst` (same length).
    #[doc(hidden)]
    fn narrow(src: &[Self::Accum], dst: &mut [Self]);
}

mod sealed {
    /// Keeps [`super::Element`] implemented by this crate's four types only.
    pub trait Sealed {}
}

macro_rules! impl_native {
    ($t:ty, $dtype:expr) => {
        impl sealed::Sealed for $t {}

        impl Element for $t {
            const DTYPE: DType = $dtype;
            type Accum = $t;

            fn to_f64(self) -> f64 {
                self as f64
            }

            fn from_f64(value: f64) -> Self {
                value as $t
            }

            #[inline(always)]
            fn as_accum(src: &[Self]) -> Option<&[$t]> {
                Some(src)
            }

            #[inline(always)]
            fn as_accum_mut(dst: &mut [Self]) -> Option<&mut [$t]> {
                Some(dst)
            }

            #[inline(always)]
            fn widen(src: &[Self], dst: &mut [$t]) {
                dst.copy_from_slice(src);
            }

            #[inline(always)]
            fn narrow(src: &[$t], dst: &mut [Self]) {
                dst.copy_from_slice(src);
            }
        }
    };
}

impl_native!(f32, DType::F32);
impl_native!(f64, DType::F64);

/// Implements [`Element`] for a 16-bit type stored as f32 computed.
macro_rules! impl_half {
    ($t:ty, $dtype:expr, $widen:path, $narrow:path) => {
        impl sealed::Sealed for $t {}

        impl Element for $t {
            const DTYPE: DType = $dtype;
            type Accum = f32;

            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }

            fn from_f64(value: f64) -> Self {
                <$t>::from_f64(value)
            }

            #[inline(always)]
            fn as_accum(_: &[Self]) -> Option<&[f32]> {
                None
            }

            #[inline(always)]
            fn as_accum_mut(_: &mut [Self]) -> Option<&mut [f32]> {
                None
            }

            #[inline(always)]
            fn widen(src: &[Self], dst: &mut [f32]) {
                $widen(src, dst);
            }

            #[inline(always)]
            fn narrow(src: &[f32], dst: &mut [Self]) {
                $narrow(src, dst);
            }
        }
    };
}

// `half` converts f16 slices with F16C where the CPU has it.
impl_half!(
    f16,
    DType::F16,
    HalfFloatSliceExt::convert_to_f32_slice,
    convert_f16_from_f32
);
impl_half!(bf16, DType::BF16, widen_bf16, narrow_bf16);

fn convert_f16_from_f32(src: &[f32], dst: &mut [f16]) {
    dst.convert_from_f32_slice(src);
}

/// Widens bf16 to f32: a bf16 is the upper half of an f32, so this is exact. Written as a
/// loop that vectorizes when inlined into the SIMD kernels.
#[inline(always)]
fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    for (dst, src) in dst.iter_mut().zip(src) {
        *dst = f32::from_bits(u32::from(src.to_bits()) << 16);
    }
}

/// Rounds f32 to bf16, to nearest with ties to even, as `bf16::from_f32` does; NaN stays a
/// quiet NaN with its sign.
#[inline(always)]
fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
    for (dst, &src) in dst.iter_mut().zip(src) {
        let bits = src.to_bits();
        let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
        let quiet_nan = (bits >> 16) as u16 | 0x0040;
        *dst = bf16::from_bits(if src.is_nan() { quiet_nan } else { rounded });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_narrowing_matches_half() {
        // Every 16-bit upper half with a spread of lower halves, covering ties, overflow to
        // infinity, subnormals and NaN.
        let lows = [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF];
        let src: Vec<f32> = (0..=0xFFFFu32)
            .flat_map(|high| lows.iter().map(move |low| f32::from_bits(high << 16 | low)))
            .collect();
        let mut ours = vec![bf16::ZERO; src.len()];
        narrow_bf16(&src, &mut ours);
        for (value, ours) in src.iter().zip(&ours) {
            let expected = bf16::from_f32(*value);
            if value.is_nan() {
                assert!(ours.is_nan(), "{value:e} gave {ours} instead of NaN");
            } else {
                assert_eq!(ours.to_bits(), expected.to_bits(), "rounding {value:e}");
            }
        }
    }

    #[test]
    fn bf16_widening_is_exact() {
        let src: Vec<bf16> = (0..=0xFFFFu16).map(bf16::from_bits).collect();
        let mut ours = vec![0.0f32; src.len()];
        widen_bf16(&src, &mut ours);
        for (value, ours) in src.iter().zip(&ours) {
            if value.is_nan() {
                assert!(ours.is_nan(), "{value} widened to {ours:e}");
            } else {
                assert_eq!(ours.to_bits(), value.to_f32().to_bits(), "widening {value}");
            }
        }
    }
}
