//! `tlens cka`: linear CKA between every layer of two activation files.

use crate::common::{json_f64, print_json, BackendArg};
use std::path::PathBuf;
use transferlens::cka::{cka_matrix, Estimator};
use transferlens::params::{activation_layers, ParamSet, Tensor};
use transferlens::Result;

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

pub fn run(args: CkaArgs) -> Result<()> {
    // The library's reader and activation loader (the ones the fuzz targets exercise).
    let (file_a, file_b) = (ParamSet::load(&args.acts_a)?, ParamSet::load(&args.acts_b)?);
    let xs = activation_layers(&file_a, &args.acts_a.display().to_string())?;
    let ys = activation_layers(&file_b, &args.acts_b.display().to_string())?;
    let (a, b) = (file_a.tensors(), file_b.tensors());
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
