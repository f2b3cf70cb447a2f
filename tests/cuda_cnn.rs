//! The built-in CNN's evaluation on the CUDA backend (`backend::cuda::cnn::DeviceCnn`) against
//! the CPU (`Cnn::evaluate`, `Cnn::evaluate_module_noise`) on the same sets and data: plain
//! evaluation, and the noisy copies of every module of nets of awkward sizes that reach every
//! path of the device schedule (a conv module, an identity block, a downsampling block, a
//! GroupNorm alone as a module, a module of two dense layers, 1 x 1 convs, pools, flatten), in
//! f32 and f16 storage, with more copies than one device group.
//!
//! Where no driver or device works the tests that need one are reported as ignored, unless the
//! environment sets `TL_REQUIRE_CUDA=1` (the harness is `common::run_gpu_tests`, `harness =
//! false` in Cargo.toml).
//!
//! Tolerance: losses agree to 1e-4 relative, errors to two rows per copy. Both sides compute in
//! f32 with f64 loss sums, but the products sum in different orders (cuBLAS against faer), the
//! GroupNorm statistics are a tree sum on the device and an ordered sum on the CPU, and the noise
//! is the same Philox stream computed in f32 on the device and in f64 on the CPU, so a noisy
//! value can land on the neighbouring f32 (or f16) value. Each of these is an ulp-level
//! difference per activation; through about ten layers they stay near 1e-6 relative, and 1e-4
//! leaves room for the GroupNorms' division by small group variances without hiding a wrong
//! index, which moves the loss by far more. The 0-1 error differs only where a row's two largest
//! logits are that close.
mod common;
use transferlens::backend::cuda::cnn::DeviceCnn;
use transferlens::backend::cuda::mlp::DeviceDataset;
use transferlens::backend::cuda::{open_device, CudaDevice};
use transferlens::model::{Cnn, Dataset, Metrics};
use transferlens::{DType, Error, ParamSet};

/// Odd sides, a strided padded conv with a bias, GroupNorm with 2 groups, an identity block (its
/// own module), a downsampling block, a pool with stride 1, a hidden dense layer.
const NET_A: &str = r#"{
  "input": [3, 11, 9],
  "classes": 5,
  "layers": [
    {"type": "conv", "name": "conv1", "out": 6, "kernel": 3, "stride": 2, "padding": 1, "bias": true},
    {"type": "groupnorm", "name": "gn1", "groups": 2},
    {"type": "relu"},
    {"type": "block", "name": "layer1", "out": 6, "stride": 1, "groups": 3},
    {"type": "block", "name": "layer2", "out": 10, "stride": 2, "groups": 5},
    {"type": "avgpool", "kernel": 2, "stride": 1},
    {"type": "global_avgpool"},
    {"type": "dense", "name": "fc1", "out": 7},
    {"type": "relu"},
    {"type": "dense", "name": "fc2", "out": 5}
  ]
}"#;

/// A 1 x 1 conv first, an unpadded 3 x 3 conv, a GroupNorm as its own module, a standalone ReLU
/// after a pool, flatten, and two dense layers forming one module.
const NET_B: &str = r#"{
  "input": [2, 8, 7],
  "classes": 3,
  "layers": [
    {"type": "conv", "name": "pw", "out": 5, "kernel": 1},
    {"type": "relu"},
    {"type": "conv", "name": "conv2", "out": 4, "kernel": 3, "bias": false},
    {"type": "groupnorm", "name": "gn2", "groups": 2, "module": "norm"},
    {"type": "avgpool", "kernel": 2},
    {"type": "relu"},
    {"type": "flatten"},
    {"type": "dense", "name": "fc1", "out": 9, "module": "head"},
    {"type": "relu"},
    {"type": "dense", "name": "fc2", "out": 3, "module": "head"}
  ]
}"#;

/// Rows of pseudo-images with labels from a fixed rule.
fn images(n: usize, dim: usize, classes: usize, seed: u64) -> Dataset {
    let mut x = vec![0f32; n * dim];
    transferlens::rng::normals_f32(seed, 9, 0, &mut x);
    let y = (0..n).map(|i| ((i * 5 + seed as usize) % classes) as u32).collect();
    Dataset::new(x, y, dim, classes).unwrap()
}

/// The net's initial set with every tensor moved off its initial value (biases and GroupNorm
/// parameters not 0 or 1), so that every parameter matters.
fn fixture(spec: &str, rows: usize, seed: u64) -> (Cnn, ParamSet, Dataset) {
    let cnn = Cnn::from_json(spec).unwrap();
    let mut set = cnn.init(seed).unwrap();
    for m in 0..set.modules().len() {
        let tensors = set.modules()[m].tensors.clone();
        transferlens::eval::add_module_noise(&mut set, &tensors, 0.2, seed + 100, m as u64).unwrap();
    }
    let s = cnn.input_shape();
    let data = images(rows, s.numel(), cnn.classes(), seed);
    (cnn, set, data)
}

/// `set` stored in `dtype`, grouped into the CNN's modules.
fn stored_as(cnn: &Cnn, set: &ParamSet, dtype: DType) -> ParamSet {
    let mut p = common::set_as(set, dtype);
    p.set_grouping(cnn.grouping()).unwrap();
    assert_eq!(p.modules().len(), cnn.module_names().len());
    p
}

fn device() -> std::sync::Arc<CudaDevice> {
    open_device(0).unwrap_or_else(|e| panic!("no CUDA device although the GPU tests were run: {e}"))
}

fn upload_data(dev: &CudaDevice, d: &Dataset) -> DeviceDataset {
    DeviceDataset::upload(dev, &d.x, &d.y, d.dim, d.classes).unwrap()
}

fn assert_close(got: &[(f64, f64)], want: &[Metrics], rows: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of copies");
    for (k, (&(loss, error), w)) in got.iter().zip(want).enumerate() {
        let scale = w.loss.abs().max(1e-3);
        assert!((loss - w.loss).abs() <= 1e-4 * scale, "{what} copy {k}: loss {loss} vs CPU {}", w.loss);
        let flipped = ((error - w.error) * rows as f64).abs().round();
        assert!(flipped <= 2.0, "{what} copy {k}: error {error} vs CPU {} ({flipped} rows differ)", w.error);
    }
}

fn plain_evaluation_on_cuda_matches_the_cpu() {
    let dev = device();
    for (spec, rows) in [(NET_A, 301), (NET_B, 1), (NET_B, 517)] {
        let (cnn, set, data) = fixture(spec, rows, 3);
        let on_device = upload_data(&dev, &data);
        for dtype in [DType::F32, DType::F16] {
            let p = stored_as(&cnn, &set, dtype);
            let want = cnn.evaluate(&p, &data).unwrap();
            let model = DeviceCnn::upload(&dev, &cnn, &p).unwrap();
            let got = model.evaluate(&dev, &on_device).unwrap();
            assert_close(&[got], &[want], rows, &format!("{:?} rows {rows} {dtype:?}", cnn.module_names()));
            // A fixed reduction order: the same call gives the same bits.
            assert_eq!(model.evaluate(&dev, &on_device).unwrap(), got);
        }
    }
}

fn noisy_copies_of_every_module_on_cuda_match_the_cpu() {
    let dev = device();
    for (spec, rows, copies) in [(NET_A, 203, 5), (NET_B, 97, 3)] {
        let (cnn, set, data) = fixture(spec, rows, 7);
        let on_device = upload_data(&dev, &data);
        for dtype in [DType::F32, DType::F16] {
            let p = stored_as(&cnn, &set, dtype);
            let model = DeviceCnn::upload(&dev, &cnn, &p).unwrap();
            for (module, name) in cnn.module_names().iter().enumerate() {
                for std in [0.0, 0.1] {
                    let want = cnn.evaluate_module_noise(&p, &data, module, std, 11, copies).unwrap();
                    let got = model.evaluate_module_noise(&dev, &on_device, module, std, 11, copies).unwrap();
                    let what = format!("module {name} {dtype:?} std {std}");
                    assert_close(&got, &want, rows, &what);
                    if std > 0.0 {
                        // The copies differ from each other: the streams are per copy.
                        assert!(got.windows(2).any(|w| w[0].0 != w[1].0), "{what}: all copies alike");
                    }
                }
            }
        }
    }
}

/// More copies than one device group (256): the second group continues the streams.
fn more_copies_than_one_group_match_the_cpu() {
    let dev = device();
    let (cnn, set, data) = fixture(NET_B, 40, 5);
    let model = DeviceCnn::upload(&dev, &cnn, &set).unwrap();
    let on_device = upload_data(&dev, &data);
    let module = cnn.module_names().iter().position(|n| n == "conv2").unwrap();
    let want = cnn.evaluate_module_noise(&set, &data, module, 0.05, 2, 300).unwrap();
    let got = model.evaluate_module_noise(&dev, &on_device, module, 0.05, 2, 300).unwrap();
    assert_close(&got, &want, data.n, "300 copies of conv2");
}

fn errors_on_cuda_name_the_problem() {
    let dev = device();
    let (cnn, set, data) = fixture(NET_B, 20, 1);
    let model = DeviceCnn::upload(&dev, &cnn, &set).unwrap();
    let on_device = upload_data(&dev, &data);
    // Data of another image size.
    let other = images(20, data.dim + 1, data.classes, 1);
    let err = model.evaluate(&dev, &upload_data(&dev, &other)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(_)), "{err:?}");
    // A module index past the set's modules.
    let modules = set.modules().len();
    let err = model.evaluate_module_noise(&dev, &on_device, modules, 0.1, 1, 2).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    // A negative standard deviation.
    let err = model.evaluate_module_noise(&dev, &on_device, 0, -1.0, 1, 2).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    // A set without a tensor the CNN reads.
    let other_net = Cnn::from_json(NET_A).unwrap();
    let err = DeviceCnn::upload(&dev, &other_net, &set).err().expect("a set of another net");
    assert!(matches!(err, Error::NotFound(_) | Error::ShapeMismatch(_)), "{err:?}");
    // An infinite standard deviation.
    let err = model.evaluate_module_noise(&dev, &on_device, 0, f64::INFINITY, 1, 2).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

/// `CnnEvaluator` on a CUDA context computes on the device: plain sets and module noise as the
/// CPU context gives them.
fn the_evaluator_on_cuda_matches_the_cpu() {
    use transferlens::eval::{CnnEvaluator, Evaluator, ModuleNoise};
    let gpu = common::cuda_context();
    let cpu = transferlens::Context::cpu();
    let (cnn, set, data) = fixture(NET_A, 150, 9);
    let other = cnn.init(10).unwrap();
    let mut ev = CnnEvaluator::new(cnn.clone(), data.clone());
    let want = ev.evaluate(&cpu, &[&set, &other]).unwrap();
    let got: Vec<(f64, f64)> = ev.evaluate(&gpu, &[&set, &other]).unwrap().iter().map(|m| (m.loss, m.error)).collect();
    assert_close(&got, &want, data.n, "evaluator, plain");
    let noise = ModuleNoise { point: &set, module: 2, std: 0.05, seed: 4, samples: 4 };
    let want = ev.evaluate_module_noise(&cpu, &noise).unwrap().unwrap();
    let got = ev.evaluate_module_noise(&gpu, &noise).unwrap().unwrap();
    let got: Vec<(f64, f64)> = got.iter().map(|m| (m.loss, m.error)).collect();
    assert_close(&got, &want, data.n, "evaluator, noise on layer2");
}

/// A NaN weight makes the loss NaN: an error on the device as on the CPU, never a metric.
fn nan_weights_are_an_error_on_cuda() {
    let dev = device();
    let (cnn, set, data) = fixture(NET_B, 30, 4);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = set
        .tensors()
        .iter()
        .map(|t| {
            let transferlens::tensor::HostSlice::F32(v) = t.host().unwrap() else { unreachable!("the fixture is f32") };
            let mut v = v.to_vec();
            if t.name() == "fc2.weight" {
                v[2] = f32::NAN;
            }
            (t.name().to_string(), t.shape().to_vec(), v)
        })
        .collect();
    let mut with_nan = transferlens::model::f32_set(&tensors).unwrap();
    with_nan.set_grouping(cnn.grouping()).unwrap();
    let model = DeviceCnn::upload(&dev, &cnn, &with_nan).unwrap();
    let on_device = upload_data(&dev, &data);
    let err = model.evaluate(&dev, &on_device).unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
    // Noise on the first module: the NaN above it reaches every copy's logits.
    let err = model.evaluate_module_noise(&dev, &on_device, 0, 0.1, 1, 3).unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
    let err = cnn.evaluate_module_noise(&with_nan, &data, 0, 0.1, 1, 3).unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
}

/// The nets have the modules the device paths need (an identity block and a downsampling one,
/// a GroupNorm alone, two dense layers together), and noise on each moves the CPU's loss, so the
/// comparisons above compare something.
fn the_nets_reach_every_path_of_the_device_schedule() {
    let (a, set_a, data_a) = fixture(NET_A, 30, 7);
    assert_eq!(a.module_names(), ["conv1", "layer1", "layer2", "fc1", "fc2"]);
    let (b, set_b, data_b) = fixture(NET_B, 30, 7);
    assert_eq!(b.module_names(), ["pw", "conv2", "norm", "head"]);
    assert_eq!(set_b.modules()[3].tensors.len(), 4, "head holds both dense layers");
    assert_eq!(stored_as(&b, &set_b, DType::F16).modules()[3].tensors.len(), 4, "regrouped after conversion");
    for (cnn, set, data) in [(a, set_a, data_a), (b, set_b, data_b)] {
        for module in 0..cnn.module_names().len() {
            let plain = cnn.evaluate(&set, &data).unwrap();
            let noisy = cnn.evaluate_module_noise(&set, &data, module, 0.1, 11, 2).unwrap();
            assert!(noisy.iter().all(|m| m.loss != plain.loss), "module {module}: the noise changes nothing");
        }
    }
}

gpu_test_main! {
    everywhere: [the_nets_reach_every_path_of_the_device_schedule],
    on_device: [
        plain_evaluation_on_cuda_matches_the_cpu,
        noisy_copies_of_every_module_on_cuda_match_the_cpu,
        more_copies_than_one_group_match_the_cpu,
        errors_on_cuda_name_the_problem,
        nan_weights_are_an_error_on_cuda,
        the_evaluator_on_cuda_matches_the_cpu,
    ],
}
