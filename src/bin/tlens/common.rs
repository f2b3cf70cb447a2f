//! Helpers shared by the commands: the backend option, JSON output, panic and signal hygiene.

use transferlens::Result;

/// A panic is a bug: report it in one line, without Rust's panic message and backtrace.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("tlens: internal error (please report): {info}");
    }));
}

/// Signals, as Unix tools take them: a closed stdout (`tlens inspect X | head -1`) ends the
/// process quietly by SIGPIPE instead of a failed print; SIGINT, SIGTERM and SIGHUP first remove
/// the temporary file of an output being written and end a running eval server (removing its
/// candidate files), then end the process by the same signal.
///
/// Call first in `main`, before any thread starts: the three signals are blocked in every thread
/// and taken by one thread that waits for them.
pub fn handle_signals() {
    // SAFETY: plain libc calls on a sigset_t this function owns; SIG_DFL is a valid
    // disposition for SIGPIPE.
    let set = unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: set is a valid signal set and sig a valid place for the result.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
        transferlens::params::abandon_unfinished_writes();
        crate::eval_server::abandon();
        // SAFETY: restoring the default action and unblocking the signal in this thread, then
        // raising it here, ends the process with the signal's status, as if never handled.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut one: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
            libc::raise(sig);
        }
    });
}

/// Set by the signal thread when it starts ending the process.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Waits for the end by signal when one arrived: the cleanup it does (ending an eval server, say)
/// can make the main thread fail, and that failure must not end the process first, with a
/// misleading message and status.
pub fn wait_if_signalled() {
    while SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("a JSON value serialises"));
}

/// A float for JSON: finite values as numbers; analyses never hand non-finite values here.
pub fn json_f64(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
}

/// `--backend`: where the arithmetic runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BackendArg {
    /// CUDA when a driver and a device are present, else the CPU.
    Auto,
    Cpu,
    /// CUDA device 0; an error (saying what is missing) without one.
    Cuda,
}

impl BackendArg {
    pub fn context(self) -> Result<transferlens::Context> {
        use transferlens::BackendChoice;
        let choice = match self {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Cpu => BackendChoice::Cpu,
            BackendArg::Cuda => BackendChoice::Cuda,
        };
        transferlens::Context::new(choice, 0)
    }
}
