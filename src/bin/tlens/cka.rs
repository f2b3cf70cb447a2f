//! `tlens cka`: linear CKA between every layer of two activation files.

use crate::common::{json_f64, print_json, BackendArg};
use std::path::{Path, PathBuf};
use transferlens::cka::{cka_matrix, Estimator};
use transferlens::params::{ParamSet, Tensor};
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

/// A layer's activations as a matrix: the first dimension is the samples, the others are
/// flattened into features. Scalars and non-float dtypes are refused, naming the layer.
fn layer_matrix<'a>(layer: &'a Tensor, path: &Path) -> Result<Matrix<'a>> {
    let name = layer.name();
    let Some((&rows, rest)) = layer.shape().split_first() else {
        return Err(Error::ShapeMismatch(format!(
            "{}: tensor {name:?} is a scalar; activations need a first dimension of samples",
            path.display()
        )));
    };
    if layer.dtype().weight().is_none() {
        return Err(Error::UnsupportedDtype(format!(
            "{}: tensor {name:?} has dtype {}; activations must be F32, F64, F16 or BF16",
            path.display(),
            layer.dtype().name()
        )));
    }
    let cols: usize = rest.iter().product();
    Matrix::from_host(layer.host()?, rows, cols, cols).map_err(|e| with_context(e, &format!("layer {name:?}")))
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

/// The layers of an activations file (one tensor per layer, in file order), read by the
/// library's safetensors reader.
fn load_layers(path: &Path) -> Result<ParamSet> {
    let layers = ParamSet::load(path)?;
    if layers.tensors().is_empty() {
        return Err(Error::Format(format!("{}: the file holds no tensors", path.display())));
    }
    Ok(layers)
}

pub fn run(args: CkaArgs) -> Result<()> {
    let (file_a, file_b) = (load_layers(&args.acts_a)?, load_layers(&args.acts_b)?);
    let (a, b) = (file_a.tensors(), file_b.tensors());
    let xs = a.iter().map(|l| layer_matrix(l, &args.acts_a)).collect::<Result<Vec<_>>>()?;
    let ys = b.iter().map(|l| layer_matrix(l, &args.acts_b)).collect::<Result<Vec<_>>>()?;
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
            "rows": a.iter().map(Tensor::name).collect::<Vec<_>>(),
            "cols": b.iter().map(Tensor::name).collect::<Vec<_>>(),
            "values": rows,
        }));
    } else {
        let width = a.iter().map(|l| l.name().len()).max().unwrap_or(0).max(4);
        let colw = b.iter().map(|l| l.name().len()).max().unwrap_or(0).max(8);
        print!("{:width$}", "A \\ B");
        for l in b {
            print!("  {:>colw$}", l.name());
        }
        println!();
        for (l, row) in a.iter().zip(values.chunks(ny)) {
            print!("{:width$}", l.name());
            for v in row {
                print!("  {:>colw$.4}", v);
            }
            println!();
        }
    }
    Ok(())
}
