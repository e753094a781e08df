//! A long-lived connection from inside a pod, driven line by line (`testpod converse`): open it,
//! let something happen (a state reload, a certificate renewal), then check it still echoes.
//!
//! The client runs in the pod's netns and cgroup (so it is captured like any app); its stdin is
//! ours, its stdout lines are read on a thread, its stderr goes to the node's log directory.
//! Killed and reaped on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use serde_json::Value;

use crate::binaries::testpod;
use crate::pod::Pod;
use crate::process::{kill_and_reap, tail, wait_timeout};
use crate::testpod::{ConnectErrorKind, ConnectFailure, Greeting};

/// How long to wait for each line the client prints (its socket timeout is shorter).
const LINE_WAIT: Duration = Duration::from_secs(20);
/// The client's own connect/read timeout.
const SOCKET_TIMEOUT_MS: u64 = 10_000;

/// An open `testpod converse` connection; see the module documentation.
#[derive(Debug)]
pub struct Conversation {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: PathBuf,
    greeting: Greeting,
}

impl Conversation {
    /// Connects from `pod` to `addr` and waits for the server's greeting.
    ///
    /// # Errors
    /// The connection's failure as `testpod` reports it.
    ///
    /// # Panics
    /// When `testpod` cannot start or prints nothing usable in time.
    pub fn open(pod: &Pod, addr: SocketAddr) -> Result<Conversation, ConnectFailure> {
        let log = pod.node().new_log_path(&format!("{}-converse", pod.name()));
        let stderr = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut child = pod
            .command(testpod())
            .args(["converse", &addr.to_string()])
            .args(["--timeout-ms", &SOCKET_TIMEOUT_MS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot start testpod converse");
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
        let stdin = child.stdin.take();
        let mut conversation = Conversation {
            child,
            stdin,
            lines: rx,
            log,
            greeting: Greeting {
                peer: addr,
                local: addr,
            },
        };
        let first = conversation.next()?;
        let greeting = first["greeting"].as_str().unwrap_or_default();
        conversation.greeting = Greeting::parse(greeting)
            .unwrap_or_else(|e| panic!("testpod converse printed {first}: {e}"));
        Ok(conversation)
    }

    /// The server's greeting (who it saw connecting, and on which address).
    pub fn greeting(&self) -> Greeting {
        self.greeting
    }

    /// Sends `text` (one line, no newline in it) and returns what came back.
    ///
    /// # Errors
    /// The connection's failure as `testpod` reports it (e.g. reset by a proxy).
    ///
    /// # Panics
    /// When `text` holds a newline, or `testpod` prints nothing usable in time.
    pub fn say(&mut self, text: &str) -> Result<String, ConnectFailure> {
        assert!(!text.contains('\n'), "one line at a time");
        let stdin = self.stdin.as_mut().expect("the conversation is open");
        if let Err(e) = writeln!(stdin, "{text}").and_then(|()| stdin.flush()) {
            // testpod exited: its last line says why.
            return match self.next() {
                Err(f) => Err(f),
                Ok(line) => panic!("testpod converse ignored stdin ({e}) after printing {line}"),
            };
        }
        let reply = self.next()?;
        Ok(reply["echo"].as_str().unwrap_or_default().to_owned())
    }

    /// Half-closes and waits for the server's end of the connection.
    ///
    /// # Errors
    /// The connection's failure as `testpod` reports it.
    pub fn close(mut self) -> Result<(), ConnectFailure> {
        drop(self.stdin.take());
        let last = self.next()?;
        assert_eq!(
            last["closed"],
            Value::Bool(true),
            "testpod converse printed {last}"
        );
        wait_timeout(&mut self.child, LINE_WAIT);
        Ok(())
    }

    /// The next line printed, as JSON; `Err` for an `"ok":false` line.
    fn next(&mut self) -> Result<Value, ConnectFailure> {
        let line = self.lines.recv_timeout(LINE_WAIT).unwrap_or_else(|_| {
            panic!(
                "testpod converse printed nothing within {LINE_WAIT:?}; stderr:\n{}",
                tail(&self.log, 20)
            )
        });
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("testpod converse printed {line:?}: {e}"));
        if value["ok"] == Value::Bool(true) {
            return Ok(value);
        }
        let kind = match value["error"].as_str().unwrap_or_default() {
            "refused" => ConnectErrorKind::Refused,
            "reset" => ConnectErrorKind::Reset,
            "timeout" => ConnectErrorKind::Timeout,
            _ => ConnectErrorKind::Other,
        };
        Err(ConnectFailure {
            kind,
            detail: value["detail"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        drop(self.stdin.take());
        kill_and_reap(&mut self.child);
    }
}
