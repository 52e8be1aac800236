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
pub trait Element: sealed::Sealed + Copy + Default + Send + Sync + std::fmt::Debug + 'static {
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

            fn as_accum(src: &[Self]) -> Option<&[$t]> {
                Some(src)
            }

            fn as_accum_mut(dst: &mut [Self]) -> Option<&mut [$t]> {
                Some(dst)
            }

            fn widen(src: &[Self], dst: &mut [$t]) {
                dst.copy_from_slice(src);
            }

            fn narrow(src: &[$t], dst: &mut [Self]) {
                dst.copy_from_slice(src);
            }
        }
    };
}

impl_native!(f32, DType::F32);
impl_native!(f64, DType::F64);

macro_rules! impl_half {
    ($t:ty, $dtype:expr) => {
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

            fn as_accum(_: &[Self]) -> Option<&[f32]> {
                None
            }

            fn as_accum_mut(_: &mut [Self]) -> Option<&mut [f32]> {
                None
            }

            // `half` converts whole slices with F16C or AVX-512 instructions where the CPU has them.
            fn widen(src: &[Self], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst);
            }

            fn narrow(src: &[f32], dst: &mut [Self]) {
                dst.convert_from_f32_slice(src);
            }
        }
    };
}

impl_half!(f16, DType::F16);
impl_half!(bf16, DType::BF16);
