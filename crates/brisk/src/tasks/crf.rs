//! A linear-chain conditional random field (Lafferty et al., 2001) over tag
//! scores, as in BiLSTM-CRF taggers (Huang et al., 2015; Lample et al.,
//! 2016): learned transition scores between tags, and scores for the first
//! and the last tag of a sentence.
//!
//! The loss is the negative log-likelihood of the gold sequence, its
//! partition function from the forward algorithm in log space; its gradient
//! is marginals minus gold counts, from the backward algorithm, written by
//! hand as one candle op (sentences in parallel, in f64 whatever the
//! model's precision: the sums are small and the cancellations are not).
//! Decoding is Viterbi's.
//!
//! Transitions a tag scheme forbids (O → I-X in BIO, say) can be fixed at
//! −∞: the model then never scores, learns or predicts them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::fused::kernels::{with_slices, Float};
use crate::model::Params;

/// Which transitions (and first and last tags) are possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    /// `[from · tags + to]`.
    pub transitions: Vec<bool>,
    pub start: Vec<bool>,
    pub end: Vec<bool>,
}

/// A CRF's parameters: the group `{prefix}` holding `transitions`
/// (`[from, to]`), `start` and `end`, in that order.
#[derive(Debug, Clone)]
pub struct Crf {
    pub tags: usize,
    flat: Tensor,
    allowed: Option<Allowed>,
}

/// The scores of one CRF in f64, forbidden ones at −∞.
#[derive(Debug, Clone)]
pub struct Scores {
    pub tags: usize,
    pub transitions: Vec<f64>,
    pub start: Vec<f64>,
    pub end: Vec<f64>,
}

impl Scores {
    /// From the flat parameters (`transitions`, `start`, `end`).
    pub fn new(tags: usize, flat: &[f64], allowed: Option<&Allowed>) -> Scores {
        let k = tags;
        let mask = |values: &[f64], ok: Option<&Vec<bool>>| -> Vec<f64> {
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| match ok {
                    Some(ok) if !ok[i] => f64::NEG_INFINITY,
                    _ => v,
                })
                .collect()
        };
        Scores {
            tags,
            transitions: mask(&flat[..k * k], allowed.map(|a| &a.transitions)),
            start: mask(&flat[k * k..k * k + k], allowed.map(|a| &a.start)),
            end: mask(&flat[k * k + k..k * k + 2 * k], allowed.map(|a| &a.end)),
        }
    }

    /// The score of one tag sequence over `emissions` (`[len, tags]`).
    pub fn sequence(&self, emissions: &[f64], tags: &[usize]) -> f64 {
        let k = self.tags;
        let mut s = 0.0;
        for (t, &y) in tags.iter().enumerate() {
            s += emissions[t * k + y];
            s += if t == 0 {
                self.start[y]
            } else {
                self.transitions[tags[t - 1] * k + y]
            };
        }
        if let Some(&last) = tags.last() {
            s += self.end[last];
        }
        s
    }

    /// Forward scores `alpha[t, j]` (log-sum over paths ending in `j` at `t`).
    fn alphas(&self, emissions: &[f64], len: usize) -> Vec<f64> {
        let k = self.tags;
        let mut alpha = vec![0.0; len * k];
        for j in 0..k {
            alpha[j] = self.start[j] + emissions[j];
        }
        let mut column = vec![0.0; k];
        for t in 1..len {
            for j in 0..k {
                for (i, c) in column.iter_mut().enumerate() {
                    *c = alpha[(t - 1) * k + i] + self.transitions[i * k + j];
                }
                alpha[t * k + j] = log_sum_exp(&column) + emissions[t * k + j];
            }
        }
        alpha
    }

    /// Backward scores `beta[t, i]` (log-sum over continuations from `i` at `t`).
    fn betas(&self, emissions: &[f64], len: usize) -> Vec<f64> {
        let k = self.tags;
        let mut beta = vec![0.0; len * k];
        beta[(len - 1) * k..].copy_from_slice(&self.end);
        let mut row = vec![0.0; k];
        for t in (0..len - 1).rev() {
            for i in 0..k {
                for (j, r) in row.iter_mut().enumerate() {
                    *r = self.transitions[i * k + j]
                        + emissions[(t + 1) * k + j]
                        + beta[(t + 1) * k + j];
                }
                beta[t * k + i] = log_sum_exp(&row);
            }
        }
        beta
    }

    /// log Z: the log-sum of the scores of every tag sequence of `len`.
    pub fn log_partition(&self, emissions: &[f64], len: usize) -> f64 {
        if len == 0 {
            return 0.0;
        }
        let k = self.tags;
        let alpha = self.alphas(emissions, len);
        let last: Vec<f64> = (0..k)
            .map(|j| alpha[(len - 1) * k + j] + self.end[j])
            .collect();
        log_sum_exp(&last)
    }

    /// The negative log-likelihood of `gold` and its gradients: for the
    /// emissions (`[len, tags]`) and for the flat parameters (added to
    /// `d_flat`).
    pub fn nll_and_gradients(
        &self,
        emissions: &[f64],
        gold: &[usize],
        d_emissions: &mut [f64],
        d_flat: &mut [f64],
    ) -> f64 {
        let (k, len) = (self.tags, gold.len());
        if len == 0 {
            return 0.0;
        }
        let alpha = self.alphas(emissions, len);
        let beta = self.betas(emissions, len);
        let last: Vec<f64> = (0..k)
            .map(|j| alpha[(len - 1) * k + j] + self.end[j])
            .collect();
        let log_z = log_sum_exp(&last);
        let marginal = |t: usize, j: usize| (alpha[t * k + j] + beta[t * k + j] - log_z).exp();
        let (d_trans, rest) = d_flat.split_at_mut(k * k);
        let (d_start, d_end) = rest.split_at_mut(k);
        for t in 0..len {
            for j in 0..k {
                d_emissions[t * k + j] = marginal(t, j);
            }
            d_emissions[t * k + gold[t]] -= 1.0;
        }
        for j in 0..k {
            d_start[j] += marginal(0, j);
            d_end[j] += marginal(len - 1, j);
        }
        d_start[gold[0]] -= 1.0;
        d_end[gold[len - 1]] -= 1.0;
        for t in 1..len {
            for i in 0..k {
                let a = alpha[(t - 1) * k + i];
                for j in 0..k {
                    let pair =
                        a + self.transitions[i * k + j] + emissions[t * k + j] + beta[t * k + j]
                            - log_z;
                    d_trans[i * k + j] += pair.exp();
                }
            }
            d_trans[gold[t - 1] * k + gold[t]] -= 1.0;
        }
        log_z - self.sequence(emissions, gold)
    }

    /// The best tag sequence of `len` over `emissions` (Viterbi).
    pub fn viterbi(&self, emissions: &[f64], len: usize) -> Vec<usize> {
        if len == 0 {
            return Vec::new();
        }
        let k = self.tags;
        let mut best: Vec<f64> = (0..k).map(|j| self.start[j] + emissions[j]).collect();
        let mut back = vec![0usize; len * k];
        for t in 1..len {
            let mut next = vec![f64::NEG_INFINITY; k];
            for (j, n) in next.iter_mut().enumerate() {
                let (mut arg, mut top) = (0, f64::NEG_INFINITY);
                for (i, b) in best.iter().enumerate() {
                    let s = b + self.transitions[i * k + j];
                    if s > top {
                        (arg, top) = (i, s);
                    }
                }
                *n = top + emissions[t * k + j];
                back[t * k + j] = arg;
            }
            best = next;
        }
        let mut tag = (0..k)
            .max_by(|&a, &b| (best[a] + self.end[a]).total_cmp(&(best[b] + self.end[b])))
            .expect("at least one tag");
        let mut path = vec![tag; len];
        for t in (1..len).rev() {
            tag = back[t * k + tag];
            path[t - 1] = tag;
        }
        path
    }
}

/// log Σ exp(x), −∞ when every term is.
pub fn log_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

impl Crf {
    /// Creates the group `{prefix}`, every score at 0.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        tags: usize,
        allowed: Option<Allowed>,
    ) -> Result<Crf> {
        if let Some(a) = &allowed {
            assert_eq!(a.transitions.len(), tags * tags);
        }
        let mut g = params.group(prefix);
        g.zeros("transitions", &[tags, tags]);
        g.zeros("start", &[tags]);
        g.zeros("end", &[tags]);
        let flat = g.finish()?.var.as_tensor().clone();
        Ok(Crf {
            tags,
            flat,
            allowed,
        })
    }

    fn scores(&self) -> Result<Scores> {
        let flat: Vec<f64> = self.flat.to_dtype(DType::F64)?.to_vec1()?;
        Ok(Scores::new(self.tags, &flat, self.allowed.as_ref()))
    }

    /// The mean over sentences of the gold sequences' negative
    /// log-likelihood; `emissions` is `[batch, steps, tags]` and sentence
    /// `i` is `gold[i].len()` steps long.
    pub fn loss(&self, emissions: &Tensor, gold: &[Vec<usize>]) -> Result<Tensor> {
        let (b, t, k) = emissions.dims3()?;
        if k != self.tags || b != gold.len() || gold.iter().any(|g| g.len() > t) {
            return Err(Error::Tensor(format!(
                "CRF over {k} tags ({} built) for {b} sentences of {t} steps and {} gold sequences",
                self.tags,
                gold.len()
            )));
        }
        let op = CrfOp {
            scores: self.scores()?,
            gold: gold.to_vec(),
            steps: t,
        };
        if let Some((i, _)) = gold
            .iter()
            .enumerate()
            .find(|(_, g)| op.scores.sequence(&vec![0.0; g.len() * k], g) == f64::NEG_INFINITY)
        {
            return Err(Error::Tensor(format!(
                "CRF: gold sequence {i} uses a forbidden transition"
            )));
        }
        Ok(emissions.contiguous()?.apply_op2(&self.flat, op)?)
    }

    /// The best tag sequence of each sentence (`lengths[i]` steps).
    pub fn decode(&self, emissions: &Tensor, lengths: &[usize]) -> Result<Vec<Vec<usize>>> {
        let (_, t, k) = emissions.dims3()?;
        let scores = self.scores()?;
        let values: Vec<f64> = emissions.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        Ok(lengths
            .par_iter()
            .enumerate()
            .map(|(i, &len)| scores.viterbi(&values[i * t * k..(i + 1) * t * k], len))
            .collect())
    }
}

/// The mean negative log-likelihood: emissions `[batch, steps, tags]` and
/// the flat CRF parameters to a scalar.
struct CrfOp {
    scores: Scores,
    gold: Vec<Vec<usize>>,
    steps: usize,
}

impl CrfOp {
    /// Per sentence: the loss, the emissions' gradient and the parameters'.
    fn per_sentence<T: Float>(&self, e: &[T]) -> Vec<(f64, Vec<f64>, Vec<f64>)> {
        let k = self.scores.tags;
        let width = self.steps * k;
        self.gold
            .par_iter()
            .enumerate()
            .map(|(i, gold)| {
                let em: Vec<f64> = e[i * width..i * width + gold.len() * k]
                    .iter()
                    .map(|v| (*v).to_f64())
                    .collect();
                let mut d_em = vec![0.0; em.len()];
                let mut d_flat = vec![0.0; k * k + 2 * k];
                let nll = self
                    .scores
                    .nll_and_gradients(&em, gold, &mut d_em, &mut d_flat);
                (nll, d_em, d_flat)
            })
            .collect()
    }

    fn batch(&self) -> f64 {
        self.gold.len().max(1) as f64
    }
}

impl CustomOp2 for CrfOp {
    fn name(&self) -> &'static str {
        "crf-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let total = |parts: Vec<(f64, Vec<f64>, Vec<f64>)>| {
            parts.iter().map(|p| p.0).sum::<f64>() / self.batch()
        };
        let storage = match s1.dtype() {
            DType::F32 => {
                let loss = total(self.per_sentence(f32::slice(s1, l1)?));
                CpuStorage::F32(vec![loss as f32])
            }
            DType::F64 => {
                let loss = total(self.per_sentence(f64::slice(s1, l1)?));
                CpuStorage::F64(vec![loss])
            }
            other => candle_core::bail!("CRF: no kernel for {other:?}"),
        };
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        emissions: &Tensor,
        flat: &Tensor,
        _res: &Tensor,
        d_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = d_loss.to_dtype(DType::F64)?.to_scalar::<f64>()? / self.batch();
        let parts = match emissions.dtype() {
            DType::F32 => with_slices::<f32, _>(&[emissions], |s| Ok(self.per_sentence(s[0])))?,
            DType::F64 => with_slices::<f64, _>(&[emissions], |s| Ok(self.per_sentence(s[0])))?,
            other => candle_core::bail!("CRF: no kernel for {other:?}"),
        };
        let k = self.scores.tags;
        let width = self.steps * k;
        let mut d_em = vec![0.0; self.gold.len() * width];
        let mut d_flat = vec![0.0; k * k + 2 * k];
        for (i, (_, de, df)) in parts.iter().enumerate() {
            for (dst, v) in d_em[i * width..].iter_mut().zip(de) {
                *dst = v * scale;
            }
            for (dst, v) in d_flat.iter_mut().zip(df) {
                *dst += v * scale;
            }
        }
        let d_em = Tensor::from_vec(d_em, emissions.shape(), emissions.device())?
            .to_dtype(emissions.dtype())?;
        let d_flat =
            Tensor::from_vec(d_flat, flat.shape(), flat.device())?.to_dtype(flat.dtype())?;
        Ok((Some(d_em), Some(d_flat)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::generated::Rng;
    use candle_core::Device;

    /// Every tag sequence of `len` over `k` tags.
    fn all_sequences(k: usize, len: usize) -> Vec<Vec<usize>> {
        let mut out = vec![vec![]];
        for _ in 0..len {
            out = out
                .into_iter()
                .flat_map(|s| {
                    (0..k).map(move |t| {
                        let mut s = s.clone();
                        s.push(t);
                        s
                    })
                })
                .collect();
        }
        out
    }

    fn random_case(k: usize, len: usize, seed: u64, constrained: bool) -> (Scores, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let flat: Vec<f64> = (0..k * k + 2 * k).map(|_| 2.0 * rng.unit() - 1.0).collect();
        let allowed = constrained.then(|| Allowed {
            // Forbid about a third of the transitions, never all of a row.
            transitions: (0..k * k)
                .map(|i| i % k == i / k || rng.unit() > 0.35)
                .collect(),
            start: (0..k).map(|j| j == 0 || rng.unit() > 0.3).collect(),
            end: (0..k).map(|j| j == 0 || rng.unit() > 0.3).collect(),
        });
        let emissions = (0..len * k).map(|_| 3.0 * rng.unit() - 1.5).collect();
        (Scores::new(k, &flat, allowed.as_ref()), emissions)
    }

    #[test]
    fn partition_and_viterbi_equal_enumeration() {
        for constrained in [false, true] {
            for seed in 0..12 {
                let (k, len) = (2 + seed as usize % 3, 1 + seed as usize % 4);
                let (scores, em) = random_case(k, len, seed, constrained);
                let all = all_sequences(k, len);
                let values: Vec<f64> = all.iter().map(|s| scores.sequence(&em, s)).collect();
                let brute = log_sum_exp(&values);
                let got = scores.log_partition(&em, len);
                assert!(
                    (brute - got).abs() < 1e-10,
                    "log Z {got}, enumeration {brute}"
                );
                let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let path = scores.viterbi(&em, len);
                assert!(
                    (scores.sequence(&em, &path) - best).abs() < 1e-12,
                    "Viterbi's path scores {}, the best {best}",
                    scores.sequence(&em, &path)
                );
            }
        }
    }

    #[test]
    fn gradients_equal_finite_differences() -> Result<()> {
        let (k, t) = (3, 4);
        let gold = vec![vec![0, 2, 1, 1], vec![2, 0]];
        let mut params = Params::new(Device::Cpu, DType::F64);
        let crf = Crf::new(&mut params, "crf", k, None)?;
        let mut rng = Rng::new(7);
        let flat0: Vec<f64> = (0..k * k + 2 * k).map(|_| rng.unit() - 0.5).collect();
        params.groups()[0].var.set(&Tensor::from_vec(
            flat0.clone(),
            k * k + 2 * k,
            &Device::Cpu,
        )?)?;
        let em0: Vec<f64> = (0..2 * t * k).map(|_| 2.0 * rng.unit() - 1.0).collect();
        let em = candle_core::Var::from_vec(em0.clone(), (2, t, k), &Device::Cpu)?;
        let loss = crf.loss(em.as_tensor(), &gold)?;
        let grads = loss.backward()?;
        let d_em: Vec<f64> = grads
            .get(em.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1()?;
        let d_flat: Vec<f64> = grads
            .get(params.groups()[0].var.as_tensor())
            .expect("grad")
            .to_vec1()?;
        let value = |flat: &[f64], em: &[f64]| -> f64 {
            let s = Scores::new(k, flat, None);
            gold.iter()
                .enumerate()
                .map(|(i, g)| {
                    let e = &em[i * t * k..i * t * k + g.len() * k];
                    s.log_partition(e, g.len()) - s.sequence(e, g)
                })
                .sum::<f64>()
                / 2.0
        };
        let eps = 1e-6;
        for i in 0..em0.len() {
            let (mut up, mut down) = (em0.clone(), em0.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd = (value(&flat0, &up) - value(&flat0, &down)) / (2.0 * eps);
            assert!(
                (fd - d_em[i]).abs() < 1e-7,
                "emission {i}: {} vs {fd}",
                d_em[i]
            );
        }
        for i in 0..flat0.len() {
            let (mut up, mut down) = (flat0.clone(), flat0.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd = (value(&up, &em0) - value(&down, &em0)) / (2.0 * eps);
            assert!(
                (fd - d_flat[i]).abs() < 1e-7,
                "parameter {i}: {} vs {fd}",
                d_flat[i]
            );
        }
        Ok(())
    }

    #[test]
    fn forbidden_gold_is_an_error_and_forbidden_paths_are_never_decoded() -> Result<()> {
        let k = 3;
        let mut transitions = vec![true; k * k];
        transitions[2] = false; // 0 → 2
        let allowed = Allowed {
            transitions,
            start: vec![true; k],
            end: vec![true; k],
        };
        let mut params = Params::new(Device::Cpu, DType::F32);
        let crf = Crf::new(&mut params, "crf", k, Some(allowed))?;
        let em = Tensor::from_vec(vec![5f32, 0.0, 0.0, 0.0, 0.0, 5.0], (1, 2, k), &Device::Cpu)?;
        assert!(crf.loss(&em, &[vec![0, 2]]).is_err());
        let path = crf.decode(&em, &[2])?;
        assert_ne!(path[0], vec![0, 2]);
        Ok(())
    }
}
