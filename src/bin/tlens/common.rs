//! Helpers shared by the commands: the backend option, JSON output, panic hygiene.

use transferlens::Result;

/// A panic is a bug: report it in one line, without Rust's panic message and backtrace.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("tlens: internal error (please report): {info}");
    }));
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
