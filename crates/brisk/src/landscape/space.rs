//! Points and directions in a model's parameter space, laid out as the
//! model's flat parameter groups ([`crate::model::Params`]): one `Vec<f32>`
//! per group, so a point is written into the model in place, group by
//! group, with no reallocation.
//!
//! Filter normalisation is Li et al.'s (2018): every row of a weight
//! matrix (a linear layer's output neuron, an embedding's token) of a
//! random direction is scaled to the norm of the same row of the centre,
//! so that directions respect the scale of each neuron's weights.

use candle_core::{CpuStorage, Layout as TensorLayout, Tensor};
use serde::Serialize;

use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::params::standard_normal;
use crate::model::Params;

/// One named tensor of a group: where it sits in the group's buffer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSlot {
    pub name: String,
    pub offset: usize,
    pub shape: Vec<usize>,
}

impl TensorSlot {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the tensor is a bias or a LayerNorm scale or shift: fewer
    /// than two dimensions (Li et al.'s `biasbn`).
    pub fn is_bias_or_norm(&self) -> bool {
        self.shape.len() < 2
    }

    /// Elements per row along the first dimension.
    fn row_len(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

/// One parameter group: its name and tensors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSlots {
    pub name: String,
    pub tensors: Vec<TensorSlot>,
    pub len: usize,
}

/// The layout of a model's parameters: groups in creation order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    pub groups: Vec<GroupSlots>,
}

impl Layout {
    /// The layout of `params`.
    pub fn of(params: &Params) -> Layout {
        Layout {
            groups: params
                .groups()
                .iter()
                .map(|g| GroupSlots {
                    name: g.name.clone(),
                    tensors: g
                        .entries
                        .iter()
                        .map(|e| TensorSlot {
                            name: e.name.clone(),
                            offset: e.offset,
                            shape: e.shape.clone(),
                        })
                        .collect(),
                    len: g.var.elem_count(),
                })
                .collect(),
        }
    }

    /// A layout of one group per `(name, shape)` tensor (for toy models).
    pub fn single_tensors(tensors: &[(&str, &[usize])]) -> Layout {
        Layout {
            groups: tensors
                .iter()
                .map(|(name, shape)| {
                    let len = shape.iter().product();
                    GroupSlots {
                        name: name.to_string(),
                        tensors: vec![TensorSlot {
                            name: name.to_string(),
                            offset: 0,
                            shape: shape.to_vec(),
                        }],
                        len,
                    }
                })
                .collect(),
        }
    }

    /// The index of the group named `name`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The total number of parameters.
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.len).sum()
    }
}

/// A point (or a direction) in parameter space, group by group.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub groups: Vec<Vec<f32>>,
}

impl Point {
    /// The origin of `layout`.
    pub fn zeros(layout: &Layout) -> Point {
        Point {
            groups: layout.groups.iter().map(|g| vec![0.0; g.len]).collect(),
        }
    }

    /// The origin, shaped like `other`.
    pub fn zeros_like(other: &Point) -> Point {
        Point {
            groups: other.groups.iter().map(|g| vec![0.0; g.len()]).collect(),
        }
    }

    /// The current values of `params`.
    pub fn read(params: &Params) -> Result<Point> {
        let groups = params
            .groups()
            .iter()
            .map(|g| {
                Ok(g.var
                    .as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?)
            })
            .collect::<Result<_>>()?;
        Ok(Point { groups })
    }

    /// Per-group tensors (gradients, say) as a point.
    pub fn from_tensors(tensors: &[Tensor]) -> Result<Point> {
        let groups = tensors
            .iter()
            .map(|t| {
                Ok(t.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?)
            })
            .collect::<Result<_>>()?;
        Ok(Point { groups })
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn values(&self) -> impl Iterator<Item = &f32> {
        self.groups.iter().flatten()
    }

    /// `self − other`.
    pub fn minus(&self, other: &Point) -> Point {
        self.zip(other, |a, b| a - b)
    }

    fn zip(&self, other: &Point, f: impl Fn(f32, f32) -> f32) -> Point {
        Point {
            groups: self
                .groups
                .iter()
                .zip(&other.groups)
                .map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect())
                .collect(),
        }
    }

    /// `self += a · other`.
    pub fn add_scaled(&mut self, a: f64, other: &Point) {
        for (x, y) in self.groups.iter_mut().zip(&other.groups) {
            for (x, &y) in x.iter_mut().zip(y) {
                *x = (*x as f64 + a * y as f64) as f32;
            }
        }
    }

    /// `self *= a`.
    pub fn scale(&mut self, a: f64) {
        for x in self.groups.iter_mut().flatten() {
            *x = (*x as f64 * a) as f32;
        }
    }

    /// The inner product, accumulated in f64.
    pub fn dot(&self, other: &Point) -> f64 {
        self.values()
            .zip(other.values())
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum()
    }

    /// The Euclidean norm.
    pub fn norm(&self) -> f64 {
        self.dot(self).sqrt()
    }

    /// A copy with every group but `keep` (indices) set to zero.
    pub fn only_groups(&self, keep: &[usize]) -> Point {
        let mut out = self.clone();
        for (i, g) in out.groups.iter_mut().enumerate() {
            if !keep.contains(&i) {
                g.iter_mut().for_each(|x| *x = 0.0);
            }
        }
        out
    }

    /// Zeros every tensor for which `drop(name)` is true.
    pub fn zero_tensors(&mut self, layout: &Layout, drop: impl Fn(&str) -> bool) {
        for (g, slots) in self.groups.iter_mut().zip(&layout.groups) {
            for t in slots.tensors.iter().filter(|t| drop(&t.name)) {
                g[t.offset..t.offset + t.len()]
                    .iter_mut()
                    .for_each(|x| *x = 0.0);
            }
        }
    }

    /// Checks that `self` has `layout`'s shape; `what` names the point in
    /// the error.
    pub fn check(&self, layout: &Layout, what: &str) -> Result<()> {
        let ok = self.groups.len() == layout.groups.len()
            && self
                .groups
                .iter()
                .zip(&layout.groups)
                .all(|(g, s)| g.len() == s.len);
        if ok {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "{what} does not have the model's parameter layout"
            )))
        }
    }
}

/// What a random direction does with biases and LayerNorm parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BiasNorm {
    /// Zero: they stay at the centre's values (Li et al.'s `--xignore biasbn`).
    Ignore,
    /// Equal to the centre's values (what Li et al.'s code does otherwise).
    Copy,
}

/// A Gaussian direction drawn with `seed`, filter-normalised against
/// `centre`: each row of each matrix gets the norm of the same row of
/// `centre`; biases and LayerNorm follow `bias_norm`. Every tensor is
/// scaled exactly once.
pub fn filter_normalised(layout: &Layout, centre: &Point, seed: u64, bias_norm: BiasNorm) -> Point {
    let mut rng = Rng::new(seed ^ 0xd1ec7);
    let mut d = Point::zeros(layout);
    for g in d.groups.iter_mut() {
        for x in g.iter_mut() {
            *x = standard_normal(&mut rng) as f32;
        }
    }
    normalise_filters(layout, &mut d, centre, bias_norm);
    d
}

/// Filter normalisation of `d` against `centre`, in place.
pub fn normalise_filters(layout: &Layout, d: &mut Point, centre: &Point, bias_norm: BiasNorm) {
    for ((dg, cg), slots) in d.groups.iter_mut().zip(&centre.groups).zip(&layout.groups) {
        for t in &slots.tensors {
            let range = t.offset..t.offset + t.len();
            let (dt, ct) = (&mut dg[range.clone()], &cg[range]);
            if t.is_bias_or_norm() {
                match bias_norm {
                    BiasNorm::Ignore => dt.iter_mut().for_each(|x| *x = 0.0),
                    BiasNorm::Copy => dt.copy_from_slice(ct),
                }
                continue;
            }
            let row = t.row_len().max(1);
            for (dr, cr) in dt.chunks_mut(row).zip(ct.chunks(row)) {
                let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                let scale = norm(cr) / (norm(dr) + 1e-10);
                dr.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32);
            }
        }
    }
}

/// Writes `base + Σ cᵢ·dᵢ` into a flat f32 buffer in place.
struct Combine<'a> {
    base: &'a [f32],
    moves: Vec<(f32, &'a [f32])>,
}

impl candle_core::InplaceOp1 for Combine<'_> {
    fn name(&self) -> &'static str {
        "landscape-combine"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &TensorLayout) -> candle_core::Result<()> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("landscape points are f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("a parameter group is not contiguous");
        };
        let out = &mut values[start..end];
        out.copy_from_slice(self.base);
        for &(c, d) in &self.moves {
            for (o, &x) in out.iter_mut().zip(d) {
                *o += c * x;
            }
        }
        Ok(())
    }
}

/// Writes `base + Σ cᵢ·dᵢ` into `params`, in place.
pub fn write_point(params: &Params, base: &Point, moves: &[(f64, &Point)]) -> Result<()> {
    for (i, group) in params.groups().iter().enumerate() {
        let op = Combine {
            base: &base.groups[i],
            moves: moves
                .iter()
                .filter(|(c, _)| *c != 0.0)
                .map(|&(c, d)| (c as f32, d.groups[i].as_slice()))
                .collect(),
        };
        group.var.as_tensor().inplace_op1(&op)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::single_tensors(&[("w", &[3, 4]), ("b", &[3]), ("ln", &[4])])
    }

    fn centre(layout: &Layout) -> Point {
        let mut p = Point::zeros(layout);
        for (i, x) in p.groups.iter_mut().flatten().enumerate() {
            *x = (i as f32 * 0.37).sin() * (1.0 + i as f32);
        }
        p
    }

    #[test]
    fn filter_rows_take_the_centre_row_norms_and_biases_get_zero() {
        let l = layout();
        let c = centre(&l);
        let d = filter_normalised(&l, &c, 7, BiasNorm::Ignore);
        for (dr, cr) in d.groups[0].chunks(4).zip(c.groups[0].chunks(4)) {
            let n = |v: &[f32]| v.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
            assert!((n(dr) - n(cr)).abs() < 1e-5 * n(cr), "{} {}", n(dr), n(cr));
        }
        assert!(d.groups[1].iter().chain(&d.groups[2]).all(|&x| x == 0.0));
        // Copy mode: biases equal the centre's, scaled once (not twice).
        let d = filter_normalised(&l, &c, 7, BiasNorm::Copy);
        assert_eq!(d.groups[1], c.groups[1]);
        assert_eq!(d.groups[2], c.groups[2]);
        // Seeded: the same seed gives the same direction, another seed not.
        assert_eq!(d, filter_normalised(&l, &c, 7, BiasNorm::Copy));
        assert_ne!(d, filter_normalised(&l, &c, 8, BiasNorm::Copy));
    }

    #[test]
    fn arithmetic_matches_f64() {
        let l = layout();
        let a = centre(&l);
        let b = filter_normalised(&l, &a, 1, BiasNorm::Copy);
        let d = b.minus(&a);
        let direct: f64 = a
            .values()
            .zip(b.values())
            .map(|(&x, &y)| (y as f64 - x as f64).powi(2))
            .sum();
        assert!((d.norm() - direct.sqrt()).abs() < 1e-5);
        let mut c = a.clone();
        c.add_scaled(1.0, &d);
        for (x, y) in c.values().zip(b.values()) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}
