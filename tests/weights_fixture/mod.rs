//! Fixtures for the weight-space tests: a tiny safetensors writer and reader written here,
//! independently of the library, and torchvision-ResNet-style checkpoints in mixed dtypes.
#![allow(dead_code)]

use half::{bf16, f16};
use std::path::Path;

/// SplitMix64: a small seeded generator, so that every run sees the same fresh data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), never exactly zero in practice.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// One tensor for the writer: dtype as safetensors spells it, shape, raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct Raw {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Raw {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The elements as f64 (weights only), decoded here with `half` and from_le_bytes.
    pub fn values(&self) -> Vec<f64> {
        decode(self.dtype, &self.bytes)
    }
    pub fn is_weight(&self) -> bool {
        matches!(self.dtype, "F32" | "F64" | "F16" | "BF16")
    }
}

pub fn decode(dtype: &str, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f64())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f64())
            .collect(),
        other => panic!("decode: {other} is not a weight dtype"),
    }
}

pub fn encode(dtype: &str, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            "F32" => out.extend((v as f32).to_le_bytes()),
            "F64" => out.extend(v.to_le_bytes()),
            "F16" => out.extend(f16::from_f64(v).to_le_bytes()),
            "BF16" => out.extend(bf16::from_f64(v).to_le_bytes()),
            other => panic!("encode: {other}"),
        }
    }
    out
}

/// The safetensors bytes of `tensors`, in the given order, with optional metadata.
pub fn to_bytes(tensors: &[Raw], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = String::from("{");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":{");
        let items: Vec<_> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::json!(k), serde_json::json!(v)))
            .collect();
        header.push_str(&items.join(","));
        header.push_str("},");
    }
    let mut at = 0;
    let mut items = Vec::new();
    for t in tensors {
        items.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            serde_json::json!(t.name),
            t.dtype,
            t.shape,
            at,
            at + t.bytes.len()
        ));
        at += t.bytes.len();
    }
    header.push_str(&items.join(","));
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    for t in tensors {
        out.extend(&t.bytes);
    }
    out
}

pub fn write(path: &Path, tensors: &[Raw], metadata: &[(&str, &str)]) {
    std::fs::write(path, to_bytes(tensors, metadata)).unwrap();
}

/// Reads a safetensors file with serde_json: tensors in offset order.
pub fn read(path: &Path) -> Vec<Raw> {
    let file = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    let mut out: Vec<(usize, Raw)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let s = v["data_offsets"][0].as_u64().unwrap() as usize;
            let e = v["data_offsets"][1].as_u64().unwrap() as usize;
            let dtype: &'static str = match v["dtype"].as_str().unwrap() {
                "F32" => "F32",
                "F64" => "F64",
                "F16" => "F16",
                "BF16" => "BF16",
                "I64" => "I64",
                other => panic!("unexpected dtype {other}"),
            };
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                s,
                Raw {
                    name: k.clone(),
                    dtype,
                    shape,
                    bytes: data[s..e].to_vec(),
                },
            )
        })
        .collect();
    out.sort_by_key(|(s, _)| *s);
    out.into_iter().map(|(_, r)| r).collect()
}

fn weight(rng: &mut Rng, name: &str, dtype: &'static str, shape: &[usize], scale: f64) -> Raw {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| scale * rng.uniform()).collect();
    Raw {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: encode(dtype, &values),
    }
}

fn counter(name: &str, value: i64) -> Raw {
    Raw {
        name: name.into(),
        dtype: "I64",
        shape: vec![],
        bytes: value.to_le_bytes().to_vec(),
    }
}

/// A torchvision-ResNet-style checkpoint in mixed dtypes and awkward sizes, in file order:
/// odd-sized F16 tensors leave later tensors unaligned, and two tensors span several of the
/// library's parallel chunks.
pub fn resnet(seed: u64) -> Vec<Raw> {
    let mut r = Rng(seed);
    let r = &mut r;
    vec![
        weight(r, "conv1.weight", "F32", &[8, 3, 7, 7], 0.2),
        weight(r, "bn1.weight", "F32", &[8], 1.0),
        weight(r, "bn1.bias", "F32", &[8], 0.1),
        weight(r, "bn1.running_mean", "F32", &[8], 0.5),
        weight(r, "bn1.running_var", "F32", &[8], 2.0),
        counter("bn1.num_batches_tracked", 1000 + (seed % 97) as i64),
        weight(r, "layer1.0.conv1.weight", "BF16", &[8, 8, 3, 3], 0.3),
        weight(r, "layer1.0.bn1.weight", "F16", &[7], 1.0),
        counter("layer1.0.bn1.num_batches_tracked", 77),
        weight(r, "layer1.0.conv2.weight", "F16", &[8, 8, 3, 3], 0.3),
        weight(r, "layer1.1.conv1.weight", "F64", &[8, 8, 1, 1], 0.5),
        weight(r, "layer1.1.bn1.bias", "F16", &[5], 0.1),
        weight(r, "layer2.0.conv1.weight", "F32", &[13, 8, 3, 3], 0.2),
        weight(
            r,
            "layer2.0.downsample.0.weight",
            "BF16",
            &[13, 8, 1, 1],
            0.4,
        ),
        weight(r, "layer2.0.downsample.1.weight", "F32", &[13], 1.0),
        weight(r, "layer3.0.conv1.weight", "F32", &[67, 33, 31], 0.05),
        weight(r, "layer4.0.conv1.weight", "BF16", &[70001], 0.05),
        weight(r, "layer4.0.conv2.weight", "F16", &[3, 21845], 0.05),
        weight(r, "fc.weight", "F32", &[10, 17], 0.1),
        weight(r, "fc.bias", "F64", &[10], 0.1),
    ]
}

/// The module of `name` by the first `depth` components (depth 1 is the default grouping).
pub fn module_at_depth(name: &str, depth: usize) -> String {
    name.split('.').take(depth).collect::<Vec<_>>().join(".")
}

/// Per-module squared distances in f64, modules in first-appearance order (weights only).
pub fn reference_sq_distances(a: &[Raw], b: &[Raw], depth: usize) -> Vec<(String, usize, f64)> {
    let mut out: Vec<(String, usize, f64)> = Vec::new();
    for t in a.iter().filter(|t| t.is_weight()) {
        let u = b.iter().find(|u| u.name == t.name).unwrap();
        let (x, y) = (t.values(), u.values());
        let s: f64 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum();
        let m = module_at_depth(&t.name, depth);
        match out.iter_mut().find(|e| e.0 == m) {
            Some(e) => {
                e.1 += x.len();
                e.2 += s;
            }
            None => out.push((m, x.len(), s)),
        }
    }
    out
}
