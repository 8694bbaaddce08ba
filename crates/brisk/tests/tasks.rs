//! Downstream tasks: the built-in GLUE tasks read the shared data, a task
//! defined only in TOML reads its own TSV, and bad files are clear errors.

mod support;

use std::path::Path;

use brisk::tasks::data::{read_split, Kind};
use brisk::tasks::Task;

fn glue() -> std::path::PathBuf {
    support::shared_dir().join("data/glue")
}

#[test]
fn built_in_tasks_read_the_glue_files() {
    // (task, train examples, dev examples, outputs), as data/README.md counts them.
    for (name, train, dev, outputs) in [
        ("sst2", 67_349, 872, 2),
        ("cola", 8_551, 527, 2),
        ("rte", 2_490, 277, 2),
        ("stsb", 5_749, 1_500, 1),
        ("mrpc", 4_076, 1_725, 2),
    ] {
        let task = Task::resolve(name, &glue()).unwrap();
        assert_eq!(task.num_outputs(), outputs, "{name}");
        let t = read_split(&task.spec, &task.train).unwrap();
        let d = read_split(&task.spec, &task.dev).unwrap();
        assert_eq!((t.len(), d.len()), (train, dev), "{name}");
        if ["rte", "stsb", "mrpc"].contains(&name) {
            assert!(t.iter().all(|e| e.b.is_some()), "{name} is a pair task");
        }
    }
    let stsb = Task::resolve("stsb", &glue()).unwrap();
    assert_eq!(stsb.spec.kind, Kind::Regression);
    let scores = read_split(&stsb.spec, &stsb.dev).unwrap();
    assert!(scores.iter().all(|e| (0.0..=5.0).contains(&e.label)));
    let rte = read_split(
        &Task::resolve("rte", &glue()).unwrap().spec,
        &glue().join("RTE/dev.tsv"),
    )
    .unwrap();
    assert!(rte.iter().any(|e| e.label == 1.0) && rte.iter().any(|e| e.label == 0.0));
    // 2,753 of MRPC's training pairs are paraphrases (data/README.md).
    let mrpc = Task::resolve("mrpc", &glue()).unwrap();
    let train = read_split(&mrpc.spec, &mrpc.train).unwrap();
    assert_eq!(train.iter().filter(|e| e.label == 1.0).count(), 2_753);
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("train.tsv"),
        "\u{feff}Quality\tText\n1\ta fine film\n",
    )
    .unwrap();
    std::fs::write(dir.join("dev.tsv"), "Quality\tText\n0\ta dull film\n").unwrap();
    std::fs::write(
        dir.join("task.toml"),
        "\u{feff}name = \"bom\"\nkind = \"classification\"\nlabels = [\"0\", \"1\"]\n\
         metrics = [\"accuracy\"]\nheader = true\ntext_a = \"Text\"\nlabel = \"Quality\"\n\
         train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
    )
    .unwrap();
    let task = Task::resolve(dir.join("task.toml").to_str().unwrap(), Path::new("/")).unwrap();
    let train = read_split(&task.spec, &task.train).unwrap();
    assert_eq!((train[0].a.as_str(), train[0].label), ("a fine film", 1.0));
}

/// Writes a task file and its data into `dir`.
fn toml_task(dir: &Path, train: &str, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("dev.tsv"), "x\tgood movie\tpos\n").unwrap();
    let path = dir.join("task.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "mine"
kind = "classification"
labels = ["neg", "pos"]
metrics = ["f1", "accuracy"]
header = false
text_a = 1
label = 2
train = "train.tsv"
dev = "dev.tsv"
{extra}"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_task_defined_in_toml_reads_its_columns_and_names_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let path = toml_task(tmp.path(), "a\ta fine film\tpos\nb\ta dull film\tneg\n", "");
    let task = Task::resolve(path.to_str().unwrap(), Path::new("/nowhere")).unwrap();
    let train = read_split(&task.spec, &task.train).unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!((train[1].a.as_str(), train[1].label), ("a dull film", 0.0));

    let err = |train: &str| {
        let path = toml_task(tmp.path(), train, "");
        let task = Task::resolve(path.to_str().unwrap(), Path::new("/nowhere")).unwrap();
        read_split(&task.spec, &task.train).unwrap_err().to_string()
    };
    let e = err("a\tok\tpos\nb\tno label here\n");
    assert!(
        e.contains("train.tsv") && e.contains("line 2") && e.contains("column 2"),
        "{e}"
    );
    let e = err("a\tok\tmaybe\n");
    assert!(
        e.contains("line 1") && e.contains("\"maybe\"") && e.contains("neg, pos"),
        "{e}"
    );

    // A named column without a header, and an unknown metric, are refused.
    let bad = toml_task(tmp.path(), "", "").with_file_name("bad.toml");
    let text = std::fs::read_to_string(tmp.path().join("task.toml")).unwrap();
    std::fs::write(&bad, text.replace("text_a = 1", "text_a = \"sentence\"")).unwrap();
    let e = Task::resolve(bad.to_str().unwrap(), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sentence") && e.contains("header"), "{e}");
    std::fs::write(&bad, text.replace("\"f1\"", "\"bleu\"")).unwrap();
    let e = Task::resolve(bad.to_str().unwrap(), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bleu"), "{e}");
    let e = Task::resolve("nonesuch", Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sst2") && e.contains("TOML"), "{e}");
}
