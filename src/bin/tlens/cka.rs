//! `tlens cka`: linear CKA between every layer of two activation files.

use crate::common::{json_f64, print_json, BackendArg};
use crate::progress::{Log, Progress};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::PathBuf;
use transferlens::cka::{choose_route, cka_matrix, CkaAccumulator, Estimator, Route};
use transferlens::params::{ActivationFile, ActivationLayer, HeaderEntry, RowBlock};
use transferlens::{Context, DType, Error, Matrix, Result};

/// Linear CKA of every layer of A against every layer of B.
///
/// Each file holds one tensor per layer; the first dimension is the samples (the same samples,
/// in the same order, in both files) and the remaining dimensions are flattened into features.
/// Layers are listed in file order.
///
/// Token activations (batch x tokens x features) take --mask NAME: a 0/1 tensor of batch x tokens
/// in the files (in one, or equal in both), 1 for a real token; each real token is then a sample
/// and padding is dropped.
///
/// The files are mapped and read in blocks of samples, so that files larger than memory work;
/// they must not change while tlens reads them. Runs longer than a few seconds show their
/// progress on stderr.
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
    /// Samples read per block (default: about 16 MiB of rows); for tests of the block edges.
    #[arg(long, value_name = "N", hide = true)]
    block_rows: Option<NonZeroUsize>,
    #[command(flatten)]
    stats: crate::cka_stats::StatsArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EstimatorArg {
    Biased,
    Debiased,
}

/// The mask named `name`: from whichever file holds it (equal in both when both do).
fn read_mask(name: &str, files: [&ActivationFile; 2]) -> Result<(Vec<usize>, Vec<bool>)> {
    let mut found: Option<(Vec<usize>, Vec<bool>, String)> = None;
    for file in files {
        let Some((entry, bytes)) = file.tensor_bytes(name) else { continue };
        let what = format!("{}: mask {name:?}", file.what());
        if entry.shape.len() != 2 {
            return Err(Error::ShapeMismatch(format!("{what} has shape {:?}; a mask is batch x tokens", entry.shape)));
        }
        let values = mask_values(entry, bytes).ok_or_else(|| {
            Error::UnsupportedDtype(format!(
                "{what} has dtype {}; a mask is 0/1 of a float or integer dtype",
                entry.dtype.name()
            ))
        })?;
        if let Some(v) = values.iter().find(|&&v| v != 0.0 && v != 1.0) {
            return Err(Error::InvalidArgument(format!("{what} holds {v}; a mask holds only 0 and 1")));
        }
        let keep: Vec<bool> = values.iter().map(|&v| v == 1.0).collect();
        if let Some((shape, other, first)) = &found {
            if *shape != entry.shape || *other != keep {
                return Err(Error::InvalidArgument(format!(
                    "{what} differs from the mask of the same name in {first}"
                )));
            }
        } else {
            found = Some((entry.shape.clone(), keep, file.what().to_string()));
        }
    }
    let (shape, keep, _) = found.ok_or_else(|| {
        Error::NotFound(format!(
            "--mask {name:?}: neither {} nor {} holds such a tensor",
            files[0].what(),
            files[1].what()
        ))
    })?;
    if !keep.iter().any(|&k| k) {
        return Err(Error::DegenerateInput(format!("mask {name:?} keeps no token")));
    }
    Ok((shape, keep))
}

/// The elements of a float or integer (I64, I32, U8, BOOL, ...) tensor, widened; None for
/// other dtypes.
fn mask_values(entry: &HeaderEntry, bytes: &[u8]) -> Option<Vec<f64>> {
    let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    match entry.dtype.weight() {
        Some(DType::F32) => {
            return Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect())
        }
        Some(DType::F64) => {
            return Some(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        Some(DType::F16) => {
            return Some(bytes.chunks_exact(2).map(|c| half::f16::from_bits(le2(c)).to_f64()).collect())
        }
        Some(DType::BF16) => {
            return Some(bytes.chunks_exact(2).map(|c| half::bf16::from_bits(le2(c)).to_f64()).collect())
        }
        None => {}
    }
    let numel: usize = entry.shape.iter().product();
    let width = bytes.len().checked_div(numel)?;
    let name = entry.dtype.name();
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

/// One activations file and the layers taken from it.
struct Side {
    file: ActivationFile,
    layers: Vec<ActivationLayer>,
}

impl Side {
    /// The layers' names, for messages and the output.
    fn names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.name()).collect()
    }

    /// Every layer with its batch x tokens rows as the samples, checked against the mask's shape.
    fn tokens(self, mask_shape: &[usize]) -> Result<Side> {
        let what = self.file.what().to_string();
        let layers = self
            .layers
            .iter()
            .map(|l| match l.with_sample_dims(2) {
                Some(t) if l.shape()[..2] == mask_shape[..] => Ok(t),
                _ => Err(Error::ShapeMismatch(format!(
                    "{what}: layer {:?} has shape {:?}, but the mask is {mask_shape:?}: a masked layer is batch x tokens x features",
                    l.name(),
                    l.shape()
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Side { layers, ..self })
    }

    /// Appends the rows `runs` of every layer to its block, then hands their pages back.
    fn read(&self, runs: &[Range<usize>], blocks: &mut [RowBlock]) -> Result<()> {
        for (layer, block) in self.layers.iter().zip(blocks) {
            for run in runs {
                self.file.read_rows(layer, run.clone(), block)?;
            }
            if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
                self.file.release_rows(layer, first.start..last.end);
            }
        }
        Ok(())
    }

    /// Empty blocks, one per layer.
    fn blocks(&self) -> Vec<RowBlock> {
        self.layers.iter().map(|l| RowBlock::for_dtype(l.dtype())).collect()
    }

    fn matrices<'b>(&self, blocks: &'b [RowBlock]) -> Result<Vec<Matrix<'b>>> {
        self.layers.iter().zip(blocks).map(|(l, b)| b.matrix(l.cols())).collect()
    }
}

/// The samples: every row of the layers, or the rows (tokens) a mask keeps.
enum Samples {
    All(usize),
    Kept(Vec<usize>),
}

impl Samples {
    fn count(&self) -> usize {
        match self {
            Samples::All(n) => *n,
            Samples::Kept(rows) => rows.len(),
        }
    }

    /// The layer rows of samples `range`, as runs of consecutive rows.
    fn runs(&self, range: Range<usize>) -> Vec<Range<usize>> {
        match self {
            Samples::All(_) => vec![range],
            Samples::Kept(rows) => {
                let mut runs: Vec<Range<usize>> = Vec::new();
                for &r in &rows[range] {
                    match runs.last_mut() {
                        Some(run) if run.end == r => run.end += 1,
                        _ => runs.push(r..r + 1),
                    }
                }
                runs
            }
        }
    }
}

/// Rewrites the library's layer labels (`x[2]`, `y[0]`) as the file and the layer's name.
fn name_layers(e: Error, a: &Side, b: &Side) -> Error {
    let label = regex::Regex::new(r"\b([xy])\[(\d+)\]").expect("a valid pattern");
    let rename = |m: &str| -> String {
        label
            .replace_all(m, |c: &regex::Captures| {
                let side = if &c[1] == "x" { a } else { b };
                match c[2].parse::<usize>().ok().and_then(|i| side.layers.get(i)) {
                    Some(l) => format!("{} layer {:?}", side.file.what(), l.name()),
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
fn check_samples(a: &Side, b: &Side, masked: bool) -> Result<()> {
    let first = &a.layers[0];
    let n = first.rows();
    let unit = if masked { "kept tokens" } else { "samples (first dimension)" };
    for side in [a, b] {
        if let Some(l) = side.layers.iter().find(|l| l.rows() != n) {
            return Err(Error::ShapeMismatch(format!(
                "{} layer {:?} has {} {unit} but {} layer {:?} has {n}: both files must hold the same samples, in the same order",
                side.file.what(),
                l.name(),
                l.rows(),
                a.file.what(),
                first.name()
            )));
        }
    }
    Ok(())
}

/// Rows per block: about this many bytes of converted rows, all layers of both files together.
const BLOCK_BYTES: usize = 16 << 20;
/// The fewest rows per block, so that each block's products are large enough to run at full
/// speed (each block also adds its `p x q` products to the accumulator's).
const MIN_BLOCK_ROWS: usize = 256;

fn default_block_rows(a: &Side, b: &Side) -> usize {
    let row_bytes: usize =
        a.layers.iter().chain(&b.layers).map(|l| l.cols() * if l.dtype() == DType::F64 { 8 } else { 4 }).sum();
    (BLOCK_BYTES / row_bytes.max(1)).max(MIN_BLOCK_ROWS)
}

/// CKA of every layer of A against every layer of B, row-major.
///
/// The samples are read in blocks of `block_rows`. When the products are formed in feature space
/// (the cheaper route unless the layers are wider than the samples are many), each block goes
/// through the exact streaming accumulator and is dropped: memory is a few blocks plus the
/// `p x q` products, whatever the number of samples. Otherwise (few samples of wide layers, whose
/// `n x n` Grams are cheaper) the blocks are kept and CKA is computed on the whole data.
fn layer_cka(
    ctx: &Context,
    a: &Side,
    b: &Side,
    samples: &Samples,
    estimator: Estimator,
    block_rows: usize,
) -> Result<Vec<f64>> {
    let n = samples.count();
    let (mut blocks_a, mut blocks_b) = (a.blocks(), b.blocks());
    let mut streamed: Option<CkaAccumulator> = None;
    let progress = Progress::new(Log::Tenths);
    let what = format!("tlens cka: {n} samples");
    for start in (0..n).step_by(block_rows) {
        let end = (start + block_rows).min(n);
        if streamed.is_some() {
            blocks_a.iter_mut().chain(&mut blocks_b).for_each(RowBlock::clear);
        }
        let runs = samples.runs(start..end);
        a.read(&runs, &mut blocks_a)?;
        b.read(&runs, &mut blocks_b)?;
        let (xs, ys) = (a.matrices(&blocks_a)?, b.matrices(&blocks_b)?);
        if start == 0 && choose_route(n, &xs, &ys) == Route::Feature {
            streamed = Some(CkaAccumulator::new(xs.len(), ys.len(), estimator)?);
        }
        if let Some(acc) = &mut streamed {
            acc.update(ctx, &xs, &ys)?;
        }
        progress.update(&what, Some(end as f64 / n as f64));
    }
    match streamed {
        Some(acc) => acc.result(),
        None => cka_matrix(ctx, &a.matrices(&blocks_a)?, &b.matrices(&blocks_b)?, estimator),
    }
}

pub fn run(args: CkaArgs) -> Result<()> {
    let estimator = match args.estimator {
        EstimatorArg::Biased => Estimator::Biased,
        EstimatorArg::Debiased => Estimator::Debiased,
    };
    if args.stats.requested() {
        // The statistics resample the samples, so they hold both layers in memory.
        return crate::cka_stats::run(
            &args.acts_a,
            &args.acts_b,
            estimator,
            args.mask.as_deref(),
            args.json,
            &args.stats,
        );
    }
    // SAFETY: the files are mapped; `tlens cka` documents that they must not change while it
    // reads them (a truncated file ends the process with SIGBUS).
    let (file_a, file_b) = unsafe { (ActivationFile::open(&args.acts_a)?, ActivationFile::open(&args.acts_b)?) };
    let mask = match &args.mask {
        Some(name) => Some(read_mask(name, [&file_a, &file_b])?),
        None => None,
    };
    let side = |file: ActivationFile| -> Result<Side> {
        let layers = file.layers(args.mask.as_deref())?;
        if layers.is_empty() {
            return Err(Error::Format(format!("{}: the file holds no layer besides the mask", file.what())));
        }
        Ok(Side { file, layers })
    };
    let (mut a, mut b) = (side(file_a)?, side(file_b)?);
    let samples = match mask {
        None => Samples::All(a.layers[0].rows()),
        Some((shape, keep)) => {
            (a, b) = (a.tokens(&shape)?, b.tokens(&shape)?);
            Samples::Kept(keep.iter().enumerate().filter(|(_, &k)| k).map(|(i, _)| i).collect())
        }
    };
    check_samples(&a, &b, args.mask.is_some())?;
    let ctx = args.backend.context()?;
    let block_rows = args.block_rows.map_or_else(|| default_block_rows(&a, &b), NonZeroUsize::get);
    let values = layer_cka(&ctx, &a, &b, &samples, estimator, block_rows).map_err(|e| name_layers(e, &a, &b))?;
    let (names_a, names_b) = (a.names(), b.names());
    let ny = names_b.len();
    if args.json {
        let rows: Vec<_> =
            values.chunks(ny).map(|r| serde_json::Value::Array(r.iter().map(|&v| json_f64(v)).collect())).collect();
        print_json(&serde_json::json!({
            "rows": names_a,
            "cols": names_b,
            "values": rows,
        }));
    } else {
        let width = names_a.iter().map(|l| l.len()).max().unwrap_or(0).max(4);
        let colw = names_b.iter().map(|l| l.len()).max().unwrap_or(0).max(8);
        print!("{:width$}", "A \\ B");
        for l in &names_b {
            print!("  {:>colw$}", l);
        }
        println!();
        for (l, row) in names_a.iter().zip(values.chunks(ny)) {
            print!("{:width$}", l);
            for v in row {
                print!("  {:>colw$.4}", v);
            }
            println!();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_samples_are_read_as_runs_of_consecutive_rows() {
        let kept = Samples::Kept(vec![0, 1, 2, 5, 6, 9]);
        assert_eq!(kept.count(), 6);
        assert_eq!(kept.runs(0..6), [0..3, 5..7, 9..10]);
        assert_eq!(kept.runs(2..5), [2..3, 5..7]);
        let all = Samples::All(10).runs(3..8);
        assert_eq!((all.len(), &all[0]), (1, &(3..8)), "every row: one run");
    }
}
