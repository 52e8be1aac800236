//! Element-wise math written so that LLVM vectorizes it: branch-free selects, no calls.
//!
//! f32 uses polynomial `exp` and `ln(1 + u)` (coefficients from Cephes' `expf` and `logf`,
//! about 1 ulp on the ranges used here) and a Newton reciprocal in place of a vector
//! division; f64 uses the standard library, since f64 is for reference-grade results
//! rather than speed.
//!
//! The const parameter `FMA` says whether the caller was compiled with fused multiply-add.
//! Rust never fuses `a * b + c` by itself, and `mul_add` without the instruction is a slow
//! library call, so each function is instantiated with and without it.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// The precision the CPU computes in: `f32` or `f64`. Sealed: its methods are internal.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Negative infinity, the mask value.
    const NEG_INFINITY: Self;
    /// A quiet NaN.
    const NAN: Self;
    /// The smallest positive normal value.
    const MIN_POSITIVE: Self;

    /// Rounds an f64 to this precision.
    fn from_f64(value: f64) -> Self;

    /// Widens to f64.
    fn to_f64(self) -> f64;

    /// `|x|`.
    fn abs(self) -> Self;

    /// False for infinities and NaN.
    fn is_finite(self) -> bool;

    /// `self * b + c`, rounded once (the FMA instruction).
    fn fused_mul_add(self, b: Self, c: Self) -> Self;

    /// `e^x`: exactly 0 for `-inf` and for results below the smallest normal, NaN for NaN.
    fn exp_lane<const FMA: bool>(self) -> Self;

    /// `ln(1 + u)` for `u` in `[0, 1]` (NaN for NaN).
    fn ln_1p_unit<const FMA: bool>(self) -> Self;

    /// `1 / x` for a normal `x` with `|x| <= 2` (NaN for NaN).
    fn recip_lane<const FMA: bool>(self) -> Self;
}

/// `a * b + c`, fused when the instruction is there.
#[inline(always)]
pub fn mul_add<A: Real, const FMA: bool>(a: A, b: A, c: A) -> A {
    if FMA {
        a.fused_mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Returns the larger of `a` and `b`, ignoring a NaN in `b` (compiles to one `max` instruction).
#[inline(always)]
pub fn max_lane<A: Real>(a: A, b: A) -> A {
    if b > a {
        b
    } else {
        a
    }
}

/// `if condition { a } else { b }` for values, written so that it becomes a blend.
#[inline(always)]
pub fn select<A: Real>(condition: bool, a: A, b: A) -> A {
    if condition {
        a
    } else {
        b
    }
}

/// `sigmoid(-x) = 1 / (1 + e^x)`, from `e^-|x|` so that nothing overflows.
#[inline(always)]
pub fn sigmoid_neg<A: Real, const FMA: bool>(x: A) -> A {
    let e = (-x.abs()).exp_lane::<FMA>();
    select(x < A::ZERO, A::ONE, e) * (A::ONE + e).recip_lane::<FMA>()
}

/// `sigmoid(x)` in f64, for the per-row constants `sigmoid(m)` and `sigmoid(-m)`.
///
/// Each is computed directly, never as `1 - sigmoid(m)`, which is 0 in f32 once `m` passes
/// about 17.
pub fn sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const NAN: Self = f64::NAN;
    const MIN_POSITIVE: Self = f64::MIN_POSITIVE;

    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }

    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }

    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }

    #[inline(always)]
    fn fused_mul_add(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }

    #[inline(always)]
    fn exp_lane<const FMA: bool>(self) -> Self {
        self.exp()
    }

    #[inline(always)]
    fn ln_1p_unit<const FMA: bool>(self) -> Self {
        self.ln_1p()
    }

    #[inline(always)]
    fn recip_lane<const FMA: bool>(self) -> Self {
        1.0 / self
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const NAN: Self = f32::NAN;
    const MIN_POSITIVE: Self = f32::MIN_POSITIVE;

    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value as f32
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }

    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }

    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }

    #[inline(always)]
    fn fused_mul_add(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }

    #[inline(always)]
    fn exp_lane<const FMA: bool>(self) -> Self {
        exp_f32::<FMA>(self)
    }

    #[inline(always)]
    fn ln_1p_unit<const FMA: bool>(self) -> Self {
        ln_1p_unit_f32::<FMA>(self)
    }

    #[inline(always)]
    fn recip_lane<const FMA: bool>(self) -> Self {
        recip_f32::<FMA>(self)
    }
}

/// `e^x` in f32 by range reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and a degree-7
/// polynomial for `e^r`.
#[inline(always)]
fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    // ln of the smallest normal f32: below it the result is flushed to exactly 0, which also
    // turns the `-inf` of a mask into 0.
    const LOWEST: f32 = -87.336_55;
    // Keeps n <= 127 so that 2^n is a normal f32; larger inputs saturate at e^88.37.
    const HIGHEST: f32 = 88.376_26;
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HIGH is exact for |n| < 256 (Cody and Waite).
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;

    // Comparisons written so that NaN fails them and passes through unchanged.
    let clamped = if x > HIGHEST { HIGHEST } else { x };
    let clamped = if clamped < LOWEST { LOWEST } else { clamped };

    let fma = mul_add::<f32, FMA>;
    let shifted = fma(clamped, LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = fma(n, -LN2_LOW, fma(n, -LN2_HIGH, clamped));

    let r2 = r * r;
    let p = 1.987_569_2e-4;
    let p = fma(p, r, 1.398_199_9e-3);
    let p = fma(p, r, 8.333_452e-3);
    let p = fma(p, r, 4.166_579_6e-2);
    let p = fma(p, r, 1.666_666_5e-1);
    let p = fma(p, r, 0.5); // Cephes lists 5.0000001201e-1, which rounds to 0.5 in f32
    let e_r = fma(p, r2, r) + 1.0;

    // 2^n from the integer in the low bits of `shifted`: (n + 127) << 23 is its bit pattern.
    let two_n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    if x < LOWEST {
        0.0
    } else {
        e_r * two_n
    }
}

/// `ln(1 + u)` for `u` in `[0, 1]`: `1 + u = 2^e (1 + f)` with `1 + f` in `[sqrt(1/2), sqrt(2)]`,
/// a polynomial for `ln(1 + f)`, and a correction for the rounding of `1 + u`, so tiny `u` keep
/// full relative precision.
#[inline(always)]
fn ln_1p_unit_f32<const FMA: bool>(u: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;

    let x = 1.0 + u;
    // What rounding `1 + u` lost; ln(x + c) is ln(x) + c / x to first order.
    let lost = u - (x - 1.0);
    let halve = x > std::f32::consts::SQRT_2;
    let f = if halve { x * 0.5 - 1.0 } else { x - 1.0 };
    let e = if halve { 1.0 } else { 0.0 };

    let fma = mul_add::<f32, FMA>;
    let f2 = f * f;
    let p = 7.037_683_6e-2;
    let p = fma(p, f, -1.151_461e-1);
    let p = fma(p, f, 1.167_699_9e-1);
    let p = fma(p, f, -1.242_014_1e-1);
    let p = fma(p, f, 1.424_932_3e-1);
    let p = fma(p, f, -1.666_805_8e-1);
    let p = fma(p, f, 2.000_071_4e-1);
    let p = fma(p, f, -2.499_999_4e-1);
    let p = fma(p, f, 0.333_333_3); // Cephes: 3.3333331174e-1
    let tail = fma(p * f, f2, fma(LN2_LOW, e, -0.5 * f2));
    let ln_x = fma(LN2_HIGH, e, f + tail);
    fma(lost, recip_f32::<FMA>(x), ln_x)
}

/// `1 / d` for a normal `d` with `|d| <= 2`: a first guess from the bit pattern (relative
/// error below 1/8) and three Newton steps, each squaring the error, to within about 1 ulp.
#[inline(always)]
fn recip_f32<const FMA: bool>(d: f32) -> f32 {
    // Subtracting the bits from this constant roughly negates the exponent and mirrors the
    // significand, which approximates 1/d.
    const GUESS: u32 = 0x7EF3_11C7;
    let fma = mul_add::<f32, FMA>;
    let mut r = f32::from_bits(GUESS.wrapping_sub(d.to_bits()));
    for _ in 0..3 {
        let error = fma(-d, r, 1.0);
        r = fma(r, error, r);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error in units of f32 epsilon.
    fn ulps(actual: f32, expected: f64) -> f64 {
        ((actual as f64 - expected) / expected).abs() / f32::EPSILON as f64
    }

    #[test]
    fn exp_f32_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            worst = worst.max(ulps(exp_f32::<false>(x), (x as f64).exp()));
            worst = worst.max(ulps(exp_f32::<true>(x), (x as f64).exp()));
            x += 0.001_37;
        }
        assert!(worst < 2.0, "worst exp error {worst} ulp");
    }

    #[test]
    fn exp_f32_special_values() {
        assert_eq!(exp_f32::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32::<false>(-100.0), 0.0);
        assert_eq!(exp_f32::<false>(0.0), 1.0);
        assert!(exp_f32::<false>(f32::NAN).is_nan());
        assert!(exp_f32::<false>(1e30).is_finite());
    }

    #[test]
    fn ln_1p_unit_within_two_ulp() {
        let mut worst = 0.0f64;
        for i in 1..=200_000 {
            let u = i as f32 / 200_000.0;
            worst = worst.max(ulps(ln_1p_unit_f32::<false>(u), (u as f64).ln_1p()));
            worst = worst.max(ulps(ln_1p_unit_f32::<true>(u), (u as f64).ln_1p()));
        }
        for k in 1..140 {
            let u = 2f32.powi(-k);
            worst = worst.max(ulps(ln_1p_unit_f32::<false>(u), (u as f64).ln_1p()));
            worst = worst.max(ulps(ln_1p_unit_f32::<true>(u), (u as f64).ln_1p()));
        }
        assert!(worst < 2.0, "worst ln_1p error {worst} ulp");
        assert_eq!(ln_1p_unit_f32::<false>(0.0), 0.0);
        assert!(ln_1p_unit_f32::<false>(f32::NAN).is_nan());
    }

    #[test]
    fn recip_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut d = f32::MIN_POSITIVE;
        while d <= 2.0 {
            worst = worst.max(ulps(recip_f32::<false>(d), 1.0 / d as f64));
            worst = worst.max(ulps(recip_f32::<true>(d), 1.0 / d as f64));
            d *= 1.000_37;
        }
        assert!(worst < 2.0, "worst reciprocal error {worst} ulp");
        assert!(recip_f32::<false>(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_neg_matches_f64() {
        for &x in &[-1e4f32, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4] {
            let expected = sigmoid_f64(-(x as f64));
            let actual = sigmoid_neg::<f32, false>(x) as f64;
            assert!(
                (actual - expected).abs() <= 2e-7 * expected.max(1e-38),
                "x {x}: {actual} vs {expected}"
            );
        }
        assert_eq!(sigmoid_neg::<f32, false>(f32::NEG_INFINITY), 1.0);
    }
}
