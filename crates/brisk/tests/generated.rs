//! The built-in generated corpus is a real little language: a large Zipfian
//! lexicon, agreement across nested clauses, a consistent world, and a long
//! tail of rare names. Measured at the default size (`data.generated_words`).

mod support;

use std::collections::{HashMap, HashSet};

use brisk::config::Preset;
use brisk::corpus::generated::{self, statistics};

fn default_text() -> (String, u64) {
    let data = Preset::Tiny.config().data;
    (
        generated::generate(data.generated_words, data.seed),
        data.seed,
    )
}

#[test]
fn corpus_statistics_look_like_a_language() {
    let (text, seed) = default_text();
    let stats = statistics(&text, seed);
    println!("{}", serde_json::to_string_pretty(&stats).unwrap());

    assert!(
        stats.word_types >= 5_000,
        "lexicon: {} word types",
        stats.word_types
    );
    // Natural text has a rank-frequency slope near -1.
    assert!(
        (-1.35..=-0.85).contains(&stats.zipf_slope),
        "Zipf slope {}",
        stats.zipf_slope
    );

    let a = stats.agreement;
    assert!(a.verbs > 100_000, "{a:?}");
    assert_eq!(
        a.agreeing, a.verbs,
        "every verb agrees with its subject: {a:?}"
    );
    // Agreement is not local: often a noun of the other number intervenes.
    let attracted = a.attracted as f64 / a.verbs as f64;
    assert!(attracted > 0.05, "attractor rate {attracted}");
    let nested = a.sentences_with_relative as f64 / a.sentences as f64;
    assert!(nested > 0.15, "relative-clause rate {nested}");

    // A long tail of rare names (one surname per person).
    assert!(
        stats.rare_surnames >= 500,
        "rare surnames: {}",
        stats.rare_surnames
    );
    assert!(
        stats.rare_types >= 1_000,
        "rare types: {}",
        stats.rare_types
    );
}

/// Pairs "<First> <Last> works for the <Org> <Kind>." from the text.
fn employers(text: &str) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for sentence in text.lines() {
        let words: Vec<&str> = sentence.trim_end_matches('.').split(' ').collect();
        for i in 2..words.len().saturating_sub(3) {
            if words[i] == "works" && words[i + 1] == "for" && words[i + 2] == "the" {
                let capitalised = |w: &str| w.chars().next().is_some_and(char::is_uppercase);
                if capitalised(words[i - 2]) && capitalised(words[i - 1]) {
                    let person = format!("{} {}", words[i - 2], words[i - 1]);
                    let org = words[i + 3..].join(" ");
                    out.entry(person).or_default().insert(org);
                }
            }
        }
    }
    out
}

#[test]
fn entities_keep_their_attributes() {
    let (text, _) = default_text();
    let employers = employers(&text);
    assert!(
        employers.len() > 500,
        "{} people with a stated employer",
        employers.len()
    );
    for (person, orgs) in &employers {
        assert_eq!(orgs.len(), 1, "{person} works for {orgs:?}");
    }
    // Names recur: the most frequent people are mentioned many times.
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut mentions: HashMap<String, usize> = HashMap::new();
    for pair in words.windows(2) {
        let name = format!("{} {}", pair[0], pair[1].trim_end_matches(['.', ',']));
        if employers.contains_key(&name) {
            *mentions.entry(name).or_default() += 1;
        }
    }
    let most = mentions.values().max().unwrap();
    assert!(
        *most > 50,
        "the most frequent person is mentioned {most} times"
    );
}

/// A `tiny`-width model pre-trained for 300 short steps predicts masked
/// tokens clearly better than the unigram distribution (the best a model
/// that reads nothing of its input can do).
///
/// Settings: 300,000 words, a 2,000-entry vocabulary, 32-token sequences,
/// batch 32, the `tiny` model and optimiser otherwise. Measured on 2 cores:
/// validation loss 5.849 against a unigram entropy of 5.946, a margin of
/// 0.10 nats, in about 45 s. The test asks for half that margin.
///
/// What the margin is made of, measured: with every selected token replaced
/// by `[MASK]` (no kept or random tokens) the same run ends at 5.972, so at
/// this budget the model has learned the unigram distribution and to trust
/// a visible token (the 10% kept), not yet to read context. HF BERT in
/// PyTorch, trained the same way on the same shards, is on the same plateau
/// after 1,000 steps (validation 5.85 against 5.85 for brisk's weights on
/// the same masks); leaving it takes more compute than a unit test has.
#[test]
fn a_tiny_model_beats_the_unigram_entropy() {
    let mut config = Preset::Tiny.config();
    config.data.generated_words = 300_000;
    config.data.seq_len = 32;
    config.model.vocab_size = 2_000;
    config.train.batch_size = 32;
    config.train.steps = 300;
    config.eval.every = 0;
    config.eval.batches = 10;
    let dir = tempfile::tempdir().unwrap();
    let passes_before = brisk::model::fused::layer::backward_passes();
    let (_, summary) = support::pretrain_generated(dir.path(), "run", &mut config);
    // Training went through the fused kernels: every step ran a fused
    // backward pass per layer.
    assert_eq!(summary.kernels, "fused");
    let passes = brisk::model::fused::layer::backward_passes() - passes_before;
    let expected = config.train.steps * config.model.num_hidden_layers as u64;
    assert!(
        passes >= expected,
        "{passes} fused backward passes, expected {expected}"
    );
    let val = summary.final_val_loss.unwrap();
    let entropy = summary.unigram_entropy_nats;
    println!("validation loss {val:.3}, unigram entropy {entropy:.3}");
    const MARGIN: f64 = 0.05;
    assert!(
        val < entropy - MARGIN,
        "validation loss {val:.3} is not {MARGIN} nats below the unigram entropy {entropy:.3}"
    );
}
