//! Running the real `lockstep` binary as an operator or a script would:
//! one invocation's exit code, stdout and stderr, with the checks the CLI
//! tests share.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::BIN;

/// What one CLI invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    #[track_caller]
    pub fn json(self) -> Value {
        let run = self.ok();
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", run.stdout))
    }

    /// Exit `code`, nothing on stdout, an `error: ` line on stderr.
    #[track_caller]
    pub fn fails(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:#?}");
        assert!(self.stderr.starts_with("error: "), "{self:#?}");
        self
    }

    /// The table row (line) whose first word is `first`.
    #[track_caller]
    pub fn row(&self, first: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row for {first:?} in:\n{}", self.stdout))
    }

    /// The value of a `field:  value` line.
    #[track_caller]
    pub fn field(&self, name: &str) -> &str {
        let key = format!("{name}:");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} field in:\n{}", self.stdout))
    }
}

/// Starts `lockstep <args>` with `LOCKSTEP_SERVER=server` and
/// `LOCKSTEP_TOKEN=token` (none: no token at all), stdout and stderr piped
/// (so stdout is not a terminal).
pub fn spawn(server: &str, token: Option<&str>, args: &[&str]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("LOCKSTEP_TOKEN")
        .env_remove("LOCKSTEP_TOKEN_FILE");
    if let Some(t) = token {
        cmd.env("LOCKSTEP_TOKEN", t);
    }
    cmd.args(args)
        .env("LOCKSTEP_SERVER", server)
        .env("LOCKSTEP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockstep")
}

/// Reads `r` to its end on a thread.
pub fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits (at most `secs` seconds) for `child` to exit; kills it and panics
/// otherwise.
pub fn wait_exit(child: &mut Child, secs: u64, what: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for lockstep") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    status.code().expect("exited, not killed by a signal")
}

/// Runs `lockstep <args>` against `server` (with `token`, if any) for at
/// most 60 s, and echoes what it printed to the test's output.
pub fn run_cli(server: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut child = spawn(server, token, args);
    let out = drain(child.stdout.take().expect("stdout piped"));
    let err = drain(child.stderr.take().expect("stderr piped"));
    let code = wait_exit(&mut child, 60, &format!("lockstep {args:?}"));
    let run = Run {
        code,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    eprintln!(
        "$ lockstep {}\n{}{}",
        args.join(" "),
        run.stdout,
        run.stderr
    );
    run
}

/// Polls `check` (blocking) until it gives a value, for at most `secs`.
pub fn eventually_blocking<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
