//! Starting processes inside a namespace and a cgroup, and owning them until they are dead.
//!
//! A child enters its cgroup and network namespace between `fork` and `exec` (in
//! `Command::pre_exec`), so it never runs a single instruction of the target program outside
//! them. Only raw system calls run there: the paths are prepared before the fork.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::netns::Netns;

/// Makes `cmd` join `cgroup` (if any) and enter `netns` (if any) before it execs.
///
/// # Panics
/// When the namespace file cannot be opened.
pub fn enter(cmd: &mut Command, netns: Option<&Netns>, cgroup: Option<&Cgroup>) {
    enter_paths(
        cmd,
        netns.map(Netns::path).as_deref(),
        cgroup.map(Cgroup::path),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Makes `cmd` join the cgroup directory `cgroup_dir` (if any) and enter the network namespace
/// file `netns` (if any) before it execs.
///
/// # Errors
/// When the namespace file cannot be opened or the cgroup path contains a NUL byte.
pub fn enter_paths(
    cmd: &mut Command,
    netns: Option<&Path>,
    cgroup_dir: Option<&Path>,
) -> Result<(), String> {
    let ns_file: Option<File> = netns
        .map(|p| File::open(p).map_err(|e| format!("cannot open netns {}: {e}", p.display())))
        .transpose()?;
    let procs: Option<CString> = cgroup_dir
        .map(|dir| {
            CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(|_| format!("cgroup path {} contains a NUL byte", dir.display()))
        })
        .transpose()?;
    // SAFETY: the closure runs in the forked child before exec and only makes raw system
    // calls (open, write, close, setns) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            if let Some(ns) = &ns_file
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Reads the last `lines` lines of a text file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prints the last `lines` lines of a log file to stderr under a heading; used by drops that
/// run while a test panics.
pub fn print_tail(heading: &str, path: &Path, lines: usize) {
    eprintln!("--- {heading} ({}):\n{}", path.display(), tail(path, lines));
}

/// Sends SIGKILL to `child` (ignoring "already dead") and reaps it.
pub fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Waits for `child` to exit for at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A process started inside a pod (or node): its stdout lines arrive through
/// [`PodProcess::next_line`], its stderr goes to a log file. Killed and reaped on drop.
#[derive(Debug)]
pub struct PodProcess {
    child: Child,
    lines: Receiver<String>,
    log: PathBuf,
    what: String,
}

impl PodProcess {
    /// Spawns `cmd` (already set up to enter its namespace/cgroup) with stdout piped and stderr
    /// written to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> PodProcess {
        let what = format!("{:?}", cmd);
        let stderr = File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", log.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PodProcess {
            child,
            lines: rx,
            log,
            what,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the process printed on stdout, waiting at most `timeout`; `None` on
    /// timeout or when stdout was closed.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix`, and returns it.
    ///
    /// # Panics
    /// When no such line comes in time; the message includes the process's stderr.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next_line(left) {
                Some(line) if line.starts_with(prefix) => return line,
                Some(_) => {}
                None => break,
            }
        }
        panic!(
            "{} printed no line starting with {prefix:?} within {timeout:?}; stderr:\n{}",
            self.what,
            tail(&self.log, 40)
        );
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        kill_and_reap(&mut self.child)
    }

    /// Where its stderr goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of {} ({}):\n{}",
                self.what,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

/// A `Command` for `program` that will run inside `netns` and `cgroup`.
pub fn command_in(
    program: impl AsRef<OsStr>,
    netns: Option<&Netns>,
    cgroup: Option<&Cgroup>,
) -> Command {
    let mut cmd = Command::new(program);
    enter(&mut cmd, netns, cgroup);
    cmd
}

/// `text` without ANSI escape sequences (`ESC [ … <letter>`), e.g. a colourised log.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
