//! Runtime choice of the widest instruction set the CPU has.
//!
//! The element-wise loops in [`super::kernels`] are plain Rust written so that LLVM
//! vectorizes them. Each is compiled three times on x86-64 (AVX-512, AVX2 with FMA, and the
//! baseline SSE2) by inlining it into a function with those target features, and
//! [`dispatch`] picks one at run time. Other architectures use their baseline (NEON on
//! aarch64).

/// A unit of vectorizable work. `run` must be `#[inline(always)]` so that it is compiled with
/// the target features of the function that calls it; `FMA` says whether those include fused
/// multiply-add.
pub(crate) trait Kernel {
    type Output;

    fn run<const FMA: bool>(self) -> Self::Output;
}

/// Whether the baseline instruction set has fused multiply-add (aarch64's NEON does).
const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

/// Runs `kernel` compiled for the widest instruction set this CPU supports.
#[inline(always)]
pub(crate) fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    match x86::detected() {
        // SAFETY: `detected` returned this level only after `is_x86_feature_detected!`
        // confirmed every feature that `run_avx512` enables.
        x86::Level::Avx512 => return unsafe { x86::run_avx512(kernel) },
        // SAFETY: as above, for the features of `run_avx2`.
        x86::Level::Avx2 => return unsafe { x86::run_avx2(kernel) },
        x86::Level::Baseline => {}
    }
    kernel.run::<BASELINE_FMA>()
}

/// The instruction set [`dispatch`] uses on this CPU, for reports.
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    return match x86::detected() {
        x86::Level::Avx512 => "avx512",
        x86::Level::Avx2 => "avx2",
        x86::Level::Baseline => "sse2",
    };
    #[cfg(not(target_arch = "x86_64"))]
    return std::env::consts::ARCH;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Kernel;
    use std::sync::OnceLock;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Level {
        Avx512,
        Avx2,
        Baseline,
    }

    /// Detects the level once; `SIGSOFTMAX_ISA=avx2|sse2` caps it, to compare paths.
    pub fn detected() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let cap = std::env::var("SIGSOFTMAX_ISA").unwrap_or_default();
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 =
                avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl");
            match cap.as_str() {
                "sse2" => Level::Baseline,
                "avx2" if avx2 => Level::Avx2,
                _ if avx512 && cap != "avx2" => Level::Avx512,
                _ if avx2 => Level::Avx2,
                _ => Level::Baseline,
            }
        })
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX-512VL, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
        kernel.run::<true>()
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
        kernel.run::<true>()
    }
}
