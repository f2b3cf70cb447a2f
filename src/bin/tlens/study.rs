//! `tlens study`: the embedded miniature of the study.

use crate::common::BackendArg;
use std::io::IsTerminal;
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
    /// Folder for study.json and report.html (created if missing).
    #[arg(long, default_value = "tlens-study")]
    out: std::path::PathBuf,
    /// Where the analyses run (CKA, and the evaluations of curves, barriers and criticality;
    /// training stays on the CPU). The CPU (the default) gives the same figures on every
    /// machine; on CUDA a figure may differ where a loss lies within float rounding of a
    /// threshold.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendArg,
}

pub fn run(args: StudyArgs) -> Result<()> {
    let cfg = if args.tiny {
        Config::tiny()
    } else if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::Io(format!("{}: {e}", args.out.display())))?;
    let started = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut progress = |what: &str, frac: f64| {
        if tty {
            let bar = (frac.clamp(0.0, 1.0) * 30.0) as usize;
            eprint!("\r[{}{}] {:>3.0}% {:<40}", "#".repeat(bar), ".".repeat(30 - bar), frac * 100.0, what);
            if frac >= 1.0 {
                eprintln!();
            }
        }
    };
    let ctx = args.backend.context()?;
    let outcome = study::run(&ctx, &cfg, &mut progress)?;
    print!("{}", outcome.tables);
    let (json_path, html_path) = outcome.save(&args.out)?;
    println!(
        "\nWrote {} and {} ({} run, {:.1} s)",
        json_path.display(),
        html_path.display(),
        cfg.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
