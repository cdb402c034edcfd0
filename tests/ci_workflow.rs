//! docs/ci/github-actions.yml, run as shell: a push to main writes the S3 remote (moto), a pull request reads it and gets a summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use relabel_testkit::s3::S3Server;

mod common;

const MANIFEST: &str = r#"
version: 1
name: ci
nodes:
  - id: a
    kind: command
    config: {run: "echo a > ${outputs.out}", outputs: [out]}
  - id: b
    kind: command
    inputs: [a.out]
    config: {run: "sh b.sh ${inputs.out} > ${outputs.out}", outputs: [out], files: [b.sh]}
  - id: evaluate
    kind: command
    inputs: [b.out]
    config: {run: "cat ${inputs.out} > ${outputs.out}; echo '{\"test_accuracy\": ACC}' > ${metrics}", outputs: [out]}
"#;

fn sh(dir: &Path, cmd: &str) {
    let o = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `${{ expr }}` replaced from `vars`; an expression the test does not know fails it.
fn expand(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${{") {
        out.push_str(&rest[..i]);
        let j = rest[i..].find("}}").expect("an unclosed ${{") + i;
        let expr = rest[i + 3..j].trim();
        let v = vars
            .get(expr)
            .unwrap_or_else(|| panic!("the workflow uses ${{{{ {expr} }}}}, unknown to this test"));
        out.push_str(v);
        rest = &rest[j + 2..];
    }
    out.push_str(rest);
    out
}

/// Runs the workflow's steps for `event` in `repo`, as a runner would (minus checkout, install
/// and the GitHub comment); returns the step summary.
fn run_workflow(repo: &Path, event: &str, server: &S3Server) -> String {
    let text = std::fs::read_to_string("docs/ci/github-actions.yml").unwrap();
    let wf: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let summary = repo.join("step-summary.md");
    let vars: BTreeMap<&str, String> = [
        ("secrets.RELABEL_AWS_ACCESS_KEY_ID", "test".to_string()),
        ("secrets.RELABEL_AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("github.workspace", repo.display().to_string()),
        ("github.event_name", event.to_string()),
        ("github.base_ref", "main".to_string()),
        ("github.token", String::new()),
        ("github.event.pull_request.number", "1".to_string()),
    ]
    .into_iter()
    .collect();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in wf["env"].as_mapping().unwrap() {
        env.insert(
            k.as_str().unwrap().to_string(),
            expand(v.as_str().unwrap(), &vars),
        );
    }
    // The real S3 server stands in for AWS: the bucket and the endpoint change, nothing else.
    env.insert("RELABEL_REMOTE".into(), "s3://team/main".into());
    for (k, v) in server.env() {
        env.entry(k).or_insert(v);
    }
    env.insert("GITHUB_STEP_SUMMARY".into(), summary.display().to_string());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_relabel")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let steps = wf["jobs"]["pipeline"]["steps"].as_sequence().unwrap();
    let mut ran = Vec::new();
    for step in steps {
        let Some(script) = step["run"].as_str() else {
            continue; // uses: actions/checkout
        };
        let id = step["id"].as_str().unwrap_or("");
        if id == "install" || id == "comment" {
            continue;
        }
        match step["if"].as_str() {
            None => {}
            Some("github.event_name == 'pull_request'") if event != "pull_request" => continue,
            Some("github.event_name == 'pull_request'") => {}
            Some(other) => panic!("step {id}: condition {other} unknown to this test"),
        }
        let script = expand(script, &vars);
        let o = Command::new("bash")
            .args(["-e", "-c", &script])
            .current_dir(repo)
            .env_clear()
            .envs(&env)
            .env("PATH", &path)
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("RELABEL_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "step {id} ({event}) failed:\n{script}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        ran.push(id.to_string());
    }
    assert!(ran.contains(&"run".to_string()), "{ran:?}");
    std::fs::read_to_string(&summary).unwrap_or_default()
}

#[test]
fn the_documented_workflow_shares_mains_results_and_summarises_a_pull_request() {
    let server = S3Server::start(&common::test_python()).expect("moto's S3 server starts");
    server.create_bucket("team").unwrap();
    let t = tempfile::tempdir().unwrap();
    let upstream = t.path().join("upstream");
    std::fs::create_dir_all(upstream.join("manifests")).unwrap();
    std::fs::write(
        upstream.join("manifests/pipeline.yaml"),
        MANIFEST.replace("ACC", "0.5"),
    )
    .unwrap();
    std::fs::write(upstream.join("manifests/b.sh"), "cat $1; echo b\n").unwrap();
    // The author runs the pipeline once and commits its lock.
    let o = Command::new(env!("CARGO_BIN_EXE_relabel"))
        .args(["run", "manifests/pipeline.yaml", "--cache"])
        .arg(t.path().join("author-cache"))
        .current_dir(&upstream)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sh(
        &upstream,
        "git init -q -b main && git add -A && git commit -qm pipeline",
    );

    // Push to main: --locked holds, and the results go to the remote.
    sh(t.path(), "git clone -q upstream main-runner");
    run_workflow(&t.path().join("main-runner"), "push", &server);
    let entries = |s: &S3Server| s.keys("team", "main/entries/").unwrap().len();
    assert_eq!(entries(&server), 3);

    // A pull request that changes the evaluator: a fresh runner restores what did not change,
    // writes nothing to the remote, and the summary says what changed against main.
    sh(t.path(), "git clone -q upstream pr-runner");
    let pr = t.path().join("pr-runner");
    std::fs::write(
        pr.join("manifests/pipeline.yaml"),
        MANIFEST.replace("ACC", "0.75"),
    )
    .unwrap();
    sh(
        &pr,
        "git checkout -q -b feature && git commit -qam 'better'",
    );
    let summary = run_workflow(&pr, "pull_request", &server);
    assert_eq!(
        entries(&server),
        3,
        "a pull request wrote to the shared cache"
    );
    assert!(
        summary.contains("| evaluate | command | config changed |"),
        "{summary}"
    );
    assert!(
        summary.contains("| evaluate | test_accuracy | 0.5000 | 0.7500 | +0.2500 |"),
        "{summary}"
    );
    assert!(summary.contains("2 restored from the remote"), "{summary}");
}
