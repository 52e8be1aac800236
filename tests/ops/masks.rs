//! `-inf` masks and undefined rows. A masked entry gets probability and gradient exactly 0 and
//! log probability `-inf`, wherever it falls. A row with NaN, `+inf` or no finite entry is NaN
//! everywhere, on every op, and leaves the other rows untouched.

use sigsoftmax::{bf16, f16, Shape};

use crate::common::{check_all_ops_everywhere, devices, with_threads, SplitMix64, ACTIVATIONS};

const COLS: usize = 128;

/// Three rows of random logits on [-4, 4).
fn random_rows(cols: usize, seed: u64) -> (Shape, Vec<f64>) {
    let mut rng = SplitMix64::new(seed);
    let z = (0..3 * cols).map(|_| 4.0 * rng.next_signed()).collect();
    (Shape::new(3, cols).expect("valid shape"), z)
}

/// Applies `edit` to the middle row and checks every op in every storage type.
fn check_middle_row(cols: usize, edit: impl Fn(&mut [f64])) {
    let (shape, mut z) = random_rows(cols, cols as u64);
    edit(&mut z[cols..2 * cols]);
    check_all_ops_everywhere::<f32>(shape, &z, 1);
    check_all_ops_everywhere::<f64>(shape, &z, 2);
    check_all_ops_everywhere::<f16>(shape, &z, 3);
    check_all_ops_everywhere::<bf16>(shape, &z, 4);
}

#[test]
fn mask_first_element() {
    check_middle_row(COLS, |row| row[0] = f64::NEG_INFINITY);
}

#[test]
fn mask_last_element() {
    check_middle_row(COLS, |row| row[COLS - 1] = f64::NEG_INFINITY);
}

// An aligned run of 16, 32 or 64 masked entries fills whole vector registers (8 or 16 f32
// lanes), so a vector loop loads registers that hold only masks.
#[test]
fn mask_aligned_16_chunk() {
    check_middle_row(COLS, |row| row[16..32].fill(f64::NEG_INFINITY));
}

#[test]
fn mask_aligned_32_chunk() {
    check_middle_row(COLS, |row| row[32..64].fill(f64::NEG_INFINITY));
}

#[test]
fn mask_aligned_64_chunk() {
    check_middle_row(COLS, |row| row[64..128].fill(f64::NEG_INFINITY));
}

// The row max is masked too, so the max pass must skip masks.
#[test]
fn mask_all_but_one() {
    check_middle_row(COLS, |row| {
        row.fill(f64::NEG_INFINITY);
        row[77] = -2.5;
    });
}

// A whole CPU chunk masked at the start of a row long enough to be split, so one chunk's
// partial max and sum are empty.
#[test]
fn mask_whole_engine_chunk() {
    let chunk = sigsoftmax::cpu::CHUNK;
    let cols = 2 * chunk + 3;
    check_middle_row(cols, |row| row[..chunk].fill(f64::NEG_INFINITY));
}

#[test]
fn nan_row_gives_nan_row() {
    check_middle_row(COLS, |row| row[40] = f64::NAN);
}

#[test]
fn pos_inf_row_gives_nan_row() {
    check_middle_row(COLS, |row| row[40] = f64::INFINITY);
}

#[test]
fn all_masked_row_gives_nan_row() {
    check_middle_row(COLS, |row| row.fill(f64::NEG_INFINITY));
}

// NaN alongside masks: the whole row is NaN, masked entries included.
#[test]
fn nan_with_masks_gives_nan_row() {
    check_middle_row(COLS, |row| {
        row[3] = f64::NEG_INFINITY;
        row[90] = f64::NAN;
    });
}

// NaN or +inf in the last chunk of a row long enough to be split across threads must reach
// the first chunk's outputs.
#[test]
fn nan_in_split_row() {
    let chunk = sigsoftmax::cpu::CHUNK;
    let cols = 3 * chunk + 1;
    let (shape, mut z) = random_rows(cols, 5);
    let mut one_row = z[..cols].to_vec();
    one_row[cols - 1] = f64::NAN;
    let single = Shape::new(1, cols).expect("valid shape");
    z[2 * cols - 2] = f64::INFINITY;
    for threads in [1, 2] {
        with_threads(threads, || {
            check_all_ops_everywhere::<f32>(single, &one_row, 1);
            check_all_ops_everywhere::<bf16>(single, &one_row, 2);
            check_all_ops_everywhere::<f32>(shape, &z, 3);
        });
    }
}

// A masked l_j is the constant -inf, so its upstream dl_j reaches no logit: the gradient must
// not change when only the masked entries of dl change. Summing dl over every entry instead
// shifts each unmasked dz_i by g'(z_i) y_i dl_j.
#[test]
fn log_backward_ignores_masked_upstream() {
    let shape = Shape::new(1, 4).expect("valid shape");
    let z = [1.0f32, f32::NEG_INFINITY, 2.0, -0.5];
    let dl_zero = [0.3f32, 0.0, -0.2, 0.1];
    let dl_other = [0.3f32, 5.0, -0.2, 0.1];
    for device in devices() {
        for activation in ACTIVATIONS {
            let mut l = [0.0f32; 4];
            device
                .log_forward(activation, shape, &z, &mut l)
                .expect("log_forward failed");
            let mut dz_zero = [0.0f32; 4];
            let mut dz_other = [0.0f32; 4];
            device
                .log_backward(activation, shape, &z, &l, &dl_zero, &mut dz_zero)
                .expect("log_backward failed");
            device
                .log_backward(activation, shape, &z, &l, &dl_other, &mut dz_other)
                .expect("log_backward failed");
            for i in 0..4 {
                assert_eq!(
                    dz_other[i],
                    dz_zero[i],
                    "{} on {}: dz[{i}] is {} with dl[1] = 5 on the masked entry, {} with dl[1] = 0",
                    activation.name(),
                    device.name(),
                    dz_other[i],
                    dz_zero[i]
                );
            }
        }
    }
}
