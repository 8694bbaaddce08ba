//! Word2Sense: co-occurrence counting and the LDA sampler.

use brisk::corpus::generated::Rng;
use brisk::senses::cooc::{self, CoocConfig, SparseCounts};
use brisk::senses::lda::{ln_gamma, Lda, LdaConfig};
use brisk::senses::train::Documents;

fn table(counts: &[u64]) -> Vec<(String, u64)> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (format!("w{i}"), c))
        .collect()
}

/// Every (word, context) pair within `window`, counted directly.
fn brute_force(docs: &[Vec<u32>], vocab: usize, window: usize) -> Vec<Vec<u32>> {
    let mut m = vec![vec![0u32; vocab]; vocab];
    for doc in docs {
        for (i, &w) in doc.iter().enumerate() {
            for (j, &c) in doc.iter().enumerate() {
                if i != j && i.abs_diff(j) <= window && (w as usize) < vocab && (c as usize) < vocab
                {
                    m[w as usize][c as usize] += 1;
                }
            }
        }
    }
    m
}

fn dense(m: &SparseCounts) -> Vec<Vec<u32>> {
    let mut out = vec![vec![0u32; m.cols]; m.rows];
    for (r, row) in out.iter_mut().enumerate() {
        let (cols, counts) = m.row(r);
        for (&c, &n) in cols.iter().zip(counts) {
            row[c as usize] = n;
        }
    }
    out
}

fn random_docs(n: usize, len: usize, words: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| (rng.below(words as usize) as u32).min(rng.below(words as usize) as u32))
                .collect()
        })
        .collect()
}

fn counts_of(docs: &[Vec<u32>], words: usize) -> Vec<u64> {
    let mut counts = vec![0u64; words];
    docs.iter().flatten().for_each(|&w| counts[w as usize] += 1);
    counts
}

/// The documents with ids renumbered by frequency rank (as brisk's word
/// tables are), and that table.
fn ranked(docs: &[Vec<u32>], words: usize) -> (Vec<Vec<u32>>, Vec<(String, u64)>) {
    let mut order: Vec<(usize, u64)> = counts_of(docs, words).into_iter().enumerate().collect();
    order.sort_by_key(|&(i, c)| (std::cmp::Reverse(c), i));
    let mut rank = vec![0u32; words];
    order
        .iter()
        .enumerate()
        .for_each(|(new, &(old, _))| rank[old] = new as u32);
    let docs: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| d.iter().map(|&w| rank[w as usize]).collect())
        .collect();
    let table = table(&counts_of(&docs, words));
    (docs, table)
}

#[test]
fn ln_gamma_matches_known_values() {
    let cases = [
        (1.0, 0.0),
        (2.0, 0.0),
        (0.5, 0.5 * std::f64::consts::PI.ln()),
        (10.0, 362_880f64.ln()),
        (0.001, 6.907_178_885_383_854),
        (123.456, 469.605_547_129_929_56),
    ];
    for (x, want) in cases {
        let got = ln_gamma(x);
        assert!(
            (got - want).abs() < 1e-9 * want.abs().max(1.0),
            "lnΓ({x}) = {got}, want {want}"
        );
    }
}

#[test]
fn counts_without_subsampling_equal_the_window_pairs() {
    let (docs, words) = ranked(&random_docs(40, 30, 12, 1), 12);
    let counts: Vec<u64> = words.iter().map(|(_, c)| *c).collect();
    let min_count = counts[8];
    let config = CoocConfig {
        window: 2,
        subsample: 0.0,
        min_count,
        letters_only: false,
    };
    let got = cooc::count(&docs, &words, &config, 7).unwrap();
    let vocab = counts.iter().filter(|&&c| c >= min_count).count();
    assert_eq!(got.vocab.len(), vocab);
    assert_eq!(dense(&got.matrix), brute_force(&docs, vocab, 2));
    let in_vocab: u64 = counts.iter().filter(|&&c| c >= min_count).sum();
    assert_eq!(
        (got.words_read, got.words_kept),
        (counts.iter().sum(), in_vocab)
    );
}

#[test]
fn subsampling_drops_frequent_words_and_ignores_the_thread_count() {
    let (docs, words) = ranked(&random_docs(600, 50, 40, 2), 40);
    let config = CoocConfig {
        window: 5,
        subsample: 1e-2,
        min_count: 1,
        letters_only: false,
    };
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| cooc::count(&docs, &words, &config, 3).unwrap())
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.matrix, two.matrix);
    assert!(one.words_kept < one.words_read);
    // A word of frequency f keeps about sqrt(t / f) of its occurrences.
    let total = one.words_read as f64;
    let expected: f64 = words
        .iter()
        .map(|(_, c)| *c as f64 * (1.0 - cooc::drop_probability(*c as f64 / total, 1e-2)))
        .sum();
    let kept = one.words_kept as f64;
    assert!(
        (kept - expected).abs() < 0.02 * expected,
        "kept {kept} words, expected about {expected}"
    );
    assert!(cooc::drop_probability(words[0].1 as f64 / total, 1e-2) > 0.3);
}

#[test]
fn counts_round_trip_through_safetensors_and_bad_files_are_named() {
    let (docs, words) = ranked(&random_docs(20, 20, 10, 4), 10);
    let config = CoocConfig {
        min_count: 1,
        ..CoocConfig::default()
    };
    let got = cooc::count(&docs, &words, &config, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cooc.safetensors");
    got.matrix.save(&path).unwrap();
    assert_eq!(SparseCounts::load(&path).unwrap(), got.matrix);

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a matrix").unwrap();
    let err = SparseCounts::load(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.safetensors"), "{err}");

    let none = cooc::count(
        &docs,
        &words,
        &CoocConfig {
            min_count: 1_000_000,
            ..config
        },
        0,
    );
    let err = none.err().expect("no vocabulary is an error").to_string();
    assert!(err.contains("min_count"), "{err}");
}

/// Documents drawn from a known LDA: `topics` topics, each putting 90% of
/// its mass on its own block of `block` words and 10% spread over all;
/// each document mixes two topics 0.8 / 0.2.
fn planted(
    topics: usize,
    block: usize,
    docs: usize,
    len: usize,
    seed: u64,
) -> (SparseCounts, Vec<Vec<f64>>) {
    let words = topics * block;
    let phi: Vec<Vec<f64>> = (0..topics)
        .map(|k| {
            (0..words)
                .map(|w| {
                    0.1 / words as f64
                        + if w / block == k {
                            0.9 / block as f64
                        } else {
                            0.0
                        }
                })
                .collect()
        })
        .collect();
    let mut rng = Rng::new(seed);
    let draw = |p: &[f64], rng: &mut Rng| {
        let mut u = rng.unit();
        for (i, &x) in p.iter().enumerate() {
            if u < x {
                return i;
            }
            u -= x;
        }
        p.len() - 1
    };
    let mut rows = Vec::new();
    for _ in 0..docs {
        let (a, b) = (rng.below(topics), rng.below(topics));
        let mut row = vec![0u32; words];
        for _ in 0..len {
            let k = if rng.chance(0.8) { a } else { b };
            row[draw(&phi[k], &mut rng)] += 1;
        }
        rows.push(row);
    }
    let mut m = SparseCounts {
        rows: docs,
        cols: words,
        offsets: vec![0],
        ..Default::default()
    };
    for row in rows {
        for (w, &n) in row.iter().enumerate() {
            if n > 0 {
                m.columns.push(w as u32);
                m.counts.push(n);
            }
        }
        m.offsets.push(m.columns.len() as u64);
    }
    (m, phi)
}

fn topic_distributions(lda: &Lda) -> Vec<Vec<f64>> {
    let m = lda.topic_word_matrix();
    (0..m.rows)
        .map(|k| {
            let (words, counts) = m.row(k);
            let total: u32 = counts.iter().sum();
            let mut row = vec![0.0; m.cols];
            for (&w, &n) in words.iter().zip(counts) {
                row[w as usize] = n as f64 / total.max(1) as f64;
            }
            row
        })
        .collect()
}

fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

#[test]
fn the_sampler_recovers_planted_topics_and_its_likelihood_rises() {
    let (counts, phi) = planted(5, 12, 150, 120, 11);
    let config = LdaConfig {
        topics: 5,
        alpha: 0.5,
        beta: 0.01,
        iterations: 0,
    };
    let mut lda = Lda::new(&counts, &config, 5).unwrap();
    let first = lda.iterate();
    let mut last = first;
    for _ in 0..150 {
        last = lda.iterate();
    }
    assert!(
        last.log_likelihood > first.log_likelihood + 0.3,
        "log-likelihood per token {} -> {}",
        first.log_likelihood,
        last.log_likelihood
    );
    assert!(last.acceptance > 0.0 && last.acceptance <= 1.0);
    let learned = topic_distributions(&lda);
    for (k, truth) in phi.iter().enumerate() {
        let best = learned
            .iter()
            .map(|p| total_variation(truth, p))
            .fold(f64::INFINITY, f64::min);
        assert!(
            best < 0.15,
            "planted topic {k}: nearest learned topic at total variation {best}"
        );
    }
}

#[test]
fn the_sampler_is_the_same_at_any_thread_count_and_after_a_resume() {
    let (counts, _) = planted(4, 8, 60, 80, 12);
    let config = LdaConfig {
        topics: 6,
        alpha: 0.3,
        beta: 0.01,
        iterations: 0,
    };
    let run = |threads: usize, iterations: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut lda = Lda::new(&counts, &config, 9).unwrap();
                (0..iterations).for_each(|_| {
                    lda.iterate();
                });
                lda
            })
    };
    let (one, two) = (run(1, 6), run(2, 6));
    assert_eq!(one.topics(), two.topics());
    assert_eq!(one.proposals(), two.proposals());

    let half = run(2, 3);
    let mut resumed = Lda::restore(
        &counts,
        &config,
        9,
        half.iteration(),
        half.topics(),
        half.proposals(),
    )
    .unwrap();
    (0..3).for_each(|_| {
        resumed.iterate();
    });
    assert_eq!(resumed.topics(), one.topics());
    assert_eq!(resumed.proposals(), one.proposals());
    assert_eq!(resumed.topic_totals(), one.topic_totals());
}

#[test]
fn bad_sampler_inputs_are_clear_errors() {
    let empty = SparseCounts {
        rows: 3,
        cols: 3,
        offsets: vec![0; 4],
        ..Default::default()
    };
    let err = Lda::new(&empty, &LdaConfig::default(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    let (counts, _) = planted(2, 4, 5, 10, 1);
    for bad in [
        LdaConfig {
            topics: 1,
            ..LdaConfig::default()
        },
        LdaConfig {
            alpha: 0.0,
            ..LdaConfig::default()
        },
        LdaConfig {
            beta: f64::NAN,
            ..LdaConfig::default()
        },
    ] {
        assert!(Lda::new(&counts, &bad, 0).is_err());
    }
    let config = LdaConfig {
        topics: 4,
        ..LdaConfig::default()
    };
    let lda = Lda::new(&counts, &config, 0).unwrap();
    let err = Lda::restore(
        &counts,
        &config,
        0,
        1,
        lda.topics()[1..].to_vec(),
        lda.proposals(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("another co-occurrence matrix"), "{err}");
}

mod vectors {
    use brisk::senses::cooc::SparseCounts;
    use brisk::senses::vectors::{
        average_linkage, cut_dendrogram, js_divergence, merge_senses, top_normalised,
        PointEstimates,
    };

    fn sparse(rows: &[&[u32]]) -> SparseCounts {
        let mut m = SparseCounts {
            rows: rows.len(),
            cols: rows[0].len(),
            offsets: vec![0],
            ..Default::default()
        };
        for row in rows {
            for (c, &n) in row.iter().enumerate() {
                if n > 0 {
                    m.columns.push(c as u32);
                    m.counts.push(n);
                }
            }
            m.offsets.push(m.columns.len() as u64);
        }
        m
    }

    /// A hand-made model: 4 words, 3 senses.
    const DOC_TOPICS: [&[u32]; 4] = [&[5, 0, 1], &[0, 7, 0], &[2, 2, 2], &[0, 0, 9]];
    const TOPIC_WORDS: [&[u32]; 3] = [&[3, 1, 2, 1], &[0, 6, 2, 1], &[1, 1, 3, 7]];
    const CONTEXTS: [u64; 4] = [6, 8, 7, 9];
    const ALPHA: f64 = 0.3;
    const BETA: f64 = 0.1;

    fn estimates() -> PointEstimates {
        PointEstimates::new(
            sparse(&DOC_TOPICS),
            &sparse(&TOPIC_WORDS),
            &CONTEXTS,
            ALPHA,
            BETA,
        )
        .unwrap()
    }

    /// θ, φ, p(w), p(k) and θ + ψ straight from the formulas, in f64.
    fn direct() -> (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) {
        let (w_n, k_n) = (4usize, 3usize);
        let a = ALPHA / k_n as f64;
        let theta: Vec<Vec<f64>> = DOC_TOPICS
            .iter()
            .map(|row| {
                let n: u32 = row.iter().sum();
                row.iter()
                    .map(|&x| (x as f64 + a) / (n as f64 + k_n as f64 * a))
                    .collect()
            })
            .collect();
        let phi: Vec<Vec<f64>> = TOPIC_WORDS
            .iter()
            .map(|row| {
                let n: u32 = row.iter().sum();
                row.iter()
                    .map(|&x| (x as f64 + BETA) / (n as f64 + w_n as f64 * BETA))
                    .collect()
            })
            .collect();
        let total: u64 = CONTEXTS.iter().sum();
        let p_w: Vec<f64> = CONTEXTS.iter().map(|&c| c as f64 / total as f64).collect();
        let mut p_k: Vec<f64> = (0..k_n)
            .map(|k| (0..w_n).map(|w| p_w[w] * theta[w][k]).sum())
            .collect();
        let s: f64 = p_k.iter().sum();
        p_k.iter_mut().for_each(|p| *p /= s);
        let both: Vec<Vec<f64>> = (0..w_n)
            .map(|w| {
                (0..k_n)
                    .map(|k| theta[w][k] + phi[k][w] * p_k[k] / p_w[w])
                    .collect()
            })
            .collect();
        (both, phi, p_k)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1e-3)
    }

    #[test]
    fn point_estimates_and_vectors_equal_the_formulas() {
        let e = estimates();
        let (both, phi, p_k) = direct();
        for k in 0..3 {
            assert!(close(e.sense_prior[k], p_k[k]), "p(k={k})");
            for (c, &want) in phi[k].iter().enumerate() {
                assert!(close(e.phi(k, c), want), "phi[{k}][{c}]");
            }
        }
        for (w, want_both) in both.iter().enumerate() {
            let got = e.both_views(w);
            for k in 0..3 {
                assert!(close(got[k], want_both[k]), "θ + ψ of word {w}, sense {k}");
            }
            // Raw vector with 2 of 3 non-zeros.
            let r: Vec<f64> = (0..3).map(|k| want_both[k] / p_k[k]).collect();
            let mut order: Vec<usize> = (0..3).collect();
            order.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
            let kept = [order[0].min(order[1]), order[0].max(order[1])];
            let sum = r[kept[0]] + r[kept[1]];
            let raw = e.raw_vector(w, 2);
            assert_eq!(raw.len(), 2);
            for (&(k, v), &want_k) in raw.iter().zip(&kept) {
                assert_eq!(k as usize, want_k);
                assert!(close(v as f64, r[want_k] / sum), "raw vector of word {w}");
            }
        }
        // Merging senses 0 and 2 into one cluster: u = (Σ both) / (Σ p).
        let clusters = brisk::senses::vectors::Clusters {
            count: 2,
            of_sense: vec![0, 1, 0],
            prior: vec![p_k[0] + p_k[2], p_k[1]],
        };
        for (w, b) in both.iter().enumerate() {
            let u = [(b[0] + b[2]) / (p_k[0] + p_k[2]), b[1] / p_k[1]];
            let merged = e.merged_vector(w, &clusters, 2);
            for (&(c, v), want) in merged.iter().zip(u) {
                assert!(
                    close(v as f64, want / (u[0] + u[1])),
                    "merged vector of word {w}, cluster {c}"
                );
            }
        }
    }

    #[test]
    fn js_divergence_is_symmetric_bounded_and_zero_on_equal_inputs() {
        let p = top_normalised(&[0.5, 0.0, 0.3, 0.2], 3);
        let q = top_normalised(&[0.1, 0.6, 0.0, 0.3], 3);
        let direct = {
            let (pd, qd) = ([0.5, 0.0, 0.3, 0.2], [0.1, 0.6, 0.0, 0.3]);
            let kl = |a: &[f64], m: &[f64]| -> f64 {
                a.iter()
                    .zip(m)
                    .filter(|(x, _)| **x > 0.0)
                    .map(|(x, y)| x * (x / y).ln())
                    .sum()
            };
            let m: Vec<f64> = pd.iter().zip(&qd).map(|(a, b)| 0.5 * (a + b)).collect();
            0.5 * kl(&pd, &m) + 0.5 * kl(&qd, &m)
        };
        assert!((js_divergence(&p, &q) - direct).abs() < 1e-6);
        assert!((js_divergence(&p, &q) - js_divergence(&q, &p)).abs() < 1e-12);
        assert!(js_divergence(&p, &p).abs() < 1e-12);
        let disjoint = js_divergence(&[(0, 1.0)], &[(1, 1.0)]);
        assert!((disjoint - std::f64::consts::LN_2).abs() < 1e-9);
    }

    /// Average linkage the slow way: merge the closest pair, recompute
    /// average distances from the original matrix, until `count` remain.
    fn naive_clusters(d: &[f64], n: usize, count: usize) -> Vec<Vec<usize>> {
        let mut clusters: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
        while clusters.len() > count {
            let mut best = (f64::INFINITY, 0, 0);
            for a in 0..clusters.len() {
                for b in a + 1..clusters.len() {
                    let mut s = 0.0;
                    for &i in &clusters[a] {
                        for &j in &clusters[b] {
                            s += d[i * n + j];
                        }
                    }
                    let avg = s / (clusters[a].len() * clusters[b].len()) as f64;
                    if avg < best.0 {
                        best = (avg, a, b);
                    }
                }
            }
            let b = clusters.remove(best.2);
            clusters[best.1].extend(b);
        }
        let mut out: Vec<Vec<usize>> = clusters
            .into_iter()
            .map(|mut c| {
                c.sort();
                c
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_nearest_neighbour_chain_equals_naive_average_linkage() {
        let mut rng = brisk::corpus::generated::Rng::new(8);
        let n = 24;
        let points: Vec<(f64, f64)> = (0..n)
            .map(|_| (rng.unit() * 10.0, rng.unit() * 10.0))
            .collect();
        let d: Vec<f64> = (0..n * n)
            .map(|ij| {
                let (a, b) = (points[ij / n], points[ij % n]);
                ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
            })
            .collect();
        let merges = average_linkage(d.clone(), n);
        assert_eq!(merges.len(), n - 1);
        for count in [1, 3, 7, 15] {
            let clusters = cut_dendrogram(&merges, n, count, &vec![1.0; n]);
            assert_eq!(clusters.count, count);
            let mut got: Vec<Vec<usize>> = (0..count)
                .map(|c| {
                    (0..n)
                        .filter(|&k| clusters.of_sense[k] == c as u32)
                        .collect()
                })
                .collect();
            got.sort();
            assert_eq!(got, naive_clusters(&d, n, count), "{count} clusters");
        }
    }

    #[test]
    fn merged_senses_group_similar_distributions() {
        // Four senses: two about words 0-1, two about words 2-3.
        let senses = vec![
            vec![(0, 0.6), (1, 0.4)],
            vec![(0, 0.5), (1, 0.5)],
            vec![(2, 0.7), (3, 0.3)],
            vec![(2, 0.4), (3, 0.6)],
        ];
        let clusters = merge_senses(&senses, &[0.1, 0.2, 0.3, 0.4], 2);
        assert_eq!(clusters.count, 2);
        assert_eq!(clusters.of_sense, vec![0, 0, 1, 1]);
        assert!((clusters.prior[0] - 0.3).abs() < 1e-12 && (clusters.prior[1] - 0.7).abs() < 1e-12);
    }
}

#[test]
fn letters_only_drops_tokens_without_a_letter_and_keeps_the_ranking() {
    let words: Vec<(String, u64)> = [(".", 9), ("the", 7), ("1988", 5), ("bank", 3), ("x-2", 1)]
        .iter()
        .map(|&(w, c)| (w.to_string(), c))
        .collect();
    let documents = Documents {
        docs: vec![vec![1, 0, 3, 2, 1], vec![0, 2], vec![4, 3]],
        words,
    };
    let kept = documents.letters_only();
    let names: Vec<&str> = kept.words.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(names, ["the", "bank", "x-2"]);
    assert_eq!(kept.docs, vec![vec![0, 1, 0], vec![], vec![2, 1]]);
}
