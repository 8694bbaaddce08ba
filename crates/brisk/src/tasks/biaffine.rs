//! The biaffine dependency parser (Dozat & Manning, ICLR 2017): the
//! concatenated word features and a trained ROOT word read by BiLSTMs;
//! arc and relation MLPs (leaky ReLU, dropout) on each word's state, once
//! as a dependent and once as a head; a biaffine arc scorer
//! `s(i ← j) = dᵢᵀ U hⱼ + uᵀ hⱼ` and a biaffine relation scorer over
//! `[d; 1]ᵀ U_r [h; 1]`; cross-entropy on heads (over the sentence's words
//! and ROOT) and on relations (at the gold head).
//!
//! Decoding is Chu-Liu-Edmonds' maximum spanning arborescence over the
//! heads' log-probabilities, not Eisner's algorithm: English-EWT has
//! non-projective trees, which Eisner cannot return. A tree has exactly
//! one word attached to ROOT, as in Universal Dependencies: when the best
//! arborescence has several, each root word is tried alone and the best
//! tree kept (Dozat et al., 2017's rule).
//!
//! Scores: UAS and LAS over words whose gold relation is not `punct`
//! (punctuation excluded, as is usual; in UD that relation marks it).

use candle_core::{Tensor, D};

use super::labelling::{Predicted, SavedModel, Split, WordEncoder, WordModel};
use super::word_tasks::Labelled;
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::{Ctx, Params};

/// A linear layer followed by leaky ReLU (slope 0.1).
struct Mlp {
    weight: Tensor,
    bias: Tensor,
}

impl Mlp {
    fn new(
        params: &mut Params,
        prefix: &str,
        input: usize,
        output: usize,
        rng: &mut Rng,
    ) -> Result<Mlp> {
        let mut g = params.group(prefix);
        g.uniform("weight", &[output, input], 1.0 / (input as f64).sqrt(), rng);
        g.zeros("bias", &[output]);
        let g = g.finish()?;
        Ok(Mlp {
            weight: g.view("weight")?,
            bias: g.view("bias")?,
        })
    }

    /// `x`: `[n, input]`.
    fn forward(&self, x: &Tensor, dropout: f64, ctx: &mut Ctx) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        let leaky = (y.relu()? - (y.neg()?.relu()? * 0.1)?)?;
        ctx.dropout(&leaky, dropout)
    }
}

/// The parser.
pub struct Parser {
    pub relations: Vec<String>,
    encoder: WordEncoder,
    arc_dep: Mlp,
    arc_head: Mlp,
    rel_dep: Mlp,
    rel_head: Mlp,
    /// `[arc, arc]`.
    arc_weight: Tensor,
    /// `[arc]`: how likely each word is a head at all.
    arc_bias: Tensor,
    /// `[rel + 1, relations · (rel + 1)]`.
    rel_weight: Tensor,
    arc: usize,
    rel: usize,
}

/// Scores of one batch: states of every word (ROOT first) in rows
/// `b·(len+1) + i`.
struct Scored {
    /// `[batch, len+1 (dependent), len+1 (head)]`, log-probabilities.
    arc_logp: Tensor,
    rel_dep: Tensor,
    rel_head: Tensor,
    steps: usize,
}

impl Parser {
    pub fn new(params: &mut Params, saved: &SavedModel, rng: &mut Rng) -> Result<Parser> {
        let cfg = &saved.config.model;
        let encoder = WordEncoder::new(params, saved, true, rng)?;
        let (w, arc, rel, r) = (
            encoder.width(),
            cfg.arc_mlp,
            cfg.rel_mlp,
            saved.labels.len(),
        );
        if r == 0 {
            return Err(Error::Usage("the training data has no relations".into()));
        }
        let arc_dep = Mlp::new(params, "arc_mlp.dep", w, arc, rng)?;
        let arc_head = Mlp::new(params, "arc_mlp.head", w, arc, rng)?;
        let rel_dep = Mlp::new(params, "rel_mlp.dep", w, rel, rng)?;
        let rel_head = Mlp::new(params, "rel_mlp.head", w, rel, rng)?;
        let mut g = params.group("arc_scorer");
        g.normal("weight", &[arc, arc], 1.0 / arc as f64, rng);
        g.zeros("bias", &[arc]);
        let g = g.finish()?;
        let (arc_weight, arc_bias) = (g.view("weight")?, g.view("bias")?);
        let rel_weight = params.normal(
            "rel_scorer.weight",
            &[rel + 1, r * (rel + 1)],
            1.0 / (rel + 1) as f64,
            rng,
        )?;
        Ok(Parser {
            relations: saved.labels.clone(),
            encoder,
            arc_dep,
            arc_head,
            rel_dep,
            rel_head,
            arc_weight,
            arc_bias,
            rel_weight,
            arc,
            rel,
        })
    }

    fn score(&self, split: &Split, ids: &[usize], ctx: &mut Ctx) -> Result<Scored> {
        let x = self.encoder.forward(split, ids, ctx)?;
        let (b, t, w) = x.dims3()?;
        let flat = x.reshape((b * t, w))?;
        let p = self.encoder.dropout();
        let dep = self.arc_dep.forward(&flat, p, ctx)?;
        let head = self
            .arc_head
            .forward(&flat, p, ctx)?
            .reshape((b, t, self.arc))?;
        let scores = dep
            .matmul(&self.arc_weight)?
            .reshape((b, t, self.arc))?
            .matmul(&head.transpose(1, 2)?.contiguous()?)?;
        let head_bias = head.broadcast_matmul(&self.arc_bias.unsqueeze(1)?)?; // [b, t, 1]
        let scores = scores.broadcast_add(&head_bias.transpose(1, 2)?)?;
        // Heads outside the sentence and self-loops are impossible.
        let mut mask = vec![0f32; b * t * t];
        for (r, &id) in ids.iter().enumerate() {
            let len = split.words[id].len() + 1;
            for i in 0..t {
                for j in 0..t {
                    if j >= len || i == j {
                        mask[(r * t + i) * t + j] = -1e9;
                    }
                }
            }
        }
        let scores = (scores + Tensor::from_vec(mask, (b, t, t), x.device())?)?;
        let arc_logp = log_softmax(&scores)?;
        Ok(Scored {
            arc_logp,
            rel_dep: self.rel_dep.forward(&flat, p, ctx)?,
            rel_head: self.rel_head.forward(&flat, p, ctx)?,
            steps: t,
        })
    }

    /// Relation log-probabilities `[n, relations]` of dependents `deps`
    /// attached to `heads` (rows of the flattened batch).
    fn relation_logp(&self, s: &Scored, deps: &[u32], heads: &[u32]) -> Result<Tensor> {
        let n = deps.len();
        let dev = s.rel_dep.device();
        let with_one = |rows: &Tensor| -> Result<Tensor> {
            let ones = Tensor::ones((n, 1), rows.dtype(), dev)?;
            Ok(Tensor::cat(&[rows, &ones], 1)?)
        };
        let d = with_one(
            &s.rel_dep
                .index_select(&Tensor::from_slice(deps, n, dev)?, 0)?,
        )?;
        let h = with_one(
            &s.rel_head
                .index_select(&Tensor::from_slice(heads, n, dev)?, 0)?,
        )?;
        let r = self.relations.len();
        let scores = d
            .matmul(&self.rel_weight)?
            .reshape((n, r, self.rel + 1))?
            .broadcast_mul(&h.unsqueeze(1)?)?
            .sum(D::Minus1)?;
        log_softmax(&scores)
    }
}

/// log-softmax over the last dimension (the maximum is a constant, so no
/// gradient flows through it).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

impl WordModel for Parser {
    fn encoder(&self) -> &WordEncoder {
        &self.encoder
    }

    /// Mean cross-entropy of the gold heads plus that of the gold
    /// relations at the gold heads.
    fn loss(&self, split: &Split, ids: &[usize], ctx: &mut Ctx) -> Result<Tensor> {
        let s = self.score(split, ids, ctx)?;
        let t = s.steps;
        let b = ids.len();
        let mut gold = vec![0f32; b * t * t];
        let (mut deps, mut heads, mut rels) = (Vec::new(), Vec::new(), Vec::new());
        for (r, &id) in ids.iter().enumerate() {
            let sentence = &split.data[id];
            for (i, (&h, label)) in sentence.heads.iter().zip(&sentence.labels).enumerate() {
                gold[(r * t + i + 1) * t + h] = 1.0;
                deps.push((r * t + i + 1) as u32);
                heads.push((r * t + h) as u32);
                rels.push(
                    self.relations
                        .iter()
                        .position(|x| x == label)
                        .ok_or_else(|| {
                            Error::Tensor(format!("relation {label:?} is not in the relation set"))
                        })?,
                );
            }
        }
        let n = deps.len().max(1) as f64;
        let dev = s.arc_logp.device();
        let arc_loss = (s
            .arc_logp
            .mul(&Tensor::from_vec(gold, (b, t, t), dev)?)?
            .sum_all()?
            / -n)?;
        let rel_logp = self.relation_logp(&s, &deps, &heads)?;
        let r = self.relations.len();
        let mut one_hot = vec![0f32; deps.len() * r];
        for (k, &rel) in rels.iter().enumerate() {
            one_hot[k * r + rel] = 1.0;
        }
        let rel_loss = (rel_logp
            .mul(&Tensor::from_vec(one_hot, (deps.len(), r), dev)?)?
            .sum_all()?
            / -n)?;
        Ok((arc_loss + rel_loss)?)
    }

    /// The best single-root tree of each sentence, and the best relation
    /// of each word at its predicted head.
    fn predict(&self, split: &Split, batch_size: usize) -> Result<Predicted> {
        let mut labels = vec![Vec::new(); split.words.len()];
        let mut heads = vec![Vec::new(); split.words.len()];
        for ids in split.by_length().chunks(batch_size.max(1)) {
            let s = self.score(split, ids, &mut Ctx::eval())?;
            let t = s.steps;
            let logp: Vec<f32> = s.arc_logp.flatten_all()?.to_vec1()?;
            let trees: Vec<Vec<usize>> = ids
                .iter()
                .enumerate()
                .map(|(r, &id)| {
                    let n = split.words[id].len() + 1;
                    let scores: Vec<Vec<f64>> = (0..n)
                        .map(|i| (0..n).map(|j| logp[(r * t + i) * t + j] as f64).collect())
                        .collect();
                    single_root_tree(&scores)
                })
                .collect();
            let (mut deps, mut hs) = (Vec::new(), Vec::new());
            for (r, tree) in trees.iter().enumerate() {
                for (i, &h) in tree.iter().enumerate().skip(1) {
                    deps.push((r * t + i) as u32);
                    hs.push((r * t + h) as u32);
                }
            }
            let rel = self
                .relation_logp(&s, &deps, &hs)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?;
            let mut k = 0;
            for (&id, tree) in ids.iter().zip(&trees) {
                heads[id] = tree[1..].to_vec();
                labels[id] = tree[1..]
                    .iter()
                    .map(|_| {
                        k += 1;
                        self.relations[rel[k - 1] as usize].clone()
                    })
                    .collect();
            }
        }
        Ok(Predicted { labels, heads })
    }
}

/// The maximum spanning arborescence rooted at node 0 of `scores[d][h]`
/// (the score of `h` heading `d`; −∞ for impossible arcs), by
/// Chu-Liu-Edmonds: every node takes its best head; a cycle is contracted
/// into one node whose incoming arcs are rescored by what they displace,
/// and the contracted problem is solved recursively. `heads[0]` is 0.
pub fn max_arborescence(scores: &[Vec<f64>]) -> Vec<usize> {
    let n = scores.len();
    let mut head = vec![0usize; n];
    for (d, row) in scores.iter().enumerate().skip(1) {
        let mut best = f64::NEG_INFINITY;
        for (h, &s) in row.iter().enumerate() {
            if h != d && s > best {
                best = s;
                head[d] = h;
            }
        }
    }
    let Some(cycle) = find_cycle(&head) else {
        return head;
    };
    let mut in_cycle = vec![false; n];
    for &v in &cycle {
        in_cycle[v] = true;
    }
    // Old node → contracted node; the cycle becomes the last one.
    let mut map = vec![0usize; n];
    let mut kept = Vec::new();
    for v in 0..n {
        if !in_cycle[v] {
            map[v] = kept.len();
            kept.push(v);
        }
    }
    let c = kept.len();
    for &v in &cycle {
        map[v] = c;
    }
    let m = c + 1;
    let mut contracted = vec![vec![f64::NEG_INFINITY; m]; m];
    // For each outside head, the cycle node its best arc into the cycle
    // enters; for each outside dependent, the cycle node heading it.
    let mut enters = vec![0usize; m];
    let mut leaves = vec![0usize; m];
    for d in 1..n {
        for h in 0..n {
            if h == d || scores[d][h] == f64::NEG_INFINITY || (in_cycle[d] && in_cycle[h]) {
                continue;
            }
            let (nd, nh) = (map[d], map[h]);
            if in_cycle[d] {
                let value = scores[d][h] - scores[d][head[d]];
                if value > contracted[c][nh] {
                    contracted[c][nh] = value;
                    enters[nh] = d;
                }
            } else if in_cycle[h] {
                if scores[d][h] > contracted[nd][c] {
                    contracted[nd][c] = scores[d][h];
                    leaves[nd] = h;
                }
            } else {
                contracted[nd][nh] = scores[d][h];
            }
        }
    }
    let inner = max_arborescence(&contracted);
    let mut out = head;
    for nd in 1..m {
        let nh = inner[nd];
        if nd == c {
            out[enters[nh]] = kept[nh];
        } else {
            out[kept[nd]] = if nh == c { leaves[nd] } else { kept[nh] };
        }
    }
    out
}

/// A cycle among the head pointers (node 0 heads itself and is never on
/// one), as its nodes.
fn find_cycle(head: &[usize]) -> Option<Vec<usize>> {
    let n = head.len();
    // 0: unseen, 1: on the current walk, 2: done.
    let mut state = vec![0u8; n];
    state[0] = 2;
    for start in 1..n {
        let mut walk = Vec::new();
        let mut v = start;
        while state[v] == 0 {
            state[v] = 1;
            walk.push(v);
            v = head[v];
        }
        if state[v] == 1 {
            let at = walk.iter().position(|&x| x == v).expect("on the walk");
            return Some(walk[at..].to_vec());
        }
        for w in walk {
            state[w] = 2;
        }
    }
    None
}

/// The best tree with exactly one word attached to the root.
pub fn single_root_tree(scores: &[Vec<f64>]) -> Vec<usize> {
    let tree = max_arborescence(scores);
    let roots: Vec<usize> = (1..tree.len()).filter(|&d| tree[d] == 0).collect();
    if roots.len() <= 1 {
        return tree;
    }
    let total = |t: &[usize]| (1..t.len()).map(|d| scores[d][t[d]]).sum::<f64>();
    let mut best: Option<(f64, Vec<usize>)> = None;
    for r in 1..scores.len() {
        if scores[r][0] == f64::NEG_INFINITY {
            continue;
        }
        let mut only = scores.to_vec();
        for (d, row) in only.iter_mut().enumerate().skip(1) {
            if d != r {
                row[0] = f64::NEG_INFINITY;
            }
        }
        let t = max_arborescence(&only);
        let s = total(&t);
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, t));
        }
    }
    best.map(|(_, t)| t).unwrap_or(tree)
}

/// Unlabelled and labelled attachment scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub uas: f64,
    pub las: f64,
    /// Words scored.
    pub words: usize,
    /// Words left out (gold relation `punct`).
    pub excluded: usize,
}

/// UAS and LAS of predicted heads and relations, punctuation excluded.
pub fn attachment(gold: &[Labelled], predicted: &Predicted) -> Attachment {
    let (mut words, mut excluded, mut heads_right, mut both_right) = (0, 0, 0, 0);
    for (i, g) in gold.iter().enumerate() {
        for (j, rel) in g.labels.iter().enumerate() {
            if rel == "punct" {
                excluded += 1;
                continue;
            }
            words += 1;
            if predicted.heads[i][j] == g.heads[j] {
                heads_right += 1;
                if predicted.labels[i][j] == *rel {
                    both_right += 1;
                }
            }
        }
    }
    let share = |k: usize| k as f64 / words.max(1) as f64;
    Attachment {
        uas: share(heads_right),
        las: share(both_right),
        words,
        excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether heads form a tree rooted at 0 (every word reaches 0).
    fn is_tree(heads: &[usize]) -> bool {
        (1..heads.len()).all(|start| {
            let mut v = start;
            for _ in 0..heads.len() {
                if v == 0 {
                    return true;
                }
                v = heads[v];
            }
            false
        })
    }

    fn random_scores(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|d| {
                (0..n)
                    .map(|h| {
                        if h == d {
                            f64::NEG_INFINITY
                        } else {
                            4.0 * rng.unit() - 2.0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Every head assignment of `n - 1` words, kept when it is a tree
    /// (with one root word when `single`).
    fn all_trees(n: usize, single: bool) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let words = n - 1;
        let total = n.pow(words as u32);
        for code in 0..total {
            let mut heads = vec![0; n];
            let mut c = code;
            for h in heads.iter_mut().skip(1) {
                *h = c % n;
                c /= n;
            }
            if (1..n).any(|d| heads[d] == d) || !is_tree(&heads) {
                continue;
            }
            if single && (1..n).filter(|&d| heads[d] == 0).count() != 1 {
                continue;
            }
            out.push(heads);
        }
        out
    }

    fn total(scores: &[Vec<f64>], heads: &[usize]) -> f64 {
        (1..heads.len()).map(|d| scores[d][heads[d]]).sum()
    }

    #[test]
    fn decoding_returns_trees_on_random_scores() {
        for seed in 0..200 {
            let n = 2 + (seed as usize % 40);
            let scores = random_scores(n, seed);
            let t = single_root_tree(&scores);
            assert!(is_tree(&t), "seed {seed}: {t:?}");
            assert_eq!(
                (1..n).filter(|&d| t[d] == 0).count(),
                1,
                "seed {seed}: {t:?}"
            );
        }
    }

    #[test]
    fn decoding_finds_the_best_tree_by_enumeration() {
        for seed in 0..60 {
            let n = 2 + (seed as usize % 5); // up to 5 words
            let scores = random_scores(n, 1000 + seed);
            for single in [false, true] {
                let best = all_trees(n, single)
                    .iter()
                    .map(|t| total(&scores, t))
                    .fold(f64::NEG_INFINITY, f64::max);
                let t = if single {
                    single_root_tree(&scores)
                } else {
                    max_arborescence(&scores)
                };
                assert!(is_tree(&t));
                assert!(
                    (total(&scores, &t) - best).abs() < 1e-9,
                    "seed {seed}, single {single}: {} vs best {best}",
                    total(&scores, &t)
                );
            }
        }
    }

    #[test]
    fn attachment_scores_match_a_hand_count() {
        // "She saw it ." : saw is the root; she and it attach to saw; the
        // full stop is punctuation and is not scored.
        let gold = vec![Labelled {
            words: ["She", "saw", "it", "."].map(String::from).to_vec(),
            labels: ["nsubj", "root", "obj", "punct"].map(String::from).to_vec(),
            heads: vec![2, 0, 2, 2],
        }];
        // Right heads for She and saw, a wrong head for it, a wrong
        // relation for She, and a wrong head for the (unscored) stop.
        let predicted = Predicted {
            labels: vec![["obj", "root", "obj", "punct"].map(String::from).to_vec()],
            heads: vec![vec![2, 0, 1, 3]],
        };
        let a = attachment(&gold, &predicted);
        assert_eq!(a.words, 3);
        assert_eq!(a.excluded, 1);
        assert!((a.uas - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.las - 1.0 / 3.0).abs() < 1e-12);
    }
}
