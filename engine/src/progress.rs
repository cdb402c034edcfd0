//! Progress reporting: indicatif bars on a terminal, plain tracing lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes for one run.
#[derive(Clone)]
pub struct ProgressSink {
    multi: Option<MultiProgress>,
}

impl ProgressSink {
    /// Bars when stderr is a terminal (and `RELABEL_NO_PROGRESS` is unset), nothing otherwise.
    pub fn auto() -> Self {
        let tty =
            std::io::stderr().is_terminal() && std::env::var_os("RELABEL_NO_PROGRESS").is_none();
        ProgressSink {
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn hidden() -> Self {
        ProgressSink { multi: None }
    }

    /// A progress handle for one node.
    pub fn node(&self, name: &str) -> Progress {
        match &self.multi {
            None => Progress { bar: None },
            Some(m) => {
                let bar = m.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {wide_msg} {pos}/{len} {elapsed}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(name.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                Progress { bar: Some(bar) }
            }
        }
    }

    /// Prints a line above the bars (or to stderr when there are none).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

/// A node's progress: length, position and a message. Does nothing off a terminal.
#[derive(Clone, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn set_length(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_length(n);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
