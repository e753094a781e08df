//! Ctrl-C and SIGTERM for the demo and the bench: the first signal sets a flag that they check
//! between steps, so they stop by returning an error and every fixture is dropped (namespaces
//! deleted, processes killed, pins removed) instead of dying with them in place.
//!
//! Invariant: the handler only touches atomics and calls `clock_gettime(2)` and `write(2)`,
//! all async-signal-safe. Later signals are ignored; one that comes well after the first (a
//! person pressing Ctrl-C again, not `timeout` signalling the process and then its group)
//! gets a note that clean-up is under way.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use anyhow::bail;

/// The signal that asked to stop, or 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// When the first signal came, in milliseconds of `CLOCK_MONOTONIC`.
static FIRST_AT_MS: AtomicU64 = AtomicU64::new(0);

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
        // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty mask) that the
        // fields below complete.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
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
