//! Seeded random inputs for the benchmark.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014) drives a Box-Muller transform. Each block of [`BLOCK`] elements gets its own
//! generator seeded from the block index, so the values do not depend on the thread count.

use rayon::prelude::*;
use sigsoftmax::Element;

/// Elements filled by one generator.
const BLOCK: usize = 1 << 14;

/// A SplitMix64 generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Draws a uniform value in (0, 1] from the top 53 bits, shifted up by one so 0 never occurs.
    fn next_open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Draws a uniform index in `0..bound`. The modulo bias is below 2^-40 for bounds under
    /// 2^24, which covers every vocabulary size.
    fn next_below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// Fills `values` with normal samples of mean 0 and standard deviation `std`, rounded to `T`.
pub fn fill_normal<T: Element>(values: &mut [T], std: f64, seed: u64) {
    values
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, chunk)| {
            let mut rng = SplitMix64(seed ^ (block as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            for pair in chunk.chunks_mut(2) {
                // Box-Muller: two uniforms give two independent standard normals.
                let radius = (-2.0 * rng.next_open_unit().ln()).sqrt() * std;
                let angle = std::f64::consts::TAU * rng.next_open_unit();
                pair[0] = T::from_f64(radius * angle.cos());
                if let Some(second) = pair.get_mut(1) {
                    *second = T::from_f64(radius * angle.sin());
                }
            }
        });
}

/// Fills `targets` with uniform class indices in `0..classes`.
pub fn fill_targets(targets: &mut [i64], classes: usize, seed: u64) {
    let mut rng = SplitMix64(seed);
    for target in targets {
        *target = rng.next_below(classes) as i64;
    }
}
