//! The `brisk` binary: exit codes, error messages, config precedence and the
//! run directory.

use std::path::Path;
use std::process::{Command, Output};

#[path = "../../brisk/tests/support/minilm.rs"]
mod minilm;
use minilm::minilm_dir;

mod common;
use common::{brisk, brisk_owned as run_brisk, newest_checkpoint, sets, small_pretrain, stderr};

/// Flags for a quick built-in corpus.
const SMALL: &[&str] = &[
    "--set",
    "data.generated_words=20000",
    "--set",
    "data.seq_len=64",
    "--vocab-size",
    "1000",
    "--quiet",
];

fn prepare(cwd: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["corpus", "prepare"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    brisk(&args, cwd)
}

#[test]
fn help_explains_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let out = brisk(&["corpus", "prepare", "--help"], dir.path());
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--input",
        "--tokenizer",
        "--vocab-size",
        "--config",
        "--preset",
        "--set",
        "--out",
        "--force",
        "--seed",
        "--threads",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
    assert!(brisk(&["--help"], dir.path()).status.success());
    assert!(brisk(&["corpus", "generate", "--help"], dir.path())
        .status
        .success());
    assert_eq!(
        brisk(&["corpus", "prepare", "--bogus"], dir.path())
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn config_errors_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = prepare(dir.path(), &["--set", "model.hiden_size=64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("model.hiden_size"),
        "{}",
        stderr(&out)
    );

    let out = prepare(dir.path(), &["--set", "data.val_fraction=lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("data.val_fraction"),
        "{}",
        stderr(&out)
    );

    let out = prepare(dir.path(), &["--preset", "huge"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("huge") && stderr(&out).contains("tiny"),
        "{}",
        stderr(&out)
    );

    let out = prepare(dir.path(), &["--config", "missing.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    assert!(
        !dir.path().join("runs").exists(),
        "nothing is written for a bad config"
    );
}

#[test]
fn bad_input_exits_non_zero_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.txt"), b"ok\n\xc3\x28 broken\n").unwrap();
    let out = prepare(dir.path(), &["--input", "bad.txt", "--out", "run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.txt") && err.contains("byte offset 3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_directory_records_the_resolved_config() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "preset = \"mini\"\n[data]\nval_fraction = 0.1\nseq_len = 32\n";
    std::fs::write(dir.path().join("run.toml"), toml).unwrap();
    // --set (here through SMALL: seq_len 64) beats the file, which beats the preset.
    let out = prepare(
        dir.path(),
        &["--config", "run.toml", "--out", "run", "--seed", "77"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = dir.path().join("run");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let config: toml::Table = config.parse().unwrap();
    assert_eq!(config["preset"].as_str(), Some("mini"));
    assert_eq!(config["model"]["hidden_size"].as_integer(), Some(256));
    assert_eq!(config["model"]["vocab_size"].as_integer(), Some(1000));
    assert_eq!(config["data"]["seq_len"].as_integer(), Some(64));
    assert_eq!(config["data"]["val_fraction"].as_float(), Some(0.1));
    assert_eq!(config["data"]["seed"].as_integer(), Some(77));
    for file in [
        "provenance.json",
        "manifest.json",
        "summary.json",
        "tokenizer.json",
        "word_counts.tsv",
    ] {
        assert!(run.join(file).exists(), "{file}");
    }
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap())
            .unwrap();
    for key in [
        "brisk_version",
        "git_commit",
        "command_line",
        "cpu_model",
        "threads",
        "start_time",
    ] {
        assert!(provenance.get(key).is_some(), "provenance lacks {key}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["seq_len"], 64);

    // The run is not overwritten by accident.
    let again = prepare(dir.path(), &["--out", "run"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let forced = prepare(dir.path(), &["--out", "run", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));

    // The written config repeats the run.
    let repeat = brisk(
        &[
            "corpus",
            "prepare",
            "--config",
            "run/config.toml",
            "--out",
            "again",
            "-q",
        ],
        dir.path(),
    );
    assert!(repeat.status.success(), "{}", stderr(&repeat));
    let a = std::fs::read_to_string(dir.path().join("run/config.toml")).unwrap();
    let b = std::fs::read_to_string(dir.path().join("again/config.toml")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn default_run_directory_is_named_for_command_and_preset() {
    let dir = tempfile::tempdir().unwrap();
    let out = prepare(dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: Vec<String> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1);
    let name = &runs[0];
    assert!(
        name.starts_with("corpus-tiny-") && name.len() == "corpus-tiny-20261123-170405".len(),
        "{name}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MB/s"), "prints throughput: {stdout}");
}

#[test]
fn generate_writes_the_built_in_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let out = brisk(
        &[
            "corpus", "generate", "--words", "3000", "--out", "gen.txt", "--stats",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(dir.path().join("gen.txt")).unwrap();
    assert!(text.split_whitespace().count() > 2000);
    assert!(stderr(&out).contains("zipf_slope"));
    let again = brisk(
        &["corpus", "generate", "--words", "3000", "--out", "gen.txt"],
        dir.path(),
    );
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn pretrain_runs_on_the_built_in_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let args = quick_pretrain(
        "run",
        &[
            "--steps",
            "4",
            "--set",
            "train.log_every=2",
            "--set",
            "eval.every=0",
            // Exported below: HF BERT holds absolute positions only.
            "--set",
            "model.position=absolute",
        ],
    );
    let out = run_brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let run = dir.path().join("run");
    for file in [
        "config.toml",
        "provenance.json",
        "metrics.jsonl",
        "summary.json",
        "tokenizer.json",
        "checkpoints/step-000004/model.safetensors",
        "checkpoints/step-000004/optimizer.safetensors",
        "checkpoints/step-000004/state.json",
        "plots/loss.svg",
        "corpus/manifest.json",
    ] {
        assert!(run.join(file).exists(), "{file}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for key in [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens",
        "flops",
        "wall_s",
        "tokens_per_s",
    ] {
        assert!(rows[0].get(key).is_some(), "metrics lack {key}");
    }
    assert!(rows[1]["val_loss"].as_f64().unwrap().is_finite());
    assert_eq!(rows[1]["tokens"], 4 * 4 * 32);
    let again = run_brisk(&args, dir.path());
    assert_eq!(again.status.code(), Some(2), "an existing run is refused");
    let unsupported = brisk(
        &[
            "pretrain",
            "--out",
            "other",
            "--set",
            "objective.kind=cloze",
        ],
        dir.path(),
    );
    assert_eq!(unsupported.status.code(), Some(2));
    assert!(
        stderr(&unsupported).contains("objective.kind"),
        "{}",
        stderr(&unsupported)
    );
    let no_budget = brisk(&["pretrain", "--out", "other", "--steps", "0"], dir.path());
    assert_eq!(no_budget.status.code(), Some(2));
    assert!(
        stderr(&no_budget).contains("--budget"),
        "{}",
        stderr(&no_budget)
    );
    assert!(
        !dir.path().join("other").exists(),
        "nothing is written for a refused config"
    );

    // The run can fill masks.
    let out = brisk(
        &[
            "fill-mask",
            "--model",
            "run",
            "--top-k",
            "3",
            "The [MASK] is a [MASK].",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[MASK] 1:") && text.contains("[MASK] 2:"),
        "{text}"
    );
    let candidates = text.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(candidates, 6, "{text}");
    let out = brisk(
        &["fill-mask", "--model", "run", "nothing to fill"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("[MASK]"), "{}", stderr(&out));

    // ... and encode text: one line of `hidden_size` numbers per text.
    let texts = ["one text", "and another"];
    let embed = |model: &str| {
        brisk(
            &[&["embed", "--model", model][..], &texts].concat(),
            dir.path(),
        )
    };
    let embedded = embed("run");
    assert!(embedded.status.success(), "{}", stderr(&embedded));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&embedded.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["text"], "and another");
    assert_eq!(rows[0]["vector"].as_array().unwrap().len(), 128);

    // Exported as a HF checkpoint, it loads back with the same vectors.
    let export = || brisk(&["export", "run", "--hf", "exported"], dir.path());
    let out = export();
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(dir.path().join("exported").join(file).exists(), "{file}");
    }
    let again = embed("exported");
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(again.stdout, embedded.stdout);
    assert_eq!(
        export().status.code(),
        Some(2),
        "an existing export is refused"
    );
}

#[test]
fn export_refuses_models_hf_bert_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let args = quick_pretrain("pre-ln", &["--steps", "1", "--set", "model.norm=pre"]);
    let out = run_brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = brisk(&["export", "pre-ln", "--hf", "exported"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("post-LN"), "{}", stderr(&out));
    assert!(!dir.path().join("exported").exists());
}

#[test]
fn an_electra_run_detects_replacements_and_exports_its_discriminator() {
    let dir = tempfile::tempdir().unwrap();
    let args = quick_pretrain(
        "electra",
        &[
            "--steps",
            "2",
            "--set",
            "objective.kind=electra",
            "--set",
            "model.position=absolute",
        ],
    );
    let out = run_brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    // One probability in [0, 1] per token, [CLS] and [SEP] included.
    let out = brisk(&["detect", "--model", "electra", "a b c"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let probs: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(probs.len() >= 5, "{text}");
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)), "{text}");
    let fill = brisk(&["fill-mask", "--model", "electra", "a [MASK]"], dir.path());
    assert_eq!(fill.status.code(), Some(2), "fill-mask needs an MLM head");

    // The export is an ElectraForPreTraining without the generator, and it
    // loads back into brisk with the run's vectors.
    let out = brisk(&["export", "electra", "--hf", "exported"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("ElectraForPreTraining"), "{said}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("exported/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["model_type"], "electra");
    assert_eq!(config["embedding_size"], config["hidden_size"]);
    let names = safetensors_names(&dir.path().join("exported/model.safetensors"));
    assert!(names
        .iter()
        .all(|n| n.starts_with("electra.") || n.starts_with("discriminator_predictions.")));
    assert!(names.contains(&"discriminator_predictions.dense_prediction.weight".to_string()));
    let embed = |model: &str| brisk(&["embed", "--model", model, "one text"], dir.path());
    let (ours, theirs) = (embed("electra"), embed("exported"));
    assert!(theirs.status.success(), "{}", stderr(&theirs));
    assert_eq!(ours.stdout, theirs.stdout);
}

/// The tensor names of a safetensors file.
fn safetensors_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

/// A pre-training run small enough for tests: tiny model, 32-token
/// sequences, batch 4, a 600-entry vocabulary, two threads.
fn quick_pretrain(out: &str, extra: &[&str]) -> Vec<String> {
    let own = sets(&["eval.batches=2", "eval.every=5", "train.log_every=1"]);
    small_pretrain(out, 2, &[&["-q"][..], &own, extra].concat())
}

/// `(step, loss bits, validation loss bits)` of every row of a run's metrics.
fn loss_trace(run: &Path) -> Vec<(u64, u64, Option<u64>)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                row["step"].as_u64().unwrap(),
                row["loss"].as_f64().unwrap().to_bits(),
                row.get("val_loss").map(|v| v.as_f64().unwrap().to_bits()),
            )
        })
        .collect()
}

#[test]
fn mcbert_resumes_bitwise_exactly_with_tupe_and_notes() {
    let dir = tempfile::tempdir().unwrap();
    let same = [
        "--set",
        "train.schedule=constant",
        "--set",
        "train.warmup_fraction=0",
        "--set",
        "objective.kind=mcbert",
        "--set",
        "model.position=tupe-a",
        "--set",
        "notes.enabled=true",
        "--set",
        "notes.min_count=3",
        "--set",
        "notes.max_count=60",
    ];
    let full = quick_pretrain("full", &[&["--steps", "10"][..], &same].concat());
    let out = run_brisk(&full, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let first = quick_pretrain("parts", &[&["--steps", "5"][..], &same].concat());
    let out = run_brisk(&first, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let resume = [
        "pretrain",
        "--out",
        "parts",
        "--resume",
        "--steps",
        "10",
        "-q",
        "--threads",
        "2",
    ];
    let out = brisk(&resume, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = loss_trace(&dir.path().join("full"));
    assert_eq!(expected.len(), 10);
    assert_eq!(loss_trace(&dir.path().join("parts")), expected);
}

#[test]
fn the_device_path_in_bf16_resumes_bitwise_and_takes_a_fused_checkpoint() {
    // The path a GPU runs (candle's ops, bf16 products over f32 masters) on
    // the CPU: 10 steps equal 5 resumed to 10, bit for bit. Then a run
    // begun on the fused kernels in f32 continues on that path: the same
    // checkpoint serves both, as it serves both devices.
    let dir = tempfile::tempdir().unwrap();
    let device_path = [
        "--set",
        "train.schedule=constant",
        "--set",
        "train.warmup_fraction=0",
        "--set",
        "objective.kind=electra",
        "--set",
        "model.position=tupe-r",
        "--set",
        "model.kernels=reference",
        "--set",
        "train.precision=bf16",
        "--device",
        "cpu",
    ];
    let full = quick_pretrain("full", &[&["--steps", "10"][..], &device_path].concat());
    let out = run_brisk(&full, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let first = quick_pretrain("parts", &[&["--steps", "5"][..], &device_path].concat());
    let out = run_brisk(&first, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let resume = [
        "pretrain",
        "--out",
        "parts",
        "--resume",
        "--steps",
        "10",
        "-q",
        "--threads",
        "2",
    ];
    let out = brisk(&resume, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = loss_trace(&dir.path().join("full"));
    assert_eq!(expected.len(), 10);
    assert_eq!(loss_trace(&dir.path().join("parts")), expected);

    let fused = quick_pretrain("moved", &["--steps", "5"]);
    let out = run_brisk(&fused, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let copied = Command::new("cp")
        .args(["-r", "moved", "stayed"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let resume_in = |run: &str, extra: &[&str]| {
        let args = [
            &["pretrain", "--out", run, "--resume", "--steps", "8", "-q"][..],
            extra,
        ]
        .concat();
        let out = brisk(&args, dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        loss_trace(&dir.path().join(run))
    };
    let on_device_path = [
        "--set",
        "model.kernels=reference",
        "--set",
        "train.precision=bf16",
        "--device",
        "cpu",
    ];
    let moved = resume_in("moved", &on_device_path);
    let stayed = resume_in("stayed", &[]);
    let steps = |t: &[(u64, u64, Option<u64>)]| t.iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(steps(&moved), (1..=8).collect::<Vec<_>>());
    assert_eq!(
        moved[..5],
        stayed[..5],
        "the first five steps are the fused run's"
    );
    // Steps 6 to 8 continue from the same weights and optimiser state: in
    // bf16 they stay within 1% of the fused f32 continuation (consecutive
    // batches differ by several times that).
    for (m, s) in moved[5..].iter().zip(&stayed[5..]) {
        let (m, s) = (f64::from_bits(m.1), f64::from_bits(s.1));
        assert!((m - s).abs() < 0.01 * s, "step loss {m} against {s}");
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("moved/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["kernels"], "reference");
}

#[test]
fn cuda_on_a_build_without_it_is_an_error_naming_the_feature() {
    if brisk::model::device::HAS_CUDA {
        eprintln!("skipped: this build has CUDA");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = quick_pretrain("gpu", &["--steps", "2", "--device", "cuda"]);
    let out = run_brisk(&args, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
    let args = quick_pretrain("tpu", &["--steps", "2", "--device", "tpu"]);
    let out = run_brisk(&args, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("train.device"), "{}", stderr(&out));
    // Fine-tuning refuses it before a run directory exists.
    let (train, dev) = toy_sentiment();
    std::fs::write(dir.path().join("train.tsv"), train).unwrap();
    std::fs::write(dir.path().join("dev.tsv"), dev).unwrap();
    std::fs::write(
        dir.path().join("toy.toml"),
        "name = \"toy\"\nkind = \"classification\"\nlabels = [\"no\", \"yes\"]\n\
         metrics = [\"accuracy\"]\nheader = true\ntext_a = \"text\"\nlabel = \"verdict\"\n\
         train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
    )
    .unwrap();
    let model = minilm_dir();
    let finetune = [
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "toy.toml",
        "--device",
        "cuda:1",
        "--out",
        "ft",
    ];
    let out = brisk(&finetune, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
    assert!(!dir.path().join("ft").exists());
    let mut no_device = finetune;
    no_device[6] = "tpu";
    let out = brisk(&no_device, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"tpu\" is not a device"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("ft").exists());
    let embed = [
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cuda",
        "--out",
        "vectors.jsonl",
        "a text",
    ];
    let out = brisk(&embed, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
    assert!(!dir.path().join("vectors.jsonl").exists());
}

#[test]
fn resume_continues_bitwise_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // A constant schedule does not depend on the budget, so a 10-step run
    // extended to 20 must match 20 uninterrupted steps exactly. ELECTRA,
    // TUPE-R and TNF's notes (an absolute rare band, which does not depend
    // on the budget either) are on, so their state resumes exactly too.
    let constant = [
        "--set",
        "train.schedule=constant",
        "--set",
        "train.warmup_fraction=0",
        "--set",
        "objective.kind=electra",
        "--set",
        "model.position=tupe-r",
        "--set",
        "notes.enabled=true",
        "--set",
        "notes.min_count=3",
        "--set",
        "notes.max_count=60",
    ];
    let full = quick_pretrain("full", &[&["--steps", "20"][..], &constant].concat());
    let out = run_brisk(&full, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let first = quick_pretrain("parts", &[&["--steps", "10"][..], &constant].concat());
    let out = run_brisk(&first, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let resume = [
        "pretrain",
        "--out",
        "parts",
        "--resume",
        "--steps",
        "20",
        "-q",
        "--threads",
        "2",
    ];
    let out = brisk(&resume, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let expected = loss_trace(&dir.path().join("full"));
    assert_eq!(expected.len(), 20);
    assert_eq!(loss_trace(&dir.path().join("parts")), expected);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("parts/checkpoints/step-000020/state.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 20);
    assert!(dir
        .path()
        .join("parts/checkpoints/step-000020/notes.safetensors")
        .exists());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("parts/summary.json")).unwrap(),
    )
    .unwrap();
    let full_summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("full/summary.json")).unwrap(),
    )
    .unwrap();
    assert!(
        summary["notes"]["written"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_eq!(summary["notes"]["stats"], full_summary["notes"]["stats"]);
    let provenance: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("parts/provenance.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        provenance["resumed"].as_array().map(Vec::len),
        Some(1),
        "the resumed session is recorded: {provenance}"
    );
    assert_eq!(state["tokens"], 20 * 4 * 32);

    // A finished run refuses to resume without a larger budget.
    let out = brisk(&resume, dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already reached its budget"),
        "{}",
        stderr(&out)
    );

    // A checkpoint of another format version (intact: sealed as the
    // brisk that wrote it would) is a clear error, not a fallback.
    let state = dir.path().join("parts/checkpoints/step-000020/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(
        &state,
        text.replace("\"format_version\": 1", "\"format_version\": 7"),
    )
    .unwrap();
    brisk::integrity::seal(state.parent().unwrap()).unwrap();
    let out = brisk(
        &[
            "pretrain", "--out", "parts", "--resume", "--steps", "30", "-q",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("state.json") && err.contains("format version 7"),
        "{err}"
    );
}

#[test]
fn a_run_directory_in_use_is_refused_and_a_killed_holder_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let args = quick_pretrain("busy", &["--steps", "100000", "--save-every", "5"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_brisk"))
        .args(&args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = dir.path().join("busy/checkpoints/step-000005/state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !checkpoint.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A second writer, resuming or overwriting, is refused at once.
    for flag in ["--resume", "--force"] {
        let out = brisk(&["pretrain", "--out", "busy", flag, "-q"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        let err = stderr(&out);
        let holder = format!("in use by process {}", child.id());
        assert!(err.contains(&holder), "{flag}: {err}");
    }
    assert!(checkpoint.exists(), "--force removed nothing");
    // Killed without warning, the holder leaves no lock behind.
    child.kill().unwrap();
    child.wait().unwrap();
    let newest = newest_checkpoint(&dir.path().join("busy"));
    let total = (newest + 2).to_string();
    let args = [
        "pretrain", "--out", "busy", "--resume", "-q", "--steps", &total,
    ];
    let out = brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sigterm_checkpoints_and_the_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let steps = ["--steps", "40"];
    let out = run_brisk(&quick_pretrain("full", &steps), dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let args = quick_pretrain("stopped", &steps);
    let child = Command::new(env!("CARGO_BIN_EXE_brisk"))
        .args(&args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("stopped/metrics.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(std::time::Instant::now() < deadline, "the run never logged");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM exits 0: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--resume"), "says how to resume: {stdout}");
    let stopped_at = loss_trace(&dir.path().join("stopped")).last().unwrap().0;
    assert!(stopped_at < 40, "stopped at {stopped_at}");
    assert!(dir
        .path()
        .join(format!(
            "stopped/checkpoints/step-{stopped_at:06}/state.json"
        ))
        .exists());
    assert!(!dir.path().join("stopped/summary.json").exists());

    let out = brisk(
        &[
            "pretrain",
            "--out",
            "stopped",
            "--resume",
            "-q",
            "--threads",
            "2",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        loss_trace(&dir.path().join("stopped")),
        loss_trace(&dir.path().join("full"))
    );
}

#[test]
fn a_diverging_run_stops_with_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let args = quick_pretrain(
        "run",
        &[
            "--steps",
            "5",
            "--set",
            "train.learning_rate=1e30",
            "--set",
            "train.max_grad_norm=0",
        ],
    );
    let out = run_brisk(&args, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("became NaN") || err.contains("became inf"),
        "{err}"
    );
    let (step, last) = loss_trace(&dir.path().join("run"))
        .last()
        .map(|r| (r.0, r.1))
        .unwrap();
    assert!(f64::from_bits(last).is_finite());
    assert!(err.contains(&format!("step-{step:06}")), "{err}");
    assert!(dir
        .path()
        .join(format!("run/checkpoints/step-{step:06}/model.safetensors"))
        .exists());
}

#[test]
fn token_and_wall_clock_budgets_end_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // 3 steps of 4 × 32 tokens, and a little more: the schedule rounds up.
    let out = run_brisk(&quick_pretrain("tokens", &["--tokens", "400"]), dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokens/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["steps"], 4);
    assert_eq!(summary["ending"], "finished");

    let out = run_brisk(
        &quick_pretrain(
            "clock",
            &["--budget", "2s", "--set", "train.grad_accum_steps=2"],
        ),
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("clock/summary.json")).unwrap(),
    )
    .unwrap();
    let wall = summary["wall_s"].as_f64().unwrap();
    assert!((2.0..10.0).contains(&wall), "{wall}");
    assert!(summary["steps"].as_u64().unwrap() >= 1);
    assert_eq!(
        summary["tokens"].as_u64().unwrap(),
        summary["steps"].as_u64().unwrap() * 4 * 32
    );
}

/// The largest |a − b| over two vectors.
fn max_diff(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

#[test]
fn embed_gives_hf_transformers_vectors_for_a_hf_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_dir();
    let model = model.to_str().unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../brisk/tests/fixtures/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let (single, pair) = (&fixture["singles"][2], &fixture["pairs"][0]);
    assert_eq!(single["text"], "Hello, world!");
    std::fs::write(
        dir.path().join("texts.txt"),
        format!(
            "{}\n{}\t{}\n",
            single["text"].as_str().unwrap(),
            pair["text"][0].as_str().unwrap(),
            pair["text"][1].as_str().unwrap()
        ),
    )
    .unwrap();
    let args = [
        "embed",
        "--model",
        model,
        "--input",
        "texts.txt",
        "--out",
        "vectors.jsonl",
    ];
    let out = brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("vectors.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["tokens"], single["ids"].as_array().unwrap().len());
    // Mean pooling: the fixture's fourth row.
    assert!(max_diff(&rows[0]["vector"], &single["rows"][3]) < 1e-4);
    assert!(max_diff(&rows[1]["vector"], &pair["rows"][3]) < 1e-4);
    assert_eq!(rows[1]["text"][1], pair["text"][1]);
    assert_eq!(
        brisk(&args, dir.path()).status.code(),
        Some(2),
        "--out exists"
    );

    // [CLS] pooling, texts as arguments, to standard output.
    let out = brisk(
        &[
            "embed",
            "--model",
            model,
            "--pooling",
            "cls",
            "Hello, world!",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(max_diff(&row["vector"], &single["rows"][0]) < 1e-4);

    let bad = brisk(
        &["embed", "--model", model, "--pooling", "max", "x"],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--pooling"), "{}", stderr(&bad));
    let missing = brisk(&["embed", "--model", "nowhere", "x"], dir.path());
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nowhere"), "{}", stderr(&missing));
}

/// A sentiment task a pre-trained model learns in a few steps, defined only
/// in TOML: `(train, dev)` TSV text.
fn toy_sentiment() -> (String, String) {
    let subjects = [
        "the film",
        "this book",
        "our dinner",
        "the concert",
        "her new song",
        "the hotel",
        "that game",
        "his speech",
    ];
    let good = ["good", "wonderful", "great", "lovely"];
    let bad = ["bad", "awful", "terrible", "boring"];
    let mut rows = Vec::new();
    for s in subjects {
        for (g, b) in good.iter().zip(&bad) {
            rows.push(format!("{s} was really {g} .\tyes"));
            rows.push(format!("{s} was really {b} .\tno"));
        }
    }
    // Every fourth pair goes to dev.
    let (mut train, mut dev) = (
        String::from("text\tverdict\n"),
        String::from("text\tverdict\n"),
    );
    for (k, row) in rows.iter().enumerate() {
        let split = if (k / 2) % 4 == 3 {
            &mut dev
        } else {
            &mut train
        };
        split.push_str(row);
        split.push('\n');
    }
    (train, dev)
}

/// Writes the toy task (header `text<TAB>verdict`) into `dir`: its data
/// files as given, and `toy.toml`.
fn write_toy_task(dir: &Path, train: &str, dev: &str) {
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

#[test]
fn failed_runs_leave_nothing_and_long_ones_report_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (train, dev) = toy_sentiment();
    // A byte-order mark before the header (as the MSR release of MRPC has)
    // is not part of the first column's name.
    let train = format!("\u{feff}{train}");
    // A dev label outside the task's set fails inside the run, after its
    // directory was made.
    write_toy_task(
        dir.path(),
        &train,
        &format!("{dev}the end was fine .\tmaybe\n"),
    );
    let model = minilm_dir();
    let args = [
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "toy.toml",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--seeds",
        "1",
        "--out",
        "ft",
    ];
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_brisk"))
            .args(args)
            .current_dir(dir.path())
            .env("BRISK_PROGRESS_SECS", "0")
            .output()
            .unwrap()
    };
    let failed = run(&args);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("maybe"), "{}", stderr(&failed));
    assert!(
        !dir.path().join("ft").exists(),
        "the failed run left its directory: {}",
        stderr(&failed)
    );
    // The corrected run reuses --out without --force, and without a
    // terminal prints a progress line within the epoch.
    write_toy_task(dir.path(), &train, &dev);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("batch 1/"), "{}", stderr(&out));
    // Named columns are checked before a run directory exists.
    let task = std::fs::read_to_string(dir.path().join("toy.toml")).unwrap();
    std::fs::write(
        dir.path().join("toy.toml"),
        task.replace("\"verdict\"", "\"Quality\""),
    )
    .unwrap();
    let mut bad = args.to_vec();
    let last = bad.len() - 1;
    bad[last] = "ft2";
    let failed = run(&bad);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("Quality"), "{}", stderr(&failed));
    assert!(!dir.path().join("ft2").exists());
}

#[test]
fn finetune_learns_a_task_defined_in_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (train, dev) = toy_sentiment();
    std::fs::write(dir.path().join("train.tsv"), train).unwrap();
    std::fs::write(dir.path().join("dev.tsv"), dev).unwrap();
    std::fs::write(
        dir.path().join("toy.toml"),
        r#"name = "toy"
kind = "classification"
labels = ["no", "yes"]
metrics = ["accuracy", "f1", "mcc"]
header = true
text_a = "text"
label = "verdict"
train = "train.tsv"
dev = "dev.tsv"
"#,
    )
    .unwrap();
    let model = minilm_dir();
    let args = [
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "toy.toml",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "1e-4",
        "--seeds",
        "1,2",
        "--save-every",
        "4",
        "--out",
        "ft",
        "--quiet",
    ];
    let out = brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let ft = dir.path().join("ft");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ft.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["runs"].as_array().unwrap().len(), 2);
    assert_eq!(results["seeds"], 2);
    let acc = results["dev"]["accuracy"]["mean"].as_f64().unwrap();
    eprintln!("toy task: dev accuracy {acc} (mean of 2 seeds)");
    assert!(acc >= 0.875, "dev accuracy {acc}: {results}");
    assert!(results["dev"]["mcc"]["std"].as_f64().unwrap() >= 0.0);
    let run = ft.join("lr-1e-4-seed-1");
    for file in [
        "checkpoints/step-000000/model.safetensors",
        "checkpoints/step-000004/model.safetensors",
        "best/model.safetensors",
        "metrics.jsonl",
        "recipe.json",
        "tokenizer.json",
    ] {
        assert!(run.join(file).exists(), "{file}");
    }
    // Step 0 holds the whole model, the new head's initialisation included.
    let bytes = std::fs::read(run.join("checkpoints/step-000000/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + n]);
    assert!(header.contains("classifier.weight") && header.contains("bert.pooler.dense.weight"));
    let predictions = std::fs::read_to_string(run.join("predictions-dev.tsv")).unwrap();
    assert_eq!(predictions.lines().count(), 1 + 16);
    assert!(predictions.starts_with("index\tprediction\tlabel\n0\t"));
    let epochs = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(epochs.lines().count(), 3);

    assert_eq!(
        brisk(&args, dir.path()).status.code(),
        Some(2),
        "an existing run is refused"
    );

    // `eval` runs the same per task and adds a markdown table.
    let out = brisk(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--tasks",
            "toy.toml",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--layer-decay",
            "0.9",
            "--out",
            "ev",
            "--quiet",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = std::fs::read_to_string(dir.path().join("ev/results.md")).unwrap();
    assert!(
        table.contains("| toy | accuracy |") && table.contains("| toy | mcc |"),
        "{table}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ev/results.json")).unwrap())
            .unwrap();
    assert!(
        results["tasks"]["toy"]["dev"]["accuracy"]["mean"]
            .as_f64()
            .unwrap()
            > 0.5
    );
    assert!(dir
        .path()
        .join("ev/toy/lr-1e-4-seed-1/best/model.safetensors")
        .exists());
    // Several models are tuned alike and set side by side: one row each,
    // the task's leading metric as the column. Two copies of one model get
    // numbered folders.
    let twice = format!("{0},{0}", model.to_str().unwrap());
    let out = brisk(
        &[
            "eval", "--model", &twice, "--tasks", "toy.toml", "--epochs", "1", "--lr", "1e-4",
            "--out", "ev2", "--quiet",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = std::fs::read_to_string(dir.path().join("ev2/results.md")).unwrap();
    assert!(
        table.starts_with("| model | toy accuracy | mean |"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 4, "{table}");
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("ev2/results.json")).unwrap(),
    )
    .unwrap();
    let label = format!("{}-2", model.file_name().unwrap().to_str().unwrap());
    assert!(results["models"][&label]["tasks"]["toy"]["dev"]["accuracy"]["mean"].is_f64());
    assert!(dir
        .path()
        .join("ev2")
        .join(&label)
        .join("results.md")
        .exists());
    // `predict` applies the best seed to new rows (no label column needed).
    std::fs::write(
        dir.path().join("new.tsv"),
        "text\nher new song was really wonderful .\nthe hotel was really awful .\n",
    )
    .unwrap();
    let out = brisk(
        &["predict", "--model", "ft", "--input", "new.tsv"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "index\tprediction\n0\tyes\n1\tno\n"
    );
    std::fs::write(dir.path().join("bad.tsv"), "words\nno text column\n").unwrap();
    let out = brisk(
        &["predict", "--model", "ft", "--input", "bad.tsv"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad.tsv") && stderr(&out).contains("\"text\""),
        "{}",
        stderr(&out)
    );

    let unknown = brisk(
        &[
            "finetune", "--model", "m", "--task", "nonesuch", "--out", "x",
        ],
        dir.path(),
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("sst2"), "{}", stderr(&unknown));
}

/// The value in `data-value` of the `key` cell of run `run`'s row of the
/// report's final-numbers table.
fn report_value(page: &str, run: &str, key: &str) -> Option<f64> {
    let table = &page[page.find("<table class=\"final\">")?..];
    let row = &table[table.find(&format!("<tr data-run=\"{run}\">"))?..];
    let row = &row[..row.find("</tr>")?];
    let needle = format!("data-key=\"{key}\" data-value=\"");
    let cell = &row[row.find(&needle)? + needle.len()..];
    cell[..cell.find('"')?].parse().ok()
}

#[test]
fn compare_trains_variants_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = quick_pretrain("cmp", &["--steps", "10"]);
    args[0] = "compare".into();
    args.extend(["--variants", "baseline,tupe-r+tnf"].map(String::from));
    let out = run_brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let cmp = dir.path().join("cmp");
    let table = std::fs::read_to_string(cmp.join("comparison.md")).unwrap();
    assert!(
        table.contains("| baseline | 10 |") && table.contains("| tupe-r+tnf | 10 |"),
        "{table}"
    );
    let page = std::fs::read_to_string(cmp.join("report.html")).unwrap();
    for class in ["comparison", "context", "config-diff", "final"] {
        assert!(
            page.contains(&format!("<table class=\"{class}\">")),
            "{class}"
        );
    }
    // One chart per view: validation loss against steps, wall-clock and
    // FLOPs, training loss against steps, masked-token accuracy and the
    // four probes of the built-in corpus, each as accuracy and (where this
    // small vocabulary leaves one-token contrasts) as the minimal-pair score.
    let charts = page.matches("<figure class=\"chart\"").count();
    assert!((9..=13).contains(&charts), "{charts} charts");
    assert_eq!(page.matches("<svg").count(), charts);
    for probe in ["agreement", "attraction", "employer", "home"] {
        assert!(
            page.contains(&format!("data-y=\"probe_{probe}\"")),
            "{probe}"
        );
    }
    assert!(page.contains("data-y=\"probe_agreement_paired\""));
    // Tick labels are short: no `200000000000000.0` or `200.0`.
    let ticks: Vec<&str> = page
        .split("</text>")
        .filter_map(|t| t.rsplit('>').next().map(str::trim))
        .filter(|t| t.parse::<f64>().is_ok())
        .collect();
    assert!(!ticks.is_empty());
    for t in &ticks {
        assert!(t.len() <= 7 && !t.ends_with(".0"), "tick label {t:?}");
    }
    assert!(!page.contains("<script"), "self-contained, no scripts");
    // The config diff lists exactly the keys that differ.
    let diff = &page[page.find("<table class=\"config-diff\">").unwrap()..];
    let diff = &diff[..diff.find("</table>").unwrap()];
    let keys: Vec<&str> = diff
        .split("<tr><td>")
        .skip(1)
        .map(|row| &row[..row.find("</td>").unwrap()])
        .collect();
    assert_eq!(keys, ["model.position", "notes.enabled"]);
    // The final numbers are the last values in each run's metrics.jsonl.
    for run in ["baseline", "tupe-r+tnf"] {
        let text = std::fs::read_to_string(cmp.join(run).join("metrics.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for key in ["step", "loss", "val_loss", "tokens", "flops", "wall_s"] {
            let last = rows.iter().rev().find_map(|r| r[key].as_f64()).unwrap();
            assert_eq!(report_value(&page, run, key), Some(last), "{run} {key}");
        }
    }

    // A second run of the same comparison skips the finished variants.
    let resume = [
        "compare",
        "--out",
        "cmp",
        "--resume",
        "--steps",
        "10",
        "--variants",
        "baseline,tupe-r+tnf",
    ];
    let out = brisk(&resume, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("finished earlier, skipped").count(), 2);
    // Without --resume or --force an existing comparison is refused.
    let out = run_brisk(&args, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // `brisk report` on the same runs writes the same page.
    let out = brisk(
        &[
            "report",
            "cmp/baseline",
            "cmp/tupe-r+tnf",
            "--out",
            "again.html",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("again.html")).unwrap(),
        page
    );
    let out = brisk(&["report", "nowhere"], dir.path());
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}

#[test]
fn report_pages_show_markup_in_run_names_config_values_and_file_names_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["x<script>alert(1)", "y<img src=x onerror=alert(2)>"];
    for name in names {
        let out = run_brisk(&quick_pretrain(name, &["--steps", "3"]), dir.path());
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    // A third run reads a corpus whose directory name is markup: the
    // report shows it as the config value that differs.
    let corpus = "c<script>alert(3)</script>";
    let out = brisk(
        &[
            "corpus",
            "prepare",
            "--out",
            corpus,
            "-q",
            "--set",
            "data.generated_words=20000",
            "--set",
            "data.seq_len=32",
            "--set",
            "model.vocab_size=600",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let set = format!("data.corpus={corpus}");
    let out = run_brisk(
        &quick_pretrain("z", &["--steps", "3", "--set", &set]),
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = brisk(
        &["report", names[0], names[1], "z", "--out", "page.html"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.path().join("page.html")).unwrap();
    // Tables, headings and the charts' legends (inline SVG) all escape it.
    assert!(
        !page.contains("<script") && !page.contains("<img"),
        "{page}"
    );
    assert!(page.contains("x&lt;script&gt;alert(1)"));
    assert!(page.contains("y&lt;img src=x onerror=alert(2)&gt;"));
    assert!(
        page.contains("c&lt;script&gt;alert(3)&lt;/script&gt;"),
        "the config value is shown, escaped"
    );
}

#[test]
fn compare_at_equal_flops_gives_costlier_steps_fewer_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = quick_pretrain("eq", &["--steps", "10"]);
    args[0] = "compare".into();
    args.extend(["--variants", "baseline,electra", "--equal-flops"].map(String::from));
    let out = run_brisk(&args, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = |run: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("eq").join(run).join("summary.json")).unwrap(),
        )
        .unwrap()
    };
    let (base, electra) = (summary("baseline"), summary("electra"));
    assert_eq!(base["steps"], 10);
    let steps = electra["steps"].as_u64().unwrap();
    assert!(steps < 10, "an ELECTRA step costs more: {steps} steps");
    let (fb, fe) = (
        base["flops"].as_f64().unwrap(),
        electra["flops"].as_f64().unwrap(),
    );
    let per_step = fe / steps as f64;
    assert!((fb - fe).abs() <= 0.5 * per_step, "{fb} vs {fe}");
}
