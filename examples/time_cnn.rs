//! Trains the built-in CNN for the side-by-side comparison with PyTorch in
//! benches/compare/cnn_torch.py, which writes the data, builds the same network in PyTorch from
//! the same spec and weights, checks that both agree, and times both in alternation.
//!
//! Usage: time_cnn SPEC.json DATA.safetensors OUTDIR
//!   DATA holds `x` (n x C x H x W, f32) and `y` (n labels stored as f32).
//! Writes OUTDIR/init.safetensors (the weights of `init(0)`) and OUTDIR/step.safetensors (those
//! weights after one SGD step on the whole data set: lr 0.1, momentum 0.9, weight decay 5e-4),
//! prints the loss and 0-1 error of the initial weights on one line, then for each line read
//! from stdin trains a copy of the initial weights for one epoch (batch 64, lr 0.05, momentum
//! 0.9, weight decay 5e-4) and prints its wall-clock seconds and the CPU seconds of the process
//! (all its threads) on one line, until stdin closes.

use std::io::{BufRead, Write};
use std::time::Instant;
use transferlens::model::{Cnn, Dataset, TrainOptions};
use transferlens::ParamSet;

/// CPU seconds used so far by all threads of this process.
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec, and CLOCK_PROCESS_CPUTIME_ID is a clock that
    // every Linux has; the call writes only `t`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn tensor_f32(set: &ParamSet, name: &str) -> Vec<f32> {
    let t = set.tensor(name).unwrap_or_else(|| panic!("DATA has no tensor {name:?}"));
    t.host().expect("host tensor").to_f32().into_owned()
}

fn main() -> transferlens::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() == 4, "usage: time_cnn SPEC.json DATA.safetensors OUTDIR");
    let cnn = Cnn::from_json(&std::fs::read_to_string(&args[1]).expect("readable spec"))?;
    let file = ParamSet::load(&args[2])?;
    let (x, y) = (tensor_f32(&file, "x"), tensor_f32(&file, "y"));
    let shape = cnn.input_shape();
    let data = Dataset::new(x, y.iter().map(|&v| v as u32).collect(), shape.c * shape.h * shape.w, cnn.classes())?;
    let out = std::path::Path::new(&args[3]);

    let init = cnn.init(0)?;
    init.save(out.join("init.safetensors"))?;
    let mut step = init.try_clone()?;
    let full_batch =
        TrainOptions { epochs: 1, batch: data.n, lr: 0.1, momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    cnn.train(&mut step, &data, &full_batch)?;
    step.save(out.join("step.safetensors"))?;

    let m = cnn.evaluate(&init, &data)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{:.9} {:.9}", m.loss, m.error).unwrap();
    stdout.flush().unwrap();

    let epoch =
        TrainOptions { epochs: 1, batch: 64, lr: 0.05, momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
    for _ in std::io::stdin().lock().lines() {
        let mut p = init.try_clone()?;
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        cnn.train(&mut p, &data, &epoch)?;
        writeln!(stdout, "{:.6} {:.6}", start.elapsed().as_secs_f64(), cpu_seconds() - cpu_start).unwrap();
        stdout.flush().unwrap();
    }
    Ok(())
}
