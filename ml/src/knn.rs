//! Exact k-nearest neighbours by inner product (cosine on normalised rows), streaming the corpus
//! in blocks so memory stays bounded: per block, one matrix product per query batch, a top-k,
//! and a merge with the running top-k.

use std::io::Read;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tch::{Kind, Tensor};

pub use relabel_tasks::protocol::KnnRequest;

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn normalise(t: Tensor) -> Tensor {
    let n = t
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    t / n
}

pub fn run(req: KnnRequest) -> Result<serde_json::Map<String, serde_json::Value>> {
    if let Some(t) = req.threads {
        tch::set_num_threads(t.max(1));
    }
    let d = req.dim;
    if d == 0 || req.k == 0 {
        bail!("dim and k must be positive");
    }
    let qbytes = std::fs::read(&req.queries)
        .with_context(|| format!("reading {}", req.queries.display()))?;
    if !qbytes.len().is_multiple_of(4 * d) {
        bail!(
            "{}: {} bytes is not a whole number of {d}-dim f32 rows",
            req.queries.display(),
            qbytes.len()
        );
    }
    let nq = qbytes.len() / (4 * d);
    let mut q = Tensor::from_slice(&read_f32(&qbytes)).view([nq as i64, d as i64]);
    drop(qbytes);
    if req.normalize {
        q = normalise(q);
    }
    let size = std::fs::metadata(&req.corpus)?.len() as usize;
    if !size.is_multiple_of(4 * d) {
        bail!(
            "{}: {size} bytes is not a whole number of {d}-dim f32 rows",
            req.corpus.display()
        );
    }
    let n = size / (4 * d);
    let k = req.k.min(n.max(1));
    let mut best_s = Tensor::full(
        [nq as i64, k as i64],
        f64::NEG_INFINITY,
        (Kind::Float, tch::Device::Cpu),
    );
    let mut best_i = Tensor::full(
        [nq as i64, k as i64],
        -1i64,
        (Kind::Int64, tch::Device::Cpu),
    );
    let mut file = std::io::BufReader::with_capacity(1 << 22, std::fs::File::open(&req.corpus)?);
    let mut buf = vec![0u8; req.block_rows * d * 4];
    let mut start = 0usize;
    let qb = req.query_batch.max(1);
    while start < n {
        let rows = req.block_rows.min(n - start);
        let bytes = &mut buf[..rows * d * 4];
        file.read_exact(bytes)?;
        let mut block = Tensor::from_slice(&read_f32(bytes)).view([rows as i64, d as i64]);
        if req.normalize {
            block = normalise(block);
        }
        let bt = block.transpose(0, 1).contiguous();
        let kb = k.min(rows) as i64;
        let mut q0 = 0usize;
        let mut new_s = Vec::new();
        let mut new_i = Vec::new();
        while q0 < nq {
            let q1 = (q0 + qb).min(nq);
            let scores = q.narrow(0, q0 as i64, (q1 - q0) as i64).mm(&bt);
            let (s, i) = scores.topk(kb, 1, true, true);
            let i = i + start as i64;
            // Merge with the running best: ties keep the lower row (earlier blocks come first).
            let cat_s = Tensor::cat(&[best_s.narrow(0, q0 as i64, (q1 - q0) as i64), s], 1);
            let cat_i = Tensor::cat(&[best_i.narrow(0, q0 as i64, (q1 - q0) as i64), i], 1);
            let (ms, pos) = cat_s.topk(k as i64, 1, true, true);
            new_s.push(ms);
            new_i.push(cat_i.gather(1, &pos, false));
            q0 = q1;
        }
        best_s = Tensor::cat(&new_s, 0);
        best_i = Tensor::cat(&new_i, 0);
        start += rows;
    }
    let ids: Vec<i64> = Vec::<i64>::try_from(best_i.flatten(0, -1))?;
    let scores: Vec<f32> = Vec::<f32>::try_from(best_s.flatten(0, -1))?;
    let mut out = Vec::with_capacity(ids.len() * 12);
    for x in &ids {
        out.extend_from_slice(&x.to_le_bytes());
    }
    for x in &scores {
        out.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&req.out, out)?;
    let mut m = serde_json::Map::new();
    m.insert("queries".into(), json!(nq));
    m.insert("corpus_rows".into(), json!(n));
    m.insert("k".into(), json!(k));
    Ok(m)
}
