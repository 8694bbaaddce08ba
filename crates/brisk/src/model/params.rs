//! Named trainable parameters and the per-forward context (dropout RNG).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

/// Trainable parameters by HF tensor name, in creation order (so optimiser
/// state and checkpoints are laid out the same way every run).
#[derive(Debug, Clone)]
pub struct Params {
    pub device: Device,
    pub dtype: DType,
    entries: Vec<(String, Var)>,
}

impl Params {
    pub fn new(device: Device, dtype: DType) -> Params {
        Params {
            device,
            dtype,
            entries: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, tensor: Tensor) -> Result<Tensor> {
        assert!(self.get(name).is_none(), "parameter {name} created twice");
        let var = Var::from_tensor(&tensor.to_dtype(self.dtype)?)?;
        let t = var.as_tensor().clone();
        self.entries.push((name.to_string(), var));
        Ok(t)
    }

    /// A parameter drawn from N(0, std²) with brisk's seeded generator.
    pub fn normal(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f64,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| std * standard_normal(rng)).collect();
        let t = Tensor::from_vec(values, shape, &self.device)?;
        self.add(name, t)
    }

    pub fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::zeros(shape, self.dtype, &self.device)?;
        self.add(name, t)
    }

    pub fn ones(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::ones(shape, self.dtype, &self.device)?;
        self.add(name, t)
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// `(name, variable)` in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes every parameter under its name to a safetensors file,
    /// atomically (a temporary name, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .iter()
            .map(|(name, var)| (name.to_string(), var.as_tensor().clone()))
            .collect();
        let tmp = crate::run::temporary_sibling(path);
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Overwrites every parameter with the tensor of the same name in a
    /// safetensors file. A missing tensor or a shape mismatch is an error
    /// naming the file and the tensor; extra tensors are ignored.
    pub fn load(&self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
        for (name, var) in self.iter() {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| Error::data(path, format!("has no tensor {name}")))?;
            if tensor.dims() != var.dims() {
                return Err(Error::data(
                    path,
                    format!(
                        "tensor {name} has shape {:?}, the model expects {:?}",
                        tensor.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&tensor.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }
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

    /// Inverted dropout: zeroes each element with probability `p` and scales
    /// the rest by `1/(1-p)`; the identity in evaluation.
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        let Some(rng) = self.rng.as_deref_mut() else {
            return Ok(x.clone());
        };
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.unit() < p { 0.0 } else { keep as f32 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}
