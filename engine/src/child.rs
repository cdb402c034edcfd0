//! Child processes that die with relabel: a SIGKILLed run must leave no worker, server or
//! command running on (parent pid 1) after it.

/// Asks the kernel to SIGKILL the child when the thread that started it dies (relabel's
/// runtime threads live as long as the process).
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl(2) in the forked child before exec touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The last `n` lines of a log file (empty when it cannot be read): a failed child's message.
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
