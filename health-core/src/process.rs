//! Running an operator's program (a check script, a repair command) with a
//! deadline, a clean environment and capped output: the one runner the
//! command checker and the command executor share (feature `process`).
//!
//! The program runs in a process group of its own. When it does not finish
//! in time (or the future running it is dropped), the whole group is
//! killed, so a script's background children do not outlive it and pile up
//! on the host. Its environment holds only `PATH`, `LANG`, `HOME` and what
//! the caller adds: never the agent's secrets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), health_core::process::RunError> {
//! use std::time::Duration;
//! use health_core::process::Program;
//!
//! let done = Program::new("/usr/local/bin/check-disk", ["--mount", "/var"])
//!     .env("NODE_NAME", "worker-1")
//!     .timeout(Duration::from_secs(10))
//!     .run()
//!     .await?;
//! println!("exit {:?}: {}", done.status.code(), done.output());
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A program to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    max_output: usize,
}

/// A program that ran to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output, cut to the limit (with a note of what was cut).
    pub stdout: String,
    /// Its standard error, likewise.
    pub stderr: String,
}

impl Finished {
    /// Both streams as one line for a log or an error: `stdout | stderr: ...`.
    #[must_use]
    pub fn output(&self) -> String {
        match (self.stdout.is_empty(), self.stderr.is_empty()) {
            (false, false) => format!("{} | stderr: {}", self.stdout, self.stderr),
            (false, true) => self.stdout.clone(),
            (true, false) => self.stderr.clone(),
            (true, true) => String::new(),
        }
    }
}

/// A program that could not be run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// It could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its timeout; it and its process group were killed.
    #[error("{program} did not finish within {after:?} and was killed with its process group")]
    TimedOut {
        /// The program.
        program: String,
        /// The timeout.
        after: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Program {
    /// `program` with `args`; timeout 30 s, 4 KiB of output kept per stream.
    pub fn new<A: Into<OsString>>(program: impl Into<PathBuf>, args: impl IntoIterator<Item = A>) -> Self {
        Program {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            timeout: Duration::from_secs(30),
            max_output: 4096,
        }
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the bytes of output kept per stream (the rest is read and dropped,
    /// so the program never blocks on a full pipe).
    #[must_use]
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The program's path as shown in messages.
    #[must_use]
    pub fn display(&self) -> String {
        self.program.display().to_string()
    }

    /// Runs the program to its end, or kills its process group at the timeout.
    pub async fn run(&self) -> Result<Finished, RunError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k == "PATH" || k == "LANG" || k == "HOME"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn { program: self.display(), source })?;
        // Kills the group if this future ends early (timeout or cancellation).
        let group = Group(child.id());
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(RunError::Wait { program: self.display(), source: std::io::Error::other("no output pipes") });
        };
        let max = self.max_output;
        let run = async {
            let ((o, ot), (e, et), status) = tokio::join!(read_capped(out, max), read_capped(err, max), child.wait());
            (status, show(&o, ot), show(&e, et))
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok((status, stdout, stderr)) => {
                let status = status.map_err(|source| RunError::Wait { program: self.display(), source })?;
                group.disarm();
                Ok(Finished { status, stdout, stderr })
            }
            Err(_) => {
                drop(group);
                let _ = child.wait().await;
                Err(RunError::TimedOut { program: self.display(), after: self.timeout })
            }
        }
    }
}

/// A child's process group, killed when dropped unless disarmed.
struct Group(Option<u32>);

impl Group {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pid = self.0.and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // The group may be gone already (ESRCH): nothing to do then.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Reads a whole stream, keeping at most `max` bytes; returns them and the total.
async fn read_capped(mut r: impl AsyncRead + Unpin, max: usize) -> (Vec<u8>, usize) {
    let (mut kept, mut total, mut buf) = (Vec::new(), 0usize, [0u8; 8192]);
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, total)
}

fn show(kept: &[u8], total: usize) -> String {
    let mut s = String::from_utf8_lossy(kept).trim_end().to_owned();
    if total > kept.len() {
        s.push_str(&format!(" [... {} more bytes]", total - kept.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Program {
        Program::new("/bin/sh", ["-c", script])
    }

    #[tokio::test]
    async fn output_exit_code_and_environment() {
        let done = sh("echo out; echo err >&2; echo \"$NODE_NAME:${CIVO_API_KEY:-none}\"; exit 3")
            .env("NODE_NAME", "n1")
            .run()
            .await
            .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, "out\nn1:none");
        assert_eq!(done.output(), "out\nn1:none | stderr: err");
        let big = sh("head -c 100000 /dev/zero | tr '\\0' y").max_output(16).run().await.unwrap();
        assert_eq!(big.stdout, "yyyyyyyyyyyyyyyy [... 99984 more bytes]");
        assert!(matches!(Program::new("/nonexistent", [""; 0]).run().await, Err(RunError::Spawn { .. })));
    }

    /// A timed-out script's background children die with it.
    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("nh-pgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let err = sh(&script).timeout(Duration::from_millis(300)).run().await.unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild was killed with the group: it is gone, or its pidfd
        // turns readable (it exited) at once. A live process never would.
        if let Ok(fd) = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::PidfdFlags::empty(),
        ) {
            // `new` is deprecated for arbitrary fds; this one is owned (an OwnedFd).
            #[allow(deprecated)]
            let fd = tokio::io::unix::AsyncFd::new(fd).unwrap();
            let exited = tokio::time::timeout(Duration::from_secs(10), fd.readable()).await;
            assert!(exited.is_ok(), "the background child {pid} outlived the timed-out script");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
