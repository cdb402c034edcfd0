//! `cargo xtask bench knn`: exact top-10 cosine neighbours of 10,000 queries among 1,000,000 x
//! 384 embeddings: the ML worker's blocked kNN (libtorch matmul + top-k, corpus streamed in
//! blocks) against numpy (matrix product + argpartition, the same blocks and thread count) and
//! faiss-cpu's exact `IndexFlatIP` (same threads), side by side in one run, with peak memory
//! (`/usr/bin/time`).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const N: usize = 1_000_000;
const Q: usize = 10_000;
const D: usize = 384;
const K: usize = 10;
const BLOCK: usize = 65_536;
const QBATCH: usize = 2048;
const THREADS: usize = 2;

/// Unit-length rows from a seeded generator (sums of uniforms: roughly Gaussian directions).
fn write_rows(path: &Path, rows: usize, seed: u64) -> Result<()> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    let mut v = vec![0f32; D];
    for _ in 0..rows {
        for x in v.iter_mut() {
            *x = next() + next() + next();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for x in &v {
            f.write_all(&(x / norm).to_le_bytes())?;
        }
    }
    f.flush()?;
    Ok(())
}

/// Runs `cmd` under `/usr/bin/time -f %M`; returns (seconds, peak RSS in kB).
fn timed(cmd: &mut Command, what: &str) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} failed: {err}");
    }
    let kb = err
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok((secs, kb))
}

const NUMPY: &str = r#"
import sys, numpy as np
corpus, queries, out, n, q, d, k, block, qb = sys.argv[1:3] + [sys.argv[3]] + [int(x) for x in sys.argv[4:]]
Q = np.fromfile(queries, dtype='<f4').reshape(q, d)
best_s = np.full((q, k), -np.inf, dtype=np.float32)
best_i = np.full((q, k), -1, dtype=np.int64)
C = np.memmap(corpus, dtype='<f4', mode='r', shape=(n, d))
for start in range(0, n, block):
    B = np.ascontiguousarray(C[start:start + block])
    for q0 in range(0, q, qb):
        S = Q[q0:q0 + qb] @ B.T
        kk = min(k, S.shape[1])
        part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(S, part, axis=1)
        cs = np.concatenate([best_s[q0:q0 + qb], ps], axis=1)
        ci = np.concatenate([best_i[q0:q0 + qb], part + start], axis=1)
        top = np.argpartition(-cs, k - 1, axis=1)[:, :k]
        best_s[q0:q0 + qb] = np.take_along_axis(cs, top, axis=1)
        best_i[q0:q0 + qb] = np.take_along_axis(ci, top, axis=1)
order = np.argsort(-best_s, axis=1, kind='stable')
np.take_along_axis(best_i, order, axis=1).astype('<i8').tofile(out)
"#;

/// faiss's exact inner-product index over the whole corpus, searched with every query at once.
const FAISS: &str = r#"
import sys, numpy as np, faiss
corpus, queries, out, n, q, d, k, threads = sys.argv[1:3] + [sys.argv[3]] + [int(x) for x in sys.argv[4:]]
faiss.omp_set_num_threads(threads)
index = faiss.IndexFlatIP(d)
index.add(np.fromfile(corpus, dtype='<f4').reshape(n, d))
_, I = index.search(np.fromfile(queries, dtype='<f4').reshape(q, d), k)
I.astype('<i8').tofile(out)
"#;

/// Queries whose top-`K` id sets are the same in two result files (order among near-ties may
/// differ).
fn same_sets(a: &Path, b: &Path) -> Result<usize> {
    let (x, y) = (std::fs::read(a)?, std::fs::read(b)?);
    // The worker's file holds the ids, then the scores; the peers' the ids alone.
    if x.len() < Q * K * 8 || y.len() < Q * K * 8 {
        bail!(
            "{} or {} holds fewer than {Q} x {K} ids",
            a.display(),
            b.display()
        );
    }
    let id = |b: &[u8], t: usize| i64::from_le_bytes(b[t * 8..t * 8 + 8].try_into().expect("8"));
    Ok((0..Q)
        .filter(|qi| {
            let mut s: Vec<i64> = (0..K).map(|j| id(&x, qi * K + j)).collect();
            let mut t: Vec<i64> = (0..K).map(|j| id(&y, qi * K + j)).collect();
            s.sort_unstable();
            t.sort_unstable();
            s == t
        })
        .count())
}

/// A Python peer's `script` on `paths` then `numbers`, at `THREADS` BLAS/OpenMP threads, under
/// [`timed`].
fn peer(
    py: &Path,
    script: &str,
    paths: &[&Path],
    numbers: &[usize],
    what: &str,
) -> Result<(f64, u64)> {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M"])
        .arg(py)
        .arg("-c")
        .arg(script)
        .args(paths);
    cmd.args(numbers.iter().map(|x| x.to_string()));
    for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        cmd.env(var, THREADS.to_string());
    }
    timed(&mut cmd, what)
}

pub fn knn(root: &Path, _args: &[String]) -> Result<Value> {
    crate::relabel_bin(root)?;
    let worker = root.join("target/release/relabel-ml");
    let dir = crate::home_cache().join("bench/knn");
    std::fs::create_dir_all(&dir)?;
    let corpus = dir.join(format!("corpus-{N}x{D}.f32"));
    let queries = dir.join(format!("queries-{Q}x{D}.f32"));
    if !corpus.exists() {
        eprintln!(
            "bench knn: writing {N} x {D} unit vectors ({} MB)",
            (N * D * 4) >> 20
        );
        let tmp = corpus.with_extension("tmp");
        write_rows(&tmp, N, 1)?;
        std::fs::rename(&tmp, &corpus)?;
    }
    if !queries.exists() {
        write_rows(&queries, Q, 2)?;
    }
    // Ours: the worker's task, as the similarity miner runs it.
    let out = dir.join("ours.bin");
    let req = dir.join("knn-request.json");
    std::fs::write(
        &req,
        serde_json::to_vec(&json!({
            "corpus": corpus, "queries": queries, "dim": D, "k": K, "normalize": false,
            "block_rows": BLOCK, "query_batch": QBATCH, "threads": THREADS, "out": out,
        }))?,
    )?;
    let (ours_s, ours_kb) = timed(
        Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(&worker)
            .args(["task", "knn"])
            .arg(&req),
        "relabel-ml task knn",
    )?;
    println!(
        "relabel-ml knn: {ours_s:.1} s, peak RSS {} MB",
        ours_kb / 1024
    );

    let py = crate::bench::bench_venv("numpy", &["numpy==2.4.6"])?.join("bin/python");
    let peer_out = dir.join("numpy.bin");
    let (np_s, np_kb) = peer(
        &py,
        NUMPY,
        &[&corpus, &queries, &peer_out],
        &[N, Q, D, K, BLOCK, QBATCH],
        "numpy",
    )?;
    println!("numpy: {np_s:.1} s, peak RSS {} MB", np_kb / 1024);

    let fpy = crate::bench::bench_venv("faiss", &["faiss-cpu==1.15.1", "numpy==2.4.6"])?
        .join("bin/python");
    let faiss_out = dir.join("faiss.bin");
    let (faiss_s, faiss_kb) = peer(
        &fpy,
        FAISS,
        &[&corpus, &queries, &faiss_out],
        &[N, Q, D, K, THREADS],
        "faiss",
    )?;
    println!("faiss: {faiss_s:.1} s, peak RSS {} MB", faiss_kb / 1024);

    // Same neighbours? Compare the id sets per query.
    let same = same_sets(&out, &peer_out)?;
    let same_faiss = same_sets(&out, &faiss_out)?;
    let faiss_version = Command::new(&fpy)
        .args(["-c", "import faiss; print(faiss.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let numpy_version = Command::new(&py)
        .args(["-c", "import numpy; print(numpy.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "ratio ours/numpy: {:.2} (target <= 1.2); identical top-{K} sets: {same} of {Q}",
        ours_s / np_s
    );
    println!(
        "ratio ours/faiss: {:.2} (target <= 1.2); identical top-{K} sets: {same_faiss} of {Q}",
        ours_s / faiss_s
    );
    let targets = vec![
        crate::bench::target(
            "time / numpy's (same blocks, threads)",
            "<= 1.2",
            ours_s / np_s,
            ours_s / np_s <= 1.2,
        ),
        crate::bench::target(
            "time / faiss-cpu IndexFlatIP's (same threads)",
            "<= 1.2",
            ours_s / faiss_s,
            ours_s / faiss_s <= 1.2,
        ),
        crate::bench::target(
            "queries whose top-10 set is faiss's",
            &format!("= {Q}"),
            same_faiss as f64,
            same_faiss == Q,
        ),
    ];
    Ok(json!({
        "corpus": [N, D], "queries": Q, "k": K, "block_rows": BLOCK, "query_batch": QBATCH,
        "threads": THREADS,
        "relabel_ml": {"seconds": ours_s, "peak_rss_kb": ours_kb},
        "numpy": {"version": numpy_version, "seconds": np_s, "peak_rss_kb": np_kb},
        "faiss": {"version": faiss_version, "index": "IndexFlatIP", "seconds": faiss_s, "peak_rss_kb": faiss_kb},
        "ratio": ours_s / np_s,
        "ratio_faiss": ours_s / faiss_s,
        "identical_topk_sets": same,
        "identical_topk_sets_faiss": same_faiss,
        "targets": targets,
    }))
}
