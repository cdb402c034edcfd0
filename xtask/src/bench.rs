use std::path::Path; pub fn run(_r: &Path, _n: &str, _a: &[String]) -> anyhow::Result<()> { anyhow::bail!("todo") }
