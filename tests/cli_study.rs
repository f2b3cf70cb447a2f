//! `tlens study` end to end on its smallest size: the JSON keys of every section in range, the
//! findings with per-seed verdicts, the report's plots, the exported models and data (loadable,
//! and reproducing a number of study.json), no temporary files, progress lines, and the bad
//! `--out` cases.

use std::path::{Path, PathBuf};
use std::process::Command;
use transferlens::model::{Cnn, Dataset};
use transferlens::ParamSet;

fn tlens(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tlens-study-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let sub = path.file_name().unwrap().to_string_lossy().to_string();
            out.extend(files_under(&path).into_iter().map(|f| format!("{sub}/{f}")));
        } else {
            out.push(path.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    out
}

/// A dataset exported by the study: `x` F32 (N x 3 x 24 x 24) and `y` I64.
fn load_dataset(path: &Path, classes: usize) -> Dataset {
    let set = ParamSet::load(path).unwrap();
    let x = set.tensor("x").unwrap().host().unwrap().to_f32().into_owned();
    let y_bytes = set.tensor("y").unwrap().bytes().unwrap();
    let y: Vec<u32> = y_bytes.chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    assert_eq!(set.metadata().get("classes").map(String::as_str), Some(classes.to_string().as_str()));
    Dataset::new(x, y, 3 * 24 * 24, classes).unwrap()
}

fn in_unit(v: &serde_json::Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!((0.0..=1.0).contains(&x), "{what} = {x}");
    x
}

#[test]
fn the_study_runs_end_to_end_and_writes_json_report_models_and_data() {
    let dir = scratch("run");
    let out = tlens(&["study", "--tiny", "--out", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // stderr is not a terminal here: one line per step, no bar.
    assert!(!stderr.contains('\r'), "{stderr}");
    for step in [
        "pre-training P",
        "sizing the training sets",
        "choosing the learning rates",
        "training the target models",
        "writing the models",
    ] {
        assert_eq!(stderr.lines().filter(|l| l.contains(step)).count(), 1, "step {step:?} once in:\n{stderr}");
    }
    for table in [
        "Learning rates",
        "Training sizes",
        "Target test accuracy",
        "Learning curves",
        "Pre-training checkpoints",
        "Findings",
    ] {
        assert!(stdout.contains(table), "no {table} table in:\n{stdout}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    let seeds = json["seeds"].as_u64().unwrap() as usize;
    assert_eq!(seeds, 2);
    let domains: Vec<&str> = json["domains"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(domains, ["real", "far"]);
    let grid: Vec<f64> = json["sizes"]["lr_grid"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for d in &domains {
        let lr = &json["learning_rates"][d];
        for regime in ["pt", "rit"] {
            assert!(grid.contains(&lr[regime].as_f64().unwrap()), "{d} {regime}: {lr}");
        }
        let points = lr["grid"].as_array().unwrap();
        assert_eq!(points.len(), grid.len());
        for p in points {
            in_unit(&p["pt_validation"], "grid P-T validation");
            in_unit(&p["rit_validation"], "grid RI-T validation");
        }
        // The chosen rate has the grid's best validation accuracy.
        let best = points.iter().map(|p| p["pt_validation"].as_f64().unwrap()).fold(0.0, f64::max);
        let chosen = points.iter().find(|p| p["lr"] == lr["pt"]).unwrap();
        assert_eq!(chosen["pt_validation"].as_f64().unwrap(), best, "{d}");

        // The sizing sweep: ascending sizes of the grid up to the chosen one, which is the first
        // whose best validation accuracy reaches the bar, or the cap; the exported training set
        // has the chosen size.
        let sizing = &json["sizing"][d];
        let size_grid: Vec<u64> =
            json["sizes"]["train_per_class_grid"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let steps = sizing["steps"].as_array().unwrap();
        let bar = sizing["bar"].as_f64().unwrap();
        let tried: Vec<u64> = steps.iter().map(|s| s["per_class"].as_u64().unwrap()).collect();
        assert_eq!(tried, size_grid[..steps.len()], "{d}");
        assert_eq!(sizing["per_class"].as_u64(), tried.last().copied(), "{d}");
        let bests: Vec<f64> = steps.iter().map(|s| in_unit(&s["best"], "sizing best")).collect();
        assert!(bests[..bests.len() - 1].iter().all(|&b| b < bar), "{d}: stops at the first size reaching the bar");
        let reached = sizing["reached"].as_bool().unwrap();
        assert_eq!(reached, bests[bests.len() - 1] >= bar, "{d}");
        assert!(reached || steps.len() == size_grid.len(), "{d}: below the bar only at the cap");
        let classes = if *d == "far" { 5 } else { 10 };
        let train = load_dataset(&dir.join(json["files"]["data"][format!("{d}-train")].as_str().unwrap()), classes);
        assert_eq!(train.n as u64, sizing["per_class"].as_u64().unwrap() * classes as u64);
        assert_eq!(json["sizes"]["target_train"][d].as_u64(), Some(train.n as u64));
        // Barriers are judged against a tolerance of at least 0.01.
        for pair in ["pt_pt", "rit_rit", "rit_rit_same_init"] {
            for tol in json["interpolation"]["domains"][d][pair]["tolerances"].as_array().unwrap() {
                assert!(tol.as_f64().unwrap() >= 0.01, "{d} {pair}: {tol}");
            }
        }

        let rows = json["accuracy"][d].as_array().unwrap();
        assert_eq!(rows.len(), seeds);
        for r in rows {
            let (pt, rit) = (in_unit(&r["pt"], "P-T"), in_unit(&r["rit"], "RI-T"));
            assert!((r["gain"].as_f64().unwrap() - (pt - rit)).abs() < 1e-12);
            assert!(r["margin"].as_f64().unwrap() > 0.0);
        }
        let curves = json["learning_curves"][d].as_array().unwrap();
        assert_eq!(curves.len(), seeds);
        for c in curves {
            for regime in ["pt", "rit"] {
                let loss = c[regime].as_array().unwrap();
                assert_eq!(loss.len(), 2, "tiny: two epochs");
                assert!(loss.iter().all(|v| v.as_f64().unwrap() > 0.0));
                // Early loss: the mean of the first quarter of the epochs, here the first.
                assert_eq!(c[format!("{regime}_early_loss")], loss[0]);
            }
        }
    }
    for s in json["source_accuracy"].as_array().unwrap() {
        in_unit(&s["p"], "P's source accuracy");
    }
    let checkpoints = &json["checkpoints"];
    assert_eq!(checkpoints["domain"], "real");
    let epochs = checkpoints["epochs"].as_array().unwrap().len();
    for row in checkpoints["per_seed"].as_array().unwrap() {
        for key in ["p_source_validation", "pt_accuracy"] {
            let values = row[key].as_array().unwrap();
            assert_eq!(values.len(), epochs);
            for v in values {
                in_unit(v, key);
            }
        }
        assert_eq!(row["pt_early_loss"].as_array().unwrap().len(), epochs);
    }

    let findings = json["findings"].as_array().unwrap();
    let claims: Vec<&str> = findings.iter().map(|f| f["claim"].as_str().unwrap()).collect();
    for needle in
        ["every domain", "closest to the source", "optimises faster", "pre-training plateaus", "earlier checkpoint"]
    {
        assert!(claims.iter().any(|c| c.contains(needle)), "no finding about {needle:?}: {claims:?}");
    }
    for f in findings {
        assert!(f["criterion"].as_str().is_some_and(|c| !c.is_empty()));
        let per_seed = f["per_seed"].as_array().unwrap();
        assert_eq!(per_seed.len(), seeds, "{f}");
        let held = per_seed.iter().filter(|s| s["held"].as_bool().unwrap()).count();
        assert!(per_seed.iter().all(|s| s["evidence"].as_str().is_some_and(|e| !e.is_empty())));
        assert_eq!(f["held_in"].as_u64().unwrap() as usize, held);
        let verdict = match held {
            0 => "not held",
            k if k == seeds => "held",
            _ => "mixed",
        };
        assert_eq!(f["verdict"], verdict, "{f}");
    }

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    // Learning rates, accuracy, a learning curve per domain, two checkpoint plots.
    assert!(html.matches("<svg").count() >= 1 + 1 + domains.len() + 2, "the report's plots");
    // Self-contained: no scripts, no linked resources.
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained");

    // The exported files: every one in the map exists, nothing else (no temporary files) does.
    let mut mapped: Vec<String> = ["study.json", "report.html"].map(String::from).to_vec();
    for kind in ["models", "data"] {
        for file in json["files"][kind].as_object().unwrap().values() {
            mapped.push(file.as_str().unwrap().to_string());
        }
    }
    let mut present = files_under(&dir);
    present.sort();
    mapped.sort();
    assert_eq!(present, mapped);
    let models = json["files"]["models"].as_object().unwrap();
    // Per seed: RI, P, P's checkpoints, per domain six models and their inits, the sweep.
    assert_eq!(models.len(), seeds * (2 + epochs + domains.len() * 12 + epochs));

    // A number of study.json recomputed from the exported files alone: seed 1's first P-T on
    // real, and P's source test accuracy.
    let file = |name: &str| dir.join(models[name].as_str().unwrap());
    let pt = ParamSet::load(file("seed1/real/P-T0")).unwrap();
    let cnn = Cnn::from_metadata(&pt).unwrap();
    let test = load_dataset(&dir.join(json["files"]["data"]["real-test"].as_str().unwrap()), 10);
    let accuracy = cnn.evaluate(&pt, &test).unwrap().accuracy;
    assert_eq!(accuracy, json["accuracy"]["real"][1]["pt_models"][0].as_f64().unwrap());
    let p = ParamSet::load(file("seed0/P")).unwrap();
    let source_test = load_dataset(&dir.join(json["files"]["data"]["source-test"].as_str().unwrap()), 20);
    let accuracy = Cnn::from_metadata(&p).unwrap().evaluate(&p, &source_test).unwrap().accuracy;
    assert_eq!(accuracy, json["source_accuracy"][0]["p"].as_f64().unwrap());
    // P-T's body starts as P's: its init equals P outside the head.
    let pt_init = ParamSet::load(file("seed0/real/P-T0-init")).unwrap();
    let conv = |set: &ParamSet| set.tensor("conv1.weight").unwrap().host().unwrap().to_f32().into_owned();
    assert_eq!(conv(&pt_init), conv(&p));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn seeds_can_be_set_on_the_command_line() {
    let dir = scratch("seeds");
    let out = tlens(&["study", "--tiny", "--seeds", "1", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    assert_eq!(json["seeds"], 1);
    assert!(json["findings"].as_array().unwrap().iter().all(|f| f["seeds"] == 1));
    std::fs::remove_dir_all(&dir).ok();
    let out = tlens(&["study", "--tiny", "--seeds", "0", "--out", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "clap rejects zero seeds");
}

/// A bad `--out` fails at once, in one line, before any work (no progress line).
fn fails_in_one_line(out_arg: &Path, expect: &str) {
    let out = tlens(&["study", "--tiny", "--out", out_arg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(expect) && err.contains("--out"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("pre-training"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_out_that_is_a_file_is_a_failure_with_one_line() {
    let file = scratch("file");
    std::fs::write(&file, b"x").unwrap();
    fails_in_one_line(&file, "not a folder");
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "the file is left alone");
    std::fs::remove_file(&file).ok();
}

#[test]
fn an_out_below_a_file_is_a_failure_with_one_line() {
    let file = scratch("parent-file");
    std::fs::write(&file, b"x").unwrap();
    fails_in_one_line(&file.join("sub"), "cannot create");
    std::fs::remove_file(&file).ok();
}

#[test]
fn an_unwritable_out_folder_is_a_failure_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("readonly");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes anywhere: the check is then moot, and the case is skipped.
    if std::fs::write(dir.join("probe"), b"").is_ok() {
        std::fs::remove_file(dir.join("probe")).ok();
        eprintln!("skipped: this user can write in a read-only folder");
    } else {
        fails_in_one_line(&dir, "not writable");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
