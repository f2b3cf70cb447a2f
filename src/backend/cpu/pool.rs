//! The threads of the CPU backend after a `fork`.
//!
//! The CPU backend runs on rayon's global pool (faer's GEMM too). A process that forks after the
//! pool started copies the pool's state into the child without its threads, so the child's first
//! parallel call would wait forever for workers that do not exist. [`fork_safe`] wraps every call
//! of the C ABI: in a forked child it first makes the calling thread a pool of its own, of that
//! one thread, so the child's work runs serially on the caller's thread (a host's callbacks keep
//! running on the thread that called, as in the parent). No thread is spawned for it, so a child
//! that forks again stays sound, and no thread is left waiting. A child that wants every core
//! should `exec` (a fresh process starts its own pool) rather than compute after a bare `fork`.

use std::sync::OnceLock;

/// The process that first called into the library; any other process id seen later is a child
/// forked after that first call (possibly with rayon's global pool running in its parent).
static FIRST_PID: OnceLock<u32> = OnceLock::new();

/// Whether this process is a child forked after the library was first used.
pub(crate) fn in_forked_child() -> bool {
    let pid = std::process::id();
    *FIRST_PID.get_or_init(|| pid) != pid
}

/// Runs `body` where rayon's parallel calls cannot wait for threads lost in a `fork`: as is in
/// the process that first used the library; in a forked child, on a pool made of the calling
/// thread alone (see the module docs).
pub(crate) fn fork_safe<T>(body: impl FnOnce() -> T) -> T {
    if in_forked_child() && rayon::current_thread_index().is_none() {
        // The calling thread becomes worker 0 of a pool of one thread: rayon's joins and faer's
        // products then run in place on it instead of being sent to the inherited pool. Rayon
        // keeps the thread registered for its lifetime (the pool is leaked by design), so this
        // runs once per thread.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build();
        match pool {
            Ok(pool) => std::mem::forget(pool),
            // Building a pool of the current thread spawns nothing; failing here would be a bug in
            // rayon's contract, and the call below would then wait, so say so loudly.
            Err(e) => panic!("could not make the calling thread a pool after fork: {e}"),
        }
    }
    body()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// A child forked after the global pool ran finishes a parallel sum on its own thread.
    #[test]
    fn a_forked_child_computes_in_parallel_code_without_the_parent_pool() {
        let sum = |k: u64| fork_safe(|| (0..k).into_par_iter().map(|i| i * i).sum::<u64>());
        let expected = sum(100_000);
        assert_eq!(expected, (0..100_000u64).map(|i| i * i).sum::<u64>());
        // SAFETY: the child calls only the code under test and `_exit`; `alarm` makes a hang end
        // the child with SIGALRM instead of holding the test forever.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: alarm and _exit are async-signal-safe and have no preconditions.
            unsafe { libc::alarm(20) };
            let ok = sum(100_000) == expected && rayon::current_num_threads() == 1;
            // SAFETY: as above; _exit skips the test harness's atexit work in the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "the child did not exit normally (status {status:#x}): it hung or crashed");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child's sum was wrong or ran on more than one thread");
    }
}
