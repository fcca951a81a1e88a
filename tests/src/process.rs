//! Running external commands: every error names the command line and carries its stderr, every
//! run has a deadline, and background processes die with their guard.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    io::{Read, Write},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            let _ = write!(line, " {arg:?}");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    /// The command line.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Finished {
    /// `stdout` if the command succeeded; otherwise an error with the command line, the exit
    /// status and both outputs.
    pub fn checked(self) -> anyhow::Result<String> {
        if self.status.success() {
            return Ok(self.stdout);
        }
        bail!(
            "`{}` failed ({}): {}{}",
            self.command,
            self.status,
            self.stderr.trim(),
            if self.stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" [stdout: {}]", self.stdout.trim())
            }
        )
    }
}

/// Runs `cmd` to completion, feeding it `stdin`, and kills it if it is still running after
/// `timeout`. A non-zero exit is not an error here (see [`Finished::checked`]).
///
/// Output is drained on threads of its own, so a child that prints more than a pipe holds
/// (iperf3's JSON for many streams) cannot block on it.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> anyhow::Result<Finished> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .with_context(|| format!("writing the standard input of `{command}`"))?;
        // Dropping the pipe closes it: the child sees end of file.
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{command}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{command}` did not finish within {timeout:?}; killed it");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Finished {
        command,
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<thread::JoinHandle<String>> {
    pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error just ends the capture: the exit status tells what happened.
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

fn join_drain(handle: Option<thread::JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// A command built from `argv[0]` and the rest as arguments.
pub fn command<S: AsRef<OsStr>>(argv: &[S]) -> anyhow::Result<Command> {
    let (program, rest) = argv.split_first().context("an empty command line")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    Ok(cmd)
}

/// A process running in the background; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Background {
    child: Child,
    command: String,
}

impl Background {
    /// Starts `cmd` with standard input, output and error discarded unless the caller set them.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Background> {
        let command = describe(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{command}`"))?;
        Ok(Background { child, command })
    }

    /// The command line.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The underlying child, e.g. to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A binary of the workspace beside the running program (the lab and the benchmark driver sit
/// in the same target directory as `sidelane-agent`, `sidelane-controller`...).
pub fn binary_beside_me(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::current_exe()
        .context("finding the program's own path")?
        .with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace's binaries first (`cargo build --bins`; the \
             xtask commands do it)",
            path.display()
        );
    }
    Ok(path)
}

/// A binary of the workspace (`sidelane-agent`, `sidelane-controller`...) as an integration test
/// finds it: in the target directory above the test binary's `deps/`. Panics, naming the command
/// to run, when it has not been built.
///
/// # Panics
///
/// When the binary is missing: the message says how to build it.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join(name))
        .expect("the target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace's binaries (cargo build --bins) before this test",
        bin.display()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_quotes_arguments_with_spaces() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "a b", ""]);
        assert_eq!(describe(&cmd), r#"ip netns exec "a b" """#);
    }

    #[test]
    fn a_failed_command_reports_its_line_status_and_stderr() {
        let finished = run(
            Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]),
            None,
            Duration::from_secs(10),
        )
        .expect("sh runs");
        let err = finished
            .checked()
            .expect_err("exit 3 is a failure")
            .to_string();
        assert!(err.contains("sh -c"), "{err}");
        assert!(err.contains("oops"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("stdout: out"), "{err}");
    }

    #[test]
    fn standard_input_reaches_the_command() {
        let out = run(
            &mut Command::new("cat"),
            Some(b"hello"),
            Duration::from_secs(10),
        )
        .expect("cat runs")
        .checked()
        .expect("cat succeeds");
        assert_eq!(out, "hello");
    }

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let started = Instant::now();
        let err = run(
            Command::new("sleep").arg("30"),
            None,
            Duration::from_millis(200),
        )
        .expect_err("sleep 30 outlives 200 ms");
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_background_process_dies_with_its_guard() {
        let mut bg = Background::spawn(Command::new("sleep").arg("30")).expect("sleep starts");
        let pid = bg.id();
        assert!(bg.is_running());
        drop(bg);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived its guard"
        );
    }
}
