//! Data tools of the study: block shuffle (docs/analyses.md, section 8) and the agreement of two
//! models' predictions (section 9).

use crate::error::{fail, try_filled, try_with_capacity, Result};

/// The permutation of blocks that [`block_shuffle`] applies for `seed`: entry `j` is the source
/// block of destination block `j`, blocks numbered row by row.
pub fn block_permutation(h: usize, w: usize, b: usize, seed: u64) -> Result<Vec<usize>> {
    check_block(h, w, b)?;
    let blocks = (h / b).checked_mul(w / b).ok_or_else(|| {
        crate::Error::InvalidArgument(format!("{h} x {w} images in blocks of {b} have too many blocks to count"))
    })?;
    let mut perm = try_with_capacity(blocks, &format!("the permutation of {blocks} blocks"))?;
    perm.extend(0..blocks);
    crate::model::shuffle(&mut perm, seed, 0x626c6f636b);
    Ok(perm)
}

fn check_block(h: usize, w: usize, b: usize) -> Result<()> {
    if b == 0 || h == 0 || w == 0 || !h.is_multiple_of(b) || !w.is_multiple_of(b) {
        fail!(InvalidArgument, "block size {b} must divide the image height {h} and width {w}");
    }
    Ok(())
}

/// Cuts each of the `n` images (N x C x H x W, row major) into (H/b)(W/b) blocks of b x b (all
/// channels) and permutes the blocks with one permutation drawn from `seed`, the same for every
/// image (train and test alike). b = H = W is the identity.
pub fn block_shuffle(images: &mut [f32], n: usize, c: usize, h: usize, w: usize, b: usize, seed: u64) -> Result<()> {
    check_block(h, w, b)?;
    if c == 0 {
        fail!(InvalidArgument, "images of 0 channels have no blocks to shuffle");
    }
    let size = c.checked_mul(h).and_then(|v| v.checked_mul(w));
    let Some((size, total)) = size.and_then(|size| Some((size, n.checked_mul(size)?))) else {
        fail!(InvalidArgument, "{n} images of {c} x {h} x {w} values overflow the address space")
    };
    if images.len() != total {
        fail!(ShapeMismatch, "{} values for {n} images of {c} x {h} x {w}", images.len());
    }
    if n == 0 {
        // Nothing to move: the permutation (one entry per block) is not drawn at all.
        return Ok(());
    }
    let perm = block_permutation(h, w, b, seed)?;
    let bw = w / b;
    let mut src = try_filled(size, 0f32, "a copy of one image")?;
    for img in images.chunks_mut(size) {
        src.copy_from_slice(img);
        for (dst_block, &src_block) in perm.iter().enumerate() {
            let (dy, dx) = (dst_block / bw * b, dst_block % bw * b);
            let (sy, sx) = (src_block / bw * b, src_block % bw * b);
            for ch in 0..c {
                for r in 0..b {
                    let d = ch * h * w + (dy + r) * w + dx;
                    let s = ch * h * w + (sy + r) * w + sx;
                    img[d..d + b].copy_from_slice(&src[s..s + b]);
                }
            }
        }
    }
    Ok(())
}

/// Where two models' predictions agree and disagree with the truth.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Agreement {
    pub both_right: Vec<usize>,
    pub only_a: Vec<usize>,
    pub only_b: Vec<usize>,
    /// Both wrong with the same label.
    pub both_wrong_same: Vec<usize>,
    /// Both wrong with different labels.
    pub both_wrong_different: Vec<usize>,
}

impl Agreement {
    /// Counts in the order both right, only A, only B, both wrong same, both wrong different.
    pub fn counts(&self) -> [usize; 5] {
        [
            self.both_right.len(),
            self.only_a.len(),
            self.only_b.len(),
            self.both_wrong_same.len(),
            self.both_wrong_different.len(),
        ]
    }
}

/// Sorts every sample by who predicted it right.
pub fn prediction_agreement(a: &[u32], b: &[u32], truth: &[u32]) -> Result<Agreement> {
    if a.len() != truth.len() || b.len() != truth.len() {
        fail!(
            ShapeMismatch,
            "predictions of A ({}), of B ({}) and the labels ({}) differ in length",
            a.len(),
            b.len(),
            truth.len()
        );
    }
    let mut g = Agreement::default();
    for i in 0..truth.len() {
        let (ra, rb) = (a[i] == truth[i], b[i] == truth[i]);
        match (ra, rb) {
            (true, true) => g.both_right.push(i),
            (true, false) => g.only_a.push(i),
            (false, true) => g.only_b.push(i),
            (false, false) if a[i] == b[i] => g.both_wrong_same.push(i),
            _ => g.both_wrong_different.push(i),
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_shuffle_moves_whole_blocks_with_one_permutation() {
        let (n, c, h, w) = (3, 2, 6, 6);
        let orig: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
        let mut x = orig.clone();
        block_shuffle(&mut x, n, c, h, w, 6, 1).unwrap();
        assert_eq!(x, orig, "b = H is the identity");
        block_shuffle(&mut x, n, c, h, w, 2, 7).unwrap();
        assert_ne!(x, orig);
        let perm = block_permutation(h, w, 2, 7).unwrap();
        // Reference: pixel by pixel.
        for img in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        let dst = (y / 2) * 3 + xx / 2;
                        let s = perm[dst];
                        let (sy, sx) = (s / 3 * 2 + y % 2, s % 3 * 2 + xx % 2);
                        let base = img * c * h * w + ch * h * w;
                        assert_eq!(x[base + y * w + xx], orig[base + sy * w + sx]);
                    }
                }
            }
        }
        let mut sorted = x.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, orig);
        assert!(block_shuffle(&mut x, n, c, h, w, 4, 1).is_err());
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let e = block_shuffle(&mut [], 0, usize::MAX, 2, 2, 1, 0).unwrap_err();
        assert_eq!(e.status(), crate::Status::InvalidArgument);
        assert!(block_shuffle(&mut [], usize::MAX, 1, 2, 2, 1, 0).is_err());
        assert_eq!(block_shuffle(&mut [], 0, 0, 2, 2, 1, 0).unwrap_err().status(), crate::Status::InvalidArgument);
    }

    #[test]
    fn agreement_sorts_every_sample() {
        let truth = [0, 1, 2, 3, 4, 5];
        let a = [0, 1, 9, 9, 7, 5];
        let b = [0, 8, 2, 9, 6, 5];
        let g = prediction_agreement(&a, &b, &truth).unwrap();
        assert_eq!(g.both_right, [0, 5]);
        assert_eq!(g.only_a, [1]);
        assert_eq!(g.only_b, [2]);
        assert_eq!(g.both_wrong_same, [3]);
        assert_eq!(g.both_wrong_different, [4]);
        assert!(prediction_agreement(&a, &b[..5], &truth).is_err());
    }
}
