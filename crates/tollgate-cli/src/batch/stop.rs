//! Why and how a run stops before its end: a signal, a failed write or a
//! failed read. The first reason stops intake and starts the grace; a second
//! signal quits at once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A signal that stops a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C): exit 130.
    Interrupt,
    /// SIGTERM (`kill`, `docker stop`, systemd, `timeout`): exit 143.
    Terminate,
    /// SIGHUP (the terminal went away): exit 129.
    Hangup,
}

impl Signal {
    /// The exit code of a process stopped by this signal: 128 + its number.
    pub const fn exit_code(self) -> i32 {
        match self {
            Self::Hangup => 129,
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
        })
    }
}

/// Why intake stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Signal(Signal),
    /// The output could not be written: the message says why.
    Write(String),
    /// The input could not be read past some line.
    Read(String),
}

#[derive(Clone, Debug, Default)]
struct State {
    reason: Option<Reason>,
    /// When the requests on the wire are abandoned.
    deadline: Option<Instant>,
    /// A second signal: abandon everything now.
    quit: bool,
}

/// The run's stop switch, shared by every task and the writer thread.
#[derive(Clone, Debug)]
pub(crate) struct Stop {
    state: Arc<watch::Sender<State>>,
    grace: Duration,
}

impl Stop {
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            state: Arc::new(watch::Sender::new(State::default())),
            grace,
        }
    }

    /// Stops intake for `reason`; returns whether this was the first
    /// reason. A later reason leaves the first (and its deadline) in place.
    pub(crate) fn request(&self, reason: Reason) -> bool {
        let mut first = false;
        self.state.send_if_modified(|state| {
            if state.reason.is_some() {
                return false;
            }
            first = true;
            state.reason = Some(reason);
            state.deadline = Some(Instant::now() + self.grace);
            true
        });
        first
    }

    /// Abandons what is on the wire now.
    pub(crate) fn quit(&self) {
        self.state.send_modify(|state| state.quit = true);
    }

    pub(crate) fn reason(&self) -> Option<Reason> {
        self.state.borrow().reason.clone()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.state.borrow().reason.is_some()
    }

    pub(crate) fn is_quit(&self) -> bool {
        self.state.borrow().quit
    }

    /// Completes once intake is stopped.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail.
        let _ = rx.wait_for(|s| s.reason.is_some()).await;
    }

    /// Completes when what is on the wire must be abandoned: at the end of
    /// the grace, or at once on a second signal.
    pub(crate) async fn abandon(&self) {
        let mut rx = self.state.subscribe();
        loop {
            let (deadline, quit) = {
                let s = rx.borrow_and_update();
                (s.deadline, s.quit)
            };
            if quit {
                return;
            }
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => return,
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
