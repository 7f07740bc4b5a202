//! Our parallel loops on libtorch's own CPU threads.
//!
//! libtorch runs its CPU kernels on an OpenMP team; after each parallel region those threads
//! spin for a while before they sleep. A second pool of our own (rayon) working between two
//! libtorch operations would compete with the spinning team for the same cores, which is what
//! the fast perturbation stream does once per weight matrix in every forward pass. So the loops
//! run on the OpenMP team itself, through the `GOMP_parallel` entry point of the libgomp that
//! libtorch loaded, with libtorch's intra-op thread count. Where there is no libgomp (a libtorch
//! built with another thread pool), rayon takes over.
//!
//! Threads take the next index from a shared counter until none is left, rather than a fixed
//! share each: on a shared machine one thread of the team is often late (woken from its sleep,
//! or descheduled by the host), and with a fixed split the others would wait for it at the end
//! of every region. Every index's result is independent of which thread computes it, so results
//! depend neither on the thread count nor on the scheduling.

use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// libgomp's `GOMP_parallel(fn, data, num_threads, flags)`: runs `fn(data)` on every thread of
/// a team and returns when all have finished.
type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

fn gomp_parallel() -> Option<Parallel> {
    static PARALLEL: OnceLock<Option<Parallel>> = OnceLock::new();
    *PARALLEL.get_or_init(|| {
        // SAFETY: dlsym on the process's global scope; the symbol, when found, has this signature
        // (libgomp's public ABI).
        unsafe {
            let found = libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr());
            (!found.is_null()).then(|| std::mem::transmute::<*mut c_void, Parallel>(found))
        }
    })
}

struct Job<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    count: usize,
    /// The next index no thread has taken.
    next: AtomicUsize,
}

extern "C" fn run_job(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `for_each_index` keeps alive until GOMP_parallel returns.
    let job = unsafe { &*(data as *const Job) };
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.count {
            break;
        }
        (job.work)(i);
    }
}

/// Runs `work(i)` for every i in 0..count on libtorch's intra-op threads. `work` must not
/// panic (a panic cannot unwind out of an OpenMP thread: the process aborts).
pub fn for_each_index(count: usize, work: &(dyn Fn(usize) + Sync)) {
    let threads = (tch::get_num_threads().max(1) as usize).min(count);
    if threads <= 1 {
        (0..count).for_each(work);
        return;
    }
    match gomp_parallel() {
        Some(parallel) => {
            let job = Job { work, count, next: AtomicUsize::new(0) };
            // SAFETY: `run_job` only reads `job` (its counter atomically), which outlives the call;
            // GOMP_parallel returns after every thread of the team has finished.
            unsafe { parallel(run_job, &job as *const Job as *mut c_void, threads as c_uint, 0) }
        }
        None => {
            use rayon::prelude::*;
            (0..count).into_par_iter().for_each(work);
        }
    }
}

/// A pointer that may cross threads: for handing disjoint chunks of one slice to the team.
pub(crate) struct SharedMut<T>(*mut T);

// SAFETY: users only form disjoint sub-slices from it (see `for_chunks`).
unsafe impl<T: Send> Sync for SharedMut<T> {}
unsafe impl<T: Send> Send for SharedMut<T> {}

/// Runs `f(i, chunk)` over the `size`-element chunks of `data` on libtorch's threads; on the
/// calling thread when there is one chunk.
pub fn for_chunks<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let len = data.len();
    let count = len.div_ceil(size.max(1));
    if count <= 1 {
        f(0, data);
        return;
    }
    let base = SharedMut(data.as_mut_ptr());
    let base = &base;
    for_each_index(count, &|i| {
        let start = i * size;
        let end = (start + size).min(len);
        // SAFETY: chunk i covers start..end, disjoint from every other index's chunk, inside `data`,
        // which stays mutably borrowed for the whole call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        f(i, chunk);
    });
}

/// [`for_chunks`] over two slices of equal length at once: `f(i, a_chunk, b_chunk)` with the same
/// bounds in both.
pub fn for_chunk_pairs<T: Send>(
    a: &mut [T],
    b: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) {
    assert_eq!(a.len(), b.len(), "paired slices have one length");
    let second = SharedMut(b.as_mut_ptr());
    let second = &second;
    for_chunks(a, size, |i, chunk| {
        // SAFETY: the same bounds as `chunk` in `b`, which has a's length and stays mutably
        // borrowed for the whole call: disjoint between indices.
        let other = unsafe { std::slice::from_raw_parts_mut(second.0.add(i * size), chunk.len()) };
        f(i, chunk, other);
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_chunk_once_on_any_thread_count() {
        for threads in [1, 2, 3] {
            tch::set_num_threads(threads);
            let mut data: Vec<u64> = vec![0; 10_007];
            super::for_chunks(&mut data, 1000, |i, chunk| {
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v += (i * 1000 + j) as u64;
                }
            });
            assert!(data.iter().enumerate().all(|(k, &v)| v == k as u64), "{threads} threads");
        }
    }
}
