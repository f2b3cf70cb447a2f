//! The CUDA primitives against plain f64 references computed here on the CPU, on fresh random
//! data of awkward sizes (1, 7, 1000003 elements), never on zeros.
//!
//! Where no driver or device works the tests that need one are reported as ignored (the
//! closing line counts them), unless the environment sets `TL_REQUIRE_CUDA=1`: then they run and
//! fail. The harness is `common::run_gpu_tests` (`harness = false` in Cargo.toml).

mod common;

use half::{bf16, f16};
use transferlens::backend::cuda::{self, CudaDevice, DeviceBuffer, DeviceElement, MatrixShape};
use transferlens::{rng, BackendChoice, Context, Element, Error};

const SIZES: [usize; 3] = [1, 7, 1_000_003];

/// Device 0, for a test that the harness runs only where a device works.
fn device() -> CudaDevice {
    CudaDevice::new(0).unwrap_or_else(|e| panic!("no CUDA device although the GPU tests were run: {e}"))
}

/// xorshift64*: small, seedable, good enough for test data.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Magnitude in [0.1, 2), random sign: never zero.
    fn value(&mut self) -> f64 {
        let m = 0.1 + 1.9 * self.unit();
        if self.next_u64() & 1 == 0 {
            m
        } else {
            -m
        }
    }
}

/// What the tests need of a storage type beyond [`DeviceElement`].
trait TestElem: DeviceElement + PartialEq + std::fmt::Debug {
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn bits(self) -> u64;
    /// Machine epsilon of the storage type (twice the unit roundoff).
    const EPS: f64;
    /// Machine epsilon of the kernels' arithmetic for this type.
    const ACC_EPS: f64;
}

impl TestElem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    const EPS: f64 = f32::EPSILON as f64;
    const ACC_EPS: f64 = f32::EPSILON as f64;
}
impl TestElem for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
    const EPS: f64 = f64::EPSILON;
    const ACC_EPS: f64 = f64::EPSILON;
}
impl TestElem for f16 {
    fn from_f64(v: f64) -> Self {
        f16::from_f32(v as f32) // test data only: values are exact in f32 or need no tie care
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    const EPS: f64 = 9.765625e-4; // 2^-10
    const ACC_EPS: f64 = f32::EPSILON as f64;
}
impl TestElem for bf16 {
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(v as f32)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    const EPS: f64 = 7.8125e-3; // 2^-7
    const ACC_EPS: f64 = f32::EPSILON as f64;
}

fn random<T: TestElem>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f64(rng.value())).collect()
}

fn upload<T: TestElem>(dev: &CudaDevice, v: &[T]) -> DeviceBuffer<T> {
    dev.upload(v).unwrap()
}

// ---- runs everywhere -----------------------------------------------------------------------

fn auto_context_and_device_probe_never_panic() {
    let probe = cuda::check_device(0);
    let ctx = Context::new(BackendChoice::Auto, 0).unwrap();
    if probe.is_err() {
        assert_eq!(ctx.backend(), transferlens::Backend::Cpu);
    }
    match CudaDevice::new(0) {
        Ok(dev) => println!("device 0: {} sm_{:?}", dev.name(), dev.capability()),
        Err(e) => assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}"),
    }
}

// ---- lerp ----------------------------------------------------------------------------------

fn check_lerp<T: TestElem>(dev: &CudaDevice) {
    let mut rng = Rng::new(1);
    for n in SIZES {
        let a: Vec<T> = random(&mut rng, n);
        let b: Vec<T> = random(&mut rng, n);
        let (da, db) = (upload(dev, &a), upload(dev, &b));
        let mut out = dev.zeros::<T>(n).unwrap();
        for lambda in [0.0, 1.0, 0.3, 0.5, -1.0, 2.0, 1e-3] {
            dev.lerp(&da, &db, lambda, &mut out).unwrap();
            let got = dev.download(&out).unwrap();
            for i in 0..n {
                let (x, y) = (a[i].to_f64(), b[i].to_f64());
                if lambda == 0.0 || lambda == 1.0 {
                    let want = if lambda == 0.0 { a[i] } else { b[i] };
                    assert_eq!(got[i].bits(), want.bits(), "{} n {n} l {lambda} i {i}", T::SUFFIX);
                    continue;
                }
                // The f64 reference, with a bound for acc arithmetic and one final rounding.
                let reference = (1.0 - lambda) * x + lambda * y;
                let mag = (1.0 - lambda).abs() * x.abs() + lambda.abs() * y.abs();
                let tol = 4.0 * T::ACC_EPS * mag + T::EPS * (reference.abs() + 1e-4);
                let g = got[i].to_f64();
                assert!((g - reference).abs() <= tol, "{} n {n} l {lambda} i {i}: {g} vs {reference}", T::SUFFIX);
            }
        }
    }
}

/// The documented formula, fma(l, b, (1 - l) a) in f32 rounded once, gives the device's bits.
fn check_lerp_bits_f32_formula<T: TestElem>(dev: &CudaDevice) {
    let mut rng = Rng::new(2);
    let n = 100_003;
    let a: Vec<T> = random(&mut rng, n);
    let b: Vec<T> = random(&mut rng, n);
    let mut out = dev.zeros::<T>(n).unwrap();
    let lambda = 0.37;
    dev.lerp(&upload(dev, &a), &upload(dev, &b), lambda, &mut out).unwrap();
    let got = dev.download(&out).unwrap();
    let l = lambda as f32;
    for i in 0..n {
        let want = T::from_f32(l.mul_add(b[i].to_f32(), (1.0 - l) * a[i].to_f32()));
        assert_eq!(got[i].bits(), want.bits(), "{} i {i}", T::SUFFIX);
    }
}

fn lerp_matches_f64_reference() {
    let dev = device();
    check_lerp::<f32>(&dev);
    check_lerp::<f64>(&dev);
    check_lerp::<f16>(&dev);
    check_lerp::<bf16>(&dev);
    check_lerp_bits_f32_formula::<f32>(&dev);
    check_lerp_bits_f32_formula::<f16>(&dev);
    check_lerp_bits_f32_formula::<bf16>(&dev);
}

fn lerp_endpoints_keep_special_values_bit_for_bit() {
    let dev = device();
    let a = [-0.0f32, f32::from_bits(0x7fc0_1234), f32::INFINITY, 1e-40, -3.5];
    let b = [0.0f32, 1.0, f32::NEG_INFINITY, -1e-40, f32::from_bits(0xffc0_0042)];
    let (da, db) = (upload(&dev, &a), upload(&dev, &b));
    let mut out = dev.zeros::<f32>(a.len()).unwrap();
    for (lambda, want) in [(0.0, a), (1.0, b)] {
        dev.lerp(&da, &db, lambda, &mut out).unwrap();
        let got = dev.download(&out).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.to_bits(), w.to_bits(), "lambda {lambda}");
        }
    }
    let err = dev.lerp(&da, &db, f64::NAN, &mut out).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("lambda")), "{err}");
    let short = dev.zeros::<f32>(2).unwrap();
    let err = dev.lerp(&da, &short, 0.5, &mut out).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(ref m) if m.contains('b')), "{err}");
}

// ---- normals ----------------------------------------------------------------------------------

fn device_normals_match_cpu_stream() {
    let dev = device();
    let (seed, stream) = (0xdead_beef_u64, 5u64);
    for n in SIZES {
        for index0 in [0u64, 1, 2, 3, (1 << 40) + 3] {
            let mut cpu = vec![0.0f64; n];
            rng::normals_f64(seed, stream, index0, &mut cpu);
            let mut d32 = dev.zeros::<f32>(n).unwrap();
            let mut d64 = dev.zeros::<f64>(n).unwrap();
            dev.normals_f32(seed, stream, index0, &mut d32).unwrap();
            dev.normals_f64(seed, stream, index0, &mut d64).unwrap();
            let (g32, g64) = (dev.download(&d32).unwrap(), dev.download(&d64).unwrap());
            for i in 0..n {
                let z = cpu[i];
                // f32: logf, sqrtf, sincospif and two products, each within a few ulp; the
                // absolute floor covers the zeros of cos / sin, where the error scales with r.
                let tol32 = 8.0 * f32::EPSILON as f64 * (z.abs() + 1.0);
                assert!(
                    (g32[i] as f64 - z).abs() <= tol32,
                    "f32 n {n} index {} : {} vs {z}",
                    index0 + i as u64,
                    g32[i]
                );
                // The reference rounds 2 pi v before its sin / cos (the device uses sincospi):
                // up to half an ulp of 2 pi, times r <= 5.8.
                let tol64 = 8.0 * f64::EPSILON * (z.abs() + 6.0);
                assert!((g64[i] - z).abs() <= tol64, "f64 n {n} index {}: {} vs {z}", index0 + i as u64, g64[i]);
            }
        }
    }
}

// ---- segmented sums of squares ---------------------------------------------------------------

fn check_segment_sumsq<T: TestElem>(dev: &CudaDevice) {
    let mut rng = Rng::new(4);
    let cases: [Vec<u64>; 4] = [
        vec![0, 1],
        vec![0, 7],
        vec![0, 1, 8, 8, 1007, 500_000, 1_000_003],
        vec![3, 5, 999_999], // segments need not start at 0 nor reach the end
    ];
    for offsets in cases {
        let n = *offsets.last().unwrap() as usize + 4;
        let a: Vec<T> = random(&mut rng, n);
        let b: Vec<T> = random(&mut rng, n);
        let (da, db) = (upload(dev, &a), upload(dev, &b));
        let sums = dev.segment_sumsq(&da, Some(&db), &offsets, true).unwrap();
        let (diff, norms) = (sums.diff.unwrap(), sums.a.unwrap());
        for s in 0..offsets.len() - 1 {
            let range = offsets[s] as usize..offsets[s + 1] as usize;
            let want_d: f64 = range.clone().map(|i| (a[i].to_f64() - b[i].to_f64()).powi(2)).sum();
            let want_a: f64 = range.map(|i| a[i].to_f64().powi(2)).sum();
            // f64 sums of positive terms in another order: relative error below n eps.
            let tol = |w: f64| 1e-10 * w;
            assert!(
                (diff[s] - want_d).abs() <= tol(want_d),
                "{} offsets {offsets:?} segment {s}: {} vs {want_d}",
                T::SUFFIX,
                diff[s]
            );
            assert!((norms[s] - want_a).abs() <= tol(want_a), "{} segment {s}: {} vs {want_a}", T::SUFFIX, norms[s]);
        }
        let only_a = dev.segment_sumsq(&da, None, &offsets, true).unwrap();
        assert!(only_a.diff.is_none());
        let again = only_a.a.unwrap();
        assert!(again.iter().zip(&norms).all(|(p, q)| (p - q).abs() <= 1e-12 * q));
    }
}

fn segment_sumsq_matches_f64_reference() {
    let dev = device();
    check_segment_sumsq::<f32>(&dev);
    check_segment_sumsq::<f64>(&dev);
    check_segment_sumsq::<f16>(&dev);
    check_segment_sumsq::<bf16>(&dev);
    let a = upload(&dev, &[1.0f32; 10]);
    let err = dev.segment_sumsq(&a, None, &[0, 5, 3], true).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("offsets")), "{err}");
    let err = dev.segment_sumsq(&a, None, &[0, 11], true).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(ref m) if m.contains("offsets")), "{err}");
}

// ---- conversions -----------------------------------------------------------------------------

/// Correctly rounded (nearest, ties to even) 16-bit encoding of `d`, by bisection over the
/// positive finite encodings and an exact comparison with the midpoint. The `half` crate is no
/// reference for f64 sources: on x86 with F16C its f64 -> f16 rounds twice through f32, and its
/// f64 -> bf16 ignores the low 32 bits of the significand.
fn nearest16(d: f64, inf_bits: u16, inf_value: f64, value: impl Fn(u16) -> f64) -> u16 {
    let sign = if d.is_sign_negative() { 0x8000 } else { 0 };
    let m = d.abs();
    let val = |b: u16| if b == inf_bits { inf_value } else { value(b) };
    if m >= inf_value {
        return sign | inf_bits;
    }
    let (mut lo, mut hi) = (0u16, inf_bits);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if val(mid) <= m {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let midpoint = 0.5 * (val(lo) + val(lo + 1));
    let pick = if m < midpoint || (m == midpoint && lo % 2 == 0) { lo } else { lo + 1 };
    sign | pick
}

trait ConvertRef: TestElem {
    /// The correctly rounded value of `d` (or None when `d` is NaN: only the class is checked).
    fn nearest(d: f64) -> u64;
    fn is_nan(self) -> bool {
        self.to_f64().is_nan()
    }
}
impl ConvertRef for f32 {
    fn nearest(d: f64) -> u64 {
        (d as f32).to_bits() as u64
    }
}
impl ConvertRef for f64 {
    fn nearest(d: f64) -> u64 {
        d.to_bits()
    }
}
impl ConvertRef for f16 {
    fn nearest(d: f64) -> u64 {
        nearest16(d, 0x7c00, 65536.0, |b| f16::from_bits(b).to_f64()) as u64
    }
}
impl ConvertRef for bf16 {
    fn nearest(d: f64) -> u64 {
        nearest16(d, 0x7f80, 2f64.powi(128), |b| bf16::from_bits(b).to_f64()) as u64
    }
}

/// Source values: random data over many binades, special values, and the midpoints between
/// neighbouring f16 / bf16 values with points just beside them (the double-rounding traps).
fn conversion_inputs<S: TestElem>(rng: &mut Rng, n: usize) -> Vec<S> {
    let mut v: Vec<S> = (0..n)
        .map(|i| {
            let scale = 2f64.powi((i % 60) as i32 - 30);
            S::from_f64(rng.value() * scale)
        })
        .collect();
    if n > 1000 {
        let specials = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            65504.0,
            65519.0,
            65520.0,
            1e-8,
            2.9802322387695312e-8,
            2.98023223877e-8,
            1e-40,
            3.4e38,
            1e300,
            -1e-300,
        ];
        for (k, s) in specials.iter().enumerate() {
            v[k] = S::from_f64(*s);
        }
        for k in 0..2000usize {
            let h = (k * 31) as u16;
            let (lo, hi) = (f16::from_bits(h).to_f64(), f16::from_bits(h + 1).to_f64());
            let (blo, bhi) = (bf16::from_bits(h).to_f64(), bf16::from_bits(h + 1).to_f64());
            let mid = 0.5 * (lo + hi);
            let bmid = 0.5 * (blo + bhi);
            let base = 100 + 6 * k;
            v[base] = S::from_f64(mid);
            v[base + 1] = S::from_f64(mid + (hi - lo) * 1e-12);
            v[base + 2] = S::from_f64(mid - (hi - lo) * 1e-12);
            v[base + 3] = S::from_f64(bmid);
            v[base + 4] = S::from_f64(bmid + (bhi - blo) * 1e-12);
            v[base + 5] = S::from_f64(-bmid);
        }
    }
    v
}

fn check_convert<S: TestElem + ConvertRef, D: TestElem + ConvertRef>(dev: &CudaDevice) {
    let mut rng = Rng::new(5);
    for n in SIZES {
        let input: Vec<S> = conversion_inputs(&mut rng, n);
        let mut out = dev.zeros::<D>(n).unwrap();
        dev.convert(&upload(dev, &input), &mut out).unwrap();
        let got = dev.download(&out).unwrap();
        for i in 0..n {
            let d = input[i].to_f64();
            if d.is_nan() {
                assert!(got[i].is_nan(), "{} -> {}: NaN lost", S::SUFFIX, D::SUFFIX);
                continue;
            }
            assert_eq!(got[i].bits(), D::nearest(d), "{} -> {} of {d:e} (i {i})", S::SUFFIX, D::SUFFIX);
        }
    }
}

fn check_convert_from<S: TestElem + ConvertRef>(dev: &CudaDevice) {
    if S::DTYPE != <f32 as Element>::DTYPE {
        check_convert::<S, f32>(dev);
    }
    if S::DTYPE != <f64 as Element>::DTYPE {
        check_convert::<S, f64>(dev);
    }
    if S::DTYPE != <f16 as Element>::DTYPE {
        check_convert::<S, f16>(dev);
    }
    if S::DTYPE != <bf16 as Element>::DTYPE {
        check_convert::<S, bf16>(dev);
    }
}

fn conversions_round_to_nearest_even() {
    let dev = device();
    check_convert_from::<f32>(&dev);
    check_convert_from::<f64>(&dev);
    check_convert_from::<f16>(&dev);
    check_convert_from::<bf16>(&dev);
}

fn f16_and_bf16_widen_like_half_on_every_value() {
    let dev = device();
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let h: Vec<f16> = all.iter().map(|&b| f16::from_bits(b)).collect();
    let bh: Vec<bf16> = all.iter().map(|&b| bf16::from_bits(b)).collect();
    let mut out = dev.zeros::<f32>(all.len()).unwrap();
    dev.convert(&upload(&dev, &h), &mut out).unwrap();
    let got = dev.download(&out).unwrap();
    for (x, g) in h.iter().zip(&got) {
        let w = x.to_f32();
        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "f16 {x:?}");
    }
    dev.convert(&upload(&dev, &bh), &mut out).unwrap();
    let got = dev.download(&out).unwrap();
    for (x, g) in bh.iter().zip(&got) {
        let w = x.to_f32();
        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "bf16 {x:?}");
    }
    // f32 -> f16 / bf16 on a stride through all f32 patterns, against half's from_f32.
    let xs: Vec<f32> = (0..=u32::MAX).step_by(4099).map(f32::from_bits).collect();
    let dx = upload(&dev, &xs);
    let mut o16 = dev.zeros::<f16>(xs.len()).unwrap();
    let mut ob16 = dev.zeros::<bf16>(xs.len()).unwrap();
    dev.convert(&dx, &mut o16).unwrap();
    dev.convert(&dx, &mut ob16).unwrap();
    let (g16, gb16) = (dev.download(&o16).unwrap(), dev.download(&ob16).unwrap());
    for i in 0..xs.len() {
        let (w16, wb16) = (f16::from_f32(xs[i]), bf16::from_f32(xs[i]));
        if xs[i].is_nan() {
            assert!(g16[i].is_nan() && gb16[i].is_nan());
        } else {
            assert_eq!(g16[i].to_bits(), w16.to_bits(), "f16 of {:e}", xs[i]);
            assert_eq!(gb16[i].to_bits(), wb16.to_bits(), "bf16 of {:e}", xs[i]);
        }
    }
}

// ---- CKA helpers -----------------------------------------------------------------------------

fn shapes() -> [MatrixShape; 4] {
    [
        MatrixShape::contiguous(1, 1),
        MatrixShape { rows: 7, cols: 3, stride: 5 },
        MatrixShape::contiguous(333_335, 3), // 1000005 elements, rows not a multiple of 8
        MatrixShape { rows: 513, cols: 1029, stride: 1031 },
    ]
}

fn check_cka_helpers<T: TestElem>(dev: &CudaDevice) {
    let mut rng = Rng::new(6);
    for shape in shapes() {
        let len = (shape.rows - 1) * shape.stride + shape.cols;
        // A large common offset, which the centered matrix below no longer has.
        let x: Vec<T> = (0..len).map(|_| T::from_f64(100.0 + rng.value())).collect();
        let at = |r: usize, c: usize| x[r * shape.stride + c].to_f64();
        let shift: Vec<f64> =
            (0..shape.cols).map(|c| (0..shape.rows).map(|r| at(r, c)).sum::<f64>() / shape.rows as f64).collect();
        let dx = upload(dev, &x);

        // The centered matrix, contiguous, in f64.
        let y64: Vec<f64> = (0..shape.rows)
            .flat_map(|r| (0..shape.cols).map(move |c| (r, c)))
            .map(|(r, c)| at(r, c) - shift[c])
            .collect();

        // row norms and the Frobenius norm of the centered f64 matrix, and of x itself.
        let cshape = MatrixShape::contiguous(shape.rows, shape.cols);
        let dy = dev.upload(&y64).unwrap();
        let mut norms = dev.zeros::<f64>(shape.rows).unwrap();
        dev.row_sqnorms(&dy, cshape, &mut norms).unwrap();
        let norms = dev.download(&norms).unwrap();
        for r in 0..shape.rows {
            let want: f64 = (0..shape.cols).map(|c| y64[r * shape.cols + c].powi(2)).sum();
            assert!((norms[r] - want).abs() <= 1e-12 * want, "row_sqnorms row {r}: {} vs {want}", norms[r]);
        }
        let mut xnorms = dev.zeros::<f64>(shape.rows).unwrap();
        dev.row_sqnorms(&dx, shape, &mut xnorms).unwrap();
        let xnorms = dev.download(&xnorms).unwrap();
        for r in (0..shape.rows).step_by(97) {
            let want: f64 = (0..shape.cols).map(|c| at(r, c).powi(2)).sum();
            assert!((xnorms[r] - want).abs() <= 1e-12 * want, "{} row_sqnorms", T::SUFFIX);
        }
        let mut total = dev.zeros::<f64>(1).unwrap();
        dev.sumsq(&dx, shape, &mut total).unwrap();
        let total = dev.download(&total).unwrap()[0];
        let want: f64 =
            (0..shape.rows).flat_map(|r| (0..shape.cols).map(move |c| (r, c))).map(|(r, c)| at(r, c).powi(2)).sum();
        assert!((total - want).abs() <= 1e-10 * want, "{} sumsq {shape:?}: {total} vs {want}", T::SUFFIX);
    }
}

fn cka_helpers_match_f64_reference() {
    let dev = device();
    check_cka_helpers::<f32>(&dev);
    check_cka_helpers::<f64>(&dev);
    check_cka_helpers::<f16>(&dev);
    check_cka_helpers::<bf16>(&dev);
    let x = upload(&dev, &[1.0f32; 10]);
    let mut out = dev.zeros::<f64>(3).unwrap();
    let bad = MatrixShape { rows: 4, cols: 3, stride: 3 };
    let err = dev.row_sqnorms(&x, bad, &mut out).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(ref m) if m.starts_with("x:")), "{err}");
}

// ---- memory of other libraries -----------------------------------------------------------------

fn wrapped_device_pointers_are_used_in_place_and_not_freed() {
    let dev = device();
    let mut rng = Rng::new(7);
    let n = 1003;
    let a: Vec<f32> = random(&mut rng, n);
    let b: Vec<f32> = random(&mut rng, n);
    // Stand-ins for a framework's tensors: buffers whose addresses are handed over raw.
    let (da, db) = (upload(&dev, &a), upload(&dev, &b));
    let target = dev.zeros::<f32>(n).unwrap();
    {
        // SAFETY: the addresses come from live buffers of n elements on this device, which
        // outlive the wrappers; all work is on the device's one stream.
        let (wa, wb, mut wout) = unsafe {
            (
                dev.wrap_device_ptr::<f32>(da.device_ptr(), n).unwrap(),
                dev.wrap_device_ptr::<f32>(db.device_ptr(), n).unwrap(),
                dev.wrap_device_ptr::<f32>(target.device_ptr(), n).unwrap(),
            )
        };
        assert!(wa.is_borrowed() && !da.is_borrowed());
        dev.lerp(&wa, &wb, 0.25, &mut wout).unwrap();
        dev.synchronize().unwrap();
    } // the wrappers drop here without freeing
    let got = dev.download(&target).unwrap();
    for i in 0..n {
        let want = 0.25f32.mul_add(b[i], 0.75 * a[i]);
        assert_eq!(got[i].to_bits(), want.to_bits(), "i {i}");
    }
    // The original buffers are still alive and usable.
    assert_eq!(dev.download(&da).unwrap(), a);

    // Misuse is reported, naming the argument.
    // SAFETY: refused before use: the address is NULL.
    let err = unsafe { dev.wrap_device_ptr::<f32>(0, 4) }.unwrap_err();
    assert!(matches!(err, Error::NullArgument(ref m) if m.starts_with("ptr")), "{err}");
    // SAFETY: refused before use: the address is misaligned.
    let err = unsafe { dev.wrap_device_ptr::<f32>(da.device_ptr() + 2, 4) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("aligned")), "{err}");
    // Plain host memory is no device memory (unless the platform maps it, as with HMM).
    let host = [0u64; 4];
    // SAFETY: host holds 4 f64-sized values and outlives the wrapper; nothing runs on it.
    match unsafe { dev.wrap_device_ptr::<f64>(host.as_ptr() as u64, 4) } {
        Err(err) => {
            assert!(matches!(err, Error::InvalidArgument(ref m) if m.starts_with("ptr")), "{err}")
        }
        Ok(_) => println!("note: the driver accepts host memory as device memory here"),
    }
}

// ---- vector and scalar paths -------------------------------------------------------------------

/// The weight-space kernels take 16-byte vectors when their pointers are aligned and scalar code
/// otherwise (memory wrapped from other libraries). Both paths must give the same bits: run each
/// kernel on buffers shifted by one element (misaligned for the vector path) and compare with
/// the aligned run.
fn check_paths_agree<T: TestElem>(dev: &CudaDevice) {
    let mut rng = Rng::new(11);
    let n = 100_003;
    let a: Vec<T> = random(&mut rng, n + 1);
    let b: Vec<T> = random(&mut rng, n + 1);
    let (da, db) = (upload(dev, &a), upload(dev, &b));
    let (a1, b1) = (upload(dev, &a[1..]), upload(dev, &b[1..]));
    let mut aligned = dev.zeros::<T>(n).unwrap();
    let shifted_out = dev.zeros::<T>(n + 1).unwrap();
    let size = std::mem::size_of::<T>() as u64;
    // SAFETY: the addresses lie within live buffers of n + 1 elements on this device, which
    // outlive the wrappers; all work is on the device's one stream.
    let (wa, wb, mut wout) = unsafe {
        (
            dev.wrap_device_ptr::<T>(da.device_ptr() + size, n).unwrap(),
            dev.wrap_device_ptr::<T>(db.device_ptr() + size, n).unwrap(),
            dev.wrap_device_ptr::<T>(shifted_out.device_ptr() + size, n).unwrap(),
        )
    };
    for lambda in [0.0, 0.3, 1.0] {
        dev.lerp(&a1, &b1, lambda, &mut aligned).unwrap();
        dev.lerp(&wa, &wb, lambda, &mut wout).unwrap();
        let (x, y) = (dev.download(&aligned).unwrap(), dev.download(&shifted_out).unwrap());
        for i in 0..n {
            assert_eq!(x[i].bits(), y[i + 1].bits(), "lerp {} l {lambda} i {i}", T::SUFFIX);
        }
    }
    let offsets = [0u64, 5, 6, 40_000, n as u64];
    let s1 = dev.segment_sumsq(&a1, Some(&b1), &offsets, true).unwrap();
    let s2 = dev.segment_sumsq(&wa, Some(&wb), &offsets, true).unwrap();
    for (p, q) in [(s1.diff.unwrap(), s2.diff.unwrap()), (s1.a.unwrap(), s2.a.unwrap())] {
        for s in 0..p.len() {
            assert!(
                (p[s] - q[s]).abs() <= 1e-12 * p[s].abs(),
                "segment_sumsq {} segment {s}: {} vs {}",
                T::SUFFIX,
                p[s],
                q[s]
            );
        }
    }
    drop((wa, wb, wout));
}

fn vector_and_scalar_paths_agree() {
    let dev = device();
    check_paths_agree::<f32>(&dev);
    check_paths_agree::<f64>(&dev);
    check_paths_agree::<f16>(&dev);
    check_paths_agree::<bf16>(&dev);
}

gpu_test_main! {
    everywhere: [auto_context_and_device_probe_never_panic],
    on_device: [lerp_matches_f64_reference, lerp_endpoints_keep_special_values_bit_for_bit, device_normals_match_cpu_stream, segment_sumsq_matches_f64_reference, conversions_round_to_nearest_even, f16_and_bf16_widen_like_half_on_every_value, cka_helpers_match_f64_reference, wrapped_device_pointers_are_used_in_place_and_not_freed, vector_and_scalar_paths_agree],
}
