//! ACE, the search over which embeddings to concatenate: the controller's
//! REINFORCE gradient on a hand-made history, a synthetic task where one
//! candidate carries the labels and the others mislead, zeroed candidates
//! contributing nothing, and resume continuing the identical search.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use brisk::corpus::generated::Rng;
use brisk::embed::{EmbeddingConfig, StaticConfig, WordConfig};
use brisk::model::Ctx;
use brisk::tasks::ace::{
    self, reward, Candidate, Controller, SearchConfig, SearchOptions, Strategy,
};
use brisk::tasks::labelling;
use brisk::tasks::word_tasks::WordTask;

#[test]
fn the_controller_gradient_is_the_reinforce_formula_with_hamming_discounts() {
    // Three earlier episodes; [1,1,0] was seen twice and counts with its
    // best score.
    let earlier = vec![
        (vec![true, true, true], 90.0),
        (vec![true, true, false], 88.0),
        (vec![true, true, false], 91.0),
        (vec![false, true, false], 80.0),
    ];
    let action = [true, false, true];
    let (score, gamma) = (92.0, 0.5);
    let r = reward(&earlier, &action, score, gamma);
    // Against [1,1,1] (distance 1, differs at 1): (92−90)·γ^0 = 2.
    // Against [1,1,0] (distance 2, differs at 1, 2): (92−91)·γ^1 = 0.5.
    // Against [0,1,0] (distance 3, differs at 0, 1, 2): (92−80)·γ^2 = 3.
    let want = [3.0, 2.0 + 0.5 + 3.0, 0.5 + 3.0];
    for (got, want) in r.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{r:?}");
    }

    let mut c = Controller::new(3);
    c.theta = vec![0.3, -1.0, 2.0];
    let g = c.gradient(&action, &r);
    // ∂/∂θ of −Σ r_l log P(a_l): −r_l (a_l − σ(θ_l)).
    let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
    let want = [
        -r[0] * (1.0 - sigma(0.3)),
        -r[1] * (0.0 - sigma(-1.0)),
        -r[2] * (1.0 - sigma(2.0)),
    ];
    for (got, want) in g.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{g:?}");
    }
    // The same by central differences of the log-likelihood objective.
    let objective = |theta: &[f64]| -> f64 {
        -theta
            .iter()
            .zip(&action)
            .zip(&r)
            .map(|((&t, &a), &r)| {
                r * if a {
                    sigma(t).ln()
                } else {
                    (1.0 - sigma(t)).ln()
                }
            })
            .sum::<f64>()
    };
    for l in 0..3 {
        let (mut up, mut down) = (c.theta.clone(), c.theta.clone());
        up[l] += 1e-6;
        down[l] -= 1e-6;
        let numeric = (objective(&up) - objective(&down)) / 2e-6;
        assert!(
            (numeric - g[l]).abs() < 1e-6,
            "θ_{l}: {numeric} vs {}",
            g[l]
        );
    }
    // SGD with momentum, as PyTorch's: v = g first, then μv + g.
    c.step(&g, 0.1, 0.9);
    c.step(&g, 0.1, 0.9);
    let want0 = 0.3 - 0.1 * g[0] - 0.1 * (0.9 * g[0] + g[0]);
    assert!((c.theta[0] - want0).abs() < 1e-12);
}

#[test]
fn samples_are_never_empty_nor_the_previous_action() {
    let c = Controller::new(3);
    let mut rng = Rng::new(5);
    let mut previous = vec![true, false, true];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let a = c.sample(&mut rng, Some(&previous));
        assert!(a.iter().any(|&x| x));
        assert_ne!(a, previous);
        seen.insert(a.clone());
        previous = a;
    }
    assert_eq!(seen.len(), 7, "every non-empty subset is drawn");
}

/// A synthetic tagging task: 3 labels, each word's label fixed; train and
/// dev use different words, so only features that carry the label
/// generalise. Candidates (static vectors): `useful` is the label one-hot
/// with noise; `spurious` is the label one-hot on training words but a
/// random label's on dev words (it misleads); `random` is large noise;
/// trained word vectors know only the training words.
struct Synthetic {
    dir: PathBuf,
    task: PathBuf,
}

fn synthetic(dir: &Path) -> Synthetic {
    let mut rng = Rng::new(11);
    let labels = ["A", "B", "C"];
    let mut vectors: [String; 3] = Default::default();
    let mut word_labels = Vec::new();
    for (prefix, count) in [("t", 60), ("d", 30)] {
        for i in 0..count {
            let word = format!("{prefix}{i}");
            let label = rng.below(3);
            let shown = if prefix == "t" { label } else { rng.below(3) };
            let one_hot = |l: usize, scale: f64, rng: &mut Rng| -> Vec<String> {
                (0..3)
                    .map(|k| {
                        let v = scale * f64::from(u8::from(k == l)) + 0.3 * (rng.unit() - 0.5);
                        format!("{v:.3}")
                    })
                    .collect()
            };
            let useful = one_hot(label, 1.0, &mut rng);
            // Stronger than the useful one, so a model given both leans
            // on it.
            let spurious = one_hot(shown, 3.0, &mut rng);
            let random: Vec<String> = (0..6)
                .map(|_| format!("{:.3}", 4.0 * (rng.unit() - 0.5)))
                .collect();
            for (v, values) in vectors.iter_mut().zip([useful, spurious, random]) {
                v.push_str(&format!("{word} {}\n", values.join(" ")));
            }
            word_labels.push((word, labels[label]));
        }
    }
    for (name, text) in ["useful", "spurious", "random"].iter().zip(&vectors) {
        std::fs::write(dir.join(format!("{name}.txt")), text).unwrap();
    }
    let sentences = |prefix: &str, n: usize, rng: &mut Rng| -> String {
        let words: Vec<&(String, &str)> = word_labels
            .iter()
            .filter(|(w, _)| w.starts_with(prefix))
            .collect();
        let mut out = String::new();
        for _ in 0..n {
            for _ in 0..5 {
                let (w, l) = words[rng.below(words.len())];
                out.push_str(&format!("{w} {l}\n"));
            }
            out.push('\n');
        }
        out
    };
    std::fs::write(dir.join("train.txt"), sentences("t", 120, &mut rng)).unwrap();
    std::fs::write(dir.join("dev.txt"), sentences("d", 40, &mut rng)).unwrap();
    let task = dir.join("task.toml");
    std::fs::write(
        &task,
        "name = \"synthetic\"\nkind = \"tagging\"\nformat = \"conll\"\nword = 0\nlabel = 1\n\
         scheme = \"none\"\nmetric = \"accuracy\"\ntrain = \"train.txt\"\ndev = \"dev.txt\"\n",
    )
    .unwrap();
    Synthetic {
        dir: dir.to_path_buf(),
        task,
    }
}

fn search_config(s: &Synthetic, strategy: Strategy, episodes: usize) -> SearchConfig {
    let mut c = SearchConfig::defaults(false);
    c.candidates = ["useful", "spurious", "random"]
        .iter()
        .map(|n| Candidate {
            name: n.to_string(),
            embedding: EmbeddingConfig::Static(StaticConfig {
                path: s.dir.join(format!("{n}.txt")),
            }),
        })
        .chain(std::iter::once(Candidate::new(EmbeddingConfig::Word(
            WordConfig {
                dim: 8,
                ..Default::default()
            },
        ))))
        .collect();
    c.model.hidden = 16;
    c.model.dropout = 0.0;
    c.train.batch_size = 10;
    c.train.learning_rate = 0.02;
    c.train.epochs = 2;
    c.train.seed = 3;
    c.ace.strategy = strategy;
    c.ace.episodes = episodes;
    c
}

fn run_search(s: &Synthetic, config: SearchConfig, out: &Path, resume: bool) -> ace::SearchSummary {
    let task = WordTask::resolve(s.task.to_str().unwrap(), Path::new(".")).unwrap();
    let prepared = ace::prepare(task, config).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let stop = AtomicBool::new(false);
    let options = SearchOptions {
        resume,
        stop: &stop,
    };
    ace::search(prepared, out, &options, |_| {}).unwrap()
}

#[test]
fn the_search_keeps_the_useful_candidate_and_drops_the_misleading_one() {
    let tmp = tempfile::tempdir().unwrap();
    let s = synthetic(tmp.path());
    let out = tmp.path().join("run");
    let summary = run_search(&s, search_config(&s, Strategy::Ace, 8), &out, false);
    let episodes = ace::read_episodes(&out).unwrap();
    assert_eq!(episodes.len(), 8);
    assert_eq!(episodes[0].action, vec![true; 4], "first: all");
    let p = &summary.probabilities;
    assert!(p[0] > 0.8, "useful σ(θ) {p:?}");
    assert!(p[1] < 0.2, "spurious σ(θ) {p:?}");
    assert_eq!(summary.best.action[..2], [true, false], "{summary:?}");
    assert!(summary.dev > 0.95, "{summary:?}");
    // The run is an ordinary tagger run: it predicts with the kept
    // selection.
    let predictor = labelling::Predictor::load(&out).unwrap();
    assert_eq!(
        predictor.saved.selection.as_deref(),
        Some(summary.best.action.as_slice())
    );
    assert!(out.join("report.html").is_file());
}

#[test]
fn resume_between_episodes_continues_the_identical_search() {
    let tmp = tempfile::tempdir().unwrap();
    let s = synthetic(tmp.path());
    let whole = tmp.path().join("whole");
    run_search(&s, search_config(&s, Strategy::Ace, 4), &whole, false);
    let parts = tmp.path().join("parts");
    run_search(&s, search_config(&s, Strategy::Ace, 2), &parts, false);
    run_search(&s, search_config(&s, Strategy::Ace, 4), &parts, true);
    let a = ace::read_episodes(&whole).unwrap();
    let b = ace::read_episodes(&parts).unwrap();
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.action, y.action);
        assert_eq!(x.dev_epochs, y.dev_epochs);
        assert_eq!(x.theta, y.theta);
    }
}

#[test]
fn a_zeroed_candidate_contributes_nothing_to_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let s = synthetic(tmp.path());
    let task = WordTask::resolve(s.task.to_str().unwrap(), Path::new(".")).unwrap();
    let config = search_config(&s, Strategy::Ace, 1);
    let mut prepared = ace::prepare(task, config).unwrap().prepared;
    let setup = labelling::setup(&mut prepared, None, &mut |_| {}).unwrap();
    let ids: Vec<usize> = (0..8).collect();
    let loss = |split: &labelling::Split| -> f32 {
        setup
            .model
            .loss(split, &ids, &mut Ctx::eval())
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    // The same split with the `random` candidate's features replaced.
    let mut other = labelling::Split::new(prepared.train.data.clone());
    labelling::compute_features(&prepared.config.embeddings, &mut [&mut other], &mut |_| {})
        .unwrap();
    let words: Vec<Vec<String>> = other.words.clone();
    let n: usize = words.iter().map(Vec::len).sum();
    let values: Vec<f32> = (0..n * 6).map(|i| (i % 7) as f32 - 3.0).collect();
    other.frozen[2] = Some(brisk::embed::FeatureTable::owned(6, &words, values));
    let embedder = setup.model.encoder().embedder();
    embedder.select(&[true, true, false, true]).unwrap();
    assert_eq!(loss(&prepared.train), loss(&other), "unselected: no effect");
    embedder.select(&[true, true, true, true]).unwrap();
    assert_ne!(loss(&prepared.train), loss(&other), "selected: it counts");
}

#[test]
fn a_bilstm_over_selected_columns_equals_one_over_zeroed_columns() {
    use brisk::model::Params;
    use brisk::tasks::bilstm::BiLstm;
    use candle_core::{DType, Device, Tensor};
    let mut params = Params::new(Device::Cpu, DType::F64);
    let lstm = BiLstm::new(&mut params, "lstm", 7, 4, &mut Rng::new(2)).unwrap();
    let lengths = [5, 3];
    let mut rng = Rng::new(9);
    let values: Vec<f64> = (0..2 * 5 * 7).map(|_| rng.unit() - 0.5).collect();
    let x = Tensor::from_vec(values, (2, 5, 7), &Device::Cpu).unwrap();
    // Columns 0-1 and 5-6 selected; 2-4 left out.
    let kept: Vec<u32> = vec![0, 1, 5, 6];
    let columns = Tensor::from_vec(kept.clone(), 4, &Device::Cpu).unwrap();
    let blocks = [(0, 2), (5, 2)];
    let mask: Vec<f64> = (0..7)
        .map(|c| f64::from(u8::from(kept.contains(&(c as u32)))))
        .collect();
    let zeroed = x
        .broadcast_mul(&Tensor::from_vec(mask, 7, &Device::Cpu).unwrap())
        .unwrap();
    let full = lstm.forward(&zeroed, &lengths).unwrap();
    let narrow = lstm
        .forward_columns(
            &x.index_select(&columns, 2).unwrap(),
            &lengths,
            Some(&blocks),
        )
        .unwrap();
    let diff = (full.clone() - narrow.clone())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(diff < 1e-12, "outputs differ by {diff}");
    // The same gradients for every parameter.
    let grads_of = |y: &Tensor| {
        let g = y.sum_all().unwrap().backward().unwrap();
        params
            .groups()
            .iter()
            .map(|p| {
                g.get(p.var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    for (a, b) in grads_of(&full).iter().zip(grads_of(&narrow)) {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
    }
}
