//! `--eval-server CMD`: the metrics of candidate models from a process in any framework.
//!
//! CMD starts once, through `sh -c`, in a process group of its own. For each candidate the
//! library's set is written as a safetensors file in a private temporary folder and
//! `{"checkpoint": "PATH"}` goes to the process's stdin as one line; the process answers one
//! line on stdout, `{"loss": L, "error": E}` (a metric that the command does not need may be
//! left out) or `{"failure": "message"}`. Its stderr is tlens's. A failure, an exit, a line that
//! is not such an answer, or no answer within the timeout is an error naming the candidate file
//! and quoting the server; the process group is then killed. Each candidate file is removed once
//! answered, and the folder when the server is dropped.

use crate::progress::{Log, Progress};
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use transferlens::eval::{Evaluator, Metrics};
use transferlens::{Context, Error, ParamSet, Result};

/// The server options every evaluating command shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The evaluator: a shell command that reads {"checkpoint": PATH} lines on stdin and answers
    /// each with one {"loss": L, "error": E} or {"failure": MESSAGE} line on stdout.
    #[arg(long, value_name = "CMD")]
    eval_server: String,
    /// Seconds to wait for each answer (the first includes the server's start).
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0, value_parser = parse_timeout)]
    eval_timeout: f64,
}

fn parse_timeout(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// Which metrics a command reads from the answers.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    pub loss: bool,
    pub error: bool,
}

/// A running evaluation server; see the module docs.
pub struct EvalServer {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<std::io::Result<String>>,
    folder: PathBuf,
    timeout: Duration,
    needs: Needs,
    evaluations: usize,
    progress: Progress,
}

/// The running server's process group and candidates' folder, for the signal handler: a SIGINT
/// or SIGTERM ends the server and removes the folder before tlens ends.
static RUNNING: std::sync::Mutex<Option<(libc::pid_t, PathBuf)>> = std::sync::Mutex::new(None);

/// Ends the running server, if any, and removes its candidates' folder (called on a signal).
pub fn abandon() {
    let running = RUNNING.lock().map(|mut r| r.take()).unwrap_or(None);
    if let Some((group, folder)) = running {
        // SAFETY: a plain kill(2) of the process group the server was started in.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(folder);
    }
}

/// The longest part of a server's line quoted in an error.
const QUOTED: usize = 300;

fn quote(line: &str) -> String {
    let mut q: String = line.chars().take(QUOTED).collect();
    if q.len() < line.len() {
        q.push_str("...");
    }
    format!("{q:?}")
}

impl EvalServer {
    pub fn start(args: &ServerArgs, needs: Needs) -> Result<EvalServer> {
        let folder = std::env::temp_dir().join(format!(
            "tlens-eval-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&folder)
                .map_err(|e| Error::Io(format!("{}: cannot create the candidates' folder: {e}", folder.display())))?;
        }
        // A server that exits early must not end tlens by SIGPIPE when tlens writes to it: the
        // write fails instead, and the error says what happened. Restored in Drop.
        // SAFETY: setting a standard disposition of a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(&args.eval_server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&folder);
                return Err(Error::Io(format!("cannot start the eval server {:?}: {e}", args.eval_server)));
            }
        };
        if let Ok(mut r) = RUNNING.lock() {
            *r = Some((child.id() as libc::pid_t, folder.clone()));
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let end = line.is_err();
                if tx.send(line).is_err() || end {
                    return;
                }
            }
        });
        Ok(EvalServer {
            command: args.eval_server.clone(),
            stdin: child.stdin.take(),
            child,
            answers,
            folder,
            timeout: Duration::from_secs_f64(args.eval_timeout),
            needs,
            evaluations: 0,
            progress: Progress::new(Log::Off),
        })
    }

    /// Evaluations answered so far.
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }

    fn fail(&mut self, candidate: &Path, what: String) -> Error {
        self.kill();
        Error::Callback(format!("eval server {:?}, checkpoint {}: {what}", self.command, candidate.display()))
    }

    /// The server's exit status, once it has exited (waiting a moment for it).
    fn exit_status(&mut self) -> String {
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        "still running".into()
    }

    fn kill(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: a plain kill(2) of the process group the server was started in.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }

    fn evaluate_one(&mut self, set: &ParamSet) -> Result<Metrics> {
        let candidate = self.folder.join(format!("candidate-{}.safetensors", self.evaluations + 1));
        set.save(&candidate)?;
        let result = self.ask(&candidate);
        let _ = std::fs::remove_file(&candidate);
        let metrics = result?;
        self.evaluations += 1;
        let shown = |need: bool, v: f64| if need { format!("{v:.6}") } else { "-".into() };
        self.progress.update(
            &format!(
                "tlens: evaluation {}: loss {}, error {}",
                self.evaluations,
                shown(self.needs.loss, metrics.loss),
                shown(self.needs.error, metrics.error)
            ),
            None,
        );
        Ok(metrics)
    }

    fn ask(&mut self, candidate: &Path) -> Result<Metrics> {
        let request = serde_json::json!({"checkpoint": candidate.display().to_string()}).to_string() + "\n";
        let sent = match self.stdin.as_mut() {
            Some(w) => w.write_all(request.as_bytes()).and_then(|()| w.flush()),
            None => Err(std::io::Error::other("the server's stdin is closed")),
        };
        if let Err(e) = sent {
            let status = self.exit_status();
            return Err(self.fail(candidate, format!("cannot send the request ({e}); the server exited: {status}")));
        }
        let line = match self.answers.recv_timeout(self.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.fail(candidate, format!("cannot read the answer: {e}"))),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let t = self.timeout.as_secs_f64();
                return Err(
                    self.fail(candidate, format!("no answer within {t} s (--eval-timeout); the server was killed"))
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.exit_status();
                return Err(self.fail(candidate, format!("the server exited without answering ({status})")));
            }
        };
        self.parse(candidate, &line)
    }

    fn parse(&mut self, candidate: &Path, line: &str) -> Result<Metrics> {
        let malformed = |why: &str| {
            format!(
                "the answer {} is not {{\"loss\": L, \"error\": E}} or {{\"failure\": MESSAGE}} on one line: {why}",
                quote(line)
            )
        };
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Err(self.fail(candidate, malformed(&format!("not JSON ({e})")))),
        };
        let Some(obj) = value.as_object() else { return Err(self.fail(candidate, malformed("not a JSON object"))) };
        if let Some(f) = obj.get("failure") {
            let words = f.as_str().map_or_else(|| f.to_string(), str::to_string);
            return Err(self.fail(candidate, format!("the server failed: {words}")));
        }
        let metric = |key: &str, needed: bool| -> std::result::Result<f64, String> {
            match obj.get(key) {
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(x),
                    _ => Err(malformed(&format!("{key:?} is not a finite number"))),
                },
                None if needed => Err(malformed(&format!("{key:?} is missing, and this command needs it"))),
                // Not needed: a placeholder that no figure reads.
                None => Ok(0.0),
            }
        };
        let (loss, error) = match (metric("loss", self.needs.loss), metric("error", self.needs.error)) {
            (Ok(l), Ok(e)) => (l, e),
            (Err(m), _) | (_, Err(m)) => return Err(self.fail(candidate, m)),
        };
        Ok(Metrics { loss, error, accuracy: 1.0 - error })
    }
}

impl Evaluator for EvalServer {
    fn evaluate(&mut self, _ctx: &Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        sets.iter().map(|s| self.evaluate_one(s)).collect()
    }
}

impl Drop for EvalServer {
    fn drop(&mut self) {
        // End of input asks the server to stop; one that does not within a few seconds is killed.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        if let Ok(mut r) = RUNNING.lock() {
            *r = None;
        }
        let _ = std::fs::remove_dir_all(&self.folder);
        // SAFETY: restoring the disposition `handle_signals` set.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
}
