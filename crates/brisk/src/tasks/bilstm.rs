//! A bidirectional LSTM layer (Hochreiter & Schmidhuber, 1997; Graves &
//! Schmidhuber, 2005) over padded batches of sentences, the encoder of the
//! BiLSTM-CRF labeller (Lample et al., 2016) and the biaffine parser (Dozat
//! & Manning, 2017).
//!
//! The input projection of every time step is one matrix product (candle's,
//! with its own backward); the recurrence is one fused op with a
//! hand-written backward over the whole batch, both directions at once on
//! two threads. candle's per-step graph (a dozen small ops per step and
//! direction, each allocating and passing through the gradient store) is
//! kept as [`BiLstm::forward_reference`], the composition the tests hold
//! the fused op equal to.
//!
//! Rows are processed longest first, so at each step only the sentences
//! still running are computed (what PyTorch's packed sequences do): padding
//! costs nothing, its outputs are zero and it receives no gradient.
//!
//! Gate order and initialisation follow PyTorch's `nn.LSTM` (input, forget,
//! cell, output; uniform in ±1/√hidden), with the forget gate's bias
//! starting at 1 (Jozefowicz et al., 2015).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::fused::kernels::{
    matmul, simd, with_slices, zeros, Float, Mat, MatMut, Stash, Threads,
};
use crate::model::Params;

/// One bidirectional LSTM layer: `[batch, steps, input]` to
/// `[batch, steps, 2·hidden]` (forward states, then backward states).
#[derive(Debug, Clone)]
pub struct BiLstm {
    pub input: usize,
    pub hidden: usize,
    /// `[2·4·hidden, input]`: the forward direction's gates, then the
    /// backward direction's.
    w_ih: Tensor,
    /// `[2·4·hidden]`.
    bias: Tensor,
    /// `[2, 4·hidden, hidden]`.
    w_hh: Tensor,
}

impl BiLstm {
    /// Creates the group `{prefix}` with `weight_ih`, `bias` and `weight_hh`.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        input: usize,
        hidden: usize,
        rng: &mut Rng,
    ) -> Result<BiLstm> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let mut g = params.group(prefix);
        g.uniform("weight_ih", &[8 * hidden, input], bound, rng);
        let bias: Vec<f64> = (0..8 * hidden)
            .map(|i| if (i / hidden) % 4 == 1 { 1.0 } else { 0.0 })
            .collect();
        g.values("bias", &[8 * hidden], bias);
        g.uniform("weight_hh", &[2, 4 * hidden, hidden], bound, rng);
        let g = g.finish()?;
        Ok(BiLstm {
            input,
            hidden,
            w_ih: g.view("weight_ih")?,
            bias: g.view("bias")?,
            w_hh: g.view("weight_hh")?,
        })
    }

    /// Both directions' input gates for every step, `[batch, steps, 2·4·hidden]`.
    fn input_gates(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        if d != self.input {
            return Err(Error::Tensor(format!(
                "BiLSTM over inputs of width {d}, built for {}",
                self.input
            )));
        }
        let flat = x.reshape((b * t, d))?.contiguous()?;
        let gates = flat.matmul(&self.w_ih.t()?)?.broadcast_add(&self.bias)?;
        Ok(gates.reshape((b, t, 8 * self.hidden))?)
    }

    /// The fused recurrence. `lengths[i]` is the number of real steps of
    /// row `i`; steps past it give zeros. The input projection runs on the
    /// real steps only (packed), not on the padding.
    pub fn forward(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        self.forward_columns(x, lengths, None)
    }

    /// [`BiLstm::forward`] over the input column blocks `blocks` only
    /// (`(first column, width)`; `x` holds just those, in order): the same
    /// function as `forward` with the other columns zero, without
    /// multiplying the zeros (ACE's unselected embeddings). Blocks are cut
    /// with `narrow` and joined with `cat`, whose gradients are block
    /// copies.
    pub fn forward_columns(
        &self,
        x: &Tensor,
        lengths: &[usize],
        blocks: Option<&[(usize, usize)]>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        check_lengths(lengths, b, t)?;
        let w_ih = match blocks {
            Some(blocks) => columns_of(&self.w_ih, blocks, 1)?,
            None => self.w_ih.clone(),
        };
        if d != w_ih.dim(1)? {
            return Err(Error::Tensor(format!(
                "BiLSTM over inputs of width {d}, built for {}",
                w_ih.dim(1)?
            )));
        }
        let flat = x.reshape((b * t, d))?;
        let words: Vec<u32> = (0..b)
            .flat_map(|r| (0..lengths[r]).map(move |i| (r * t + i) as u32))
            .collect();
        let packed = if words.len() == b * t {
            flat.contiguous()?
        } else {
            flat.index_select(
                &Tensor::from_vec(words.clone(), words.len(), x.device())?,
                0,
            )?
        };
        let gates = packed.matmul(&w_ih.t()?)?.broadcast_add(&self.bias)?;
        let op = LstmOp::new(
            lengths,
            t,
            self.hidden,
            gates.track_op() || self.w_hh.track_op(),
        );
        Ok(gates
            .contiguous()?
            .apply_op2(&self.w_hh.contiguous()?, op)?)
    }

    /// The same function as [`BiLstm::forward`] composed of candle's
    /// per-step ops (the reference; slow).
    pub fn forward_reference(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let gates = self.input_gates(x)?;
        let (b, t, _) = gates.dims3()?;
        check_lengths(lengths, b, t)?;
        let h = self.hidden;
        let dev = x.device();
        let mut directions = Vec::with_capacity(2);
        for d in 0..2 {
            let w = self.w_hh.get(d)?.t()?;
            let mut state = Tensor::zeros((b, h), x.dtype(), dev)?;
            let mut cell = Tensor::zeros((b, h), x.dtype(), dev)?;
            let mut outputs = vec![None; t];
            for s in 0..t {
                let step = if d == 0 { s } else { t - 1 - s };
                let live: Vec<f32> = lengths
                    .iter()
                    .map(|&l| if step < l { 1.0 } else { 0.0 })
                    .collect();
                let live = Tensor::from_vec(live, (b, 1), dev)?.to_dtype(x.dtype())?;
                let pre = (gates
                    .narrow(1, step, 1)?
                    .squeeze(1)?
                    .narrow(1, d * 4 * h, 4 * h)?
                    + state.matmul(&w)?)?;
                let sigmoid =
                    |x: Tensor| -> Result<Tensor> { Ok((x.neg()?.exp()? + 1.0)?.recip()?) };
                let i = sigmoid(pre.narrow(1, 0, h)?)?;
                let f = sigmoid(pre.narrow(1, h, h)?)?;
                let g = pre.narrow(1, 2 * h, h)?.tanh()?;
                let o = sigmoid(pre.narrow(1, 3 * h, h)?)?;
                let new_cell = ((f * &cell)? + (i * g)?)?;
                let new_state = (o * new_cell.tanh()?)?;
                let kept = (1.0 - &live)?;
                cell = (new_cell.broadcast_mul(&live)? + cell.broadcast_mul(&kept)?)?;
                state = (new_state.broadcast_mul(&live)? + state.broadcast_mul(&kept)?)?;
                outputs[step] = Some(new_state.broadcast_mul(&live)?);
            }
            let outputs: Vec<Tensor> = outputs
                .into_iter()
                .map(|o| o.expect("every step"))
                .collect();
            directions.push(Tensor::stack(&outputs, 1)?);
        }
        Ok(Tensor::cat(&directions, D::Minus1)?)
    }
}

/// The column blocks `blocks` (`(first, width)`) of `t` along `dim`, joined.
pub fn columns_of(t: &Tensor, blocks: &[(usize, usize)], dim: usize) -> Result<Tensor> {
    let parts = blocks
        .iter()
        .map(|&(first, width)| t.narrow(dim, first, width))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, dim)?)
}

fn check_lengths(lengths: &[usize], batch: usize, steps: usize) -> Result<()> {
    if lengths.len() != batch || lengths.iter().any(|&l| l > steps) {
        return Err(Error::Tensor(format!(
            "BiLSTM: {} lengths for a batch of {batch} rows of {steps} steps (longest {:?})",
            lengths.len(),
            lengths.iter().max()
        )));
    }
    Ok(())
}

/// The recurrence of both directions: input gates of the real steps,
/// packed sentence after sentence (`[words, 2, 4H]`), and recurrent
/// weights `[2, 4H, H]` to states `[batch, steps, 2H]`.
struct LstmOp {
    steps: usize,
    hidden: usize,
    /// The packed index of each row's first step.
    offsets: Vec<usize>,
    /// Row indices, longest sentence first.
    order: Vec<usize>,
    /// Rows still running at each step (a prefix of `order`).
    live: Vec<usize>,
    keep: bool,
    saved: Stash,
}

/// One direction's activations, rows in `order`, `[steps, batch, ..]`.
struct Saved<T> {
    /// The gates after their non-linearities (i, f, g, o).
    gates: [Vec<T>; 2],
    /// The cell after each step.
    cells: [Vec<T>; 2],
    /// The state before each step.
    before: [Vec<T>; 2],
}

impl LstmOp {
    fn new(lengths: &[usize], steps: usize, hidden: usize, keep: bool) -> LstmOp {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let live = (0..steps)
            .map(|t| lengths.iter().filter(|&&l| l > t).count())
            .collect();
        let offsets = lengths
            .iter()
            .scan(0, |acc, &l| {
                let at = *acc;
                *acc += l;
                Some(at)
            })
            .collect();
        LstmOp {
            steps,
            hidden,
            offsets,
            order,
            live,
            keep,
            saved: Stash::default(),
        }
    }

    fn batch(&self) -> usize {
        self.order.len()
    }

    /// The time step a direction processes `s`-th.
    fn time(&self, direction: usize, s: usize) -> usize {
        if direction == 0 {
            s
        } else {
            self.steps - 1 - s
        }
    }

    /// One direction's forward: writes its half of `out` (`[batch, steps,
    /// 2H]`, zero-filled) and returns its activations.
    fn direction_forward<T: Float>(
        &self,
        d: usize,
        gx: &[T],
        w: &[T],
        out: MatMut<T>,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch(), self.steps, self.hidden);
        let g4 = 4 * h;
        let mut gates = zeros::<T>(t_len * b * g4);
        let mut cells = zeros::<T>(t_len * b * h);
        let mut before = zeros::<T>(t_len * b * h);
        let mut state = zeros::<T>(b * h);
        let mut cell = zeros::<T>(b * h);
        for s in 0..t_len {
            let t = self.time(d, s);
            let n = self.live[t];
            if n == 0 {
                continue;
            }
            let pre = &mut gates[t * b * g4..(t * b + n) * g4];
            for (r, row) in pre.chunks_mut(g4).enumerate() {
                let src = (self.offsets[self.order[r]] + t) * 2 * g4 + d * g4;
                row.copy_from_slice(&gx[src..src + g4]);
            }
            before[t * b * h..(t * b + n) * h].copy_from_slice(&state[..n * h]);
            // SAFETY: `pre` is n×4H, `state` n×H, `w` 4H×H, all live.
            unsafe {
                matmul(
                    (n, g4, h),
                    MatMut::rows(pre, g4),
                    Mat::rows(&state, h),
                    Mat::rows(w, h).t(),
                    T::ONE,
                    true,
                    Threads::One,
                );
            }
            let cells_t = &mut cells[t * b * h..(t * b + n) * h];
            simd!(for r in 0..n {
                let g = &mut pre[r * g4..(r + 1) * g4];
                let (c, hs) = (
                    &mut cell[r * h..(r + 1) * h],
                    &mut state[r * h..(r + 1) * h],
                );
                let ct = &mut cells_t[r * h..(r + 1) * h];
                for j in 0..h {
                    let i = sigmoid(g[j]);
                    let f = sigmoid(g[h + j]);
                    let gg = g[2 * h + j].tanh();
                    let o = sigmoid(g[3 * h + j]);
                    g[j] = i;
                    g[h + j] = f;
                    g[2 * h + j] = gg;
                    g[3 * h + j] = o;
                    c[j] = f * c[j] + i * gg;
                    ct[j] = c[j];
                    hs[j] = o * c[j].tanh();
                }
            });
            for r in 0..n {
                let row = self.order[r] * t_len + t;
                // SAFETY: each direction writes its own half of row `row`.
                unsafe {
                    let dst = out.row(row).col(d * h).ptr();
                    std::ptr::copy_nonoverlapping(state[r * h..].as_ptr(), dst, h);
                }
            }
        }
        (gates, cells, before)
    }

    fn forward<T: Float>(&self, gx: &[T], w_hh: &[T]) -> Vec<T> {
        let (b, t_len, h) = (self.batch(), self.steps, self.hidden);
        let mut out = zeros::<T>(b * t_len * 2 * h);
        let dst = MatMut::rows(&mut out, 2 * h);
        let w = |d: usize| &w_hh[d * 4 * h * h..(d + 1) * 4 * h * h];
        let (fwd, bwd) = rayon::join(
            || self.direction_forward(0, gx, w(0), dst),
            || self.direction_forward(1, gx, w(1), dst),
        );
        if self.keep {
            self.saved.put(Saved {
                gates: [fwd.0, bwd.0],
                cells: [fwd.1, bwd.1],
                before: [fwd.2, bwd.2],
            });
        }
        out
    }

    /// One direction's backward: its part of the input gates' gradient
    /// (written into `dgx`, `[words, 2, 4H]`) and the gradient of its
    /// recurrent weights.
    #[allow(clippy::too_many_arguments)]
    fn direction_backward<T: Float>(
        &self,
        d: usize,
        saved: (&[T], &[T], &[T]),
        w: &[T],
        dy: &[T],
        dgx: MatMut<T>,
    ) -> Vec<T> {
        let (gates, cells, before) = saved;
        let (b, t_len, h) = (self.batch(), self.steps, self.hidden);
        let g4 = 4 * h;
        let mut d_pre = zeros::<T>(t_len * b * g4);
        let mut dh = zeros::<T>(b * h);
        let mut dc = zeros::<T>(b * h);
        let no_cell = zeros::<T>(h);
        for s in (0..t_len).rev() {
            let t = self.time(d, s);
            let n = self.live[t];
            if n == 0 {
                continue;
            }
            // The step processed before this one, whose cell this one read.
            let previous = if s == 0 {
                None
            } else {
                Some(self.time(d, s - 1))
            };
            let dp = &mut d_pre[t * b * g4..(t * b + n) * g4];
            simd!(for r in 0..n {
                let src = (self.order[r] * t_len + t) * 2 * h + d * h;
                let dy_r = &dy[src..src + h];
                let g = &gates[(t * b + r) * g4..(t * b + r + 1) * g4];
                let c = &cells[(t * b + r) * h..(t * b + r + 1) * h];
                let c_prev = match previous {
                    Some(p) if r < self.live[p] => &cells[(p * b + r) * h..(p * b + r + 1) * h],
                    _ => &no_cell[..],
                };
                let (dh_r, dc_r) = (&mut dh[r * h..(r + 1) * h], &mut dc[r * h..(r + 1) * h]);
                let dp_r = &mut dp[r * g4..(r + 1) * g4];
                for j in 0..h {
                    let (i, f, gg, o) = (g[j], g[h + j], g[2 * h + j], g[3 * h + j]);
                    let dh_j = dh_r[j] + dy_r[j];
                    let tc = c[j].tanh();
                    let dcell = dc_r[j] + dh_j * o * (T::ONE - tc * tc);
                    dp_r[j] = dcell * gg * i * (T::ONE - i);
                    dp_r[h + j] = dcell * c_prev[j] * f * (T::ONE - f);
                    dp_r[2 * h + j] = dcell * i * (T::ONE - gg * gg);
                    dp_r[3 * h + j] = dh_j * tc * o * (T::ONE - o);
                    dc_r[j] = dcell * f;
                }
            });
            // SAFETY: `dh` holds n×H, `dp` n×4H, `w` 4H×H.
            unsafe {
                matmul(
                    (n, h, g4),
                    MatMut::rows(&mut dh, h),
                    Mat::rows(dp, g4),
                    Mat::rows(w, h),
                    T::ONE,
                    false,
                    Threads::One,
                );
            }
            for r in 0..n {
                let row = self.offsets[self.order[r]] + t;
                // SAFETY: each direction writes its own half of row `row`.
                unsafe {
                    let dst = dgx.row(row).col(d * g4).ptr();
                    std::ptr::copy_nonoverlapping(dp[r * g4..].as_ptr(), dst, g4);
                }
            }
        }
        // Every step's contribution at once: dW = Σ_t dpre_tᵀ · state_{t-1}
        // (rows of finished sentences are zero in both).
        let mut dw = zeros::<T>(g4 * h);
        // SAFETY: `d_pre` is (T·B)×4H, `before` (T·B)×H, `dw` 4H×H.
        unsafe {
            matmul(
                (g4, h, t_len * b),
                MatMut::rows(&mut dw, h),
                Mat::rows(&d_pre, g4).t(),
                Mat::rows(before, h),
                T::ONE,
                false,
                Threads::One,
            );
        }
        dw
    }

    fn backward<T: Float>(&self, w_hh: &[T], dy: &[T]) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let saved = self.saved.take::<Saved<T>>("fused BiLSTM")?;
        let (t_len, h) = (self.steps, self.hidden);
        let words: usize = (0..t_len).map(|t| self.live[t]).sum();
        let mut dgx = zeros::<T>(words * 8 * h);
        let dst = MatMut::rows(&mut dgx, 8 * h);
        let w = |d: usize| &w_hh[d * 4 * h * h..(d + 1) * 4 * h * h];
        let part = |d: usize| {
            (
                saved.gates[d].as_slice(),
                saved.cells[d].as_slice(),
                saved.before[d].as_slice(),
            )
        };
        let (dw0, dw1) = rayon::join(
            || self.direction_backward(0, part(0), w(0), dy, dst),
            || self.direction_backward(1, part(1), w(1), dy, dst),
        );
        let mut dw = dw0;
        dw.extend(dw1);
        Ok((dgx, dw))
    }

    fn run_forward<T: Float>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
    ) -> candle_core::Result<CpuStorage> {
        let (gx, w) = (T::slice(s1, l1)?, T::slice(s2, l2)?);
        Ok(T::storage(self.forward(gx, w)))
    }

    fn run_backward<T: Float>(
        &self,
        gx: &Tensor,
        w_hh: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dgx, dw) = with_slices::<T, _>(&[w_hh, &dy], |s| self.backward(s[0], s[1]))?;
        Ok((
            Some(Tensor::from_vec(dgx, gx.shape(), gx.device())?),
            Some(Tensor::from_vec(dw, w_hh.shape(), w_hh.device())?),
        ))
    }
}

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

impl CustomOp2 for LstmOp {
    fn name(&self) -> &'static str {
        "fused-bilstm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = match s1.dtype() {
            DType::F32 => self.run_forward::<f32>((s1, l1), (s2, l2))?,
            DType::F64 => self.run_forward::<f64>((s1, l1), (s2, l2))?,
            other => candle_core::bail!("fused BiLSTM: no kernel for {other:?}"),
        };
        Ok((
            storage,
            Shape::from((self.batch(), self.steps, 2 * self.hidden)),
        ))
    }

    fn bwd(
        &self,
        gx: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        match gx.dtype() {
            DType::F32 => self.run_backward::<f32>(gx, w_hh, dy),
            DType::F64 => self.run_backward::<f64>(gx, w_hh, dy),
            other => candle_core::bail!("fused BiLSTM: no kernel for {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused recurrence against the per-step composition, in f64, with
    /// rows of different lengths (one empty) in the batch: the states and
    /// the gradients of the input and of every weight.
    #[test]
    fn fused_recurrence_equals_the_step_by_step_composition() -> Result<()> {
        let (batch, steps, input, hidden) = (4, 6, 5, 3);
        let lengths = [6, 2, 0, 4];
        let mut params = Params::new(Device::Cpu, DType::F64);
        let lstm = BiLstm::new(&mut params, "lstm", input, hidden, &mut Rng::new(3))?;
        let mut rng = Rng::new(9);
        let xs: Vec<f64> = (0..batch * steps * input)
            .map(|_| 2.0 * rng.unit() - 1.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(xs, (batch, steps, input), &Device::Cpu)?)?;
        let probe: Vec<f64> = (0..batch * steps * 2 * hidden)
            .map(|_| rng.unit() - 0.5)
            .collect();
        let probe = Tensor::from_vec(probe, (batch, steps, 2 * hidden), &Device::Cpu)?;
        let run = |fused: bool| -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
            let y = if fused {
                lstm.forward(x.as_tensor(), &lengths)?
            } else {
                lstm.forward_reference(x.as_tensor(), &lengths)?
            };
            let loss = (&y * &probe)?.sum_all()?;
            let grads = loss.backward()?;
            let flat = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1()?) };
            let group = &params.groups()[0].var;
            Ok((
                flat(&y)?,
                flat(grads.get(x.as_tensor()).expect("input gradient"))?,
                flat(grads.get(group.as_tensor()).expect("weight gradient"))?,
            ))
        };
        let (fused, reference) = (run(true)?, run(false)?);
        for (name, a, b) in [
            ("states", &fused.0, &reference.0),
            ("input gradient", &fused.1, &reference.1),
            ("weight gradient", &fused.2, &reference.2),
        ] {
            assert_eq!(a.len(), b.len());
            for (i, (u, v)) in a.iter().zip(b).enumerate() {
                assert!(
                    (u - v).abs() < 1e-10,
                    "{name}[{i}]: fused {u}, reference {v}"
                );
            }
        }
        // Padding: zero states past each row's length.
        for (row, &len) in lengths.iter().enumerate() {
            for t in len..steps {
                let at = (row * steps + t) * 2 * hidden;
                assert!(fused.0[at..at + 2 * hidden].iter().all(|&v| v == 0.0));
            }
        }
        Ok(())
    }

    /// The same in f32, the precision training runs in, to 1e-5.
    #[test]
    fn fused_recurrence_matches_in_f32() -> Result<()> {
        let (batch, steps, input, hidden) = (3, 5, 7, 16);
        let lengths = [5, 3, 4];
        let mut params = Params::new(Device::Cpu, DType::F32);
        let lstm = BiLstm::new(&mut params, "lstm", input, hidden, &mut Rng::new(5))?;
        let mut rng = Rng::new(2);
        let xs: Vec<f32> = (0..batch * steps * input)
            .map(|_| 2.0 * rng.unit() as f32 - 1.0)
            .collect();
        let x = Tensor::from_vec(xs, (batch, steps, input), &Device::Cpu)?;
        let group = &params.groups()[0].var;
        let grads = |y: Tensor| -> Result<(Vec<f32>, Vec<f32>)> {
            let g = y.sqr()?.sum_all()?.backward()?;
            Ok((
                y.flatten_all()?.to_vec1()?,
                g.get(group.as_tensor()).expect("gradient").to_vec1()?,
            ))
        };
        let a = grads(lstm.forward(&x, &lengths)?)?;
        let b = grads(lstm.forward_reference(&x, &lengths)?)?;
        for (u, v) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)) {
            assert!(
                (u - v).abs() < 1e-5 * (1.0 + v.abs()),
                "fused {u}, reference {v}"
            );
        }
        Ok(())
    }
}
