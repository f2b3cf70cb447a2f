//! `tlens study`: the embedded miniature of the study.

use crate::common::BackendArg;
use crate::progress::{Log, Progress};
use std::path::Path;
use transferlens::study::{self, Config};
use transferlens::{Error, Result};

/// Run the embedded miniature of the study: prints the tables, writes DIR/study.json and DIR/report.html.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tlens study --quick --out study-out")]
pub struct StudyArgs {
    /// A small version that finishes in under a minute on two CPU cores.
    #[arg(long)]
    quick: bool,
    /// A version of a few seconds that checks the pipeline, not the findings (for tests).
    #[arg(long, hide = true, conflicts_with = "quick")]
    tiny: bool,
    /// Folder for study.json, report.html and the exported models/ and data/ (created if
    /// missing; checked to be a writable folder before any work).
    #[arg(long, default_value = "tlens-study")]
    out: std::path::PathBuf,
    /// Number of seeds (each trains every model anew), instead of the size's (full 3, quick 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    seeds: Option<u32>,
    /// Where the analyses run (CKA, and the evaluations of curves, barriers and criticality;
    /// training stays on the CPU). The CPU (the default) gives the same figures on every
    /// machine; on CUDA a figure may differ where a loss lies within float rounding of a
    /// threshold.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendArg,
}

pub fn run(args: StudyArgs) -> Result<()> {
    let mut cfg = if args.tiny {
        Config::tiny()
    } else if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    if let Some(seeds) = args.seeds {
        cfg.seeds = seeds as usize;
    }
    check_out(&args.out)?;
    let ctx = args.backend.context()?;
    let started = std::time::Instant::now();
    // Elsewhere than on a terminal (a log, a pipe), one line per step.
    let progress = Progress::new(Log::Steps);
    let outcome = study::run(&ctx, &cfg, &mut |what, fraction| progress.update(what, Some(fraction)))?;
    progress.clear();
    print!("{}", outcome.tables);
    progress.update("writing the models, the data, study.json and report.html", Some(1.0));
    let (json_path, html_path) = outcome.save(&args.out)?;
    drop(progress);
    println!(
        "\nWrote {}, {} and the models and data under {} ({} run, {} seeds, {:.1} s)",
        json_path.display(),
        html_path.display(),
        args.out.display(),
        cfg.name,
        cfg.seeds,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fails, in one line, unless `out` is (or can be made) a folder this process can write in.
fn check_out(out: &Path) -> Result<()> {
    let fail = |why: String| Err(Error::Io(format!("--out {}: {why}", out.display())));
    if out.exists() && !out.is_dir() {
        return fail("exists and is not a folder".into());
    }
    if let Err(e) = std::fs::create_dir_all(out) {
        return fail(format!("cannot create the folder: {e}"));
    }
    let probe = out.join(format!(".tlens-write-check-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            // The probe is ours and empty; failing to remove it leaves a harmless empty file.
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => fail(format!("not writable: {e}")),
    }
}
