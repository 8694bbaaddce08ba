//! The BiLSTM-CRF labeller (Huang et al., 2015; Lample et al., 2016): the
//! concatenated word features ([`crate::embed`]), dropout, one or more
//! BiLSTM layers, a linear layer to tag scores and a linear-chain CRF.
//! Span tasks train on BIOES tags (transitions the scheme forbids fixed at
//! −∞) and are scored on spans; plain labels (parts of speech) train as
//! they are and are scored by accuracy. Training and the run directory:
//! [`super::labelling`].

use candle_core::Tensor;

use super::crf::{Allowed, Crf};
use super::labelling::{Predicted, SavedModel, Split, WordEncoder, WordModel};
use super::scheme::{as_strs, spans, Mode, Scheme};
use super::word_tasks::Labelled;
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::{Ctx, Params};

/// The tags the CRF scores: BIOES over the training data's span types, or
/// the plain labels.
pub fn tag_set(scheme: Scheme, train: &[Labelled]) -> Vec<String> {
    let mut types = std::collections::BTreeSet::new();
    for s in train {
        match scheme {
            Scheme::None => types.extend(s.labels.iter().cloned()),
            _ => types.extend(
                spans(&as_strs(&s.labels), Mode::Conlleval)
                    .into_iter()
                    .map(|sp| sp.label),
            ),
        }
    }
    let types: Vec<String> = types.into_iter().collect();
    training_scheme(scheme).tag_set(&types)
}

fn training_scheme(scheme: Scheme) -> Scheme {
    match scheme {
        Scheme::None => Scheme::None,
        _ => Scheme::Bioes,
    }
}

/// The transitions of the training scheme.
fn allowed(scheme: Scheme, tags: &[String]) -> Option<Allowed> {
    if scheme == Scheme::None {
        return None;
    }
    let s = training_scheme(scheme);
    let k = tags.len();
    Some(Allowed {
        transitions: (0..k * k)
            .map(|i| s.allows(Some(&tags[i / k]), Some(&tags[i % k])))
            .collect(),
        start: tags.iter().map(|t| s.allows(None, Some(t))).collect(),
        end: tags.iter().map(|t| s.allows(Some(t), None)).collect(),
    })
}

/// File labels to tag indices (span tasks: through BIOES).
fn encode_gold(scheme: Scheme, tags: &[String], labels: &[String]) -> Result<Vec<usize>> {
    let converted = match scheme {
        Scheme::None => labels.to_vec(),
        _ => Scheme::Bioes.encode(&spans(&as_strs(labels), Mode::Conlleval), labels.len()),
    };
    converted
        .iter()
        .map(|t| {
            tags.iter()
                .position(|x| x == t)
                .ok_or_else(|| Error::Tensor(format!("tag {t:?} is not in the tag set")))
        })
        .collect()
}

/// Tag indices to labels in the task's scheme.
fn decode_tags(scheme: Scheme, tags: &[String], path: &[usize]) -> Vec<String> {
    let bioes: Vec<String> = path.iter().map(|&i| tags[i].clone()).collect();
    match scheme {
        Scheme::None | Scheme::Bioes => bioes,
        other => other.encode(&spans(&as_strs(&bioes), Mode::Conlleval), bioes.len()),
    }
}

/// The model.
pub struct Tagger {
    pub scheme: Scheme,
    pub tags: Vec<String>,
    pub encoder: WordEncoder,
    out_w: Tensor,
    out_b: Tensor,
    crf: Crf,
}

impl Tagger {
    pub fn new(params: &mut Params, saved: &SavedModel, rng: &mut Rng) -> Result<Tagger> {
        let tags = &saved.labels;
        let encoder = WordEncoder::new(params, saved, false, rng)?;
        let (k, input) = (tags.len(), encoder.width());
        let bound = 1.0 / (input as f64).sqrt();
        let mut g = params.group("tag_scores");
        g.uniform("weight", &[k, input], bound, rng);
        g.zeros("bias", &[k]);
        let g = g.finish()?;
        let (out_w, out_b) = (g.view("weight")?, g.view("bias")?);
        let crf = Crf::new(params, "crf", k, allowed(saved.task.scheme, tags))?;
        Ok(Tagger {
            scheme: saved.task.scheme,
            tags: tags.clone(),
            encoder,
            out_w,
            out_b,
            crf,
        })
    }

    /// Tag scores `[batch, longest, tags]` for sentences `ids` of `split`.
    fn emissions(&self, split: &Split, ids: &[usize], ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.encoder.forward(split, ids, ctx)?;
        let (b, t, h) = x.dims3()?;
        let scores = x
            .reshape((b * t, h))?
            .matmul(&self.out_w.t()?)?
            .broadcast_add(&self.out_b)?;
        Ok(scores.reshape((b, t, self.tags.len()))?)
    }
}

impl WordModel for Tagger {
    fn encoder(&self) -> &WordEncoder {
        &self.encoder
    }

    /// The mean negative log-likelihood of the gold tags of `ids`.
    fn loss(&self, split: &Split, ids: &[usize], ctx: &mut Ctx) -> Result<Tensor> {
        let gold = ids
            .iter()
            .map(|&i| encode_gold(self.scheme, &self.tags, &split.data[i].labels))
            .collect::<Result<Vec<_>>>()?;
        let emissions = self.emissions(split, ids, ctx)?;
        self.crf.loss(&emissions, &gold)
    }

    /// Viterbi's tags, in the task's scheme.
    fn predict(&self, split: &Split, batch_size: usize) -> Result<Predicted> {
        let mut out = vec![Vec::new(); split.words.len()];
        for ids in split.by_length().chunks(batch_size.max(1)) {
            let emissions = self.emissions(split, ids, &mut Ctx::eval())?;
            let lengths: Vec<usize> = ids.iter().map(|&i| split.words[i].len()).collect();
            for (&i, path) in ids.iter().zip(self.crf.decode(&emissions, &lengths)?) {
                out[i] = decode_tags(self.scheme, &self.tags, &path);
            }
        }
        Ok(Predicted {
            labels: out,
            heads: Vec::new(),
        })
    }
}
