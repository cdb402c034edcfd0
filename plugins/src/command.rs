//! The `command` node kind: runs an external program on its inputs' paths, like a DVC stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use relabel_engine::manifest::is_identifier;
use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Config of a `command` node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// A shell command line (run by `sh -c` in the manifest's folder). `${inputs.NAME}`,
    /// `${outputs.NAME}`, `${metrics}` and `${work}` become quoted paths; write `$${` for a literal `${`.
    pub run: String,
    /// Names of the outputs the command writes, each at `${outputs.NAME}` (a file or a folder).
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Files the command reads besides its inputs (scripts, data), relative to the manifest:
    /// their contents are part of the cache key.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Extra environment variables (not for secrets: they are part of the cache key).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds before the command is stopped and the node fails.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Secret-looking environment variables (API keys, tokens, passwords) the command may see.
    /// Others are removed from its environment, so a command never gets an endpoint's key
    /// unless asked. Only the names join the cache key, never the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
}

/// Shell variables a command line reads (`$NAME` and `${NAME}`), with `${inputs.x}`-style
/// placeholders and `$${` escapes left out.
fn shell_variables(run: &str) -> Vec<String> {
    let b = run.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (start, braced) = if b.get(i + 1) == Some(&b'{') {
            (i + 2, true)
        } else {
            (i + 1, false)
        };
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let name = &run[start..end];
        let placeholder = braced && b.get(end) == Some(&b'.');
        if !name.is_empty() && !placeholder && !name.as_bytes()[0].is_ascii_digit() {
            out.push(name.to_string());
        }
        i = end.max(i + 1);
    }
    out
}

/// The `command` node kind.
pub struct Command;

/// The `${...}` placeholders in a command line, with their byte ranges.
fn placeholders(run: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let b = run.as_bytes();
    let mut i = 0;
    while let Some(p) = run[i..].find("${") {
        let start = i + p;
        if start > 0 && b[start - 1] == b'$' {
            i = start + 2;
            continue;
        }
        match run[start + 2..].find('}') {
            Some(e) => {
                let end = start + 2 + e + 1;
                out.push((start, end, run[start + 2..end - 1].to_string()));
                i = end;
            }
            None => break,
        }
    }
    out
}

fn substitute(run: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut last = 0;
    for (s, e, name) in placeholders(run) {
        out.push_str(&run[last..s]);
        match f(&name) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&run[s..e]),
        }
        last = e;
    }
    out.push_str(&run[last..]);
    out.replace("$${", "${")
}

fn quote(p: &std::path::Path) -> String {
    let s = p.display().to_string();
    shlex::try_quote(&s).map(|c| c.into_owned()).unwrap_or(s)
}

fn env_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_ascii_uppercase())
}

impl NodeKind for Command {
    type Config = CommandConfig;
    const KIND: &'static str = "command";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "Runs an external program with its inputs and outputs as paths; its outputs are cached like any node's.";

    fn outputs(config: &CommandConfig) -> Vec<String> {
        config.outputs.clone()
    }

    fn files(config: &CommandConfig) -> Vec<PathBuf> {
        config.files.clone()
    }

    fn check(config: &CommandConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let root = Path::root();
        if config.run.trim().is_empty() {
            problems.push(ConfigProblem::new(
                root.key("run"),
                "`run` is empty; give the command line to run",
            ));
        }
        for (i, o) in config.outputs.iter().enumerate() {
            if !is_identifier(o) {
                problems.push(ConfigProblem::new(
                    root.key("outputs").index(i),
                    format!("invalid output name \"{o}\": use letters, digits and _"),
                ));
            } else if config.outputs[..i].contains(o) {
                problems.push(ConfigProblem::new(
                    root.key("outputs").index(i),
                    format!("output \"{o}\" is listed twice"),
                ));
            }
        }
        if let Some(t) = config.timeout {
            if !(t > 0.0 && t.is_finite()) {
                problems.push(ConfigProblem::new(
                    root.key("timeout"),
                    "must be a positive number of seconds",
                ));
            }
        }
        for name in shell_variables(&config.run) {
            if relabel_engine::manifest::looks_secret(&name) && !config.pass_env.contains(&name) {
                problems.push(
                    ConfigProblem::new(
                        root.key("run"),
                        format!("the command reads `${name}`, which looks like a secret; commands do not get secret-looking variables unless asked"),
                    )
                    .with_hint(Some(format!("list it in `pass_env: [{name}]` to pass it to this command"))),
                );
            }
        }
        for (_, _, name) in placeholders(&config.run) {
            let known: Vec<&str> = match name.split_once('.') {
                Some(("inputs", n)) if inputs.iter().any(|i| i == n) => continue,
                Some(("outputs", n)) if config.outputs.iter().any(|o| o == n) => continue,
                Some(("inputs", _)) => inputs.iter().map(String::as_str).collect(),
                Some(("outputs", _)) => config.outputs.iter().map(String::as_str).collect(),
                None if name == "metrics" || name == "work" => continue,
                _ => {
                    problems.push(
                        ConfigProblem::new(root.key("run"), format!("unknown placeholder `${{{name}}}`")).with_hint(Some(
                            "use ${inputs.NAME}, ${outputs.NAME}, ${metrics}, ${work} (or $${ for a literal ${)".into(),
                        )),
                    );
                    continue;
                }
            };
            let (ns, n) = name.split_once('.').unwrap_or(("", ""));
            let what = if ns == "inputs" { "input" } else { "output" };
            let hint = relabel_engine::diag::did_you_mean(n, known.iter().copied()).or_else(|| {
                Some(if known.is_empty() {
                    format!("the node declares no {what}s")
                } else {
                    format!("declared {what}s: {}", known.join(", "))
                })
            });
            problems.push(
                ConfigProblem::new(
                    root.key("run"),
                    format!("`${{{name}}}` names no declared {what}"),
                )
                .with_hint(hint),
            );
        }
        problems
    }

    async fn run(
        &self,
        ctx: NodeContext,
        config: CommandConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let metrics_path = ctx.work_dir.join("metrics.json");
        let outputs: BTreeMap<String, PathBuf> = config
            .outputs
            .iter()
            .map(|o| (o.clone(), ctx.output_path(o)))
            .collect();
        let line = substitute(&config.run, |name| match name.split_once('.') {
            Some(("inputs", n)) => inputs.get(n).map(|a| quote(&a.path)),
            Some(("outputs", n)) => outputs.get(n).map(|p| quote(p)),
            _ if name == "metrics" => Some(quote(&metrics_path)),
            _ if name == "work" => Some(quote(&ctx.work_dir)),
            _ => None,
        });
        let log_path = ctx.work_dir.join("command.log");
        let log = std::fs::File::create(&log_path).map_err(|e| NodeError::io("command log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| NodeError::io("command log", e))?;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&line)
            .current_dir(&ctx.manifest_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .env("RELABEL_WORK", &ctx.work_dir)
            .env("RELABEL_METRICS", &metrics_path)
            .envs(&config.env)
            .process_group(0)
            .kill_on_drop(true);
        relabel_engine::child::die_with_parent(&mut cmd);
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if relabel_engine::manifest::looks_secret(&name)
                && !config.pass_env.iter().any(|p| *p == name)
            {
                cmd.env_remove(&k);
            }
        }
        if let Some(r) = ctx.round {
            cmd.env("RELABEL_ROUND", r.to_string());
        }
        for (n, a) in &inputs {
            cmd.env(env_name("RELABEL_INPUT_", n), &a.path);
        }
        for (n, p) in &outputs {
            cmd.env(env_name("RELABEL_OUTPUT_", n), p);
        }
        tracing::debug!(command = %line, "starting");
        let mut child = cmd.spawn().map_err(|e| NodeError::io("starting sh", e))?;
        let guard = GroupGuard(child.id());
        let wait = child.wait();
        let status = match config.timeout {
            Some(t) => match tokio::time::timeout(Duration::from_secs_f64(t), wait).await {
                Ok(s) => s,
                Err(_) => {
                    drop(guard);
                    return Err(NodeError::Failed(format!(
                        "the command ran past its timeout of {t} s and was stopped"
                    )));
                }
            },
            None => wait.await,
        }
        .map_err(|e| NodeError::io("waiting for the command", e))?;
        // The shell is gone; stop anything it left running in its group.
        drop(guard);
        if !status.success() {
            return Err(NodeError::Failed(format!(
                "the command failed ({status}): {line}\n{}",
                relabel_engine::child::log_tail(&log_path, 15)
            )));
        }
        let mut metrics = Metrics::new();
        if metrics_path.exists() {
            let text = std::fs::read_to_string(&metrics_path)
                .map_err(|e| NodeError::io("reading ${metrics}", e))?;
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(m)) => metrics = m,
                Ok(_) | Err(_) => {
                    return Err(NodeError::Failed(format!(
                        "the command wrote ${{metrics}} ({}) but it is not a JSON object",
                        metrics_path.display()
                    )))
                }
            }
        }
        Ok(NodeOutput { outputs, metrics })
    }
}

/// Kills the command's whole process group when dropped (on completion, cancellation or timeout).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_escaped() {
        let p: Vec<String> = placeholders("a ${inputs.x} $${literal} ${metrics}")
            .into_iter()
            .map(|x| x.2)
            .collect();
        assert_eq!(p, vec!["inputs.x", "metrics"]);
        let s = substitute("cat ${inputs.x} > ${outputs.y}; echo $${HOME}", |n| {
            Some(format!("<{n}>"))
        });
        assert_eq!(s, "cat <inputs.x> > <outputs.y>; echo ${HOME}");
    }

    #[test]
    fn secret_variables_in_a_command_line_need_pass_env() {
        assert_eq!(
            shell_variables("echo $OPENAI_API_KEY ${HF_TOKEN} ${inputs.x} $${HOME} $1 $HOME"),
            vec!["OPENAI_API_KEY", "HF_TOKEN", "HOME"]
        );
        let c: CommandConfig =
            serde_yaml::from_str("run: 'curl -H \"Authorization: Bearer $OPENAI_API_KEY\" x'\n")
                .unwrap();
        let problems = Command::check(&c, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("$OPENAI_API_KEY"));
        let c: CommandConfig = serde_yaml::from_str(
            "run: 'curl -H \"Authorization: Bearer $OPENAI_API_KEY\" x'\npass_env: [OPENAI_API_KEY]\n",
        )
        .unwrap();
        assert!(Command::check(&c, &[]).is_empty());
    }

    #[test]
    fn check_names_undeclared_placeholders() {
        let c: CommandConfig =
            serde_yaml::from_str("run: cat ${inputs.dta} > ${outputs.out}\noutputs: [out]")
                .unwrap();
        let problems = Command::check(&c, &["data".to_string()]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("inputs.dta"));
        assert_eq!(problems[0].hint.as_deref(), Some("did you mean \"data\"?"));
    }
}
