//! Ctrl-C and SIGTERM for the demo and the bench: the first signal sets a flag that they check
//! between steps, so they stop by returning an error and every fixture is dropped (namespaces
//! deleted, processes killed, pins removed) instead of dying with them in place. A program
//! that only starts one of them ([`run_in_foreground`]: `cargo xtask bench`) passes the
//! signals on and waits, so it never returns before the clean-up is done.
//!
//! Invariant: the handlers only touch atomics and call `clock_gettime(2)`, `write(2)` and
//! `kill(2)`, all async-signal-safe. Later signals are ignored; one that comes well after the first (a
//! person pressing Ctrl-C again, not `timeout` signalling the process and then its group)
//! gets a note that clean-up is under way.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use anyhow::{Context as _, bail};

/// The signal that asked to stop, or 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// When the first signal came, in milliseconds of `CLOCK_MONOTONIC`.
static FIRST_AT_MS: AtomicU64 = AtomicU64::new(0);
/// The child [`run_in_foreground`] waits for, or 0.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// The exit status after Ctrl-C, as shells report a command killed by SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Printed by the handler on the first signal.
const STOPPING: &[u8] = b"\ninterrupted: stopping after the current step, then cleaning up\n";
/// Printed by the handler when a person signals again during clean-up.
const STILL_CLEANING: &[u8] = b"\nstill cleaning up namespaces and processes...\n";
/// Signals closer than this to the first one are duplicates, not a person insisting.
const REPEAT_AFTER_MS: u64 = 500;

/// Stopped by a signal; returned from the step that noticed.
#[derive(Debug)]
pub struct Interrupted(i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            libc::SIGINT => "SIGINT (Ctrl-C)",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        write!(f, "interrupted by {name}")
    }
}

impl std::error::Error for Interrupted {}

/// Proof that the SIGINT/SIGTERM handler is installed; asks whether a signal came.
#[derive(Debug)]
pub struct Stop(());

impl Stop {
    /// Installs the handler for SIGINT and SIGTERM.
    pub fn install() -> anyhow::Result<Stop> {
        install_handler(on_signal)?;
        Ok(Stop(()))
    }

    /// The error to report for a step that failed: the signal, if one came. A signal also
    /// reaches the proxies and the pods' processes (Ctrl-C signals the whole process group), so
    /// whatever failed after it is the signal's doing.
    pub fn blame(&self, error: anyhow::Error) -> anyhow::Error {
        match self.check() {
            Err(interrupted) => interrupted.into(),
            Ok(()) => error,
        }
    }

    /// `Err(Interrupted)` once a signal asked to stop.
    pub fn check(&self) -> Result<(), Interrupted> {
        match SIGNAL.load(Ordering::SeqCst) {
            0 => Ok(()),
            signal => Err(Interrupted(signal)),
        }
    }
}

/// Runs `cmd` as a shell runs its foreground job and returns how it ended: SIGINT and SIGTERM
/// that reach this process meanwhile go on to the child (which, running [`Stop`], cleans up
/// and exits) instead of ending this one first. A child killed by a signal reads as exit
/// code 128 + the signal, as shells report it.
pub fn run_in_foreground(cmd: &mut Command) -> anyhow::Result<i32> {
    // Installed before the child exists, so no signal can end this process in between; a
    // caught signal's handler is reset to the default in the child at exec.
    install_handler(forward_to_child)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{program}`"))?;
    CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    let status = status.with_context(|| format!("waiting for `{program}`"))?;
    Ok(exit_code(status))
}

/// The exit code a shell would report for `status`.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

/// Installs `handler` for SIGINT and SIGTERM.
fn install_handler(handler: extern "C" fn(libc::c_int)) -> anyhow::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty mask) that the
    // fields below complete.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    // Restart interrupted system calls: a signal must not fail the step in progress
    // half-way (e.g. a read of a child's output); the step ends and the flag is seen.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&raw mut action.sa_mask) };
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `action` is fully initialised and the handler is async-signal-safe.
        if unsafe { libc::sigaction(signal, &raw const action, std::ptr::null_mut()) } != 0 {
            bail!(
                "cannot install a handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Passes the signal on to [`CHILD`], if there is one. Ctrl-C reaches the child twice (from the
/// terminal and from here); [`Stop`]'s handler takes a repeat that close for a duplicate.
extern "C" fn forward_to_child(signal: libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// Records the first signal and says so; notes later ones (see the module documentation).
extern "C" fn on_signal(signal: libc::c_int) {
    let now = monotonic_ms();
    let message = if SIGNAL
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        FIRST_AT_MS.store(now, Ordering::SeqCst);
        STOPPING
    } else if now.saturating_sub(FIRST_AT_MS.load(Ordering::SeqCst)) >= REPEAT_AFTER_MS {
        STILL_CLEANING
    } else {
        return;
    };
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte string.
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
}

/// Milliseconds of `CLOCK_MONOTONIC` (0 if it cannot be read); async-signal-safe.
fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime is async-signal-safe and writes only to `now`.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) } != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or_default();
    let millis = u64::try_from(now.tv_nsec / 1_000_000).unwrap_or_default();
    secs * 1000 + millis
}
