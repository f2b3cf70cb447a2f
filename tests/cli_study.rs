//! `tlens study` end to end on its smallest size: the JSON keys the CLI promises, one finding per
//! headline claim, the report's plots, and exit statuses.

use std::process::Command;

fn tlens(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

#[test]
fn the_study_runs_end_to_end_and_writes_json_and_report() {
    let dir = std::env::temp_dir().join(format!("tlens-study-test-{}", std::process::id()));
    let out = tlens(&["study", "--tiny", "--out", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    // stderr is not a terminal here: no progress bar.
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for table in ["CKA", "l2 distance", "Barrier", "criticality", "Block shuffle", "Agreement", "Findings"] {
        assert!(stdout.contains(table), "no {table} table in:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    let layers = ["fc1", "fc2", "fc3", "fc4"];
    for pair in ["P-T & P", "P-T & P-T", "P-T & RI-T", "RI-T & RI-T"] {
        for l in layers {
            let v = json["cka"][pair][l].as_f64().unwrap_or_else(|| panic!("cka {pair} {l}"));
            assert!((-1e-9..=1.0 + 1e-9).contains(&v));
        }
    }
    for pairing in ["2 P-T", "2 RI-T", "P-T & P", "RI-T & P"] {
        assert!(json["distance"][pairing].as_f64().unwrap() > 0.0, "distance {pairing}");
    }
    for pair in ["P-T & P-T", "RI-T & RI-T", "RI-T & RI-T (same init)"] {
        assert!(json["barrier"][pair].as_f64().unwrap() >= 0.0, "barrier {pair}");
    }
    for model in ["P-T", "RI-T"] {
        let m = json["criticality"][model].as_object().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), layers, "criticality {model}");
        // A number, or null for +inf (no feasible point).
        assert!(m.values().all(|v| v.is_f64() || v.is_null()));
    }
    let findings = json["findings"].as_array().unwrap();
    assert!(findings.len() >= 9, "{findings:?}");
    for f in findings {
        assert!(f["claim"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(f["held"].is_boolean());
    }
    let claims: Vec<&str> = findings.iter().map(|f| f["claim"].as_str().unwrap()).collect();
    for needle in [
        "similar features",
        "closer in weight space",
        "one basin",
        "same init",
        "less critical",
        "block shuffling",
        "Optimisation speed",
    ] {
        assert!(claims.iter().any(|c| c.contains(needle)), "no finding about {needle:?}: {claims:?}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4, "the report holds the four plots");
    // Self-contained: no scripts, no linked resources.
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained");
    // No temporary files are left behind by the atomic writes.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unwritable_out_folder_is_a_failure_with_one_line() {
    let file = std::env::temp_dir().join(format!("tlens-study-file-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let out = tlens(&["study", "--tiny", "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"));
    std::fs::remove_file(&file).ok();
}
