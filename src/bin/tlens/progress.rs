//! The one progress display of `tlens`: a line on stderr for work that runs longer than
//! [`QUIET_FOR`].
//!
//! On a terminal the line is rewritten in place, at most every [`REDRAW`], and erased when the
//! work ends (or [`Progress::clear`] makes room for other output). Elsewhere (a log, a pipe)
//! nothing is printed unless the command asks for a log ([`Log`]). A failed write to stderr is
//! ignored: progress is not the result.

use std::io::{IsTerminal, Write};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a run stays silent on a terminal: a short command prints no progress.
const QUIET_FOR: Duration = Duration::from_secs(2);
/// The shortest time between two redraws of the terminal line.
const REDRAW: Duration = Duration::from_millis(200);

/// What a command prints when stderr is not a terminal.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Log {
    /// Nothing.
    Off,
    /// A line as each step starts, from the first one: the phases of a long run, for reading
    /// later.
    Steps,
    /// After the quiet time, a line each time the work passes another tenth.
    Tenths,
}

/// The state of the line, shared with the thread that redraws it for [`Progress::during`].
struct Line<W> {
    out: W,
    terminal: bool,
    log: Log,
    started: Instant,
    quiet_for: Duration,
    what: String,
    fraction: Option<f64>,
    /// When the terminal line was last drawn, if it is on the screen.
    drawn: Option<Instant>,
    /// The last step or tenth written to the log.
    logged: Option<(String, usize)>,
}

impl<W: Write> Line<W> {
    fn update(&mut self, what: &str, fraction: Option<f64>) {
        if self.what != what {
            what.clone_into(&mut self.what);
        }
        self.fraction = fraction.map(|f| f.clamp(0.0, 1.0));
        let elapsed = self.started.elapsed();
        if self.terminal {
            let due = self.drawn.is_none_or(|t| t.elapsed() >= REDRAW);
            if elapsed >= self.quiet_for && due {
                self.draw();
            }
            return;
        }
        let tenth = self.fraction.map_or(0, |f| (f * 10.0) as usize);
        let new = match self.log {
            Log::Off => false,
            Log::Steps => self.logged.as_ref().is_none_or(|(step, _)| *step != self.what),
            Log::Tenths => elapsed >= self.quiet_for && tenth > self.logged.as_ref().map_or(0, |(_, t)| *t),
        };
        if new {
            let _ = writeln!(self.out, "[{:>5.1} s] {}", elapsed.as_secs_f64(), self.body());
            self.logged = Some((self.what.clone(), tenth));
        }
    }

    /// `what`, and the share done when it is known.
    fn body(&self) -> String {
        match self.fraction {
            Some(f) => format!("{} ({:.0}%)", self.what, f * 100.0),
            None => self.what.clone(),
        }
    }

    fn draw(&mut self) {
        let _ = write!(self.out, "\r\x1b[2K{} [{:.0} s]", self.body(), self.started.elapsed().as_secs_f64());
        let _ = self.out.flush();
        self.drawn = Some(Instant::now());
    }

    /// Erases the terminal line, if it is drawn.
    fn clear(&mut self) {
        if self.drawn.take().is_some() {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
        }
    }
}

/// A progress line; erased when dropped.
pub struct Progress<W: Write + Send + 'static = std::io::Stderr> {
    line: Arc<Mutex<Line<W>>>,
    /// For [`Progress::during`]: the redrawing thread, stopped by dropping the sender.
    ticker: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Progress {
    /// For work that reports its steps through [`Progress::update`]; `log` says what to print
    /// when stderr is not a terminal.
    pub fn new(log: Log) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress::to(std::io::stderr(), terminal, log, QUIET_FOR)
    }

    /// For one call that reports nothing until it returns: on a terminal, `what` and the time
    /// spent, redrawn while the returned value lives; nothing elsewhere.
    pub fn during(what: impl Into<String>) -> Progress {
        let mut progress = Progress::new(Log::Off);
        progress.update(&what.into(), None);
        if !progress.lock().terminal {
            return progress;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let line = Arc::clone(&progress.line);
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REDRAW) {
                let mut line = line.lock().unwrap_or_else(PoisonError::into_inner);
                let what = line.what.clone();
                line.update(&what, None);
            }
        });
        progress.ticker = Some((stop, thread));
        progress
    }
}

impl<W: Write + Send + 'static> Progress<W> {
    fn to(out: W, terminal: bool, log: Log, quiet_for: Duration) -> Progress<W> {
        let line = Line {
            out,
            terminal,
            log,
            started: Instant::now(),
            quiet_for,
            what: String::new(),
            fraction: None,
            drawn: None,
            logged: None,
        };
        Progress { line: Arc::new(Mutex::new(line)), ticker: None }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Line<W>> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The work is at step `what`, with `fraction` of it done when that is known.
    pub fn update(&self, what: &str, fraction: Option<f64>) {
        self.lock().update(what, fraction);
    }

    /// Erases the terminal line so that other output can follow; the next update draws it
    /// again.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl<W: Write + Send + 'static> Drop for Progress<W> {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            drop(stop);
            let _ = thread.join();
        }
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a display wrote, after `steps` of (what, fraction) and its end.
    fn output(terminal: bool, log: Log, quiet_for: Duration, steps: &[(&str, Option<f64>)]) -> String {
        let progress = Progress::to(Vec::new(), terminal, log, quiet_for);
        for (what, fraction) in steps {
            progress.update(what, *fraction);
        }
        progress.clear(); // as dropping it does
        let out = progress.lock().out.clone();
        String::from_utf8(out).unwrap()
    }

    fn tenths_of(total: usize) -> Vec<(&'static str, Option<f64>)> {
        (1..=total).map(|k| ("reading", Some(k as f64 / total as f64))).collect()
    }

    #[test]
    fn a_short_run_prints_nothing_on_a_terminal_nor_in_a_log_of_tenths() {
        let hour = Duration::from_secs(3600);
        for (terminal, log) in [(true, Log::Tenths), (false, Log::Tenths), (false, Log::Off)] {
            assert_eq!(output(terminal, log, hour, &tenths_of(40)), "", "{terminal} {log:?}");
        }
        assert_eq!(output(false, Log::Off, Duration::ZERO, &tenths_of(40)), "", "no log unless asked");
    }

    #[test]
    fn a_log_has_one_line_per_tenth_or_per_step() {
        let log = output(false, Log::Tenths, Duration::ZERO, &tenths_of(40));
        let percents: Vec<&str> = log.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
        assert_eq!(
            percents,
            ["(10%)", "(20%)", "(30%)", "(40%)", "(50%)", "(60%)", "(70%)", "(80%)", "(90%)", "(100%)"]
        );
        assert!(log.lines().all(|l| l.starts_with('[') && l.contains(" s] reading (")), "{log}");
        // Steps are logged from the first, even within the quiet time, each once.
        let steps = [("one", Some(0.0)), ("one", Some(0.3)), ("two", Some(0.5)), ("two", Some(0.9)), ("three", None)];
        let log = output(false, Log::Steps, Duration::from_secs(3600), &steps);
        let names: Vec<&str> = log.lines().map(|l| l.split("] ").nth(1).unwrap()).collect();
        assert_eq!(names, ["one (0%)", "two (50%)", "three"], "{log}");
        assert!(!log.contains('\r'), "{log}");
    }

    #[test]
    fn a_terminal_line_is_rewritten_at_a_limited_rate_and_erased_at_the_end() {
        let tty = output(true, Log::Off, Duration::ZERO, &tenths_of(40));
        // Forty updates in far less than REDRAW: the first is drawn, the others wait.
        assert_eq!(tty.matches("\r\x1b[2Kreading (").count(), 1, "{tty:?}");
        assert!(tty.starts_with("\r\x1b[2Kreading (2%) [0 s]"), "{tty:?}");
        assert!(tty.ends_with(" s]\r\x1b[2K"), "erased at the end: {tty:?}");
        assert!(!tty.contains('\n'), "{tty:?}");
        let progress = Progress::to(Vec::new(), true, Log::Off, Duration::ZERO);
        for k in 0..3 {
            progress.update("slow", Some(k as f64 / 2.0));
            std::thread::sleep(REDRAW);
        }
        let drawn = progress.lock().out.clone();
        let drawn = String::from_utf8(drawn).unwrap();
        assert_eq!(drawn.matches("\r\x1b[2Kslow (").count(), 3, "{drawn:?}");
        assert!(drawn.ends_with("slow (100%) [0 s]"), "{drawn:?}");
    }
}
