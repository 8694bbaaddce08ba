//! `brisk landscape ...` end to end on MiniLM fine-tuned (briefly) on a toy
//! task: every view writes its grid, pictures and report; an interrupted
//! grid resumes; bad input gets a clear error and no run directory.

use std::path::Path;

#[path = "../../brisk/tests/support/minilm.rs"]
mod minilm;
use minilm::minilm_dir;

mod common;
use common::{brisk, stderr};

/// A toy sentiment task: train 24 rows, dev 8 rows, in `dir/toy.toml`.
fn write_task(dir: &Path) {
    let subjects = ["the film", "this book", "our dinner", "the hotel"];
    let words = [
        ("good", "bad"),
        ("great", "awful"),
        ("lovely", "boring"),
        ("fine", "dull"),
    ];
    let mut train = String::from("text\tverdict\n");
    let mut dev = String::from("text\tverdict\n");
    for (i, s) in subjects.iter().enumerate() {
        for (j, (g, b)) in words.iter().enumerate() {
            let split = if (i + j) % 4 == 3 {
                &mut dev
            } else {
                &mut train
            };
            split.push_str(&format!("{s} was {g} .\tyes\n{s} was {b} .\tno\n"));
        }
    }
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("dev.tsv"), dev).unwrap();
    std::fs::write(
        dir.join("toy.toml"),
        "name = \"toy\"\nkind = \"classification\"\nlabels = [\"no\", \"yes\"]\n\
         metrics = [\"accuracy\"]\nheader = true\ntext_a = \"text\"\nlabel = \"verdict\"\n\
         train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
    )
    .unwrap();
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_view_runs_on_a_fine_tuned_model_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_task(d);
    let model = minilm_dir();
    let out = brisk(
        &[
            "finetune",
            "--model",
            model.to_str().unwrap(),
            "--task",
            "toy.toml",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--seeds",
            "1,2",
            "--save-every",
            "2",
            "--max-len",
            "16",
            "--out",
            "ft",
            "--quiet",
        ],
        d,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (r1, r2) = ("ft/lr-1e-4-seed-1", "ft/lr-1e-4-seed-2");
    let small = [
        "--task",
        "toy.toml",
        "--train-examples",
        "8",
        "--dev-examples",
        "4",
        "--quiet",
    ];
    let view = |args: &[&str]| {
        let mut all = vec!["landscape"];
        all.extend_from_slice(args);
        all.extend_from_slice(&small);
        brisk(&all, d)
    };

    // Line: α = 0 and 1 are the run's step 0 and best checkpoints.
    let out = view(&["line", "--to", r1, "--points", "5", "--out", "line"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let grid = json(&d.join("line/line.json"));
    assert_eq!(grid["x"].as_array().unwrap().len(), 5);
    assert!(grid["values"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.is_array()));
    for file in [
        "line.csv",
        "line-loss.svg",
        "line-loss.png",
        "line-accuracy.svg",
        "report.html",
    ] {
        assert!(d.join("line").join(file).exists(), "{file}");
    }
    let html = std::fs::read_to_string(d.join("line/report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("line-loss.svg"));

    // A resumed run with a finished grid evaluates nothing and keeps it.
    let before = std::fs::read_to_string(d.join("line/line.json")).unwrap();
    let out = view(&[
        "line", "--to", r1, "--points", "5", "--out", "line", "--resume",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        before,
        std::fs::read_to_string(d.join("line/line.json")).unwrap()
    );
    // ... but one made from other settings is not mixed in.
    let out = view(&[
        "line", "--to", r1, "--points", "9", "--out", "line", "--resume",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("other inputs"), "{}", stderr(&out));
    assert_eq!(
        before,
        std::fs::read_to_string(d.join("line/line.json")).unwrap()
    );

    // Plane of two fine-tuning directions; a random plane.
    let out = view(&[
        "plane", "--run", r1, "--other", r2, "--grid", "3", "--out", "plane",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let details = json(&d.join("plane/view.json"))["details"].clone();
    assert_eq!(details["kind"], "finetune");
    // The heads start differently in the two seeds: they move along d₁ only.
    let fixed = details["fixed_tensors"].as_array().unwrap();
    assert!(fixed
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("classifier.weight")));
    assert!(d.join("plane/plane-loss.svg").exists() && d.join("plane/plane-loss.png").exists());
    let out = view(&["plane", "--run", r1, "--grid", "2", "--out", "random"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Trajectory: the last checkpoint is the origin of the PCA plane.
    let out = view(&["trajectory", "--run", r1, "--grid", "3", "--out", "traj"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = json(&d.join("traj/path.json"));
    let last = path.as_array().unwrap().last().unwrap().clone();
    assert!(last["x"].as_f64().unwrap().abs() < 1e-6 && last["y"].as_f64().unwrap().abs() < 1e-6);
    assert_eq!(path.as_array().unwrap().len(), 4, "steps 0, 2, 4, 6");

    // Layers: one row per group (embeddings, 6 layers, head).
    let out = view(&[
        "layers", "--run", r1, "--range", "0:1", "--points", "3", "--out", "layers",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let grid = json(&d.join("layers/layers.json"));
    assert_eq!(
        grid["y_names"].as_array().unwrap().len(),
        8,
        "{}",
        grid["y_names"]
    );

    // Sharpness: finite numbers.
    let out = view(&[
        "sharpness",
        "--run",
        r1,
        "--iterations",
        "2",
        "--ascent-steps",
        "2",
        "--out",
        "sharp",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = json(&d.join("sharp/sharpness.json"));
    assert!(s["top_eigenvalue"].as_f64().unwrap().is_finite());
    assert!(s["epsilon_sharpness"].as_f64().unwrap() >= 0.0);

    // Bad input: a clear message, a usage or data exit code, no directory.
    let cases: [(&[&str], &str, i32); 5] = [
        (&["line", "--run", "nowhere", "--out", "bad1"], "nowhere", 1),
        (
            &["line", "--run", r1, "--range", "2:1", "--out", "bad2"],
            "LO < HI",
            2,
        ),
        (
            &["plane", "--run", r1, "--bias-norm", "some", "--out", "bad3"],
            "ignore or copy",
            2,
        ),
        (&["line", "--out", "bad4"], "--run", 2),
        (
            &["layers", "--run", r1, "--points", "11", "--out", "bad5"],
            "misses α = 0 or α = 1",
            2,
        ),
    ];
    for (args, message, code) in cases {
        let out = view(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
        assert!(
            !d.join(args[args.len() - 1]).exists(),
            "{args:?} left its directory"
        );
    }
}

#[test]
fn compare_starts_fine_tunes_both_starts_and_reports_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_task(d);
    let model = minilm_dir();
    let args = [
        "landscape",
        "compare-starts",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "toy.toml",
        "--lr",
        "1e-4",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--checkpoints",
        "3",
        "--grid",
        "3",
        "--points",
        "5",
        "--iterations",
        "2",
        "--train-examples",
        "8",
        "--dev-examples",
        "4",
        "--out",
        "cmp",
        "--quiet",
    ];
    let out = brisk(&args, d);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = json(&d.join("cmp/summary.json"));
    let starts = summary["starts"].as_array().unwrap();
    assert_eq!(starts.len(), 2);
    for (s, name) in starts.iter().zip(["pretrained", "scratch"]) {
        assert_eq!(s["start"], name);
        // The dev score is the fine-tuning run's own best.
        let result = json(&d.join("cmp").join(name).join("result.json"));
        assert_eq!(s["dev"], result["dev"]["accuracy"], "{result}");
        for key in ["top_eigenvalue", "epsilon_sharpness", "distance"] {
            assert!(s[key].as_f64().unwrap().is_finite(), "{name} {key}: {s}");
        }
        // α = 0 and 1 are on the line: the ends' losses are read there.
        assert!(s["train_loss_start"].as_f64().unwrap() > 0.0, "{s}");
    }
    for file in [
        "compare-line-loss.png",
        "compare-trajectory-train-loss.png",
        "compare-trajectory-dev-loss.svg",
        "report.html",
    ] {
        assert!(d.join("cmp").join(file).exists(), "{file}");
    }
    // A finished comparison resumes without training again.
    let mut again = args.to_vec();
    again.push("--resume");
    let before = std::fs::metadata(d.join("cmp/scratch/result.json"))
        .and_then(|m| m.modified())
        .unwrap();
    let out = brisk(&again, d);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&d.join("cmp/summary.json"))["starts"],
        summary["starts"]
    );
    let after = std::fs::metadata(d.join("cmp/scratch/result.json"))
        .and_then(|m| m.modified())
        .unwrap();
    assert_eq!(before, after, "the random start was fine-tuned again");
    // A line that misses α = 1 is refused before anything is trained.
    let mut bad = args.to_vec();
    let out_at = bad.len() - 2;
    bad[out_at] = "cmp-bad";
    let p = bad.iter().position(|&a| a == "--points").unwrap();
    bad[p + 1] = "4";
    let out = brisk(&bad, d);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("misses α = 0 or α = 1"));
    assert!(!d.join("cmp-bad").exists());
}
