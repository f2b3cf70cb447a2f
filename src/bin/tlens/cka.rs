//! `tlens cka`: linear CKA between every layer of two activation files.

use crate::common::{json_f64, print_json, read_file, BackendArg};
use std::path::{Path, PathBuf};
use transferlens::cka::{cka_matrix, Estimator};
use transferlens::tensor::HostSlice;
use transferlens::{Error, Matrix, Result};

/// Linear CKA of every layer of A against every layer of B.
///
/// Each file holds one tensor per layer; the first dimension is the samples (the same samples,
/// in the same order, in both files) and the remaining dimensions are flattened into features.
/// Layers are listed in file order.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  tlens cka acts_pretrained.safetensors acts_finetuned.safetensors --estimator debiased\n\n\
JSON (--json): {\"rows\": [layers of A], \"cols\": [layers of B], \"values\": [[CKA]]}"
)]
pub struct CkaArgs {
    /// Activations of model A (safetensors: one tensor per layer, samples first).
    acts_a: PathBuf,
    /// Activations of model B, for the same samples.
    acts_b: PathBuf,
    /// The estimator: the biased HSIC of Kornblith et al., or the debiased U-statistic.
    #[arg(long, value_enum, default_value = "biased")]
    estimator: EstimatorArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EstimatorArg {
    Biased,
    Debiased,
}

/// One layer's activations, decoded from little-endian bytes into an aligned buffer.
struct Layer {
    name: String,
    data: Data,
    rows: usize,
    cols: usize,
}

enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
}

impl Layer {
    fn matrix(&self) -> Result<Matrix<'_>> {
        let slice = match &self.data {
            Data::F32(v) => HostSlice::F32(v),
            Data::F64(v) => HostSlice::F64(v),
            Data::F16(v) => HostSlice::F16(v),
            Data::BF16(v) => HostSlice::BF16(v),
        };
        Matrix::from_host(slice, self.rows, self.cols, self.cols)
            .map_err(|e| with_context(e, &format!("layer {:?}", self.name)))
    }
}

fn with_context(e: Error, what: &str) -> Error {
    let msg = format!("{what}: {e}");
    match e {
        Error::ShapeMismatch(_) => Error::ShapeMismatch(msg),
        Error::DegenerateInput(_) => Error::DegenerateInput(msg),
        Error::NonFinite(_) => Error::NonFinite(msg),
        Error::InvalidArgument(_) => Error::InvalidArgument(msg),
        other => other,
    }
}

/// Every tensor of a safetensors file as a layer, in file order.
fn load_layers(path: &Path) -> Result<Vec<Layer>> {
    let bytes = read_file(path)?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Format(format!("{}: not a valid safetensors file: {e}", path.display())))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Format(format!("{}: not a valid safetensors file: {e}", path.display())))?;
    let mut layers = Vec::new();
    for name in metadata.offset_keys() {
        let view = file.tensor(&name).map_err(|e| Error::Format(format!("{}: {name}: {e}", path.display())))?;
        let shape = view.shape();
        let Some((&rows, rest)) = shape.split_first() else {
            return Err(Error::ShapeMismatch(format!(
                "{}: tensor {name:?} is a scalar; activations need a first dimension of samples",
                path.display()
            )));
        };
        let cols: usize = rest.iter().product::<usize>().max(if rest.is_empty() { 1 } else { 0 });
        let raw = view.data();
        use safetensors::Dtype as D;
        let data = match view.dtype() {
            D::F32 => Data::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            D::F64 => Data::F64(raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()),
            D::F16 => Data::F16(raw.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap())).collect()),
            D::BF16 => {
                Data::BF16(raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap())).collect())
            }
            other => {
                return Err(Error::UnsupportedDtype(format!(
                    "{}: tensor {name:?} has dtype {other:?}; activations must be F32, F64, F16 or BF16",
                    path.display()
                )))
            }
        };
        layers.push(Layer { name, data, rows, cols });
    }
    if layers.is_empty() {
        return Err(Error::Format(format!("{}: the file holds no tensors", path.display())));
    }
    Ok(layers)
}

pub fn run(args: CkaArgs) -> Result<()> {
    let a = load_layers(&args.acts_a)?;
    let b = load_layers(&args.acts_b)?;
    let xs = a.iter().map(Layer::matrix).collect::<Result<Vec<_>>>()?;
    let ys = b.iter().map(Layer::matrix).collect::<Result<Vec<_>>>()?;
    let estimator = match args.estimator {
        EstimatorArg::Biased => Estimator::Biased,
        EstimatorArg::Debiased => Estimator::Debiased,
    };
    let ctx = args.backend.context()?;
    let values = cka_matrix(&ctx, &xs, &ys, estimator)?;
    let ny = b.len();
    if args.json {
        let rows: Vec<_> =
            values.chunks(ny).map(|r| serde_json::Value::Array(r.iter().map(|&v| json_f64(v)).collect())).collect();
        print_json(&serde_json::json!({
            "rows": a.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
            "cols": b.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
            "values": rows,
        }));
    } else {
        let width = a.iter().map(|l| l.name.len()).max().unwrap_or(0).max(4);
        let colw = b.iter().map(|l| l.name.len()).max().unwrap_or(0).max(8);
        print!("{:width$}", "A \\ B");
        for l in &b {
            print!("  {:>colw$}", l.name);
        }
        println!();
        for (l, row) in a.iter().zip(values.chunks(ny)) {
            print!("{:width$}", l.name);
            for v in row {
                print!("  {:>colw$.4}", v);
            }
            println!();
        }
    }
    Ok(())
}
