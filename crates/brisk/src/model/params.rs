//! Named trainable parameters in flat groups, and the per-forward context
//! (dropout RNG).
//!
//! Parameters live in *groups*: one flat, 1-D [`Var`] per unit of the model
//! (the embeddings, each encoder layer, the head), with a named view for
//! every HF tensor in it. The fused kernels take a whole group as one input,
//! so the gradient store and the optimiser see one tensor per layer instead
//! of sixteen; the reference composition uses the views, which share the
//! group's storage (an in-place update of the group moves every view).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use rayon::prelude::*;

use super::fused::kernels::simd;
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

/// One named tensor inside a group.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The HF tensor name.
    pub name: String,
    /// Offset in the group's flat buffer.
    pub offset: usize,
    pub shape: Vec<usize>,
    view: Tensor,
}

impl Entry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor, a view of the group's storage.
    pub fn view(&self) -> &Tensor {
        &self.view
    }
}

/// A flat parameter buffer and the named tensors laid out in it, in
/// creation order.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub var: Var,
    pub entries: Vec<Entry>,
    /// The dtype the model computes in with these weights (bf16 over f32
    /// masters in mixed precision; else the weights' own).
    pub compute: DType,
}

impl Group {
    /// The entry `{group}.{local}`; an error naming it when absent.
    pub fn entry(&self, local: &str) -> Result<&Entry> {
        let full = format!("{}.{local}", self.name);
        self.entries
            .iter()
            .find(|e| e.name == full)
            .ok_or_else(|| Error::Tensor(format!("group {} has no tensor {full}", self.name)))
    }

    /// The view of entry `{group}.{local}`.
    pub fn view(&self, local: &str) -> Result<Tensor> {
        Ok(self.entry(local)?.view.clone())
    }
}

/// Collects the initial values of a group's tensors; [`GroupBuilder::finish`]
/// turns them into one flat variable.
pub struct GroupBuilder<'a> {
    params: &'a mut Params,
    name: String,
    /// `None` for a one-tensor group named by its tensor.
    prefix: Option<String>,
    values: Vec<f64>,
    entries: Vec<(String, usize, Vec<usize>)>,
}

impl<'a> GroupBuilder<'a> {
    fn push(&mut self, local: &str, shape: &[usize], values: impl Iterator<Item = f64>) {
        let name = match &self.prefix {
            Some(p) => format!("{p}.{local}"),
            None => local.to_string(),
        };
        assert!(
            self.params.get(&name).is_none() && self.entries.iter().all(|e| e.0 != name),
            "parameter {name} created twice"
        );
        let offset = self.values.len();
        self.values.extend(values);
        self.entries.push((name, offset, shape.to_vec()));
    }

    /// A tensor drawn from N(0, std²) with brisk's seeded generator.
    pub fn normal(&mut self, local: &str, shape: &[usize], std: f64, rng: &mut Rng) {
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| std * standard_normal(rng)).collect();
        self.push(local, shape, values.into_iter());
    }

    /// A tensor drawn uniformly from `[-bound, bound)` (PyTorch's LSTM and
    /// linear initialisation).
    pub fn uniform(&mut self, local: &str, shape: &[usize], bound: f64, rng: &mut Rng) {
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| bound * (2.0 * rng.unit() - 1.0)).collect();
        self.push(local, shape, values.into_iter());
    }

    /// A tensor with the given values, in row-major order.
    pub fn values(&mut self, local: &str, shape: &[usize], values: Vec<f64>) {
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "{local}: shape and values differ"
        );
        self.push(local, shape, values.into_iter());
    }

    pub fn zeros(&mut self, local: &str, shape: &[usize]) {
        self.push(
            local,
            shape,
            std::iter::repeat_n(0.0, shape.iter().product()),
        );
    }

    pub fn ones(&mut self, local: &str, shape: &[usize]) {
        self.push(
            local,
            shape,
            std::iter::repeat_n(1.0, shape.iter().product()),
        );
    }

    /// Creates the group's variable and its views.
    pub fn finish(self) -> Result<&'a Group> {
        let params = self.params;
        let n = self.values.len();
        let flat = Tensor::from_vec(self.values, n, &params.device)?.to_dtype(params.dtype)?;
        let var = Var::from_tensor(&flat)?;
        let entries = self
            .entries
            .into_iter()
            .map(|(name, offset, shape)| {
                let len: usize = shape.iter().product();
                let view = var
                    .as_tensor()
                    .narrow(0, offset, len)?
                    .reshape(shape.as_slice())?;
                Ok(Entry {
                    name,
                    offset,
                    shape,
                    view,
                })
            })
            .collect::<Result<_>>()?;
        params.groups.push(Group {
            name: self.name,
            var,
            entries,
            compute: params.compute,
        });
        Ok(params.groups.last().expect("just pushed"))
    }
}

/// Trainable parameters by HF tensor name, in creation order (so optimiser
/// state and checkpoints are laid out the same way every run).
#[derive(Debug, Clone)]
pub struct Params {
    pub device: Device,
    /// The weights' dtype (the master copy in mixed precision).
    pub dtype: DType,
    /// The dtype products and activations are computed in.
    pub compute: DType,
    groups: Vec<Group>,
}

impl Params {
    pub fn new(device: Device, dtype: DType) -> Params {
        Params {
            device,
            dtype,
            compute: dtype,
            groups: Vec::new(),
        }
    }

    /// Parameters in `dtype` whose model computes in `compute` (mixed
    /// precision: f32 weights, bf16 products).
    pub fn mixed(device: Device, dtype: DType, compute: DType) -> Params {
        Params {
            compute,
            ..Params::new(device, dtype)
        }
    }

    /// Starts a group whose tensors are named `{prefix}.{local}`.
    pub fn group(&mut self, prefix: &str) -> GroupBuilder<'_> {
        assert!(
            self.groups.iter().all(|g| g.name != prefix),
            "group {prefix} created twice"
        );
        GroupBuilder {
            name: prefix.to_string(),
            prefix: Some(prefix.to_string()),
            params: self,
            values: Vec::new(),
            entries: Vec::new(),
        }
    }

    fn single(&mut self, name: &str) -> GroupBuilder<'_> {
        GroupBuilder {
            name: name.to_string(),
            prefix: None,
            params: self,
            values: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// A one-tensor group drawn from N(0, std²).
    pub fn normal(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f64,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let mut g = self.single(name);
        g.normal(name, shape, std, rng);
        Ok(g.finish()?.entries[0].view.clone())
    }

    /// A one-tensor group of zeros.
    pub fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut g = self.single(name);
        g.zeros(name, shape);
        Ok(g.finish()?.entries[0].view.clone())
    }

    /// A one-tensor group of ones.
    pub fn ones(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut g = self.single(name);
        g.ones(name, shape);
        Ok(g.finish()?.entries[0].view.clone())
    }

    /// The tensor named `name` (a view of its group).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries().find(|e| e.name == name).map(Entry::view)
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.groups.iter().flat_map(|g| g.entries.iter())
    }

    /// `(name, tensor)` for every named tensor, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries().map(|e| (e.name.as_str(), &e.view))
    }

    /// Number of named tensors.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Splits per-group flat tensors (gradients, optimiser moments) into
    /// `(name, tensor)` pairs shaped like the named parameters.
    pub fn split<'a>(&'a self, flat: &'a [Tensor]) -> Result<Vec<(&'a str, Tensor)>> {
        let mut out = Vec::new();
        for (group, t) in self.groups.iter().zip(flat) {
            for e in &group.entries {
                out.push((
                    e.name.as_str(),
                    t.narrow(0, e.offset, e.len())?
                        .reshape(e.shape.as_slice())?,
                ));
            }
        }
        Ok(out)
    }

    /// Writes every parameter under its name to a safetensors file,
    /// atomically (a temporary name, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        // Written from host memory whatever the device, so a checkpoint
        // moves between devices.
        let tensors = self
            .iter()
            .map(|(name, t)| Ok((name.to_string(), t.to_device(&Device::Cpu)?)))
            .collect::<Result<HashMap<String, Tensor>>>()?;
        crate::run::save_safetensors(&tensors, path)
    }

    /// Overwrites every parameter with the tensor of the same name in a
    /// safetensors file. A missing tensor or a shape mismatch is an error
    /// naming the file and the tensor; extra tensors are ignored.
    pub fn load(&self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
        self.assign(&tensors, path, |_| false)
    }

    /// Overwrites every parameter with the tensor of the same name; errors
    /// name `path` (the file the tensors came from) and the tensor. A
    /// parameter for which `may_miss` is true keeps its value when the
    /// tensors lack it (a new task head, say).
    pub fn assign(
        &self,
        tensors: &HashMap<String, Tensor>,
        path: &Path,
        may_miss: impl Fn(&str) -> bool,
    ) -> Result<()> {
        for group in &self.groups {
            let parts = group
                .entries
                .iter()
                .map(|e| {
                    let t = match tensors.get(&e.name) {
                        None if may_miss(&e.name) => &e.view,
                        _ => named(tensors, path, &e.name, &e.shape)?,
                    };
                    // A file is read on the host; the weights may live elsewhere.
                    Ok(t.to_device(&self.device)?
                        .to_dtype(self.dtype)?
                        .flatten_all()?)
                })
                .collect::<Result<Vec<_>>>()?;
            group.var.set(&Tensor::cat(&parts, 0)?)?;
        }
        Ok(())
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.var.elem_count()).sum()
    }
}

/// The tensor `name` of a loaded safetensors file, checked against the shape
/// the model expects; errors name the file and the tensor.
pub fn named<'a>(
    tensors: &'a HashMap<String, Tensor>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<&'a Tensor> {
    let t = tensors
        .get(name)
        .ok_or_else(|| Error::data(path, format!("has no tensor {name}")))?;
    if t.dims() != shape {
        return Err(Error::data(
            path,
            format!(
                "tensor {name} has shape {:?}, the model expects {shape:?}",
                t.dims()
            ),
        ));
    }
    Ok(t)
}

/// A 32-bit integer hash with good avalanche (two xor-shift-multiply
/// rounds), cheap enough to vectorise.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The hashes of the eight element pairs from `first` on, under `key`
/// (a fixed-size loop, so it vectorises).
#[inline(always)]
fn pair_hashes(first: u32, key: u64) -> [u32; 8] {
    let (lo, hi) = (key as u32, (key >> 32) as u32);
    let mut bits = [0u32; 8];
    for (l, b) in bits.iter_mut().enumerate() {
        *b = hash32(hash32(first.wrapping_add(l as u32) ^ lo) ^ hi);
    }
    bits
}

/// The mask of [`Ctx::dropout_mask`] under `key`.
fn dropout_multipliers(n: usize, p: f64, key: u64) -> Vec<f32> {
    // An element is dropped when its 16 bits are below p·2¹⁶.
    let threshold = (p * 65_536.0).round().min(65_536.0) as u32;
    let keep = (1.0 / (1.0 - p)) as f32;
    let drop_or_keep = |half: u32| {
        if half & 0xffff < threshold {
            0.0
        } else {
            keep
        }
    };
    // Even, so that every chunk starts at a pair.
    const CHUNK: usize = 1 << 14;
    // Written whole, so not zero-filled first.
    let mut mask = Vec::<f32>::with_capacity(n);
    mask.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, part)| {
            simd!({
                let first_pair = (c * CHUNK / 2) as u32;
                let full = part.len() / 16;
                let mut blocks = part.chunks_exact_mut(16);
                for (k, block) in (&mut blocks).enumerate() {
                    let bits = pair_hashes(first_pair.wrapping_add(8 * k as u32), key);
                    // Both halves of all eight hashes first, then
                    // interleaved: lane-wise work the compiler keeps in
                    // vector registers.
                    let low = bits.map(drop_or_keep);
                    let high = bits.map(|b| drop_or_keep(b >> 16));
                    for (pair, (l, h)) in block.chunks_exact_mut(2).zip(low.iter().zip(&high)) {
                        pair[0].write(*l);
                        pair[1].write(*h);
                    }
                }
                let bits = pair_hashes(first_pair.wrapping_add(8 * full as u32), key);
                for (e, m) in blocks.into_remainder().iter_mut().enumerate() {
                    m.write(drop_or_keep(bits[e / 2] >> (16 * (e % 2))));
                }
            })
        });
    // SAFETY: the chunks cover the first `n` elements, each written once:
    // whole blocks of 16, then the remainder.
    unsafe { mask.set_len(n) };
    mask
}

/// A standard normal sample (Box–Muller).
pub fn standard_normal(rng: &mut Rng) -> f64 {
    let u1 = rng.unit().max(f64::MIN_POSITIVE);
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What a forward pass needs besides its inputs: in training, the seeded
/// generator that draws dropout masks (so runs and resumes are repeatable);
/// in evaluation, nothing, and dropout is off.
pub struct Ctx<'a> {
    pub rng: Option<&'a mut Rng>,
}

impl<'a> Ctx<'a> {
    pub fn train(rng: &'a mut Rng) -> Ctx<'a> {
        Ctx { rng: Some(rng) }
    }

    pub fn eval() -> Ctx<'static> {
        Ctx { rng: None }
    }

    /// The multipliers of inverted dropout over `n` elements: 0 with
    /// probability `p`, else `1/(1-p)`. `None` in evaluation or when `p` is 0.
    /// Both the reference and the fused kernels draw their masks here, so
    /// the same seed drops the same elements in either.
    ///
    /// One draw from the generator keys the whole mask; each pair of
    /// elements `(2j, 2j+1)` then depends on the key and `j` alone (a
    /// counter-based hash whose low and high 16 bits decide one element
    /// each), so the mask is filled in parallel, eight lanes at a time, and
    /// is the same on any number of threads. `p` is rounded to a multiple of
    /// 2⁻¹⁶ (0.1 drops 0.100006 of the elements).
    pub fn dropout_mask(&mut self, n: usize, p: f64) -> Option<Vec<f32>> {
        let rng = self.rng.as_deref_mut()?;
        if p <= 0.0 {
            return None;
        }
        let key = rng.next_u64();
        Some(crate::profile::time("dropout masks", || {
            dropout_multipliers(n, p, key)
        }))
    }

    /// Inverted dropout: zeroes each element with probability `p` and scales
    /// the rest by `1/(1-p)`; the identity in evaluation.
    /// On a device other than the CPU the mask is drawn there
    /// ([`super::device::dropout_multipliers`]), keyed by this generator.
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !x.device().is_cpu() {
            let Some(rng) = self.rng.as_deref_mut().filter(|_| p > 0.0) else {
                return Ok(x.clone());
            };
            let key = rng.next_u64();
            let mask = super::device::dropout_multipliers(x.dims(), p, key, x.device(), x.dtype())?;
            return Ok(x.mul(&mask)?);
        }
        match self.dropout_mask(x.elem_count(), p) {
            None => Ok(x.clone()),
            Some(mask) => {
                let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
                Ok(x.mul(&mask)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_drop_the_asked_fraction_repeatably() {
        let mask = |seed: u64, n: usize| {
            let mut rng = Rng::new(seed);
            Ctx::train(&mut rng).dropout_mask(n, 0.1).unwrap()
        };
        let n = 200_000;
        let a = mask(1, n);
        let dropped = a.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.003, "dropped {dropped}");
        assert!(a.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(a, mask(1, n), "same seed, same mask");
        assert_ne!(a, mask(2, n), "another seed, another mask");
        // Pairs of neighbours are dropped together as often as chance says.
        let both = a.windows(2).filter(|w| w[0] == 0.0 && w[1] == 0.0).count() as f64;
        assert!((both / (n - 1) as f64 - 0.01).abs() < 0.002);
        // The two halves of one hash are as independent as neighbours.
        let pairs = a
            .chunks_exact(2)
            .filter(|w| w[0] == 0.0 && w[1] == 0.0)
            .count() as f64;
        assert!((pairs / (n / 2) as f64 - 0.01).abs() < 0.002);
        // An odd length ends with a single element drawn like the rest.
        assert_eq!(&mask(1, 7)[..6], &a[..6]);
        assert!(Ctx::eval().dropout_mask(10, 0.1).is_none());
    }
}
