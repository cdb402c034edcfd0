//! Where `cargo xtask setup` keeps what it fetches (libtorch, encoders, local LLM weights).

/// `$RELABEL_HOME`, else `~/.cache/relabel`.
pub fn relabel_home() -> std::path::PathBuf {
    std::env::var_os("RELABEL_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::PathBuf::from("/tmp"))
                .join(".cache/relabel")
        })
}
