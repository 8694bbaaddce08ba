//! The landscape views on a real (tiny) fine-tuned model: the grid at
//! α = 0 and α = 1 equals an independent evaluation of θA and θB, random
//! directions are filter-normalised on the model's own tensors, and the
//! probe's gradient agrees with finite differences of its loss.

mod support;

use std::path::{Path, PathBuf};

use brisk::config::{ModelConfig, Preset};
use brisk::corpus::generated::Rng;
use brisk::encoder::{tokenize, Text};
use brisk::landscape::probe::{Objective, Probe, ProbeData, TunedRun};
use brisk::landscape::space::{filter_normalised, BiasNorm, Layout};
use brisk::landscape::views::{line, Axis, Sink};
use brisk::model::{Ctx, Params};
use brisk::tasks::classifier::Classifier;
use brisk::tasks::data::read_split;
use brisk::tasks::{finetune, Recipe, Task};
use candle_core::{DType, Device};

/// A tiny pre-trained model fine-tuned for a few steps on a toy task:
/// (the seed's folder, the task, its dev accuracy at the best epoch).
fn tuned(root: &Path) -> (PathBuf, Task, f64) {
    let mut config = Preset::Tiny.config();
    config.data.generated_words = 20_000;
    config.data.seq_len = 32;
    config.model.vocab_size = 600;
    config.train.batch_size = 4;
    config.train.steps = 6;
    config.eval.batches = 2;
    let (run, _) = support::pretrain_generated(root, "pre", &mut config);
    let words = [
        "red", "blue", "green", "small", "large", "old", "new", "fast",
    ];
    let line = |i: usize| {
        let (a, b) = (words[i % 8], words[(i * 3 + 1) % 8]);
        let label = if a.len() > b.len() { "pos" } else { "neg" };
        format!("{i}\tthe {a} one and the {b} one\t{label}\n")
    };
    let dir = root.join("task");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.tsv"), (0..20).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("dev.tsv"), (20..30).map(line).collect::<String>()).unwrap();
    std::fs::write(
        dir.join("task.toml"),
        "name = \"toy\"\nkind = \"classification\"\nlabels = [\"neg\", \"pos\"]\n\
         metrics = [\"accuracy\"]\nheader = false\ntext_a = 1\nlabel = 2\n\
         train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
    )
    .unwrap();
    let task = Task::resolve(
        dir.join("task.toml").to_str().unwrap(),
        Path::new("/nowhere"),
    )
    .unwrap();
    let recipe = Recipe {
        learning_rate: 3e-3,
        epochs: 2,
        batch_size: 4,
        save_every: 2,
        ..Recipe::default()
    };
    let out = root.join("tuned");
    std::fs::create_dir_all(&out).unwrap();
    let result = finetune(&run, &task, &recipe, 1, &out, |_| {}).unwrap();
    (out, task, result.dev["accuracy"])
}

/// Mean loss and accuracy of the weights in `file` over a split, computed
/// directly: one batch in file order, no landscape code.
fn direct(run: &TunedRun, task: &Task, file: &Path, split: &Path) -> (f64, f64) {
    let tokenizer = brisk::corpus::tokenizer::load_tokenizer(&run.tokenizer_file, true).unwrap();
    let config: ModelConfig = run.config.clone();
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Classifier::new(&mut params, &config, 2, &mut Rng::new(9)).unwrap();
    params.load(file).unwrap();
    let examples = read_split(&task.spec, split).unwrap();
    let texts: Vec<Text> = examples.iter().map(|e| Text::of(&e.a, None)).collect();
    let labels: Vec<f32> = examples.iter().map(|e| e.label).collect();
    let batch = tokenize(&tokenizer, run.max_len, &texts).unwrap();
    let outputs = model.forward(&batch, &mut Ctx::eval()).unwrap();
    let loss = model
        .loss(&outputs, &labels)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let predicted = model.predict(&outputs).unwrap();
    let right = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    (loss, right as f64 / labels.len() as f64)
}

#[test]
fn a_line_between_checkpoints_meets_their_own_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, task, best_dev) = tuned(tmp.path());
    let run = TunedRun::open(&dir).unwrap();
    assert_eq!(run.checkpoints().unwrap().len(), 6, "steps 0, 2, ..., 10");
    let data = ProbeData {
        train_examples: 0,
        batch_size: 3,
        ..ProbeData::default()
    };
    let mut probe = Probe::new(&run, &task, &data).unwrap();
    assert_eq!(probe.examples(), (20, 10));
    let (ends, fixed) = probe.load_ends(&[&run.start(), &run.best()]).unwrap();
    assert!(fixed.is_empty());
    let path = tmp.path().join("line.json");
    let axis = Axis {
        lo: -0.5,
        hi: 1.5,
        points: 5,
    };
    let grid = line(
        &mut probe,
        &ends[0],
        &ends[1],
        axis,
        serde_json::json!("test"),
        Sink {
            path: &path,
            resume: false,
            save_s: 0.0,
            progress: &mut |_, _| {},
            stop: &|| false,
        },
    )
    .unwrap();
    assert_eq!(
        grid.measures,
        ["train_loss", "train_accuracy", "dev_loss", "dev_accuracy"]
    );
    for (ix, file) in [(1, run.start()), (3, run.best())] {
        for (m, split) in [(0, &task.train), (2, &task.dev)] {
            let (loss, accuracy) = direct(&run, &task, &file, split);
            assert!(
                (grid.at(m, ix, 0) - loss).abs() < 1e-5,
                "{}: {} vs {loss}",
                grid.measures[m],
                grid.at(m, ix, 0)
            );
            assert!((grid.at(m + 1, ix, 0) - accuracy).abs() < 1e-9);
        }
    }
    assert!(
        (grid.at(3, 3, 0) - best_dev).abs() < 1e-9,
        "fine-tuning's dev score"
    );
    assert!(
        grid.at(0, 3, 0) < grid.at(0, 1, 0),
        "fine-tuning lowered the train loss"
    );
}

#[test]
fn random_directions_and_gradients_on_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, task, _) = tuned(tmp.path());
    let run = TunedRun::open(&dir).unwrap();
    let data = ProbeData {
        train_examples: 12,
        with_dev: false,
        batch_size: 5,
        ..ProbeData::default()
    };
    let mut probe = Probe::new(&run, &task, &data).unwrap();
    let layout: Layout = probe.layout().clone();
    let (ends, _) = probe.load_ends(&[&run.best()]).unwrap();
    let centre = &ends[0];
    let d = filter_normalised(&layout, centre, 3, BiasNorm::Ignore);
    let mut matrices = 0;
    for ((dg, cg), slots) in d.groups.iter().zip(&centre.groups).zip(&layout.groups) {
        for t in &slots.tensors {
            let (dt, ct) = (
                &dg[t.offset..t.offset + t.len()],
                &cg[t.offset..t.offset + t.len()],
            );
            if t.shape.len() < 2 {
                assert!(dt.iter().all(|&x| x == 0.0), "{} is a bias or norm", t.name);
                continue;
            }
            matrices += 1;
            let row = t.len() / t.shape[0];
            for (dr, cr) in dt.chunks(row).zip(ct.chunks(row)) {
                let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                assert!(
                    (n(dr) - n(cr)).abs() <= 1e-4 * n(cr).max(1e-6),
                    "{}",
                    t.name
                );
            }
        }
    }
    assert!(matrices >= 8, "embeddings, attention, feed-forward, head");

    // The gradient: finite, on every group, and equal to the directional
    // derivative of the loss.
    probe.move_to(centre, &[]).unwrap();
    let (_, grad) = probe.gradient().unwrap();
    for (g, slots) in grad.groups.iter().zip(&layout.groups) {
        assert!(g.iter().all(|x| x.is_finite()), "{}", slots.name);
        assert!(
            g.iter().any(|&x| x != 0.0),
            "{} has no gradient",
            slots.name
        );
    }
    let mut v = grad.clone();
    v.scale(1.0 / grad.norm());
    let h = 1e-3;
    probe.move_to(centre, &[(h, &v)]).unwrap();
    let plus = probe.measure().unwrap()[0];
    probe.move_to(centre, &[(-h, &v)]).unwrap();
    let minus = probe.measure().unwrap()[0];
    let numeric = (plus - minus) / (2.0 * h);
    assert!(
        (numeric - grad.norm()).abs() < 0.05 * grad.norm(),
        "{numeric} vs {}",
        grad.norm()
    );
}
