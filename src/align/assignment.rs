//! Exact dense linear assignment in f64: shortest augmenting paths with dual potentials, in the
//! manner of Jonker and Volgenant (1987) as Crouse (2016) formulates it for rectangular
//! matrices. O(rows^2 * cols) time, O(rows + cols) memory beside the matrix.
//!
//! Written here rather than taken from crates.io: the two candidates (`lapjv`, `lsap`) pull in
//! ndarray or derive_more for a few hundred lines of solver, and neither returns the dual
//! potentials, which certify optimality (the tests check them) and which a caller can reuse.
//!
//! Each row in turn is joined to the matching by a Dijkstra search over reduced costs
//! `c[i][j] - u[i] - v[j]` (all >= 0 by construction), then the potentials are raised so that
//! the new matching's pairs have reduced cost 0 again. On return the potentials are an optimal
//! dual solution: they prove the matching optimal (see [`Assignment`]).

use crate::error::{fail, Result};

/// Whether the assignment minimises the summed cost or maximises the summed weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    Minimize,
    Maximize,
}

/// An optimal assignment of a `rows x cols` matrix: `min(rows, cols)` pairs, every row (or every
/// column, whichever side is smaller) matched once.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// For each row, its column (`None` for rows left unmatched when `rows > cols`).
    pub col_for_row: Vec<Option<usize>>,
    /// For each column, its row (`None` for columns left unmatched when `cols > rows`).
    pub row_for_col: Vec<Option<usize>>,
    /// The summed matrix entries of the pairs (the optimum value), added in row order.
    pub total: f64,
    /// Dual potentials of the minimisation of `s * c` with `s = 1` for [`Objective::Minimize`]
    /// and `s = -1` for [`Objective::Maximize`]: `s * c[i][j] - u[i] - v[j] >= 0` for every
    /// pair, `= 0` for the matched pairs, and the potentials of the unmatched rows or columns
    /// are 0 while those of the larger side are <= 0. Together they certify that no other
    /// assignment is better (up to the rounding of the potentials).
    pub row_potentials: Vec<f64>,
    pub col_potentials: Vec<f64>,
}

impl Assignment {
    /// The matching as a permutation (square matrices): `perm[row] = col`.
    pub fn permutation(&self) -> Result<Vec<usize>> {
        if self.col_for_row.len() != self.row_for_col.len() {
            fail!(
                InvalidArgument,
                "a {} x {} assignment is not a permutation",
                self.col_for_row.len(),
                self.row_for_col.len()
            );
        }
        Ok(self.col_for_row.iter().map(|c| c.expect("square assignments match every row")).collect())
    }
}

/// Solves the assignment problem on the row-major `rows x cols` matrix `matrix`.
///
/// Errors: `matrix.len() != rows * cols` (InvalidArgument), a NaN or infinite entry (NonFinite).
/// A matrix with no rows or no columns gives the empty assignment.
pub fn solve(matrix: &[f64], rows: usize, cols: usize, objective: Objective) -> Result<Assignment> {
    if rows.checked_mul(cols) != Some(matrix.len()) {
        fail!(InvalidArgument, "the cost matrix holds {} values, not {rows} x {cols}", matrix.len());
    }
    if let Some(k) = matrix.iter().position(|v| !v.is_finite()) {
        fail!(
            NonFinite,
            "cost matrix entry ({}, {}) is {}; assignment needs finite values",
            k / cols,
            k % cols,
            matrix[k]
        );
    }
    let sign = match objective {
        Objective::Minimize => 1.0,
        Objective::Maximize => -1.0,
    };
    // The search runs over the longer side: transpose so that rows <= cols.
    let transposed = rows > cols;
    let (n, m) = if transposed { (cols, rows) } else { (rows, cols) };
    let mut cost = vec![0.0; matrix.len()];
    for i in 0..rows {
        for j in 0..cols {
            let at = if transposed { j * rows + i } else { i * cols + j };
            cost[at] = sign * matrix[i * cols + j];
        }
    }
    let solved = shortest_augmenting_paths(&cost, n, m)?;

    let (mut col_for_row, mut row_for_col) = (vec![None; rows], vec![None; cols]);
    for (i, &j) in solved.col_for_row.iter().enumerate() {
        let (r, c) = if transposed { (j, i) } else { (i, j) };
        col_for_row[r] = Some(c);
        row_for_col[c] = Some(r);
    }
    let total = col_for_row.iter().enumerate().filter_map(|(r, c)| c.map(|c| matrix[r * cols + c])).sum();
    let (row_potentials, col_potentials) = if transposed { (solved.v, solved.u) } else { (solved.u, solved.v) };
    Ok(Assignment { col_for_row, row_for_col, total, row_potentials, col_potentials })
}

struct Solved {
    col_for_row: Vec<usize>,
    u: Vec<f64>,
    v: Vec<f64>,
}

const NONE: usize = usize::MAX;

/// Minimum-cost matching of every row of the row-major `n x m` matrix `cost`, `n <= m`.
fn shortest_augmenting_paths(cost: &[f64], n: usize, m: usize) -> Result<Solved> {
    let (mut u, mut v) = (vec![0.0; n], vec![0.0; m]);
    let (mut col_for_row, mut row_for_col) = (vec![NONE; n], vec![NONE; m]);
    // Per search: the distance of each column from the new row, the row it was reached from,
    // the rows visited and the columns finalised (in order, and as flags for the scan).
    let mut distance = vec![f64::INFINITY; m];
    let mut reached_from = vec![NONE; m];
    let mut visited_rows = Vec::with_capacity(n);
    let mut finalised_cols = Vec::with_capacity(m);
    let mut finalised = vec![false; m];

    for start in 0..n {
        distance.fill(f64::INFINITY);
        for &j in &finalised_cols {
            finalised[j] = false;
        }
        visited_rows.clear();
        finalised_cols.clear();
        let mut row = start;
        let mut reached = 0.0; // distance of the last finalised column
        let sink = loop {
            visited_rows.push(row);
            let base = reached - u[row];
            // One contiguous pass over the columns, finalised ones skipped by a flag;
            // the equal-length slices let the compiler drop the bounds checks.
            let row_cost = &cost[row * m..(row + 1) * m];
            let (mut best, mut best_col) = (f64::INFINITY, NONE);
            let (v, distance, reached_from, done, row_for_col) =
                (&v[..m], &mut distance[..m], &mut reached_from[..m], &finalised[..m], &row_for_col[..m]);
            for j in 0..m {
                if done[j] {
                    continue;
                }
                let d = base + row_cost[j] - v[j];
                if d < distance[j] {
                    distance[j] = d;
                    reached_from[j] = row;
                }
                // Ties go to a free column: the search ends sooner.
                if distance[j] < best || (distance[j] == best && row_for_col[j] == NONE) {
                    best = distance[j];
                    best_col = j;
                }
            }
            if best_col == NONE || !best.is_finite() {
                // Finite costs always leave a path; only overflow to infinity can end here.
                fail!(NonFinite, "the assignment's dual potentials overflowed (cost entries too large)");
            }
            reached = best;
            finalised[best_col] = true;
            finalised_cols.push(best_col);
            if row_for_col[best_col] == NONE {
                break best_col;
            }
            row = row_for_col[best_col];
        };

        // Keep every reduced cost >= 0 and those of the matched pairs (and of the path) at 0.
        u[start] += reached;
        for &i in &visited_rows[1..] {
            u[i] += reached - distance[col_for_row[i]];
        }
        for &j in &finalised_cols {
            v[j] -= reached - distance[j];
        }
        // Flip the path's edges: each column on it takes the row it was reached from.
        let mut col = sink;
        loop {
            let i = reached_from[col];
            row_for_col[col] = i;
            let previous = std::mem::replace(&mut col_for_row[i], col);
            if i == start {
                break;
            }
            col = previous;
        }
    }
    Ok(Solved { col_for_row, u, v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_square_min_and_max() {
        let c = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let a = solve(&c, 3, 3, Objective::Minimize).unwrap();
        assert_eq!(a.permutation().unwrap(), vec![1, 0, 2]);
        assert_eq!(a.total, 5.0);
        let a = solve(&c, 3, 3, Objective::Maximize).unwrap();
        assert_eq!(a.total, 11.0); // 4 + 5 + 2
    }
}
