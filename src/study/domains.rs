//! The image domains the study's CNN runs on (docs/study-domains.md): a source task and four
//! target domains after the paper's (DomainNet real, clipart, quickdraw, and CheXpert), generated
//! procedurally and deterministically from a seed.
//!
//! Every image is 3 x 24 x 24 ([`IMAGE`]), a row of a [`Dataset`] in NCHW order. Images are drawn
//! on an RGB canvas in [0, 1] and stored as `(v - 0.5) / 0.25`, one fixed map for every domain
//! (as one normalisation constant serves a pre-trained network's every target), so values lie in
//! [-2, 2] and each domain keeps the low-level statistics (colour, contrast, texture) that tell it
//! apart.
//!
//! # The primitives and the classes
//!
//! Eleven local primitives, each a few pixels across: four oriented strokes (0, 45, 90, 135
//! degrees), a corner (L), a T-junction, a cross, a ring, and three small textures (a patch of
//! stripes, a checker patch, a grid of dots). An image of the source or of a near domain shows two
//! primitives at random places with random rotation jitter and scale, and its class is which two:
//!
//! - **source**: 20 classes, 10 pairs of primitives, each pair in a warm (red to yellow) or a cool
//!   (cyan to blue) colour; so the source teaches shapes, textures and colour.
//! - **near domains** (real, clipart, quickdraw): 10 classes, 10 other pairs of the same
//!   primitives (no pair is a source class), the same classes in the three domains; colour is
//!   random and carries no label. A network that learned the primitives on the source can reuse
//!   them; only the head has to be new.
//! - **far**: 5 classes of "findings" in a chest-film-like image, unrelated to the primitives.
//!
//! # Splits
//!
//! Each (domain, split) pair draws from its own Philox streams, so train, validation and test
//! never share an image; labels are balanced (counts differ by at most one) in a seeded order.

use crate::error::{fail, Result};
use crate::model::{permutation, Dataset};
use crate::rng::{angle_uniform, block_words, radius_uniform};
use std::f64::consts::{PI, TAU};

/// Channels, height and width of every image.
pub const IMAGE: [usize; 3] = [3, 24, 24];
const SIDE: usize = IMAGE[1];
const PIXELS: usize = SIDE * SIDE;

/// Which images: the source task or one of the four target domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainKind {
    /// Pre-training task (ImageNet's role): 20 classes, textured coloured scenes as in `Real`.
    Source,
    /// DomainNet "real": the near classes on natural-looking textured, coloured backgrounds with
    /// clutter, shaded and noisy primitives. Closest to the source in both features and
    /// low-level statistics.
    Real,
    /// DomainNet "clipart": the near classes as flat-coloured, crisp, bold shapes on a plain
    /// background; same features as `Real`, different low-level statistics (no texture, no noise).
    Clipart,
    /// DomainNet "quickdraw": the near classes as sparse binary line drawings, black on white; no
    /// colour, no texture, thin lines. The features survive, most low-level statistics do not.
    Quickdraw,
    /// CheXpert's role: grayscale replicated to three channels, low contrast, smooth blob-like
    /// anatomy; 5 classes of findings unrelated to the primitives. Little feature reuse is
    /// possible, so what transfer still gives comes from low-level statistics or optimisation.
    Far,
}

impl DomainKind {
    /// The four target domains, nearest first. (A function rather than an associated constant:
    /// the C header's generator would export the constant and an opaque type for this Rust-only
    /// enum.)
    pub fn targets() -> [DomainKind; 4] {
        [DomainKind::Real, DomainKind::Clipart, DomainKind::Quickdraw, DomainKind::Far]
    }

    /// The domain's name in reports: "source", "real", "clipart", "quickdraw", "far".
    pub fn name(self) -> &'static str {
        match self {
            DomainKind::Source => "source",
            DomainKind::Real => "real",
            DomainKind::Clipart => "clipart",
            DomainKind::Quickdraw => "quickdraw",
            DomainKind::Far => "far",
        }
    }

    /// Classes of the domain's task.
    pub fn classes(self) -> usize {
        match self {
            DomainKind::Source => 2 * SOURCE_PAIRS.len(),
            DomainKind::Real | DomainKind::Clipart | DomainKind::Quickdraw => NEAR_PAIRS.len(),
            DomainKind::Far => FAR_CLASSES,
        }
    }

    fn id(self) -> u64 {
        self as u64 + 1
    }
}

/// Which part of a domain: the splits are disjoint (separate random streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// `n` images of `kind`'s split `split` under `seed`, classes balanced, values roughly in [-2, 2].
pub fn domain(kind: DomainKind, split: Split, n: usize, seed: u64) -> Result<Dataset> {
    if n == 0 || n >= 1 << STREAM_SHIFT {
        fail!(InvalidArgument, "domain {}: the number of images must be in 1..2^40, got {n}", kind.name());
    }
    let classes = kind.classes();
    let base = kind.id() << 48 | (split as u64 + 1) << 44;
    // Label i is order[i] mod classes: every class n / classes or n / classes + 1 times.
    let order = permutation(n, seed, base | LABEL_STREAM);
    let dim = PIXELS * 3;
    let mut x = vec![0f32; n * dim];
    let mut y = Vec::with_capacity(n);
    for (i, image) in x.chunks_mut(dim).enumerate() {
        let class = order[i] % classes;
        let mut draws = Draws::new(seed, base | i as u64);
        let canvas = match kind {
            DomainKind::Far => far_image(class, &mut draws),
            _ => near_image(kind, class, &mut draws),
        };
        for (v, c) in image.iter_mut().zip(canvas.iter()) {
            *v = ((c.clamp(0.0, 1.0) - 0.5) / 0.25) as f32;
        }
        y.push(class as u32);
    }
    Dataset::new(x, y, dim, classes)
}

/// Streams: domain in bits 48.., split in bits 44..48, the image's index in the low 40 bits; the
/// label order has bit 43, which no image index reaches.
const STREAM_SHIFT: u32 = 40;
const LABEL_STREAM: u64 = 1 << 43;

/// A binary PPM (P6) contact sheet of the first `rows * columns` images of `data` (3 x 24 x 24
/// rows as [`domain`] makes them), two grey pixels between images: a way to look at a domain
/// with any image viewer.
pub fn contact_sheet(data: &Dataset, columns: usize, rows: usize) -> Result<Vec<u8>> {
    if data.dim != IMAGE.iter().product::<usize>() {
        fail!(ShapeMismatch, "contact sheet: rows of {} values, expected 3 x 24 x 24", data.dim);
    }
    if columns == 0 || rows == 0 || columns * rows > data.n {
        fail!(InvalidArgument, "contact sheet: {columns} x {rows} images asked of a set of {}", data.n);
    }
    const GAP: usize = 2;
    let (width, height) = (columns * (SIDE + GAP) + GAP, rows * (SIDE + GAP) + GAP);
    let mut out = format!("P6\n{width} {height}\n255\n").into_bytes();
    let header = out.len();
    out.resize(header + width * height * 3, 128);
    for k in 0..columns * rows {
        let (top, left) = (GAP + (k / columns) * (SIDE + GAP), GAP + (k % columns) * (SIDE + GAP));
        let image = &data.x[k * data.dim..(k + 1) * data.dim];
        for (p, c) in (0..PIXELS).flat_map(|p| (0..3).map(move |c| (p, c))) {
            let byte = ((image[c * PIXELS + p] * 0.25 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
            out[header + ((top + p / SIDE) * width + left + p % SIDE) * 3 + c] = byte;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Random draws

/// Uniforms and normals from one Philox stream, word after word.
struct Draws {
    seed: u64,
    stream: u64,
    block: u64,
    words: [u32; 4],
    used: usize,
}

impl Draws {
    fn new(seed: u64, stream: u64) -> Draws {
        Draws { seed, stream, block: 0, words: [0; 4], used: 4 }
    }
    fn word(&mut self) -> u32 {
        if self.used == 4 {
            self.words = block_words(self.seed, self.stream, self.block);
            self.block += 1;
            self.used = 0;
        }
        self.used += 1;
        self.words[self.used - 1]
    }
    /// Uniform in [a, b).
    fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * angle_uniform(self.word())
    }
    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.uniform(0.0, n as f64) as usize).min(n - 1)
    }
    /// A standard normal (Box-Muller on two words).
    fn normal(&mut self) -> f64 {
        let (u, v) = (radius_uniform(self.word()), angle_uniform(self.word()));
        (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
    }
}

// ---------------------------------------------------------------------------------------------
// Canvas

/// RGB planes in [0, 1] (clamped when stored), channel by channel.
type Canvas = Vec<f64>;

fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let f = h - h.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h as usize {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Blends `colour` over the canvas with per-pixel opacity `alpha` (and a per-pixel brightness
/// factor `shade`).
fn paint(canvas: &mut Canvas, alpha: &[f64], colour: [f64; 3], shade: &dyn Fn(usize) -> f64) {
    for (p, &a) in alpha.iter().enumerate().filter(|(_, &a)| a > 0.0) {
        for (c, &col) in colour.iter().enumerate() {
            let v = &mut canvas[c * PIXELS + p];
            *v = (1.0 - a) * *v + a * col * shade(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Primitives and the near domains

/// Primitives by index: 0 to 3 strokes at 0, 45, 90 and 135 degrees, 4 corner, 5 T-junction,
/// 6 cross, 7 ring, 8 stripes, 9 checker, 10 dots.
///
/// The source's classes: class `2k` is pair k in warm colours, `2k + 1` the same pair in cool.
/// Every primitive occurs in some pair.
const SOURCE_PAIRS: [(usize, usize); 10] =
    [(0, 7), (1, 9), (2, 4), (3, 8), (4, 10), (5, 7), (6, 9), (0, 8), (2, 10), (3, 5)];
/// The near domains' classes: pairs that are no source class, every primitive in some pair.
const NEAR_PAIRS: [(usize, usize); 10] =
    [(0, 5), (1, 7), (2, 8), (3, 9), (4, 6), (5, 10), (6, 7), (1, 10), (8, 9), (3, 4)];

/// How a near-domain image is drawn.
struct Style {
    /// Stroke width range (pixels).
    width: (f64, f64),
    /// Coverage thresholded to 0/1 (crisp flat shapes) rather than anti-aliased and soft.
    crisp: bool,
    /// Textures drawn as lines (the checker as a hash) for the sketch domain.
    sketch: bool,
}

/// Coverage in [0, 1] of primitive `kind` centred at (cx, cy), rotated by `angle`, scaled by
/// `scale`, with stroke width `width`.
fn coverage(kind: usize, cx: f64, cy: f64, angle: f64, scale: f64, width: f64, style: &Style) -> Vec<f64> {
    let (sin, cos) = angle.sin_cos();
    // Coverage of a line at distance `d` (in the primitive's frame), anti-aliased over a pixel.
    let line = |d: f64| (width / 2.0 + 0.5 - d * scale).clamp(0.0, 1.0);
    // Distance to the nearest multiple of `period`, at most `reach` periods from the centre.
    let lattice = |u: f64, period: f64, reach: f64| (u - (u / period).round().clamp(-reach, reach) * period).abs();
    let segments: &[(f64, f64, f64, f64)] = match kind {
        0..=3 => &[(-3.5, 0.0, 3.5, 0.0)],
        4 => &[(-2.0, -2.0, 2.5, -2.0), (-2.0, -2.0, -2.0, 2.5)],
        5 => &[(-3.5, -1.5, 3.5, -1.5), (0.0, -1.5, 0.0, 3.0)],
        6 => &[(-3.0, -3.0, 3.0, 3.0), (-3.0, 3.0, 3.0, -3.0)],
        _ => &[],
    };
    let to_segment = |(ax, ay, bx, by): (f64, f64, f64, f64), x: f64, y: f64| {
        let (vx, vy) = (bx - ax, by - ay);
        let t = (((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy)).clamp(0.0, 1.0);
        (ax + t * vx - x).hypot(ay + t * vy - y)
    };
    (0..PIXELS)
        .map(|p| {
            // The pixel centre in the primitive's frame (rotated back and unscaled).
            let (dx, dy) = ((p % SIDE) as f64 + 0.5 - cx, (p / SIDE) as f64 + 0.5 - cy);
            let (x, y) = ((cos * dx + sin * dy) / scale, (-sin * dx + cos * dy) / scale);
            match kind {
                0..=6 => line(segments.iter().map(|&s| to_segment(s, x, y)).fold(f64::MAX, f64::min)),
                7 => line(((x * x + y * y).sqrt() - 3.0).abs()),
                8 => {
                    // Stripes of period 2.5 in a disc of radius 4.
                    let disc = (4.5 - (x * x + y * y).sqrt()).clamp(0.0, 1.0);
                    let stripes =
                        if style.sketch { line(lattice(y, 2.5, 2.0)) } else { 0.5 + 0.5 * (TAU * y / 2.5).cos() };
                    disc * stripes
                }
                9 => {
                    // A 7 x 7 checker of 1.75-pixel cells; drawn as its grid lines in a sketch.
                    let inside = (3.5 - x.abs()).clamp(0.0, 1.0) * (3.5 - y.abs()).clamp(0.0, 1.0);
                    let cells = if style.sketch {
                        line(lattice(x, 1.75, 2.0).min(lattice(y, 1.75, 2.0)))
                    } else {
                        let parity = ((x / 1.75).floor() + (y / 1.75).floor()) as i64;
                        (parity.rem_euclid(2) == 0) as u8 as f64
                    };
                    inside * cells
                }
                _ => {
                    // A 3 x 3 grid of dots of radius 0.9, spacing 2.5.
                    let d = lattice(x, 2.5, 1.0).hypot(lattice(y, 2.5, 1.0));
                    (0.9 * scale + 0.5 - d * scale).clamp(0.0, 1.0)
                }
            }
        })
        .collect()
}

/// A primitive's rotation, always with +-10 degrees of jitter: a stroke keeps its orientation
/// (which is what tells the strokes apart), corners and junctions turn by multiples of 90 degrees,
/// stripes by multiples of 45; the cross, ring, checker and dots only jitter.
fn orientation(kind: usize, draws: &mut Draws) -> f64 {
    let jitter = draws.uniform(-PI / 18.0, PI / 18.0);
    match kind {
        0..=3 => kind as f64 * PI / 4.0 + jitter,
        4 | 5 => draws.below(4) as f64 * PI / 2.0 + jitter,
        8 => draws.below(4) as f64 * PI / 4.0 + jitter,
        _ => jitter,
    }
}

/// Two centres 8 pixels apart or more (within 32 tries), each 5 pixels or more from the border.
fn places(draws: &mut Draws) -> [(f64, f64); 2] {
    let first = (draws.uniform(5.0, 19.0), draws.uniform(5.0, 19.0));
    let mut second = first;
    for _ in 0..32 {
        second = (draws.uniform(5.0, 19.0), draws.uniform(5.0, 19.0));
        if (second.0 - first.0).hypot(second.1 - first.1) >= 8.0 {
            break;
        }
    }
    [first, second]
}

/// A smooth random field on the canvas: a sum of three plane waves of low frequency.
fn smooth_field(draws: &mut Draws) -> Vec<f64> {
    let waves: Vec<(f64, f64, f64)> =
        (0..3).map(|_| (draws.uniform(0.0, TAU), draws.uniform(0.15, 0.6), draws.uniform(0.0, TAU))).collect();
    (0..PIXELS)
        .map(|p| {
            let (x, y) = ((p % SIDE) as f64, (p / SIDE) as f64);
            waves.iter().map(|&(dir, k, ph)| (k * (x * dir.cos() + y * dir.sin()) + ph).sin()).sum::<f64>() / 3.0
        })
        .collect()
}

fn near_image(kind: DomainKind, class: usize, draws: &mut Draws) -> Canvas {
    let (pair, hues) = match kind {
        DomainKind::Source if class.is_multiple_of(2) => (SOURCE_PAIRS[class / 2], (-0.08, 0.17)),
        DomainKind::Source => (SOURCE_PAIRS[class / 2], (0.45, 0.7)),
        _ => (NEAR_PAIRS[class], (0.0, 1.0)),
    };
    let style = match kind {
        DomainKind::Source | DomainKind::Real => Style { width: (1.1, 1.7), crisp: false, sketch: false },
        DomainKind::Clipart => Style { width: (1.8, 2.4), crisp: true, sketch: false },
        _ => Style { width: (0.9, 1.1), crisp: true, sketch: true },
    };
    let mut canvas = vec![0f64; 3 * PIXELS];
    // The background, and the brightness of the ink that stands out against it.
    let ink_value = match kind {
        DomainKind::Source | DomainKind::Real => {
            let base = hsv(draws.uniform(0.0, 1.0), draws.uniform(0.1, 0.5), draws.uniform(0.25, 0.85));
            let field = smooth_field(draws);
            let tint = [draws.uniform(0.5, 1.0), draws.uniform(0.5, 1.0), draws.uniform(0.5, 1.0)];
            for c in 0..3 {
                for p in 0..PIXELS {
                    canvas[c * PIXELS + p] = base[c] + 0.15 * tint[c] * field[p] + 0.05 * draws.normal();
                }
            }
            // Clutter: soft blobs of random colour, none of them a primitive.
            for _ in 0..2 + draws.below(4) {
                let (bx, by, r) = (draws.uniform(0.0, 24.0), draws.uniform(0.0, 24.0), draws.uniform(1.0, 2.5));
                let colour = hsv(draws.uniform(0.0, 1.0), draws.uniform(0.2, 0.8), draws.uniform(0.2, 0.9));
                let alpha: Vec<f64> = (0..PIXELS)
                    .map(|p| {
                        let d2 = ((p % SIDE) as f64 + 0.5 - bx).powi(2) + ((p / SIDE) as f64 + 0.5 - by).powi(2);
                        0.6 * (-d2 / (2.0 * r * r)).exp()
                    })
                    .collect();
                paint(&mut canvas, &alpha, colour, &|_| 1.0);
            }
            let luminance = base.iter().sum::<f64>() / 3.0;
            if luminance > 0.5 {
                (0.1, 0.35)
            } else {
                (0.7, 1.0)
            }
        }
        DomainKind::Clipart => {
            let base = hsv(draws.uniform(0.0, 1.0), draws.uniform(0.0, 0.3), draws.uniform(0.85, 1.0));
            for c in 0..3 {
                canvas[c * PIXELS..(c + 1) * PIXELS].fill(base[c]);
            }
            (0.35, 0.75)
        }
        _ => {
            canvas.fill(1.0);
            (0.0, 0.0)
        }
    };
    for (&primitive, &(cx, cy)) in [pair.0, pair.1].iter().zip(places(draws).iter()) {
        let angle = orientation(primitive, draws);
        let (scale, width) = (draws.uniform(0.85, 1.15), draws.uniform(style.width.0, style.width.1));
        let mut alpha = coverage(primitive, cx, cy, angle, scale, width, &style);
        if style.crisp {
            alpha.iter_mut().for_each(|a| *a = if *a >= 0.5 { 1.0 } else { 0.0 });
        }
        let colour = match kind {
            DomainKind::Quickdraw => [0.0; 3],
            _ => hsv(draws.uniform(hues.0, hues.1), draws.uniform(0.6, 1.0), draws.uniform(ink_value.0, ink_value.1)),
        };
        if style.crisp {
            paint(&mut canvas, &alpha, colour, &|_| 1.0);
        } else {
            // Shading across the primitive and a little noise: a lit, photographed object.
            let (gx, gy) = (draws.uniform(-0.03, 0.03), draws.uniform(-0.03, 0.03));
            let grain: Vec<f64> = (0..PIXELS).map(|_| 0.06 * draws.normal()).collect();
            let shade = |p: usize| 1.0 + gx * ((p % SIDE) as f64 - cx) + gy * ((p / SIDE) as f64 - cy) + grain[p];
            paint(&mut canvas, &alpha, colour, &shade);
        }
    }
    canvas
}

// ---------------------------------------------------------------------------------------------
// The far domain

const FAR_CLASSES: usize = 5;

/// A chest-film-like image: two darker lung fields and a brighter heart shadow on a grey field,
/// smooth variation and film grain, all low contrast, grayscale. The class is the finding in one
/// lung: 0 none, 1 one small nodule, 2 several tiny nodules, 3 a large diffuse opacity, 4 a dark
/// lucent area.
fn far_image(class: usize, draws: &mut Draws) -> Canvas {
    let gauss = |x: f64, y: f64, cx: f64, cy: f64, sx: f64, sy: f64| {
        (-((x - cx) / sx).powi(2) / 2.0 - ((y - cy) / sy).powi(2) / 2.0).exp()
    };
    let (shift_x, shift_y, size) = (draws.uniform(-1.5, 1.5), draws.uniform(-1.5, 1.5), draws.uniform(0.9, 1.1));
    let exposure = draws.uniform(0.42, 0.55);
    let lungs = [(7.5 + shift_x, 12.0 + shift_y), (16.5 + shift_x, 12.0 + shift_y)];
    let heart = (12.5 + shift_x + draws.uniform(-0.5, 0.5), 15.0 + shift_y, draws.uniform(2.5, 3.5) * size);
    let field = smooth_field(draws);
    // The finding, in a random lung, inside its field.
    let side = draws.below(2);
    let spot = |draws: &mut Draws| (lungs[side].0 + draws.uniform(-2.0, 2.0), lungs[side].1 + draws.uniform(-4.0, 4.0));
    let findings: Vec<(f64, f64, f64, f64)> = match class {
        0 => vec![],
        1 => {
            let (x, y) = spot(draws);
            vec![(x, y, draws.uniform(0.9, 1.2), 0.16)]
        }
        2 => (0..4)
            .map(|_| {
                let (x, y) = spot(draws);
                (x, y, 0.6, 0.12)
            })
            .collect(),
        3 => {
            let (x, y) = spot(draws);
            vec![(x, y, draws.uniform(3.0, 4.0), 0.12)]
        }
        _ => {
            let (x, y) = spot(draws);
            vec![(x, y, draws.uniform(2.0, 3.0), -0.12)]
        }
    };
    let mut gray = vec![0f64; PIXELS];
    for (p, g) in gray.iter_mut().enumerate() {
        let (x, y) = ((p % SIDE) as f64 + 0.5, (p / SIDE) as f64 + 0.5);
        let lung: f64 = lungs.iter().map(|&(lx, ly)| gauss(x, y, lx, ly, 3.2 * size, 6.0 * size)).sum();
        let mut v = exposure - 0.13 * lung.min(1.0) + 0.07 * gauss(x, y, heart.0, heart.1, heart.2, heart.2 * 0.8);
        v += 0.03 * field[p] + 0.02 * draws.normal();
        for &(fx, fy, r, amp) in &findings {
            v += amp * gauss(x, y, fx, fy, r, r);
        }
        *g = v;
    }
    [gray.clone(), gray.clone(), gray].concat()
}
