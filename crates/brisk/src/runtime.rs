//! Process set-up for training: the thread pool and the allocator.
//!
//! A training step allocates and frees the same large activation and
//! gradient buffers every time. With its defaults, glibc's allocator serves
//! buffers above 128 KiB-32 MiB (adaptive) with fresh `mmap`s and returns
//! freed heap tops to the kernel, so every step pays page faults and page
//! clearing for memory it just gave back. Keeping those buffers in the heap
//! measured +20% tokens/s on `mini` (bench/mlm_step.sh, 2 threads) at the
//! same peak RSS; mimalloc measured +12% with 18% more RSS.

/// Tells glibc's allocator to keep large buffers for reuse. Call it once,
/// first thing in `main`; a no-op on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        // Buffers up to 32 MiB (glibc's largest allowed threshold) come from
        // the heap rather than from mmap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Never trim the heap top back to the kernel below 1 GiB, and grow
        // it in steps of 64 MiB.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Lets a closed pipe end the process quietly, as it ends other Unix tools
/// (`brisk senses eval | head`): Rust ignores SIGPIPE, so printing to a
/// closed pipe would otherwise panic. Call it once, first thing in `main`.
pub fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action before any other thread
    // exists has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Sets up the global rayon pool with `threads` workers (every core when
/// `None`), with stacks large enough for candle's recursive graph walk.
pub fn init_pool(threads: Option<usize>) -> Result<(), rayon::ThreadPoolBuildError> {
    let mut builder = rayon::ThreadPoolBuilder::new().stack_size(64 << 20);
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    builder.build_global()
}

/// Runs `f` on a worker of the global pool, and waits for it.
///
/// A parallel loop started from outside the pool hands its work to the
/// workers and puts the caller to sleep until they finish; started from a
/// worker, it runs on that worker while the others steal. A training step
/// starts hundreds of parallel loops and products, so running the whole
/// step on a worker saves a sleep and a wake-up on each of them.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // `rayon::scope` runs its body on a worker when called from outside.
    rayon::scope(|_| f())
}

thread_local! {
    /// Set while [`contain_panic`] runs on this thread.
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `Err` with the panic's
/// message, and keeping that message off stderr. For calls into libraries
/// that panic on input they did not expect (the tokenizers crate does on
/// some malformed `tokenizer.json` files), so that bad input is an error
/// naming the file, never a crash.
pub fn contain_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
    let outer = CONTAINING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(outer));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error_with_its_message() {
        assert_eq!(contain_panic(|| 3), Ok(3));
        let err = contain_panic(|| -> u8 { panic!("bad input {}", 7) }).unwrap_err();
        assert_eq!(err, "bad input 7");
    }
}
