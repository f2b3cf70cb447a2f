//! `tlens cka`: linear CKA between every layer of two activation files.

use crate::common::{json_f64, print_json, BackendArg};
use std::path::{Path, PathBuf};
use transferlens::cka::{cka_matrix, Estimator};
use transferlens::params::{activation_layers, ParamSet, Tensor};
use transferlens::tensor::HostSlice;
use transferlens::{Error, Matrix, Result};

/// Linear CKA of every layer of A against every layer of B.
///
/// Each file holds one tensor per layer; the first dimension is the samples (the same samples,
/// in the same order, in both files) and the remaining dimensions are flattened into features.
/// Layers are listed in file order.
///
/// Token activations (batch x tokens x features) take --mask NAME: a 0/1 tensor of batch x tokens
/// in the files (in one, or equal in both), 1 for a real token; each real token is then a sample
/// and padding is dropped.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tlens cka acts_pretrained.safetensors acts_finetuned.safetensors --estimator debiased\n  \
tlens cka bert_acts.safetensors bert_ft_acts.safetensors --mask attention_mask\n\n\
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
    /// A 0/1 tensor (batch x tokens) in the files: drops the tokens marked 0 (padding) from
    /// every layer of shape batch x tokens x features; each remaining token is a sample.
    #[arg(long, value_name = "NAME")]
    mask: Option<String>,
    #[command(flatten)]
    stats: crate::cka_stats::StatsArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EstimatorArg {
    Biased,
    Debiased,
}

/// A layer's rows with the masked tokens gathered, in the layer's precision class.
enum Gathered {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The mask named `name`: from whichever file holds it (equal in both when both do).
fn read_mask(name: &str, files: [(&ParamSet, &Path); 2]) -> Result<(Vec<usize>, Vec<bool>)> {
    let mut found: Option<(Vec<usize>, Vec<bool>, String)> = None;
    for (set, path) in files {
        let Some(t) = set.tensor(name) else { continue };
        let what = format!("{}: mask {name:?}", path.display());
        if t.shape().len() != 2 {
            return Err(Error::ShapeMismatch(format!("{what} has shape {:?}; a mask is batch x tokens", t.shape())));
        }
        let values: Vec<f64> = match t.host() {
            Ok(h) => to_f64(h),
            Err(_) => integer_values(t).ok_or_else(|| {
                Error::UnsupportedDtype(format!(
                    "{what} has dtype {}; a mask is 0/1 of a float or integer dtype",
                    t.dtype().name()
                ))
            })?,
        };
        if let Some(v) = values.iter().find(|&&v| v != 0.0 && v != 1.0) {
            return Err(Error::InvalidArgument(format!("{what} holds {v}; a mask holds only 0 and 1")));
        }
        let keep: Vec<bool> = values.iter().map(|&v| v == 1.0).collect();
        if let Some((shape, other, first)) = &found {
            if *shape != t.shape() || *other != keep {
                return Err(Error::InvalidArgument(format!(
                    "{what} differs from the mask of the same name in {first}"
                )));
            }
        } else {
            found = Some((t.shape().to_vec(), keep, path.display().to_string()));
        }
    }
    let (shape, keep, _) = found.ok_or_else(|| {
        Error::NotFound(format!(
            "--mask {name:?}: neither {} nor {} holds such a tensor",
            files[0].1.display(),
            files[1].1.display()
        ))
    })?;
    if !keep.iter().any(|&k| k) {
        return Err(Error::DegenerateInput(format!("mask {name:?} keeps no token")));
    }
    Ok((shape, keep))
}

/// The elements of an integer tensor (I64, I32, U8, BOOL, ...), widened; None for other dtypes.
fn integer_values(t: &Tensor) -> Option<Vec<f64>> {
    let bytes = t.bytes().ok()?;
    let width = bytes.len().checked_div(t.numel())?;
    let name = t.dtype().name();
    let signed = name.starts_with('I');
    if !(signed || name.starts_with('U') || name == "BOOL") || ![1, 2, 4, 8].contains(&width) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(width)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(c);
                let u = u64::from_le_bytes(b);
                if signed && width < 8 && c[width - 1] & 0x80 != 0 {
                    (u as i64 - (1i64 << (8 * width))) as f64
                } else if signed {
                    u as i64 as f64
                } else {
                    u as f64
                }
            })
            .collect(),
    )
}

fn to_f64(h: HostSlice<'_>) -> Vec<f64> {
    match h {
        HostSlice::F32(v) => v.iter().map(|&x| x as f64).collect(),
        HostSlice::F64(v) => v.to_vec(),
        HostSlice::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        HostSlice::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
    }
}

/// Layer `t` (batch x tokens x features...) with only the kept tokens, one row each.
fn gather(t: &Tensor, mask_shape: &[usize], keep: &[bool], what: &str) -> Result<(Gathered, usize, usize)> {
    let shape = t.shape();
    if shape.len() < 2 || shape[..2] != mask_shape[..] {
        return Err(Error::ShapeMismatch(format!(
            "{what}: layer {:?} has shape {shape:?}, but the mask is {mask_shape:?}: a masked layer is batch x tokens x features",
            t.name()
        )));
    }
    let cols: usize = shape[2..].iter().product();
    let rows = keep.iter().filter(|&&k| k).count();
    let rows_of = |k: usize| k * cols..(k + 1) * cols;
    let kept = keep.iter().enumerate().filter(|(_, &k)| k).map(|(i, _)| i);
    let host = t.host().map_err(|e| Error::UnsupportedDtype(format!("{what}: layer {:?}: {e}", t.name())))?;
    let g = match host {
        HostSlice::F64(v) => Gathered::F64(kept.flat_map(|i| v[rows_of(i)].iter().copied()).collect()),
        HostSlice::F32(v) => Gathered::F32(kept.flat_map(|i| v[rows_of(i)].iter().copied()).collect()),
        HostSlice::F16(v) => Gathered::F32(kept.flat_map(|i| v[rows_of(i)].iter().map(|x| x.to_f32())).collect()),
        HostSlice::BF16(v) => Gathered::F32(kept.flat_map(|i| v[rows_of(i)].iter().map(|x| x.to_f32())).collect()),
    };
    Ok((g, rows, cols))
}

fn view(g: &(Gathered, usize, usize)) -> Result<Matrix<'_>> {
    match &g.0 {
        Gathered::F32(v) => Matrix::new(v, g.1, g.2, g.2),
        Gathered::F64(v) => Matrix::new(v, g.1, g.2, g.2),
    }
}

/// Rewrites the library's layer labels (`x[2]`, `y[0]`) as the file and the layer's name.
fn name_layers(e: Error, a: (&Path, &[&Tensor]), b: (&Path, &[&Tensor])) -> Error {
    let label = regex::Regex::new(r"\b([xy])\[(\d+)\]").expect("a valid pattern");
    let rename = |m: &str| -> String {
        label
            .replace_all(m, |c: &regex::Captures| {
                let (path, layers) = if &c[1] == "x" { a } else { b };
                match c[2].parse::<usize>().ok().and_then(|i| layers.get(i)) {
                    Some(t) => format!("{} layer {:?}", path.display(), t.name()),
                    None => c[0].to_string(),
                }
            })
            .into_owned()
    };
    match e {
        Error::ShapeMismatch(m) => Error::ShapeMismatch(rename(&m)),
        Error::DegenerateInput(m) => Error::DegenerateInput(rename(&m)),
        Error::NonFinite(m) => Error::NonFinite(rename(&m)),
        Error::InvalidArgument(m) => Error::InvalidArgument(rename(&m)),
        Error::UnsupportedDtype(m) => Error::UnsupportedDtype(rename(&m)),
        other => other,
    }
}

/// Checks that every layer has the samples of A's first layer, naming the files and layers.
fn check_samples(
    xs: &[Matrix],
    ys: &[Matrix],
    a: (&Path, &[&Tensor]),
    b: (&Path, &[&Tensor]),
    masked: bool,
) -> Result<()> {
    let n = xs[0].rows();
    let unit = if masked { "kept tokens" } else { "samples (first dimension)" };
    for (layers, (path, names)) in [(xs, a), (ys, b)] {
        for (m, t) in layers.iter().zip(names) {
            if m.rows() != n {
                return Err(Error::ShapeMismatch(format!(
                    "{} layer {:?} has {} {unit} but {} layer {:?} has {n}: both files must hold the same samples, in the same order",
                    path.display(),
                    t.name(),
                    m.rows(),
                    a.0.display(),
                    a.1[0].name()
                )));
            }
        }
    }
    Ok(())
}

pub fn run(args: CkaArgs) -> Result<()> {
    // The library's reader and activation loader (the ones the fuzz targets exercise).
    let (file_a, file_b) = (ParamSet::load(&args.acts_a)?, ParamSet::load(&args.acts_b)?);
    let estimator = match args.estimator {
        EstimatorArg::Biased => Estimator::Biased,
        EstimatorArg::Debiased => Estimator::Debiased,
    };
    if args.stats.requested() {
        return crate::cka_stats::run(
            &args.acts_a,
            &args.acts_b,
            estimator,
            args.mask.as_deref(),
            args.json,
            &args.stats,
        );
    }
    let is_layer = |t: &&Tensor| args.mask.as_deref() != Some(t.name());
    let a: Vec<&Tensor> = file_a.tensors().iter().filter(is_layer).collect();
    let b: Vec<&Tensor> = file_b.tensors().iter().filter(is_layer).collect();
    let (side_a, side_b) = ((args.acts_a.as_path(), &a[..]), (args.acts_b.as_path(), &b[..]));
    let ctx = args.backend.context()?;
    let values = match &args.mask {
        None => {
            let xs = activation_layers(&file_a, &args.acts_a.display().to_string())?;
            let ys = activation_layers(&file_b, &args.acts_b.display().to_string())?;
            check_samples(&xs, &ys, side_a, side_b, false)?;
            cka_matrix(&ctx, &xs, &ys, estimator).map_err(|e| name_layers(e, side_a, side_b))?
        }
        Some(name) => {
            let (shape, keep) = read_mask(name, [(&file_a, &args.acts_a), (&file_b, &args.acts_b)])?;
            for (layers, path) in [(&a, &args.acts_a), (&b, &args.acts_b)] {
                if layers.is_empty() {
                    return Err(Error::Format(format!("{}: the file holds no layer besides the mask", path.display())));
                }
            }
            let ga: Vec<_> = a
                .iter()
                .map(|t| gather(t, &shape, &keep, &args.acts_a.display().to_string()))
                .collect::<Result<_>>()?;
            let gb: Vec<_> = b
                .iter()
                .map(|t| gather(t, &shape, &keep, &args.acts_b.display().to_string()))
                .collect::<Result<_>>()?;
            let xs: Vec<Matrix> = ga.iter().map(view).collect::<Result<_>>()?;
            let ys: Vec<Matrix> = gb.iter().map(view).collect::<Result<_>>()?;
            check_samples(&xs, &ys, side_a, side_b, true)?;
            cka_matrix(&ctx, &xs, &ys, estimator).map_err(|e| name_layers(e, side_a, side_b))?
        }
    };
    let ny = b.len();
    if args.json {
        let rows: Vec<_> =
            values.chunks(ny).map(|r| serde_json::Value::Array(r.iter().map(|&v| json_f64(v)).collect())).collect();
        print_json(&serde_json::json!({
            "rows": a.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "cols": b.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "values": rows,
        }));
    } else {
        let width = a.iter().map(|l| l.name().len()).max().unwrap_or(0).max(4);
        let colw = b.iter().map(|l| l.name().len()).max().unwrap_or(0).max(8);
        print!("{:width$}", "A \\ B");
        for l in &b {
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
