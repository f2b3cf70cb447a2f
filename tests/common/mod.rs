//! Helpers shared by the integration tests: a seeded generator of test data and plain f64
//! reference formulas written independently of the library's code paths.
#![allow(dead_code)]

/// The `main` of a GPU test binary (these are built with `harness = false`): runs the tests
/// through libtest-mimic, so that a test needing a CUDA device is reported as *ignored*, with
/// its count in the closing line, where no device works: nothing that did not run is counted
/// as passed. `TL_REQUIRE_CUDA=1` (set by the GPU check script) runs them whatever the probe
/// says, so that a missing device fails there instead of skipping.
///
/// ```ignore
/// gpu_test_main! { everywhere: [probe_never_panics], on_device: [lerp_matches_reference] }
/// ```
#[macro_export]
macro_rules! gpu_test_main {
    (everywhere: [$($everywhere:ident),* $(,)?], on_device: [$($on_device:ident),* $(,)?] $(,)?) => {
        fn main() -> std::process::ExitCode {
            common::run_gpu_tests(
                &[$((stringify!($everywhere), $everywhere as fn())),*],
                &[$((stringify!($on_device), $on_device as fn())),*],
            )
        }
    };
}

/// Runs the tests of a GPU test binary; see [`gpu_test_main!`].
pub fn run_gpu_tests(
    everywhere: &[(&'static str, fn())],
    on_device: &[(&'static str, fn())],
) -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let required = std::env::var("TL_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let missing = transferlens::Context::new(transferlens::BackendChoice::Cuda, 0).err();
    let skip = missing.is_some() && !required;
    if let (true, Some(reason)) = (skip, &missing) {
        // One line the CI log shows; the closing line counts them as ignored.
        println!("skipped: {} GPU tests need a CUDA device ({reason})", on_device.len());
    }
    let trial = |&(name, test): &(&'static str, fn())| {
        libtest_mimic::Trial::test(name, move || {
            test();
            Ok(())
        })
    };
    let trials =
        everywhere.iter().map(trial).chain(on_device.iter().map(|t| trial(t).with_ignored_flag(skip))).collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// A context on CUDA device 0 for a test that the harness runs only where a device works.
pub fn cuda_context() -> transferlens::Context {
    transferlens::Context::new(transferlens::BackendChoice::Cuda, 0)
        .unwrap_or_else(|e| panic!("no CUDA device although the GPU tests were run: {e}"))
}

/// xoshiro256** seeded through splitmix64: reproducible test data without a dependency.
pub struct TestRng {
    s: [u64; 4],
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^ (z >> 31)
        };
        TestRng { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn normals(&mut self, len: usize) -> Vec<f64> {
        (0..len).map(|_| self.normal()).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Row-major `rows x cols` matrix in f64.
#[derive(Clone, Debug)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Dense {
    pub fn random(rng: &mut TestRng, rows: usize, cols: usize) -> Self {
        Dense { rows, cols, data: rng.normals(rows * cols) }
    }

    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    /// `self * w` for a `cols x k` matrix `w`, plus `noise` times fresh normals: a layer
    /// correlated with this one.
    pub fn mix(&self, rng: &mut TestRng, k: usize, noise: f64) -> Dense {
        let w = rng.normals(self.cols * k);
        let mut data = vec![0.0; self.rows * k];
        for r in 0..self.rows {
            for j in 0..k {
                let mut acc = 0.0;
                for c in 0..self.cols {
                    acc += self.at(r, c) * w[c * k + j];
                }
                data[r * k + j] = acc + noise * rng.normal();
            }
        }
        Dense { rows: self.rows, cols: k, data }
    }

    /// Column-centered copy.
    pub fn centered(&self) -> Dense {
        let mut out = self.clone();
        for c in 0..self.cols {
            let mean = (0..self.rows).map(|r| self.at(r, c)).sum::<f64>() / self.rows as f64;
            for r in 0..self.rows {
                out.data[r * self.cols + c] -= mean;
            }
        }
        out
    }

    /// `self^T other`, `cols x other.cols`.
    pub fn t_mul(&self, other: &Dense) -> Vec<f64> {
        let mut out = vec![0.0; self.cols * other.cols];
        for r in 0..self.rows {
            for i in 0..self.cols {
                let a = self.at(r, i);
                for j in 0..other.cols {
                    out[i * other.cols + j] += a * other.at(r, j);
                }
            }
        }
        out
    }

    /// `self self^T`, the `rows x rows` Gram of the samples.
    pub fn gram(&self) -> Vec<f64> {
        let n = self.rows;
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = (0..self.cols).map(|c| self.at(i, c) * self.at(j, c)).sum();
            }
        }
        out
    }
}

/// Reference CKA in feature space, written from the published formulas (Kornblith et al. 2019;
/// debiased: their `feature_space_linear_cka(debiased=True)`).
pub fn reference_cka_feature(x: &Dense, y: &Dense, debiased: bool) -> f64 {
    let (x, y) = (x.centered(), y.centered());
    let n = x.rows as f64;
    let fro2 = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
    let row_sq =
        |m: &Dense| (0..m.rows).map(|r| (0..m.cols).map(|c| m.at(r, c).powi(2)).sum::<f64>()).collect::<Vec<_>>();
    let hsic = |a: &Dense, b: &Dense| {
        let xty = fro2(&a.t_mul(b));
        if !debiased {
            return xty;
        }
        let (ra, rb) = (row_sq(a), row_sq(b));
        let dot: f64 = ra.iter().zip(&rb).map(|(p, q)| p * q).sum();
        let (na, nb): (f64, f64) = (ra.iter().sum(), rb.iter().sum());
        xty - n / (n - 2.0) * dot + na * nb / ((n - 1.0) * (n - 2.0))
    };
    hsic(&x, &y) / (hsic(&x, &x) * hsic(&y, &y)).sqrt()
}

/// Reference CKA in sample space from `n x n` Grams: biased with the centering matrix
/// `H = I - 11^T/n` (tr(HKH HLH)); debiased with the unbiased HSIC of Song et al. (2012).
pub fn reference_cka_sample(x: &Dense, y: &Dense, debiased: bool) -> f64 {
    let n = x.rows;
    let hsic = |k: &[f64], l: &[f64]| -> f64 {
        if debiased {
            unbiased_hsic(k, l, n)
        } else {
            let (hk, hl) = (center_gram(k, n), center_gram(l, n));
            hk.iter().zip(&hl).map(|(a, b)| a * b).sum()
        }
    };
    let (k, l) = (x.gram(), y.gram());
    hsic(&k, &l) / (hsic(&k, &k) * hsic(&l, &l)).sqrt()
}

/// `H K H` with the explicit centering matrix `H = I - 11^T / n`.
pub fn center_gram(k: &[f64], n: usize) -> Vec<f64> {
    let h = |i: usize, j: usize| {
        if i == j {
            1.0 - 1.0 / n as f64
        } else {
            -1.0 / n as f64
        }
    };
    let mut hk = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            hk[i * n + j] = (0..n).map(|t| h(i, t) * k[t * n + j]).sum();
        }
    }
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|t| hk[i * n + t] * h(t, j)).sum();
        }
    }
    out
}

/// HSIC_1 of Song et al. (2012) on Grams `k`, `l` of `n >= 4` samples (diagonals zeroed).
pub fn unbiased_hsic(k: &[f64], l: &[f64], n: usize) -> f64 {
    let zero_diag = |g: &[f64]| {
        let mut g = g.to_vec();
        for i in 0..n {
            g[i * n + i] = 0.0;
        }
        g
    };
    let (k, l) = (zero_diag(k), zero_diag(l));
    let nf = n as f64;
    let trace: f64 = k.iter().zip(&l).map(|(a, b)| a * b).sum();
    let sk: f64 = k.iter().sum();
    let sl: f64 = l.iter().sum();
    let k1: Vec<f64> = (0..n).map(|i| k[i * n..(i + 1) * n].iter().sum()).collect();
    let l1: Vec<f64> = (0..n).map(|i| l[i * n..(i + 1) * n].iter().sum()).collect();
    let kl: f64 = k1.iter().zip(&l1).map(|(a, b)| a * b).sum();
    (trace + sk * sl / ((nf - 1.0) * (nf - 2.0)) - 2.0 / (nf - 2.0) * kl) / (nf * (nf - 3.0))
}

/// `|got - want| <= tol * max(1, |want|)`, with a message.
#[track_caller]
pub fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: got {got:.17e}, want {want:.17e} (difference {:.3e}, tolerance {tol:e})",
        (got - want).abs()
    );
}

/// Relative closeness: `|got - want| <= tol * |want|`.
#[track_caller]
pub fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs(),
        "{what}: got {got:.17e}, want {want:.17e} (relative difference {:.3e}, tolerance {tol:e})",
        ((got - want) / want).abs()
    );
}

/// An MLP of widths `sizes` with He-normal weights from `seed`, biases drawn too (so that they
/// matter), and `rows` rows of standard-normal inputs with labels from a fixed linear rule plus
/// some label noise: a model that gets some rows right and some wrong.
pub fn mlp_fixture(
    sizes: &[usize],
    rows: usize,
    seed: u64,
) -> (transferlens::model::Mlp, transferlens::ParamSet, transferlens::model::Dataset) {
    use transferlens::model::{f32_set, Dataset, Mlp};
    let mlp = Mlp::new(sizes).unwrap();
    let init = mlp.init(seed).unwrap();
    let mut rng = TestRng::new(seed);
    let mut tensors = Vec::new();
    for t in init.tensors() {
        let transferlens::tensor::HostSlice::F32(v) = t.host().unwrap() else { panic!("init gives f32") };
        let mut v = v.to_vec();
        if t.name().ends_with(".bias") {
            v.iter_mut().for_each(|b| *b = 0.3 * rng.normal() as f32);
        }
        tensors.push((t.name().to_string(), t.shape().to_vec(), v));
    }
    let set = f32_set(&tensors).unwrap();
    let (dim, classes) = (sizes[0], *sizes.last().unwrap());
    let x: Vec<f32> = rng.normals(rows * dim).iter().map(|&v| v as f32).collect();
    let y = (0..rows)
        .map(|i| {
            let r = &x[i * dim..(i + 1) * dim];
            let s: f32 = r.iter().enumerate().map(|(j, v)| v * (j % 3) as f32).sum();
            let c = (s.abs() * 1.3) as usize + if rng.below(5) == 0 { rng.below(classes) } else { 0 };
            (c % classes) as u32
        })
        .collect();
    (mlp, set, Dataset::new(x, y, dim, classes).unwrap())
}

/// `p` with every tensor stored as `dtype` (values rounded to nearest), through safetensors.
pub fn set_as(p: &transferlens::ParamSet, dtype: transferlens::DType) -> transferlens::ParamSet {
    use transferlens::tensor::HostSlice;
    let (tag, size) = match dtype {
        transferlens::DType::F32 => ("F32", 4),
        transferlens::DType::F64 => ("F64", 8),
        transferlens::DType::F16 => ("F16", 2),
        transferlens::DType::BF16 => ("BF16", 2),
    };
    let mut header = String::from("{");
    let mut body: Vec<u8> = Vec::new();
    for (i, t) in p.tensors().iter().enumerate() {
        let values: Vec<f64> = match t.host().unwrap() {
            HostSlice::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostSlice::F64(v) => v.to_vec(),
            HostSlice::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostSlice::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        };
        let start = body.len();
        for x in values {
            match dtype {
                transferlens::DType::F32 => body.extend_from_slice(&(x as f32).to_le_bytes()),
                transferlens::DType::F64 => body.extend_from_slice(&x.to_le_bytes()),
                transferlens::DType::F16 => body.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                transferlens::DType::BF16 => body.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
            }
        }
        assert_eq!(body.len() - start, size * t.numel());
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "{}\"{}\":{{\"dtype\":\"{tag}\",\"shape\":[{}],\"data_offsets\":[{start},{}]}}",
            if i > 0 { "," } else { "" },
            t.name(),
            shape.join(","),
            body.len()
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&body);
    transferlens::ParamSet::from_bytes(&file, "test set").unwrap()
}

/// A random permutation of the group's units that keeps its blocks (random blocks order, then
/// random order within each level).
pub fn random_admissible(g: &transferlens::align::PermGroup, rng: &mut TestRng) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..g.size).collect();
    let mut widths: Vec<usize> = g.partition.iter().map(|&b| g.size / b).collect();
    widths.insert(0, g.size);
    widths.push(1);
    // At each level, shuffle the sub-blocks of width widths[k + 1] inside each block of widths[k].
    for k in 0..widths.len() - 1 {
        let (outer, inner) = (widths[k], widths[k + 1]);
        for block in perm.chunks_mut(outer) {
            let mut pieces: Vec<Vec<usize>> = block.chunks(inner).map(<[usize]>::to_vec).collect();
            for i in (1..pieces.len()).rev() {
                pieces.swap(i, rng.below(i + 1));
            }
            block.copy_from_slice(&pieces.concat());
        }
    }
    assert!(g.admits(&perm));
    perm
}

/// The two sets hold the same tensors, names and bytes.
pub fn assert_bit_equal(a: &transferlens::ParamSet, b: &transferlens::ParamSet) {
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.name(), y.name());
        assert!(x.bytes().unwrap() == y.bytes().unwrap(), "tensor {:?} differs", x.name());
    }
}

/// The Python interpreter of the tests that run a numpy script (`TL_PYTHON`, else `python3`);
/// fails, saying that `needed_by` needs it, unless it imports numpy.
pub fn python_with_numpy(needed_by: &str) -> String {
    let py = std::env::var("TL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{needed_by} {py} with numpy (set TL_PYTHON to an interpreter that has it)");
    py
}

/// A small CNN of every layer kind the alignment specs must handle: a stem, an identity block, a
/// downsampling block (GroupNorm groups 4 and 2, which nest), a hidden dense layer and the logits.
pub const SMALL_CNN_SPEC: &str = r#"{
  "input": [2, 8, 8],
  "classes": 3,
  "layers": [
    {"type": "conv", "name": "conv1", "out": 8, "kernel": 3, "padding": 1, "bias": true},
    {"type": "groupnorm", "name": "gn1", "groups": 2},
    {"type": "relu"},
    {"type": "block", "name": "layer1", "out": 8, "stride": 1, "groups": 4},
    {"type": "block", "name": "layer2", "out": 12, "stride": 2, "groups": 4},
    {"type": "global_avgpool"},
    {"type": "dense", "name": "fc1", "out": 6},
    {"type": "relu"},
    {"type": "dense", "name": "fc2", "out": 3}
  ]
}"#;
