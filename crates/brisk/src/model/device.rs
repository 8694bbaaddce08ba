//! Where a model runs (`train.device`) and the random draws that must
//! stay on that device.
//!
//! The CPU runs the fused kernels; any other device (CUDA, through
//! candle's backend and cuBLAS) runs the reference composition, the same
//! code the CPU runs with `model.kernels = "reference"`. A draw that the
//! CPU takes from brisk's seeded generator on the host (dropout masks,
//! ELECTRA's samples) is taken on a GPU from the device's own generator,
//! seeded from the host generator's next value, so no mask or
//! probability matrix crosses the bus and a resumed run draws the same.
//!
//! The choice of device is the only place that knows which backends the
//! build has: the default build compiles every line the GPU runs.

use candle_core::{DType, Device, Tensor, D};

use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

/// A parsed `train.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device N (`"cuda"` is device 0).
    Cuda(usize),
}

/// Parses `"cpu"`, `"cuda"` or `"cuda:N"`; the error says what is
/// accepted.
pub fn parse(text: &str) -> std::result::Result<DeviceSpec, String> {
    let bad = || format!("{text:?} is not a device (expected \"cpu\", \"cuda\" or \"cuda:N\")");
    match text {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => match text.strip_prefix("cuda:") {
            Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
            None => Err(bad()),
        },
    }
}

/// True when this build has the CUDA backend (`--features cuda`).
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

/// Opens the device `train.device` names. On a build without CUDA, or
/// without that GPU, an error that says what to do.
pub fn open(text: &str) -> Result<Device> {
    // `--device` sets `train.device` in pre-training and the recipe's
    // device elsewhere: the error names both.
    let spec =
        parse(text).map_err(|why| Error::Config(format!("`--device`/`train.device`: {why}")))?;
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(_) if !HAS_CUDA => Err(Error::Config(format!(
            "`--device`/`train.device`: {text:?} needs the CUDA build of brisk, and this one was built \
             without it; build with `cargo build --release --features cuda` (README, \
             \"On a GPU\")"
        ))),
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            Error::Config(format!(
                "`--device`/`train.device`: CUDA device {n} could not be opened ({e}); check that a GPU \
                 is there (nvidia-smi) and that LD_LIBRARY_PATH holds libcudart, libcublas \
                 and libcurand"
            ))
        }),
    }
}

/// A short name for logs and summaries: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Uniform draws in `(0, 1)`, f32, of `shape` on `device`, keyed by
/// `key`: on the CPU from brisk's generator (so the draw does not depend
/// on the thread count), elsewhere from the device's generator seeded
/// with `key`. The same key gives the same draw on the same device.
pub fn uniform(shape: &[usize], key: u64, device: &Device) -> Result<Tensor> {
    // Kept strictly inside (0, 1): the Gumbel transform takes two logs.
    const LOW: f64 = 1e-30;
    const HIGH: f64 = 1.0 - 1.0 / 16_777_216.0;
    let u = if device.is_cpu() {
        let mut rng = Rng::new(key);
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.unit() as f32).collect();
        Tensor::from_vec(values, shape, device)?
    } else {
        device.set_seed(key)?;
        Tensor::rand(0f32, 1f32, shape, device)?
    };
    Ok(u.clamp(LOW, HIGH)?)
}

/// Inverted dropout's multipliers for `shape`, on `device` in `dtype`: 0
/// with probability `p`, else `1/(1-p)`, from [`uniform`] under `key`.
pub fn dropout_multipliers(
    shape: &[usize],
    p: f64,
    key: u64,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let keep = uniform(shape, key, device)?.ge(p)?;
    Ok((keep.to_dtype(DType::F32)? * (1.0 / (1.0 - p)))?.to_dtype(dtype)?)
}

/// One draw per row of `logits` `[rows, vocab]` from its softmax, by the
/// Gumbel-max trick (`argmax(logits − log(−log u))`), on the logits'
/// device: u32 `[rows]`. No gradient flows.
pub fn gumbel_argmax(logits: &Tensor, key: u64) -> Result<Tensor> {
    let logits = logits.detach().to_dtype(DType::F32)?;
    let u = uniform(logits.dims(), key, logits.device())?;
    let gumbel = u.log()?.neg()?.log()?.neg()?;
    Ok((logits + gumbel)?.argmax(D::Minus1)?)
}

/// The dtype statistics are kept in for activations of `dtype`: f32 for
/// the half formats, else the dtype itself.
pub fn statistics_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_the_cpu_build_refuses_cuda_by_name() {
        assert_eq!(parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(
                parse(bad).unwrap_err().contains("expected \"cpu\""),
                "{bad}"
            );
        }
        assert!(open("cpu").unwrap().is_cpu());
        if !HAS_CUDA {
            let e = open("cuda").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn gumbel_draws_follow_the_softmax() {
        // Three classes with probabilities 0.5, 0.3, 0.2, many rows.
        let rows = 20_000;
        let p = [0.5f32, 0.3, 0.2];
        let logits: Vec<f32> = (0..rows).flat_map(|_| p.map(f32::ln)).collect();
        let logits = Tensor::from_vec(logits, (rows, 3), &Device::Cpu).unwrap();
        let draws: Vec<u32> = gumbel_argmax(&logits, 7).unwrap().to_vec1().unwrap();
        for (class, want) in p.iter().enumerate() {
            let share = draws.iter().filter(|&&d| d == class as u32).count() as f64 / rows as f64;
            // Four standard errors of a share near 0.5 over 20,000 rows.
            assert!((share - *want as f64).abs() < 0.015, "{class}: {share}");
        }
        let again: Vec<u32> = gumbel_argmax(&logits, 7).unwrap().to_vec1().unwrap();
        assert_eq!(draws, again, "same key, same draws");
    }

    #[test]
    fn device_dropout_drops_the_asked_fraction() {
        let m: Vec<f32> = dropout_multipliers(&[100_000], 0.1, 3, &Device::Cpu, DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    }
}
