//! The study's two procedurally generated image tasks (see the module docs of `study`).

use super::Config;
use crate::data;
use crate::error::Result;
use crate::model::Dataset;

/// Image side.
pub const SIDE: usize = 12;
/// Classes of each task.
pub(super) const CLASSES: usize = 8;

/// A task's images.
#[derive(Debug, Clone)]
pub struct Task {
    pub train: Dataset,
    pub test: Dataset,
}

fn uniform(seed: u64, stream: u64, i: u64) -> f64 {
    crate::rng::block_words(seed, stream, i)[0] as f64 / 4294967296.0
}

/// Renders one image of strokes: each (orientation, length) pair is one stroke at a random place.
fn render(strokes: &[(f64, f64)], seed: u64, index: u64, out: &mut [f32]) {
    let mut noise = [0f64; SIDE * SIDE];
    crate::rng::normals_f64(seed, 1_000_000 + index, 0, &mut noise);
    for (p, z) in out.iter_mut().zip(&noise) {
        *p = (0.15 * z) as f32;
    }
    for (s, &(theta, len)) in strokes.iter().enumerate() {
        let r = |k: u64| uniform(seed, index, 4 * s as u64 + k);
        let (cx, cy) = (2.5 + 7.0 * r(0), 2.5 + 7.0 * r(1));
        let theta = theta + (r(2) - 0.5) * 0.2; // +-6 degrees of jitter
        let amp = 0.8 + 0.4 * r(3);
        let (dx, dy) = (theta.cos() * len / 2.0, theta.sin() * len / 2.0);
        let (ax, ay, bx, by) = (cx - dx, cy - dy, cx + dx, cy + dy);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let (vx, vy) = (bx - ax, by - ay);
                let t = (((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy)).clamp(0.0, 1.0);
                let (qx, qy) = (ax + t * vx - px, ay + t * vy - py);
                let d2 = qx * qx + qy * qy;
                out[y * SIDE + x] += (amp * (-d2 / (2.0 * 0.6 * 0.6)).exp()) as f32;
            }
        }
    }
}

/// The source task: class c = strokes at orientation c * pi / 8 (2 or 3 strokes of length 5).
/// The target task: class c = orientation (2k + 1) pi / 8 for k = c / 2, long (7) or short (3)
/// strokes for c even or odd (2 strokes).
fn make(target: bool, n: usize, seed: u64) -> Result<Dataset> {
    let mut x = vec![0f32; n * SIDE * SIDE];
    let mut y = Vec::with_capacity(n);
    let pi = std::f64::consts::PI;
    for i in 0..n {
        let c = (uniform(seed, 2_000_000, i as u64) * CLASSES as f64) as usize % CLASSES;
        let strokes: Vec<(f64, f64)> = if target {
            let theta = (2 * (c / 2) + 1) as f64 * pi / 8.0;
            let len = if c.is_multiple_of(2) { 7.0 } else { 3.0 };
            vec![(theta, len); 2]
        } else {
            let k = 2 + (uniform(seed, 2_000_001, i as u64) * 2.0) as usize;
            vec![(c as f64 * pi / 8.0, 5.0); k]
        };
        render(&strokes, seed, i as u64, &mut x[i * SIDE * SIDE..(i + 1) * SIDE * SIDE]);
        y.push(c as u32);
    }
    Dataset::new(x, y, SIDE * SIDE, CLASSES)
}

/// The source and target tasks of a configuration.
pub fn tasks(cfg: &Config) -> Result<(Task, Task)> {
    let source = Task { train: make(false, cfg.source_train, 11)?, test: make(false, 1000.min(cfg.target_test), 12)? };
    let target = Task { train: make(true, cfg.target_train, 21)?, test: make(true, cfg.target_test, 22)? };
    Ok((source, target))
}

/// A copy of `d` with its images cut into `b x b` blocks, permuted by `seed`.
pub(super) fn shuffled(d: &Dataset, b: usize, seed: u64) -> Result<Dataset> {
    let mut d = d.clone();
    data::block_shuffle(&mut d.x, d.n, 1, SIDE, SIDE, b, seed)?;
    Ok(d)
}
