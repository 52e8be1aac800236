//! Singular values of a log-probability matrix, in f64, for its numerical rank.
//!
//! A `contexts x vocab` matrix is reduced by Householder QR of its transpose to a square
//! triangular factor with the same singular values, whose singular values then come from
//! one-sided (Hestenes) Jacobi rotations. Both steps are backward stable, so singular values
//! down to about `1e-15` of the largest are resolved, which a Gram-matrix eigenvalue method
//! (limited to about `1e-8`) would not.

use rayon::prelude::*;

/// Computes the singular values, largest first, of the matrix whose rows are `rows` (all the same length,
/// at least as long as there are rows).
pub fn singular_values(rows: Vec<Vec<f64>>) -> Vec<f64> {
    let triangle = householder_r(rows);
    jacobi_singular_values(triangle)
}

/// Computes the `n x n` factor `R` of `A^T = Q R`, where `A` has the `n` given rows of length
/// `m >= n`, and returns its columns. Each row of `A` is a column of `A^T`, stored contiguously.
fn householder_r(mut columns: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = columns.len();
    let m = columns.first().map_or(0, Vec::len);
    assert!(m >= n, "need at least as many columns ({m}) as rows ({n})");
    for k in 0..n {
        // The reflector maps column k's entries k.. onto a multiple of the unit vector e_k.
        let (done, rest) = columns.split_at_mut(k + 1);
        let pivot = &mut done[k];
        let norm = pivot[k..].iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        // Picking the sign of alpha opposite to the pivot avoids cancellation in v_k.
        let alpha = if pivot[k] > 0.0 { -norm } else { norm };
        let mut reflector = pivot[k..].to_vec();
        reflector[0] -= alpha;
        let reflector_norm_sq = reflector.iter().map(|x| x * x).sum::<f64>();
        pivot[k] = alpha;
        pivot[k + 1..].iter_mut().for_each(|x| *x = 0.0);
        if reflector_norm_sq == 0.0 {
            continue;
        }
        rest.par_iter_mut().for_each(|column| {
            let tail = &mut column[k..];
            let dot: f64 = tail.iter().zip(&reflector).map(|(a, v)| a * v).sum();
            let scale = 2.0 * dot / reflector_norm_sq;
            tail.iter_mut()
                .zip(&reflector)
                .for_each(|(a, v)| *a -= scale * v);
        });
    }
    columns
        .into_iter()
        .map(|column| column[..n].to_vec())
        .collect()
}

/// Computes the singular values of the square matrix with the given columns by one-sided
/// Jacobi. It rotates pairs of columns until every pair is orthogonal to working precision, and
/// then the column norms are the singular values.
fn jacobi_singular_values(mut columns: Vec<Vec<f64>>) -> Vec<f64> {
    const MAX_SWEEPS: usize = 60;
    let n = columns.len();
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for i in 0..n {
            for j in i + 1..n {
                let (left, right) = columns.split_at_mut(j);
                let (a, b) = (&mut left[i], &mut right[0]);
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for (x, y) in a.iter().zip(b.iter()) {
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                // The rotation that zeroes the off-diagonal entry of the 2x2 Gram matrix.
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                    let (xv, yv) = (*x, *y);
                    *x = c * xv - s * yv;
                    *y = s * xv + c * yv;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut values: Vec<f64> = columns
        .iter()
        .map(|column| column.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    values.sort_by(|a, b| b.total_cmp(a));
    values
}

/// Counts the singular values above `relative * largest`.
pub fn rank_above(values: &[f64], relative: f64) -> usize {
    let largest = values.first().copied().unwrap_or(0.0);
    values.iter().filter(|&&v| v > relative * largest).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_of_outer_products() {
        // A 6 x 9 matrix of rank 2: u1 v1^T + u2 v2^T.
        let u1 = [1.0, 2.0, -1.0, 0.5, 3.0, -2.0];
        let u2 = [0.0, 1.0, 1.0, -1.0, 2.0, 0.5];
        let rows: Vec<Vec<f64>> = (0..6)
            .map(|r| {
                (0..9)
                    .map(|c| u1[r] * (c as f64 + 1.0) + u2[r] * ((c * c) as f64 - 3.0))
                    .collect()
            })
            .collect();
        let values = singular_values(rows);
        assert_eq!(rank_above(&values, 1e-12), 2, "{values:?}");
    }
}
