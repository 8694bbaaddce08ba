//! The loops the fused ops are made of, generic over f32 and f64 (f64 for
//! the finite-difference checks): matrix products through the `gemm` crate,
//! row-wise LayerNorm, activations, column sums and dropout masks.
//!
//! Matrices are row-major slices; [`Mat`] adds strides so a transpose, a
//! head's column block or a packed Q/K/V part is read in place, not copied.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

/// The element types the fused kernels run in.
pub trait Float:
    WithDType
    + Copy
    + Send
    + Sync
    + 'static
    + Default
    + PartialOrd
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const DTYPE: DType;
    fn of(x: f64) -> Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    /// `erf(self)` given `e = exp(-self²)`, which GELU's derivative needs
    /// too (f32 reuses it; f64 computes erf afresh).
    fn erf_given_exp(self, e: Self) -> Self;
    fn tanh(self) -> Self;
    /// The contiguous elements of a storage seen through `layout`.
    fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [Self]>;
    fn storage(values: Vec<Self>) -> CpuStorage;
}

macro_rules! float {
    ($t:ty, $variant:ident, $erf:path, $erf_given_exp:path, $exp:path, $tanh:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const DTYPE: DType = DType::$variant;
            #[inline(always)]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn erf_given_exp(self, e: Self) -> Self {
                $erf_given_exp(self, e)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            fn slice<'a>(
                storage: &'a CpuStorage,
                layout: &Layout,
            ) -> candle_core::Result<&'a [Self]> {
                let CpuStorage::$variant(values) = storage else {
                    candle_core::bail!(
                        "fused kernel: expected {:?}, got {:?}",
                        DType::$variant,
                        storage.dtype()
                    );
                };
                match layout.contiguous_offsets() {
                    Some((start, end)) => Ok(&values[start..end]),
                    None => candle_core::bail!("fused kernel: input is not contiguous"),
                }
            }
            fn storage(values: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(values)
            }
        }
    };
}

float!(f32, F32, erf_f32, erf_f32_given_exp, exp_f32, tanh_f32);
float!(
    f64,
    F64,
    candle_core::cpu::erf::erf_f64,
    erf_f64_given_exp,
    f64::exp,
    f64::tanh
);

/// `tanh` in f32 through [`exp_f32`] (vectorises; absolute error ~1e-7).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * x) + 1.0)
}

/// `exp` in f32 without branches or calls, so loops over it vectorise
/// (Cephes' `expf` polynomial after reducing by `n·ln 2`; relative error
/// about 2e-7). Inputs are clamped to where the result is a normal float.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n·LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let rounded = x * LOG2E + ROUND;
    let n = rounded - ROUND;
    // n also sits in the low mantissa bits of `rounded`: reading it there
    // keeps the loop in vector registers (`n as i32` saturates, which
    // compilers turn into scalar code).
    let exponent = rounded
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127)
        << 23;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(exponent)
}

/// `erf` in f32 without branches (Abramowitz & Stegun 7.1.26, absolute
/// error below 1.5e-7 plus rounding), so GELU loops vectorise.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    erf_f32_given_exp(x, exp_f32(-x * x))
}

/// [`erf_f32`] given `e = exp(-x²)`.
#[inline(always)]
pub fn erf_f32_given_exp(x: f32, e: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * e).copysign(x)
}

#[inline(always)]
fn erf_f64_given_exp(x: f64, _e: f64) -> f64 {
    candle_core::cpu::erf::erf_f64(x)
}

/// Σ x, with eight independent accumulators so the loop vectorises.
#[inline(always)]
pub fn sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut total = T::ZERO;
    for a in acc.into_iter().chain(rest.iter().copied()) {
        total += a;
    }
    total
}

/// Σ a·b, vectorised as [`sum`].
#[inline(always)]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut total = T::ZERO;
    for a in acc {
        total += a;
    }
    for (x, y) in ra.iter().zip(rb) {
        total += *x * *y;
    }
    total
}

/// The largest element (vectorised; NaN-free inputs).
#[inline(always)]
pub fn max<T: Float>(x: &[T]) -> T {
    let mut acc = [x[0]; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = x[0];
    for a in acc.into_iter().chain(rest.iter().copied()) {
        m = if a > m { a } else { m };
    }
    m
}

/// Softmax of one row in place.
#[inline(always)]
pub fn softmax_in_place<T: Float>(row: &mut [T]) {
    let m = max(row);
    for v in row.iter_mut() {
        *v = (*v - m).exp();
    }
    let inv = T::ONE / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Calls `f` with the elements of CPU tensors (made contiguous by the
/// caller), as slices of `T`.
pub fn with_slices<T: Float, R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[&[T]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("the fused kernels run on the CPU");
        };
        slices.push(T::slice(cpu, layout)?);
    }
    f(&slices)
}

/// What an op's forward keeps for its backward: typed on the way in, so
/// that the backward gets back exactly what the forward stored (once: the
/// backward takes it, freeing the memory as soon as it is used).
#[derive(Default)]
pub struct Stash(std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>);

impl Stash {
    pub fn put<S: Send + 'static>(&self, saved: S) {
        *self.0.lock().expect("stash") = Some(Box::new(saved));
    }

    /// The saved value; an error naming `op` when there is none (the op ran
    /// without gradients, or a second backward went through the same graph).
    pub fn take<S: 'static>(&self, op: &str) -> candle_core::Result<Box<S>> {
        self.0
            .lock()
            .expect("stash")
            .take()
            .and_then(|b| b.downcast::<S>().ok())
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{op}: backward without the forward's activations \
                     (run without gradients, or a second backward through the same graph?)"
                ))
            })
    }
}

/// Two disjoint `(offset, len)` slices of a flat gradient, mutably.
pub fn two_mut<T>(
    flat: &mut [T],
    ((a, la), (b, lb)): ((usize, usize), (usize, usize)),
) -> (&mut [T], &mut [T]) {
    assert!(a + la <= b || b + lb <= a, "overlapping gradient slices");
    if a < b {
        let (left, right) = flat.split_at_mut(b);
        (&mut left[a..a + la], &mut right[..lb])
    } else {
        let (left, right) = flat.split_at_mut(a);
        (&mut right[..la], &mut left[b..b + lb])
    }
}

/// A zero-filled buffer.
pub fn zeros<T: Float>(n: usize) -> Vec<T> {
    vec![T::ZERO; n]
}

/// A read-only strided matrix.
pub struct Mat<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

impl<T> Mat<T> {
    /// Row-major data with `ld` elements per row.
    pub fn rows(data: &[T], ld: usize) -> Mat<T> {
        Mat {
            ptr: data.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The same matrix starting at column `c` (a head's block, say).
    pub fn col(self, c: usize) -> Mat<T> {
        Mat {
            ptr: self.ptr.wrapping_add(c * self.cs as usize),
            ..self
        }
    }

    /// The same matrix starting at row `r`.
    pub fn row(self, r: usize) -> Mat<T> {
        Mat {
            ptr: self.ptr.wrapping_add(r * self.rs as usize),
            ..self
        }
    }

    /// The transpose, read in place.
    pub fn t(self) -> Mat<T> {
        Mat {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A writable strided matrix.
pub struct MatMut<T> {
    ptr: *mut T,
    rs: isize,
}

// Copies of the pointer and strides, whatever `T` is (a derive would ask
// `T: Copy`).
impl<T> Clone for Mat<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Mat<T> {}
impl<T> Clone for MatMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MatMut<T> {}

// SAFETY: a `MatMut` is only shared between tasks that write disjoint
// blocks (one attention head each).
unsafe impl<T: Send> Send for MatMut<T> {}
unsafe impl<T: Send> Sync for MatMut<T> {}
unsafe impl<T: Sync> Send for Mat<T> {}
unsafe impl<T: Sync> Sync for Mat<T> {}

impl<T> MatMut<T> {
    pub fn rows(data: &mut [T], ld: usize) -> MatMut<T> {
        MatMut {
            ptr: data.as_mut_ptr(),
            rs: ld as isize,
        }
    }

    /// The first element's address.
    pub fn ptr(self) -> *mut T {
        self.ptr
    }

    pub fn col(self, c: usize) -> MatMut<T> {
        MatMut {
            ptr: self.ptr.wrapping_add(c),
            ..self
        }
    }

    pub fn row(self, r: usize) -> MatMut<T> {
        MatMut {
            ptr: self.ptr.wrapping_add(r * self.rs as usize),
            ..self
        }
    }
}

/// How a product is threaded: large ones split over the rayon pool, the
/// small per-head ones run on the calling task.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Pool,
    One,
}

/// `dst[m×n] = (accumulate ? dst : 0) + alpha · a[m×k] · b[k×n]`.
///
/// # Safety
/// Every matrix must cover its `m`, `n`, `k` extent inside live memory, and
/// no other thread may touch `dst`'s block meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: MatMut<T>,
    a: Mat<T>,
    b: Mat<T>,
    alpha: T,
    accumulate: bool,
    threads: Threads,
) {
    let parallelism = match threads {
        Threads::Pool if rayon::current_num_threads() > 1 => Parallelism::Rayon(0),
        _ => Parallelism::None,
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        1,
        dst.rs,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        T::ONE,
        alpha,
        false,
        false,
        false,
        parallelism,
    )
}

/// `alpha · a[m×k] · b[k×n]` in a new buffer. gemm writes every element
/// without reading it (it is not asked to accumulate), so the buffer is not
/// zero-filled first: that fill was a tenth of a step's memory traffic.
///
/// # Safety
/// As [`matmul`]: `a` and `b` must cover their extents in live memory.
pub unsafe fn product<T: Float>(
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    alpha: T,
    threads: Threads,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(m * n);
    let dst = MatMut {
        ptr: out.as_mut_ptr(),
        rs: n as isize,
    };
    matmul((m, n, k), dst, a, b, alpha, false, threads);
    // SAFETY: gemm with `accumulate = false` wrote all m·n elements.
    out.set_len(m * n);
    out
}

/// Rows per rayon task in row-wise loops: enough work to pay for the task.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// Applies `f` to every `width`-long row, in parallel.
pub fn for_rows<T: Send>(data: &mut [T], width: usize, f: impl Fn(&mut [T]) + Sync) {
    data.par_chunks_mut(width)
        .with_min_len(rows_per_task(width))
        .for_each(|row| simd!(f(row)));
}

/// `dst[j] += Σ_i a[i, j]` (bias gradients).
pub fn add_column_sums<T: Float>(dst: &mut [T], a: &[T]) {
    add_column_sums_of(dst, a, None);
}

/// `dst[j] += Σ_i a[i, j] · b[i, j]` (LayerNorm gain gradients).
pub fn add_column_sums_product<T: Float>(dst: &mut [T], a: &[T], b: &[T]) {
    add_column_sums_of(dst, a, Some(b));
}

/// Column sums of `a` (times `b` when given), in row blocks in parallel.
fn add_column_sums_of<T: Float>(dst: &mut [T], a: &[T], b: Option<&[T]>) {
    let w = dst.len();
    let block = rows_per_task(w).max(64) * w;
    let partial = a
        .par_chunks(block)
        .enumerate()
        .map(|(k, a)| {
            let mut sums = zeros::<T>(w);
            simd!(match b {
                None => {
                    for row in a.chunks_exact(w) {
                        for (s, v) in sums.iter_mut().zip(row) {
                            *s += *v;
                        }
                    }
                }
                Some(b) => {
                    let b = &b[k * block..k * block + a.len()];
                    for (row, brow) in a.chunks_exact(w).zip(b.chunks_exact(w)) {
                        for ((s, v), u) in sums.iter_mut().zip(row).zip(brow) {
                            *s += *v * *u;
                        }
                    }
                }
            });
            sums
        })
        .collect::<Vec<_>>();
    for sums in partial {
        for (d, s) in dst.iter_mut().zip(sums) {
            *d += s;
        }
    }
}

/// `x[i, j] += bias[j]`.
pub fn add_bias<T: Float>(x: &mut [T], bias: &[T]) {
    for_rows(x, bias.len(), |row| {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += *b;
        }
    });
}

/// `x *= mask` elementwise (a dropout mask of `0` and `1/(1-p)`).
pub fn apply_mask<T: Float>(x: &mut [T], mask: Option<&[f32]>) {
    if let Some(mask) = mask {
        x.par_iter_mut()
            .with_min_len(1 << 14)
            .zip(mask)
            .for_each(|(v, m)| *v *= T::of(*m as f64));
    }
}

/// `[rows, n] = x[rows, k] · Wᵀ + b` with HF's `[n, k]` weight.
pub fn linear<T: Float>(x: &[T], w: &[T], b: &[T], k: usize) -> Vec<T> {
    let n = b.len();
    let rows = x.len() / k;
    // SAFETY: `x` is `rows × k`, `w` is `n × k`.
    let mut y = unsafe {
        product(
            (rows, n, k),
            Mat::rows(x, k),
            Mat::rows(w, k).t(),
            T::ONE,
            Threads::Pool,
        )
    };
    add_bias(&mut y, b);
    y
}

/// The backward of [`linear`]: adds `dyᵀ·x` to `dw`, the column sums of
/// `dy` to `db`, and returns `dy·W` (`[rows, k]`).
pub fn linear_backward<T: Float>(dy: &[T], x: &[T], w: &[T], dw: &mut [T], db: &mut [T]) -> Vec<T> {
    let n = db.len();
    let k = w.len() / n;
    let rows = dy.len() / n;
    // The two products are independent and equally large: run side by side,
    // each over the pool, a thread that finishes its share of one takes
    // work of the other instead of waiting at the first one's end.
    let (dx, ()) = rayon::join(
        // SAFETY: `dy` is `rows × n`, `w` is `n × k`.
        || unsafe {
            product(
                (rows, k, n),
                Mat::rows(dy, n),
                Mat::rows(w, k),
                T::ONE,
                Threads::Pool,
            )
        },
        || {
            // SAFETY: `dw` is `n × k`, `dy` is `rows × n`, `x` is `rows × k`.
            unsafe {
                matmul(
                    (n, k, rows),
                    MatMut::rows(dw, k),
                    Mat::rows(dy, n).t(),
                    Mat::rows(x, k),
                    T::ONE,
                    true,
                    Threads::Pool,
                )
            };
            add_column_sums(db, dy);
        },
    );
    dx
}

/// `dst += src`.
pub fn add<T: Float>(dst: &mut [T], src: &[T]) {
    dst.par_iter_mut()
        .with_min_len(1 << 14)
        .zip(src)
        .for_each(|(d, s)| *d += *s);
}

/// A copy of `x` times a dropout mask.
pub fn masked<T: Float>(x: &[T], mask: Option<&[f32]>) -> Vec<T> {
    let mut y = x.to_vec();
    apply_mask(&mut y, mask);
    y
}

/// What LayerNorm's backward needs of its forward: `x̂ = (x − mean)·rstd`
/// and `rstd = 1/sqrt(var + eps)` per row.
pub struct Normed<T> {
    pub xhat: Vec<T>,
    pub rstd: Vec<T>,
}

/// LayerNorm over rows of `x` (`width` wide): returns `y = x̂·g + b` and what
/// the backward needs.
pub fn layer_norm<T: Float>(x: &[T], g: &[T], b: &[T], eps: f64) -> (Vec<T>, Normed<T>) {
    let w = g.len();
    let rows = x.len() / w;
    let mut y = zeros::<T>(x.len());
    let mut xhat = zeros::<T>(x.len());
    let mut rstd = zeros::<T>(rows);
    let inv_w = T::of(1.0 / w as f64);
    y.par_chunks_mut(w)
        .zip(xhat.par_chunks_mut(w))
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(w))
        .with_min_len(rows_per_task(w))
        .for_each(|(((y, xh), r), x)| {
            simd!({
                let mean = sum(x) * inv_w;
                for (c, v) in xh.iter_mut().zip(x) {
                    *c = *v - mean;
                }
                *r = T::ONE / (dot(xh, xh) * inv_w + T::of(eps)).sqrt();
                for (c, (y, (g, b))) in xh.iter_mut().zip(y.iter_mut().zip(g.iter().zip(b))) {
                    *c *= *r;
                    *y = *c * *g + *b;
                }
            })
        });
    (y, Normed { xhat, rstd })
}

/// LayerNorm's backward: adds `∂L/∂x` to `dx` (or writes it when `dx` is
/// fresh zeros) and the gain and bias gradients to `dg`, `db`.
pub fn layer_norm_backward<T: Float>(
    dy: &[T],
    normed: &Normed<T>,
    g: &[T],
    dx: &mut [T],
    dg: &mut [T],
    db: &mut [T],
) {
    let w = g.len();
    let inv_w = T::of(1.0 / w as f64);
    dx.par_chunks_mut(w)
        .zip(dy.par_chunks(w))
        .zip(normed.xhat.par_chunks(w))
        .zip(normed.rstd.par_iter())
        .with_min_len(rows_per_task(w))
        .for_each_init(Vec::new, |d, (((dx, dy), xh), r)| {
            simd!({
                d.clear();
                d.extend(dy.iter().zip(g).map(|(a, b)| *a * *b));
                let mean_d = sum(d) * inv_w;
                let mean_dx = dot(d, xh) * inv_w;
                for ((dx, d), xh) in dx.iter_mut().zip(d.iter()).zip(xh) {
                    *dx += *r * (*d - mean_d - *xh * mean_dx);
                }
            })
        });
    add_column_sums_product(dg, dy, &normed.xhat);
    add_column_sums(db, dy);
}

/// `x̂·g + b` again from what [`layer_norm`] kept.
pub fn denormalise<T: Float>(normed: &Normed<T>, g: &[T], b: &[T]) -> Vec<T> {
    let mut y = normed.xhat.clone();
    for_rows(&mut y, g.len(), |row| {
        for j in 0..row.len() {
            row[j] = row[j] * g[j] + b[j];
        }
    });
    y
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// HF `"gelu"`: `x·Φ(x)` with the exact (erf) normal CDF.
    GeluErf,
    /// HF `"gelu_new"`: the tanh approximation.
    GeluTanh,
    Relu,
}

/// Runs `$body` compiled for AVX-512 or AVX2 when the CPU has it (the
/// elementwise loops in it then run sixteen or eight lanes wide instead of
/// SSE2's four). No operation is fused or reordered here, but gemm's
/// AVX-512 and AVX2 matrix products sum in different orders, so the two
/// paths differ in the last bits; without the `avx512` feature neither
/// uses AVX-512, which is how CI tests the AVX2 path on any machine.
///
/// The body's closure is always inlined into its wrapper: a closure that
/// is not is compiled for the baseline and only called from the wrapper,
/// which gains nothing (as happened to the larger loops).
#[cfg(target_arch = "x86_64")]
macro_rules! simd {
    ($body:expr) => {
        if $crate::model::fused::kernels::isa() == $crate::model::fused::kernels::Isa::Avx512 {
            // SAFETY: the CPU supports AVX-512F (checked by `isa`).
            unsafe {
                $crate::model::fused::kernels::with_avx512(
                    #[inline(always)]
                    || $body,
                )
            }
        } else if $crate::model::fused::kernels::isa() == $crate::model::fused::kernels::Isa::Avx2 {
            // SAFETY: the CPU supports AVX2 (checked by `isa`).
            unsafe {
                $crate::model::fused::kernels::with_avx2(
                    #[inline(always)]
                    || $body,
                )
            }
        } else {
            $body
        }
    };
}

#[cfg(not(target_arch = "x86_64"))]
macro_rules! simd {
    ($body:expr) => {
        $body
    };
}

pub(crate) use simd;

/// The instruction set brisk's own kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// What every x86-64 (SSE2) or other CPU has.
    Baseline,
    Avx2,
    Avx512,
}

/// The widest instruction set this CPU offers and this build uses (AVX-512
/// only with the `avx512` feature), capped by `BRISK_ISA` (`avx2` or
/// `baseline`), so that one machine can measure and test the paths of
/// CPUs with less. Decided once per process. The cap applies to brisk's
/// own kernels; gemm's matrix products choose their path from the build
/// (without the `avx512` feature they use AVX2 at most).
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = match std::env::var("BRISK_ISA").as_deref() {
            Ok("baseline") => Isa::Baseline,
            Ok("avx2") => Isa::Avx2,
            Ok("avx512") | Err(_) => Isa::Avx512,
            Ok(other) => {
                eprintln!("warning: BRISK_ISA={other:?} is not avx512, avx2 or baseline; ignored");
                Isa::Avx512
            }
        };
        detected_isa().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detected_isa() -> Isa {
    if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
        Isa::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2") {
        Isa::Avx2
    } else {
        Isa::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected_isa() -> Isa {
    Isa::Baseline
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `$body` with `$a` bound to the activation as a constant, so that
/// each loop is compiled for one activation (a `match` inside the loop
/// would keep it from vectorising).
macro_rules! per_activation {
    ($act:expr, $a:ident => $body:expr) => {
        match $act {
            Activation::GeluErf => {
                const $a: Activation = Activation::GeluErf;
                $body
            }
            Activation::GeluTanh => {
                const $a: Activation = Activation::GeluTanh;
                $body
            }
            Activation::Relu => {
                const $a: Activation = Activation::Relu;
                $body
            }
        }
    };
}

/// Elements per parallel task in elementwise loops.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// `x ← act(x)` elementwise, in parallel.
pub fn activate<T: Float>(act: Activation, x: &mut [T]) {
    x.par_chunks_mut(ELEMENTS_PER_TASK).for_each(|c| {
        per_activation!(act, A => simd!({
            for v in c.iter_mut() {
                *v = *v * A.gate(*v);
            }
        }))
    });
}

/// `d ← d · act′(x)` elementwise, in parallel.
pub fn activation_backward<T: Float>(act: Activation, d: &mut [T], x: &[T]) {
    d.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(x.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(d, x)| {
            per_activation!(act, A => simd!({
                for (d, x) in d.iter_mut().zip(x) {
                    *d *= A.derivative_from_gate(*x, A.gate(*x));
                }
            }))
        });
}

/// `act(x)` and `act′(x)` elementwise, in parallel: the backward pass then
/// multiplies by the derivative and evaluates nothing again.
pub fn activate_and_derive<T: Float>(act: Activation, x: &[T]) -> (Vec<T>, Vec<T>) {
    // Written whole, so not zero-filled first (one pass over memory less).
    let mut out = Vec::<T>::with_capacity(x.len());
    let mut derivative = Vec::<T>::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(derivative.spare_capacity_mut()[..x.len()].par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(x.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|((y, dy), x)| {
            per_activation!(act, A => simd!({
                for ((y, dy), x) in y.iter_mut().zip(dy.iter_mut()).zip(x) {
                    let (value, slope) = A.value_and_derivative(*x);
                    y.write(value);
                    dy.write(slope);
                }
            }))
        });
    // SAFETY: the chunks above cover the first `x.len()` elements of both,
    // and every element of every chunk was written.
    unsafe {
        out.set_len(x.len());
        derivative.set_len(x.len());
    }
    (out, derivative)
}

/// `d ← d ⊙ s` elementwise, in parallel.
pub fn multiply<T: Float>(d: &mut [T], s: &[T]) {
    d.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(s.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(d, s)| {
            simd!({
                for (d, s) in d.iter_mut().zip(s) {
                    *d *= *s;
                }
            })
        });
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

impl Activation {
    pub fn from_name(name: &str) -> Option<Activation> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// The gate `s(x)` with `act(x) = x·s(x)`: the normal CDF for GELU,
    /// its tanh approximation for `gelu_new`, the step for ReLU.
    #[inline(always)]
    pub fn gate<T: Float>(self, x: T) -> T {
        let half = T::of(0.5);
        match self {
            Activation::GeluErf => {
                half * (T::ONE + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Activation::GeluTanh => {
                let t = (T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_CUBIC) * x * x * x)).tanh();
                half * (T::ONE + t)
            }
            Activation::Relu => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
        }
    }

    /// `(act(x), act′(x))`. For GELU, `exp(-x²/2)` serves both the normal
    /// CDF (through erf) and the density.
    #[inline(always)]
    pub fn value_and_derivative<T: Float>(self, x: T) -> (T, T) {
        match self {
            Activation::GeluErf => {
                let half = T::of(0.5);
                let z = x * T::of(std::f64::consts::FRAC_1_SQRT_2);
                let e = (-(z * z)).exp();
                let s = half * (T::ONE + z.erf_given_exp(e));
                (x * s, s + x * T::of(0.398_942_280_401_432_7) * e)
            }
            _ => {
                let s = self.gate(x);
                (x * s, self.derivative_from_gate(x, s))
            }
        }
    }

    /// `act′(x)` given the gate `s = s(x)`.
    #[inline(always)]
    pub fn derivative_from_gate<T: Float>(self, x: T, s: T) -> T {
        let half = T::of(0.5);
        match self {
            // Φ(x) + x·φ(x)
            Activation::GeluErf => s + x * T::of(0.398_942_280_401_432_7) * (-half * x * x).exp(),
            Activation::GeluTanh => {
                let c = T::of(SQRT_2_OVER_PI);
                let a = T::of(GELU_CUBIC);
                let t = T::of(2.0) * s - T::ONE;
                s + half * x * (T::ONE - t * t) * c * (T::ONE + T::of(3.0) * a * x * x)
            }
            Activation::Relu => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_erf_are_accurate_in_f32() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (fast, exact) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(
                ((fast - exact) / exact).abs() < 5e-7,
                "exp({x}): {fast} vs {exact}"
            );
        }
        for i in -600..=600 {
            let x = i as f32 * 0.01;
            let (fast, exact) = (erf_f32(x) as f64, candle_core::cpu::erf::erf_f64(x as f64));
            assert!((fast - exact).abs() < 4e-7, "erf({x}): {fast} vs {exact}");
        }
    }

    #[test]
    fn two_mut_returns_the_asked_slices_in_either_order() {
        let mut flat: Vec<u32> = (0..10).collect();
        let (a, b) = two_mut(&mut flat, ((6, 3), (1, 2)));
        assert_eq!((&*a, &*b), (&[6, 7, 8][..], &[1, 2][..]));
        let (a, b) = two_mut(&mut flat, ((0, 2), (2, 1)));
        a[0] = 9;
        b[0] = 9;
        assert_eq!(&flat[..3], &[9, 1, 9]);
    }

    #[test]
    fn vectorised_reductions_match_plain_loops() {
        let x: Vec<f64> = (0..37).map(|i| ((i * 13) % 7) as f64 - 3.5).collect();
        let y: Vec<f64> = (0..37).map(|i| ((i * 5) % 11) as f64 * 0.25).collect();
        assert_eq!(sum(&x), x.iter().sum::<f64>());
        assert_eq!(
            dot(&x, &y),
            x.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>()
        );
        assert_eq!(max(&x), 2.5);
        let mut row = vec![1.0f64, 2.0, 3.0];
        softmax_in_place(&mut row);
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((row[2] - 3f64.exp() / z).abs() < 1e-15);
    }
}
