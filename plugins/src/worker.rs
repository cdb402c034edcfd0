//! Finding the `relabel-ml` worker, the process that runs libtorch work for node kinds.

use std::path::PathBuf;

/// `$RELABEL_ML_BIN`, else `relabel-ml` beside the running executable (or its parent folder,
/// for test binaries under `target/*/deps`), else `relabel-ml` on the PATH.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("RELABEL_ML_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("relabel-ml");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("relabel-ml")
}
