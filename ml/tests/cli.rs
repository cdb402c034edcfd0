//! The worker's command line: a failed task ends its stderr with the error, backtrace or not.

#[test]
fn the_error_is_the_last_line_even_with_a_backtrace() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relabel-ml"))
        .args(["task", "train", "/nonexistent/train-request.json"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: reading /nonexistent/train-request.json"),
        "last line: {last}\n{err}"
    );
}
