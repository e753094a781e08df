//! The log output's writer: every formatted line goes to a bounded queue, and one thread of
//! its own writes to stderr whatever lines are waiting, in one `write` — so a worker thread
//! that serves connections never makes the write syscall of its access-log line, and a burst
//! of lines costs one syscall, not one each. ztunnel writes its logs the same way
//! (`src/telemetry.rs`: a batched, vectored, non-blocking writer with `lossy(false)`).
//!
//! Invariants:
//! - nothing is dropped: a full queue blocks the logging thread (back-pressure) rather than
//!   losing a line, as ztunnel's `lossy(false)`;
//! - lines keep their order (one queue, one writer);
//! - lines queued when the process exits are written first: an `atexit` handler waits for the
//!   queue to drain (bounded by [`EXIT_FLUSH`]), so a program that returns from `main` or calls
//!   `std::process::exit` loses nothing;
//! - if the writer thread cannot be started, lines are written directly, as before.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Lines the queue holds before a logging thread waits.
const QUEUE_LINES: usize = 4096;
/// Most bytes written in one call (several lines).
const BATCH_BYTES: usize = 64 * 1024;
/// How long exit waits for queued lines to be written.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

/// What the queue carries.
enum Message {
    /// A formatted line (or part of one: the formatter writes each event whole).
    Line(Vec<u8>),
    /// Answer once every line queued before this one is written.
    Flush(mpsc::Sender<()>),
}

/// The queue into the writer thread, once it runs (for the exit flush).
static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();

/// The `MakeWriter` of the log layer: hands each event's bytes to the writer thread.
#[derive(Clone, Debug)]
pub struct QueuedStderr {
    queue: Option<SyncSender<Message>>,
}

impl QueuedStderr {
    /// Starts the writer thread (once per process; later calls share it) and registers the
    /// exit flush. Without a thread (it could not be spawned), writes go straight to stderr.
    pub fn start() -> Self {
        if let Some(queue) = QUEUE.get() {
            return Self {
                queue: Some(queue.clone()),
            };
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&rx, &mut std::io::stderr()));
        if spawned.is_err() || QUEUE.set(tx.clone()).is_err() {
            // Another thread won the race to start it: use its queue (ours ends with us).
            return Self {
                queue: QUEUE.get().cloned(),
            };
        }
        // SAFETY: registers a plain `extern "C" fn` with no arguments; it only uses Rust
        // statics that live for the whole process.
        unsafe { libc::atexit(flush_at_exit) };
        Self { queue: Some(tx) }
    }
}

/// Writes the events of one `tracing` event: the formatter writes each event with one
/// `write_all`, so each `write` here is a whole line.
#[derive(Debug)]
pub struct QueuedLine {
    queue: Option<SyncSender<Message>>,
}

impl Write for QueuedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(queue) = &self.queue else {
            return std::io::stderr().write(buf);
        };
        match queue.try_send(Message::Line(buf.to_vec())) {
            Ok(()) => {}
            // Full: wait for room (back-pressure, never a lost line).
            Err(TrySendError::Full(message)) => {
                if queue.send(message).is_err() {
                    std::io::stderr().write_all(buf)?;
                }
            }
            // The writer thread is gone (the process is ending): write it ourselves.
            Err(TrySendError::Disconnected(_)) => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine {
            queue: self.queue.clone(),
        }
    }
}

/// The writer thread: waits for a line, takes every other line already queued (up to
/// [`BATCH_BYTES`]), writes them in one call. Ends when every sender is gone.
fn write_lines(queue: &Receiver<Message>, out: &mut impl Write) {
    let mut batch = Vec::with_capacity(4096);
    let mut acks = Vec::new();
    while let Ok(first) = queue.recv() {
        take(first, &mut batch, &mut acks);
        while batch.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(message) => take(message, &mut batch, &mut acks),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            // A log that cannot be written (stderr closed) is not worth stopping for.
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
        batch.clear();
        if batch.capacity() > BATCH_BYTES * 2 {
            batch.shrink_to(4096);
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

fn take(message: Message, batch: &mut Vec<u8>, acks: &mut Vec<mpsc::Sender<()>>) {
    match message {
        Message::Line(line) => batch.extend_from_slice(&line),
        Message::Flush(ack) => acks.push(ack),
    }
}

/// Waits until every line queued so far is written (at most `limit`).
pub fn flush(limit: Duration) {
    let Some(queue) = QUEUE.get() else { return };
    let (ack, done) = mpsc::channel();
    if queue.send(Message::Flush(ack)).is_ok() {
        let _ = done.recv_timeout(limit);
    }
}

extern "C" fn flush_at_exit() {
    flush(EXIT_FLUSH);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that records each write call.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_lines_are_written_in_order_in_batches_and_flush_waits_for_them() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let mut line = QueuedLine {
            queue: Some(tx.clone()),
        };
        // Queued before the writer starts, so they are all waiting together.
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}\n")).collect();
        for l in &lines {
            line.write_all(l.as_bytes()).unwrap();
        }
        let (ack, done) = mpsc::channel();
        tx.send(Message::Flush(ack)).unwrap();
        let out = Recorded::default();
        let writer = std::thread::spawn({
            let mut out = out.clone();
            move || write_lines(&rx, &mut out)
        });
        done.recv_timeout(Duration::from_secs(10)).unwrap();

        let writes = out.0.lock().unwrap().clone();
        assert_eq!(
            writes.concat(),
            lines.concat().into_bytes(),
            "every line, in order"
        );
        // 1000 short lines fit in one batch.
        assert_eq!(writes.len(), 1, "waiting lines go out in one write");

        drop((line, tx));
        writer.join().unwrap();
    }

    #[test]
    fn a_full_queue_waits_instead_of_dropping() {
        let (tx, rx) = mpsc::sync_channel(2);
        let mut line = QueuedLine { queue: Some(tx) };
        let producer = std::thread::spawn(move || {
            for i in 0..50 {
                line.write_all(format!("{i}\n").as_bytes()).unwrap();
            }
        });
        // The reader starts late: the producer must have blocked, not dropped.
        std::thread::sleep(Duration::from_millis(50));
        let out = Recorded::default();
        let reader = std::thread::spawn({
            let mut out = out.clone();
            move || write_lines(&rx, &mut out)
        });
        producer.join().unwrap();
        reader.join().unwrap();
        let all = String::from_utf8(out.0.lock().unwrap().concat()).unwrap();
        let expected: String = (0..50).map(|i| format!("{i}\n")).collect();
        assert_eq!(all, expected);
    }
}
