//! The built-in generated corpus is a real little language: a large Zipfian
//! lexicon, agreement across nested clauses, a consistent world, and a long
//! tail of rare names. Measured at the default size (`data.generated_words`).

mod support;

use std::collections::{HashMap, HashSet};

use brisk::config::Preset;
use brisk::corpus::generated::{self, cloze_items, statistics, ProbeKind, BLANK};
use brisk::model::{BertForMaskedLm, Params};
use brisk::pretrain::probes::{token_counts, unigram_guess, ProbeSet};
use candle_core::{DType, Device};

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

/// A `tiny`-width model pre-trained for 300 short steps with the default
/// recipe (rotary positions) leaves the masked-LM plateau: its validation
/// loss ends well below the unigram entropy (the best a model that reads
/// nothing of its input can do).
///
/// Settings: 300,000 words, a 2,000-entry vocabulary, 32-token sequences,
/// batch 32, the `tiny` model and optimiser otherwise. Measured on 2 cores:
/// validation loss 5.081 against a unigram entropy of 5.946, a margin of
/// 0.87 nats, in about a minute. The test asks for the plateau margin of
/// 0.3 nats. With BERT's absolute positions the same run ended 0.10 nats
/// below (HF BERT in PyTorch, trained the same way, sat on the same plateau
/// for 1,000 steps).
///
/// The cloze probes that need the subject's number or an earlier name stay
/// near their baselines at this budget, so they are reported here, not
/// asserted: measured, minimal-pair scores of 0.565 (agreement), 0.545
/// (attraction), 0.5 (employer), 0.29 (home, 14 pairs). The same run to 800
/// steps (3.4 minutes, too long for the suite) reached 0.65, 0.56, 0.75 and
/// 0.71.
#[test]
fn a_tiny_model_leaves_the_plateau() {
    let mut config = Preset::Tiny.config();
    config.data.generated_words = 300_000;
    config.model.vocab_size = 4_000;
    config.train.batch_size = 32;
    config.train.steps = 300;
    config.eval.every = 100;
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
    let margin = brisk::train::pretrain::PLATEAU_MARGIN;
    assert!(
        val < entropy - margin,
        "validation loss {val:.3} is not {margin} nats below the unigram entropy {entropy:.3}"
    );
    assert!(summary.plateau_exit_step.is_some(), "{summary:?}");
    assert_eq!(
        summary.probes.len(),
        4,
        "the probes are scored: {summary:?}"
    );
    for (kind, p) in &summary.probes {
        println!("probe {kind:?}: {p:?}");
    }
    // It reads the document, not only the neighbours: given an employer
    // named earlier, the model prefers that organisation at the blank more
    // than in the same document naming another one. A model that ignores
    // context scores 0.5 on these minimal pairs, with a standard deviation
    // of 0.06 at 70 pairs (the 4,000-token vocabulary makes 72 of the
    // employers' pairs one token on both sides); this recipe measured 0.82.
    let employer = summary.probes[&ProbeKind::Employer];
    assert!(employer.pairs >= 60, "{employer:?}");
    assert!(
        employer.paired >= 0.7,
        "the employer probe is not well above chance: {employer:?}"
    );
}

/// The probes of the default language, with a tokenizer trained on it.
fn probe_set(dir: &std::path::Path) -> (ProbeSet, Vec<u64>) {
    let mut config = Preset::Tiny.config();
    config.data.generated_words = 300_000;
    config.model.vocab_size = 4_000;
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    brisk::corpus::prepare(
        &config.data,
        config.model.vocab_size,
        &brisk::corpus::Input::Generated,
        &corpus,
        false,
    )
    .unwrap();
    let prepared = brisk::corpus::shards::PreparedCorpus::open(&corpus).unwrap();
    let counts = token_counts(&prepared);
    let tokenizer = brisk::corpus::tokenizer::load_tokenizer(
        &corpus.join(&prepared.manifest.tokenizer.file),
        true,
    )
    .unwrap();
    let set = ProbeSet::generated(&tokenizer, config.data.seed, &counts).unwrap();
    (set, counts)
}

#[test]
fn each_probe_is_answered_by_its_context_alone() {
    let seed = Preset::Tiny.config().data.seed;
    let items = cloze_items(seed, 7, 100);
    let tags = generated::Lexicon::new(seed).tags();
    for item in &items {
        assert_ne!(item.answer, item.contrast_answer);
        check_item(&item.text, item.answer, item, &tags);
        // The contrast changes only the deciding context, and is answered
        // by its own answer.
        check_item(&item.contrast, item.contrast_answer, item, &tags);
    }
    for kind in ProbeKind::ALL {
        assert_eq!(items.iter().filter(|i| i.kind == kind).count(), 100);
    }
}

/// Checks that `candidates[answer]` and only it fits `text`'s blank.
fn check_item(
    text: &str,
    answer: usize,
    item: &generated::ClozeItem,
    tags: &HashMap<String, generated::Tag>,
) {
    assert_eq!(text.matches(BLANK).count(), 1, "{text}");
    let with = |word: &str| text.replace(BLANK, word);
    let right = &item.candidates[answer];
    match item.kind {
        // The answer agrees with the subject; the other form does not.
        ProbeKind::Agreement | ProbeKind::Attraction => {
            let stats = |text: &str| generated::agreement_stats(text, tags);
            let good = stats(&with(right));
            assert_eq!(good.agreeing, good.verbs, "{}", with(right));
            let other = &item.candidates[1 - answer];
            let bad = stats(&with(other));
            assert!(bad.agreeing < bad.verbs, "{}", with(other));
            let attracted = item.kind == ProbeKind::Attraction;
            assert_eq!(good.attracted > 0, attracted, "{}", with(right));
        }
        // The answer is named earlier in the document and no other
        // candidate is.
        ProbeKind::Employer | ProbeKind::Home => {
            let before = text[..text.find(BLANK).unwrap()].to_lowercase();
            let words: HashSet<&str> = before
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            let named: Vec<&String> = item
                .candidates
                .iter()
                .filter(|c| words.contains(c.as_str()))
                .collect();
            assert_eq!(named, [right], "{text}");
        }
    }
}

#[test]
fn a_model_that_ignores_context_scores_at_the_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let (set, counts) = probe_set(dir.path());
    for kind in ProbeKind::ALL {
        let b = set.baselines[&kind];
        assert!(b.items >= 50, "{kind:?}: {} one-token items", b.items);
        assert!(b.chance < 0.51 && b.unigram < 0.75, "{kind:?}: {b:?}");
    }
    // Choosing by the candidates alone, whatever the text says: always the
    // most frequent one scores the unigram baseline exactly.
    let unigram = set.accuracy_with(|item| unigram_guess(item, &counts));
    for (kind, acc) in &unigram {
        assert_eq!(*acc, set.baselines[kind].unigram, "{kind:?}");
    }
    // An untrained masked LM has not learnt to read context either: its
    // choices are no better than the baselines (up to sampling noise). (Its
    // minimal-pair score is not pinned at 0.5: random tied embeddings do
    // react to which names are in the document.)
    let mut config = Preset::Tiny.config().model;
    config.vocab_size = counts.len();
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = BertForMaskedLm::new(&config, &mut params, 3).unwrap();
    let scores = set.score(&model, 32).unwrap();
    for (kind, r) in scores {
        let b = set.baselines[&kind];
        let noise = 3.0 * (0.25 / b.items as f64).sqrt();
        assert!(
            r.accuracy <= b.chance.max(b.unigram) + noise,
            "{kind:?}: untrained accuracy {r:?} against {b:?}"
        );
    }
}
