//! Checkpoints that differ: P against P-T (a fresh head of another shape, a name prefix on one
//! side), tensors left out by pattern, and checkpoints kept as a directory or in shards. Run as a
//! user runs them, with the built binary, against f64 references written here.

mod scratch;
mod weights_fixture;

use std::path::Path;
use std::process::{Command, Output};
use weights_fixture::{read, resnet, write, Raw};

fn tlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

fn dir(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new(&format!("pair-{tag}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "tlens failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = tlens(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

/// P-T: the fine-tuned model, whose head has 3 classes where P's has 10, saved under `inner.`
/// (a wrapper module), with an extra pooler that P lacks.
fn fine_tuned(seed: u64) -> Vec<Raw> {
    let mut t: Vec<Raw> = resnet(seed).into_iter().filter(|t| !t.name.starts_with("fc.")).collect();
    let head = resnet(seed + 1).into_iter().find(|t| t.name == "fc.weight").unwrap();
    t.push(Raw { name: "fc.weight".into(), shape: vec![3, 17], bytes: head.bytes[..3 * 17 * 4].to_vec(), ..head });
    t.push(Raw { name: "pooler.dense.weight".into(), dtype: "F32", shape: vec![4], bytes: vec![0u8; 16] });
    for x in &mut t {
        x.name = format!("inner.{}", x.name);
    }
    t
}

/// The squared distance of each module (first name component) over the tensors both hold as
/// weights with equal shapes, in P's order; `strip` removed from P-T's names.
fn reference(p: &[Raw], pt: &[Raw], strip: &str) -> Vec<(String, usize, f64)> {
    let mut out: Vec<(String, usize, f64)> = Vec::new();
    for t in p.iter().filter(|t| t.is_weight()) {
        let Some(u) = pt.iter().find(|u| u.name.strip_prefix(strip) == Some(&t.name)) else { continue };
        if u.shape != t.shape {
            continue;
        }
        let sq: f64 = t.values().iter().zip(u.values()).map(|(x, y)| (x - y) * (x - y)).sum();
        let m = t.name.split('.').next().unwrap().to_string();
        match out.iter_mut().find(|o| o.0 == m) {
            Some(o) => {
                o.1 += t.numel();
                o.2 += sq
            }
            None => out.push((m, t.numel(), sq)),
        }
    }
    out
}

#[test]
fn p_against_p_t_with_a_prefix_and_a_fresh_head() {
    let d = dir("pt");
    let (p, pt) = (resnet(3), fine_tuned(8));
    let (pp, ppt) = (d.join("p.safetensors"), d.join("pt.safetensors"));
    write(&pp, &p, &[]);
    write(&ppt, &pt, &[]);

    // Without options, every differing tensor is named (the prefix makes them all differ).
    let err = fails(&["distance", s(&pp), s(&ppt)], &["conv1.weight", "inner.conv1.weight", "--only-shared"]);
    assert!(err.contains("and ") && err.contains(" more"), "first 20 and a count: {err}");
    // With the prefix stripped, the head (shape) and the pooler (missing in A) still differ.
    fails(
        &["distance", s(&pp), s(&ppt), "--strip-prefix-b", "inner."],
        &["3 differ", "fc.weight", "[10, 17]", "[3, 17]", "fc.bias", "pooler.dense.weight", "missing in A"],
    );

    let v = json(&tlens(&["distance", s(&pp), s(&ppt), "--strip-prefix-b", "inner.", "--only-shared", "--json"]));
    let want = reference(&p, &pt, "inner.");
    let modules = v["modules"].as_array().unwrap();
    assert_eq!(modules.len(), want.len());
    for (m, (name, numel, sq)) in modules.iter().zip(&want) {
        assert_eq!(m["name"], name.as_str());
        assert_eq!(m["numel"].as_u64().unwrap() as usize, *numel);
        let got = m["distance"].as_f64().unwrap();
        assert!((got - sq.sqrt()).abs() <= 1e-9 * sq.sqrt(), "{name}: {got} vs {}", sq.sqrt());
    }
    let total = want.iter().map(|w| w.2).sum::<f64>().sqrt();
    assert!((v["total"].as_f64().unwrap() - total).abs() <= 1e-9 * total);
    // Every tensor not compared is listed with its reason and its name on each side.
    let left: Vec<(String, String)> = v["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_string(), l["reason"].as_str().unwrap().to_string()))
        .collect();
    let expect = [
        ("bn1.num_batches_tracked", "not_a_weight"),
        ("layer1.0.bn1.num_batches_tracked", "not_a_weight"),
        ("fc.weight", "shape_differs"),
        ("fc.bias", "missing_in_b"),
        ("pooler.dense.weight", "missing_in_a"),
    ];
    assert_eq!(left, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    let head = &v["left_out"][2];
    assert_eq!(head["a"], "fc.weight");
    assert_eq!(head["b"], "inner.fc.weight");
    assert!(head["detail"].as_str().unwrap().contains("[10, 17] in A, [3, 17] in B"));
    let pooler = &v["left_out"][4];
    assert!(pooler["a"].is_null() && pooler["b"] == "inner.pooler.dense.weight");

    // The same with the prefix on A's side and --exclude leaving out the head and the pooler:
    // no --only-shared needed.
    let v2 = json(&tlens(&[
        "distance",
        s(&ppt),
        s(&pp),
        "--strip-prefix-a",
        "inner.",
        "--exclude",
        "^fc\\.",
        "--exclude",
        "^pooler",
        "--json",
    ]));
    assert_eq!(v2["total"], v["total"], "the distance is symmetric and the same tensors are compared");
    let excluded = v2["left_out"].as_array().unwrap().iter().filter(|l| l["reason"] == "excluded").count();
    assert_eq!(excluded, 3, "fc.weight (listed once), fc.bias of B, the pooler of A");

    // The table says the same.
    let out = tlens(&["distance", s(&pp), s(&ppt), "--strip-prefix-b", "inner.", "--only-shared"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("left out (5)") && text.contains("fc.weight: shape differs"), "{text}");
    // A bad pattern is bad usage.
    let out = tlens(&["distance", s(&pp), s(&ppt), "--exclude", "("]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn interpolate_only_shared_copies_the_fresh_head_and_says_so() {
    let d = dir("interp");
    let (p, pt) = (resnet(3), fine_tuned(8));
    let (pp, ppt, out) = (d.join("p.safetensors"), d.join("pt.safetensors"), d.join("mid.safetensors"));
    write(&pp, &p, &[]);
    write(&ppt, &pt, &[("format", "pt")]);
    // A = P-T: the output loads into the fine-tuned model (its names, its head).
    let args = ["interpolate", s(&ppt), s(&pp), "--strip-prefix-a", "inner.", "--only-shared", "--lambda", "0.5"];
    let o = tlens(&[&args[..], &["--output", s(&out)]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("wrote") && text.contains(s(&out)), "{text}");
    assert!(text.contains("copied from A unchanged") && text.contains("inner.fc.weight"), "{text}");
    let got = read(&out);
    assert_eq!(got.len(), pt.len());
    for (g, a) in got.iter().zip(&pt) {
        assert_eq!((g.name.as_str(), g.dtype, &g.shape), (a.name.as_str(), a.dtype, &a.shape));
        let plain = a.name.strip_prefix("inner.").unwrap();
        let b = p.iter().find(|b| b.name == plain && b.shape == a.shape && b.is_weight());
        match b {
            // Unpaired (head, pooler) and non-weights: A's bytes.
            None => assert_eq!(g.bytes, a.bytes, "{} is copied unchanged", a.name),
            Some(_) if !a.is_weight() => assert_eq!(g.bytes, a.bytes),
            Some(b) => {
                for ((x, y), z) in a.values().iter().zip(b.values()).zip(g.values()) {
                    let want = 0.5 * x + 0.5 * y;
                    let tol = if a.dtype == "F64" { 1e-12 } else { 1e-2 * (want.abs() + 1e-3) };
                    assert!((z - want).abs() <= tol, "{}: {z} vs {want}", a.name);
                }
            }
        }
    }
    // --json carries the same facts.
    let v = json(&tlens(&[&args[..], &["--output", s(&out), "--json"]].concat()));
    assert_eq!(v["tensors"].as_u64().unwrap() as usize, pt.len());
    let copied: Vec<&str> = v["copied_from_a"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert_eq!(copied, ["inner.fc.weight", "inner.pooler.dense.weight"]);
    assert_eq!(v["not_weights"].as_array().unwrap().len(), 2);
    assert!(v["left_out"].as_array().unwrap().iter().any(|l| l["reason"] == "missing_in_a" && l["name"] == "fc.bias"));
    std::fs::remove_dir_all(&d).unwrap();
}

/// Writes `tensors` as a sharded checkpoint in `folder`: `shards` files and the index.
fn write_sharded(folder: &Path, tensors: &[Raw], shards: usize) {
    std::fs::create_dir_all(folder).unwrap();
    let per = tensors.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (k, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
        write(&folder.join(&file), chunk, &[("format", "pt")]);
        for t in chunk {
            map.insert(t.name.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(folder.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_and_directory_checkpoints_give_the_same_distances_bit_for_bit() {
    let d = dir("shards");
    let (a, b) = (resnet(11), resnet(29));
    let (pa, pb) = (d.join("a.safetensors"), d.join("b.safetensors"));
    write(&pa, &a, &[]);
    write(&pb, &b, &[]);
    let sharded = d.join("b-sharded");
    write_sharded(&sharded, &b, 3);
    let single_dir = d.join("b-dir");
    std::fs::create_dir_all(&single_dir).unwrap();
    std::fs::copy(&pb, single_dir.join("model.safetensors")).unwrap();

    let base = tlens(&["distance", s(&pa), s(&pb), "--json", "--modules", "depth:2"]);
    let base_text = String::from_utf8(json(&base).to_string().into_bytes()).unwrap();
    let index = sharded.join("model.safetensors.index.json");
    for other in [&sharded, &index, &single_dir] {
        let v = json(&tlens(&["distance", s(&pa), s(other), "--json", "--modules", "depth:2"]));
        assert_eq!(v.to_string(), base_text, "{}: same figures, bit for bit", other.display());
    }
    // inspect and interpolate read them too.
    let o = tlens(&["inspect", s(&sharded), "--json"]);
    assert_eq!(json(&o)["tensors"].as_array().unwrap().len(), b.len());
    let (m1, m2) = (d.join("m1.safetensors"), d.join("m2.safetensors"));
    assert!(tlens(&["interpolate", s(&pa), s(&pb), "--lambda", "0.3", "--output", s(&m1)]).status.success());
    assert!(tlens(&["interpolate", s(&pa), s(&sharded), "--lambda", "0.3", "--output", s(&m2)]).status.success());
    assert_eq!(std::fs::read(&m1).unwrap(), std::fs::read(&m2).unwrap());

    // A broken index: a tensor it names is not in its shard; a shard outside the folder; a shard
    // holding a tensor the index does not list; not JSON.
    let text = std::fs::read_to_string(&index).unwrap();
    let bad = |name: &str, body: String| {
        let folder = d.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for f in std::fs::read_dir(&sharded).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, folder.join(f.file_name().unwrap())).unwrap();
        }
        std::fs::write(folder.join("model.safetensors.index.json"), body).unwrap();
        folder
    };
    let moved = bad("moved", text.replace("\"fc.bias\":\"model-00003-of-00003", "\"fc.bias\":\"model-00001-of-00003"));
    fails(&["distance", s(&pa), s(&moved)], &["fc.bias", "model-00003-of-00003.safetensors"]);
    let outside = bad("outside", text.replace("\"fc.bias\":\"model-", "\"fc.bias\":\"../model-"));
    fails(&["inspect", s(&outside)], &["fc.bias", "not a file name inside"]);
    let unlisted = bad("unlisted", text.replace("\"conv1.weight\":\"model-00001-of-00003.safetensors\",", ""));
    fails(&["inspect", s(&unlisted)], &["conv1.weight", "does not list"]);
    let garbage = bad("garbage", "{\"weight_map\": 3}".into());
    fails(&["inspect", s(&garbage)], &["model.safetensors.index.json", "weight_map"]);
    fails(&["inspect", s(&d)], &["directory", "model.safetensors.index.json"]);
    std::fs::remove_dir_all(&d).unwrap();
}
