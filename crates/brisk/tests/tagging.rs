//! Word-level labelling: span F1 against `seqeval` and span counts against
//! the `conlleval` package's port of conlleval.pl (fixture made by
//! `tests/fixtures/seqeval/make.py`), a small BiLSTM-CRF overfitting real
//! CoNLL-2003 sentences, gradients reaching every parameter, and the
//! encoder-feature cache.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use brisk::corpus::generated::Rng;
use brisk::embed::encoder::{EncoderConfig, FeatureEncoder, Source};
use brisk::embed::{vocabularies, CharConfig, EmbeddingConfig, WordConfig};
use brisk::model::{Ctx, Params};
use brisk::tasks::labelling::{
    self as tagger, ModelSection, SavedModel, Split, TrainSection, WordModel, WordModelConfig,
};
use brisk::tasks::scheme::{span_f1, Mode, Scheme};
use brisk::tasks::tagger::{tag_set, Tagger};
use brisk::tasks::word_tasks::WordTask;
use candle_core::{DType, Device};

#[test]
fn span_f1_equals_seqeval_and_conlleval() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seqeval/spans.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 300);
    let tags =
        |v: &serde_json::Value| -> Vec<Vec<String>> { serde_json::from_value(v.clone()).unwrap() };
    for (i, case) in cases.iter().enumerate() {
        let scheme = match case["scheme"].as_str().unwrap() {
            "iob1" => Scheme::Iob1,
            "bio" => Scheme::Bio,
            _ => Scheme::Bioes,
        };
        let mode = if case["strict"].as_bool().unwrap() {
            Mode::Strict(scheme)
        } else {
            Mode::Conlleval
        };
        let got = span_f1(&tags(&case["gold"]), &tags(&case["predicted"]), mode);
        if let Some(c) = case.get("conlleval") {
            let counts = (got.gold, got.predicted, got.correct);
            let want = (
                c["gold"].as_u64().unwrap() as usize,
                c["pred"].as_u64().unwrap() as usize,
                c["correct"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                counts, want,
                "case {i}: spans (gold, predicted, correct) vs conlleval"
            );
        }
        for (name, ours) in [
            ("precision", got.precision),
            ("recall", got.recall),
            ("f1", got.f1),
        ] {
            let want = case[name].as_f64().unwrap();
            assert!(
                (ours - want).abs() < 1e-12,
                "case {i} ({scheme:?}, {mode:?}): {name} {ours}, seqeval {want}\n{case}"
            );
        }
    }
}

/// The first `n` sentences of CoNLL-2003's training file, as it is written.
fn conll_sentences(n: usize) -> String {
    let file = support::shared_dir().join("data/conll2003/train.txt");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut out = String::new();
    let mut count = 0;
    for block in text.split("\n\n") {
        if block.trim().is_empty() || block.starts_with("-DOCSTART-") {
            continue;
        }
        out.push_str(block.trim_end());
        out.push_str("\n\n");
        count += 1;
        if count == n {
            break;
        }
    }
    out
}

/// A task file whose train and dev are `data`.
fn task_on(dir: &Path, data: &str) -> PathBuf {
    std::fs::write(dir.join("train.txt"), data).unwrap();
    let toml = r#"
name = "tiny-ner"
kind = "tagging"
format = "conll"
word = 0
label = 3
scheme = "iob1"
metric = "span-f1"
train = "train.txt"
dev = "train.txt"
"#;
    let path = dir.join("task.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn small_config(epochs: usize) -> WordModelConfig {
    WordModelConfig {
        embeddings: vec![
            EmbeddingConfig::Word(WordConfig {
                dim: 32,
                ..Default::default()
            }),
            EmbeddingConfig::Chars(CharConfig::default()),
        ],
        model: ModelSection {
            hidden: 32,
            layers: 1,
            dropout: 0.0,
            arc_mlp: 32,
            rel_mlp: 16,
            embedding_weights: false,
        },
        train: TrainSection {
            epochs,
            batch_size: 5,
            learning_rate: 1e-2,
            max_grad_norm: 5.0,
            patience: 0,
            max_train: 0,
            seed: 1,
        },
    }
}

#[test]
fn a_small_tagger_overfits_twenty_conll_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let task = WordTask::resolve(
        task_on(tmp.path(), &conll_sentences(20)).to_str().unwrap(),
        Path::new("."),
    )
    .unwrap();
    let prepared = tagger::prepare(task, small_config(40)).unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir(&out).unwrap();
    let stop = AtomicBool::new(false);
    let options = tagger::TrainOptions {
        resume: false,
        stop: &stop,
    };
    let summary = tagger::train(prepared, &out, &options, |_| {}).unwrap();
    assert_eq!(summary.dev, 1.0, "{summary:?}");
    for file in [
        "model.json",
        "best/model.safetensors",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    // The saved model predicts what training scored.
    let predictor = tagger::Predictor::load(&out).unwrap();
    let words: Vec<Vec<String>> = vec!["EU rejects German call to boycott British lamb ."
        .split(' ')
        .map(String::from)
        .collect()];
    let tags = predictor.predict(words, &mut |_| {}).unwrap().labels;
    assert_eq!(tags[0][0], "I-ORG");
    assert_eq!(tags[0][2], "I-MISC");
}

#[test]
fn every_tagger_parameter_gets_a_finite_nonzero_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let task = WordTask::resolve(
        task_on(tmp.path(), &conll_sentences(8)).to_str().unwrap(),
        Path::new("."),
    )
    .unwrap();
    let mut config = small_config(1);
    config.model.layers = 2;
    // The per-embedding scales ("All + weight") are trained too.
    config.model.embedding_weights = true;
    let data = task.read(&task.train).unwrap();
    let saved = SavedModel {
        vocabularies: vocabularies(
            &config.embeddings,
            &data.iter().map(|s| s.words.clone()).collect::<Vec<_>>(),
        ),
        labels: tag_set(task.spec.scheme, &data),
        frozen_dims: vec![0, 0],
        config,
        task: task.spec.clone(),
        selection: None,
    };
    let split = Split::new(data);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Tagger::new(&mut params, &saved, &mut Rng::new(3)).unwrap();
    let ids: Vec<usize> = (0..8).collect();
    let loss = model
        .loss(&split, &ids, &mut Ctx::train(&mut Rng::new(4)))
        .unwrap();
    let grads = loss.backward().unwrap();
    let flat: Vec<_> = params
        .groups()
        .iter()
        .map(|g| grads.get(g.var.as_tensor()).expect("a gradient").clone())
        .collect();
    for (name, g) in params.split(&flat).unwrap() {
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: not finite");
        assert!(v.iter().any(|&x| x != 0.0), "{name}: all zero");
    }
}

#[test]
fn encoder_features_are_cached_per_model_and_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = support::small_pretraining("mlm");
    a.train.steps = 4;
    let mut b = a.clone();
    b.train.seed = a.train.seed + 1;
    let (run_a, _) = support::pretrain_generated(tmp.path(), "a", &mut a);
    let (run_b, _) = support::pretrain_generated(tmp.path(), "b", &mut b);
    let cache = tmp.path().join("cache");
    let sentences: Vec<Vec<String>> = ["the cat sat", "on a mat today"]
        .iter()
        .map(|s| s.split(' ').map(String::from).collect())
        .collect();
    let run = |model: &Path, sentences: &[Vec<String>]| {
        let config = EncoderConfig {
            model: model.to_path_buf(),
            layers: "last2".into(),
            cache: true,
        };
        let (table, source) = FeatureEncoder::new(&config)
            .unwrap()
            .caching_in(&cache)
            .features(sentences, &mut |_| {})
            .unwrap();
        let mut first = vec![0f32; table.dim];
        table.copy_word(1, 3, &mut first);
        (first, source)
    };
    let (v1, s1) = run(&run_a, &sentences);
    assert_eq!(s1, Source::Encoder);
    let (v2, s2) = run(&run_a, &sentences);
    assert_eq!(s2, Source::Cache, "the second run reads the cache");
    assert_eq!(v1, v2);
    assert!(v1.iter().any(|&x| x != 0.0));
    let (_, s3) = run(&run_b, &sentences);
    assert_eq!(s3, Source::Encoder, "another model misses the cache");
    let mut changed = sentences.clone();
    changed[0][1] = "dog".into();
    let (_, s4) = run(&run_a, &changed);
    assert_eq!(s4, Source::Encoder, "other words miss the cache");
}
