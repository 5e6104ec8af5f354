//! Lines from stdin, for the registration code prompt.
//!
//! Reading stdin blocks, so a plain thread reads it and hands lines over a
//! bounded channel: the runtime's threads never block on it, and a prompt
//! abandoned with Ctrl-C does not keep the process alive (the thread is
//! detached; `spawn_blocking` would make the runtime wait for it at exit).

use std::io::BufRead;

use tokio::sync::mpsc;

/// Lines typed (or piped) on stdin, one at a time.
#[derive(Debug)]
pub(crate) struct StdinLines {
    /// Capacity 1: the reader thread reads a line only once the previous
    /// one was taken, so nothing is read ahead of the prompt.
    lines: mpsc::Receiver<std::io::Result<String>>,
}

impl StdinLines {
    pub fn spawn() -> Self {
        let (tx, lines) = mpsc::channel(1);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let failed = line.is_err();
                if tx.blocking_send(line).is_err() || failed {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// The next line without its newline; `None` at end of input (Ctrl-D,
    /// or a pipe that closed).
    pub async fn next(&mut self) -> Option<std::io::Result<String>> {
        self.lines.recv().await
    }
}
