//! relabel-ml: the worker process that runs libtorch work for relabel's node kinds.
//!
//! libtorch takes ~0.2 s and ~100 MB just to load; keeping it out of the `relabel` binary keeps
//! validation, planning and cached reruns instant, and a crash in native code cannot take the
//! engine (and its cache writes) down with it.

mod device;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("env") => {
            println!("{}", serde_json::to_string_pretty(&device::probe())?);
            Ok(())
        }
        _ => anyhow::bail!("usage: relabel-ml env"),
    }
}
