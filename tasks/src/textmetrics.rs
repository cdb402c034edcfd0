//! Text-generation metrics: corpus BLEU (13a tokenisation, exponential smoothing) and chrF
//! (character 6-grams, beta 2) with several references per hypothesis, defined as sacreBLEU
//! 2.x defines its defaults so that our scores and sacreBLEU's agree on the same outputs; and
//! token edit distance (phoneme error rate for G2P).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The mteval-v13a tokenisation sacreBLEU applies before BLEU: punctuation and symbols split
/// off, periods and commas split unless between digits, a dash after a digit split.
pub fn tokenize_13a(line: &str) -> String {
    static RES: OnceLock<[(regex::Regex, &'static str); 4]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        let re = |s: &str| regex::Regex::new(s).expect("a valid pattern");
        [
            (re(r"([\{-~\[-` -&\(-\+:-@/])"), " ${1} "),
            (re(r"([^0-9])([\.,])"), "${1} ${2} "),
            (re(r"([\.,])([^0-9])"), " ${1} ${2}"),
            (re(r"([0-9])(-)"), "${1} ${2} "),
        ]
    });
    let mut line = line
        .trim_end()
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, rep) in res {
        line = re.replace_all(&line, *rep).into_owned();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Word n-grams of orders 1..=4 of a tokenised line, counted, and its length.
fn word_ngrams(line: &str) -> (HashMap<Vec<&str>, usize>, usize) {
    let toks: Vec<&str> = line.split_whitespace().collect();
    let mut m = HashMap::new();
    for n in 1..=4 {
        for w in toks.windows(n) {
            *m.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    (m, toks.len())
}

/// Corpus BLEU's sufficient statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BleuStats {
    pub correct: [u64; 4],
    pub total: [u64; 4],
    pub sys_len: u64,
    pub ref_len: u64,
}

/// The closest reference length (ties: the shorter), as BLEU's brevity penalty counts it.
fn closest_len(hyp: usize, refs: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for &r in refs {
        let d = hyp.abs_diff(r);
        best = match best {
            None => Some((d, r)),
            Some((bd, bl)) if d < bd || (d == bd && r < bl) => Some((d, r)),
            b => b,
        };
    }
    best.map(|b| b.1).unwrap_or(0)
}

/// One segment's BLEU statistics against its references (already tokenised).
fn bleu_segment(hyp: &str, refs: &[String], stats: &mut BleuStats) {
    let mut max_ref: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut lens = Vec::with_capacity(refs.len());
    for r in refs {
        let (g, len) = word_ngrams(r);
        lens.push(len);
        for (k, c) in g {
            let e = max_ref.entry(k).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let (h, hyp_len) = word_ngrams(hyp);
    stats.sys_len += hyp_len as u64;
    stats.ref_len += closest_len(hyp_len, &lens) as u64;
    for (g, c) in h {
        let n = g.len() - 1;
        stats.total[n] += c as u64;
        if let Some(&r) = max_ref.get(&g) {
            stats.correct[n] += c.min(r) as u64;
        }
    }
}

/// The BLEU score (0-100) of corpus statistics, with sacreBLEU's default `exp` smoothing.
pub fn bleu_score(s: &BleuStats) -> f64 {
    let bp = if s.sys_len < s.ref_len {
        if s.sys_len > 0 {
            (1.0 - s.ref_len as f64 / s.sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    if s.correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; 4];
    let mut smooth = 1.0;
    for (p, (&correct, &total)) in precisions.iter_mut().zip(s.correct.iter().zip(&s.total)) {
        if total == 0 {
            break;
        }
        *p = if correct == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total as f64)
        } else {
            100.0 * correct as f64 / total as f64
        };
    }
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp()
}

/// Corpus BLEU of `hyps`, each against its own references (any number, at least one).
pub fn corpus_bleu(hyps: &[String], refs: &[Vec<String>]) -> f64 {
    let mut s = BleuStats::default();
    for (h, rs) in hyps.iter().zip(refs) {
        let rs: Vec<String> = rs.iter().map(|r| tokenize_13a(r)).collect();
        bleu_segment(&tokenize_13a(h), &rs, &mut s);
    }
    bleu_score(&s)
}

const CHAR_ORDER: usize = 6;
const BETA: f64 = 2.0;

/// Character n-grams of orders 1..=6 of `s`, whose character boundaries are `bounds`.
fn ngram_counts<'a>(chars: usize, bounds: &[usize], s: &'a str) -> Vec<HashMap<&'a str, usize>> {
    (1..=CHAR_ORDER)
        .map(|n| {
            let mut m = HashMap::new();
            if chars >= n {
                for i in 0..=chars - n {
                    *m.entry(&s[bounds[i]..bounds[i + n]]).or_insert(0) += 1;
                }
            }
            m
        })
        .collect()
}

/// chrF's f-score (0-100) of flattened [hyp, ref, match] statistics per order, as sacreBLEU
/// computes it without eps smoothing: precision and recall averaged over the orders where both
/// sides have n-grams, then F-beta.
pub fn chrf_from_stats(stats: &[u64]) -> f64 {
    let factor = BETA * BETA;
    let (mut p_sum, mut r_sum, mut orders) = (0.0, 0.0, 0usize);
    for t in stats.chunks(3) {
        let (h, r, m) = (t[0], t[1], t[2]);
        if h > 0 && r > 0 {
            p_sum += m as f64 / h as f64;
            r_sum += m as f64 / r as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    let (p, r) = (p_sum / orders as f64, r_sum / orders as f64);
    if p + r == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * p * r / (factor * p + r)
}

fn chrf_match(h: &[HashMap<&str, usize>], r: &[HashMap<&str, usize>]) -> Vec<u64> {
    let mut out = Vec::with_capacity(3 * CHAR_ORDER);
    for (hn, rn) in h.iter().zip(r) {
        let (mut hyp, mut matched) = (0usize, 0usize);
        for (g, &c) in hn {
            hyp += c;
            if let Some(&rc) = rn.get(g) {
                matched += c.min(rc);
            }
        }
        out.push(if rn.is_empty() { 0 } else { hyp as u64 });
        out.push(rn.values().sum::<usize>() as u64);
        out.push(matched as u64);
    }
    out
}

/// One segment's chrF statistics: those of the reference with the best sentence chrF (the
/// first of equals).
fn chrf_segment(hyp: &str, refs: &[String]) -> Vec<u64> {
    let h = owned_ngrams(hyp);
    let hv = h.view();
    let mut best: Option<(f64, Vec<u64>)> = None;
    for r in refs {
        let rn = owned_ngrams(r);
        let s = chrf_match(&hv, &rn.view());
        let f = chrf_from_stats(&s);
        if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
            best = Some((f, s));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| vec![0; 3 * CHAR_ORDER])
}

/// A line's character n-grams, owning the squeezed line they slice.
struct Grams {
    line: String,
    bounds: Vec<usize>,
}

fn owned_ngrams(line: &str) -> Grams {
    let line: String = line.split_whitespace().collect();
    let mut bounds: Vec<usize> = line.char_indices().map(|(i, _)| i).collect();
    bounds.push(line.len());
    Grams { line, bounds }
}

impl Grams {
    fn view(&self) -> Vec<HashMap<&str, usize>> {
        ngram_counts(self.bounds.len() - 1, &self.bounds, &self.line)
    }
}

/// Corpus chrF (0-100) of `hyps`, each against its own references.
pub fn corpus_chrf(hyps: &[String], refs: &[Vec<String>]) -> f64 {
    let mut total = vec![0u64; 3 * CHAR_ORDER];
    for (h, rs) in hyps.iter().zip(refs) {
        for (t, s) in total.iter_mut().zip(chrf_segment(h, rs)) {
            *t += s;
        }
    }
    chrf_from_stats(&total)
}

/// Sentence chrF (0-100) of one hypothesis against one reference.
pub fn sentence_chrf(hyp: &str, reference: &str) -> f64 {
    chrf_from_stats(&chrf_segment(
        hyp,
        std::slice::from_ref(&reference.to_string()),
    ))
}

/// Levenshtein distance between two token sequences.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Token error rate over a corpus: the summed edit distance of each hypothesis to its closest
/// reference (whitespace tokens) over the summed length of those references (the phoneme
/// error rate when tokens are phonemes).
pub fn token_error_rate(hyps: &[String], refs: &[Vec<String>]) -> f64 {
    let (mut errors, mut len) = (0usize, 0usize);
    for (h, rs) in hyps.iter().zip(refs) {
        let ht: Vec<&str> = h.split_whitespace().collect();
        let best = rs
            .iter()
            .map(|r| {
                let rt: Vec<&str> = r.split_whitespace().collect();
                (edit_distance(&ht, &rt), rt.len())
            })
            .min_by_key(|&(d, l)| (d, std::cmp::Reverse(l)));
        if let Some((d, l)) = best {
            errors += d;
            len += l;
        }
    }
    if len == 0 {
        0.0
    } else {
        errors as f64 / len as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenisation_splits_as_13a_does() {
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        assert_eq!(
            tokenize_13a("It costs 3.50, or 1,000-2"),
            "It costs 3.50 , or 1,000 - 2"
        );
        assert_eq!(tokenize_13a("don't (x) a&amp;b"), "don't ( x ) a & b");
        assert_eq!(tokenize_13a("family-friendly"), "family-friendly");
    }

    #[test]
    fn identical_text_scores_100_and_unrelated_text_near_0() {
        let h = vec!["the cat sat on the mat".to_string()];
        let r = vec![vec!["the cat sat on the mat".to_string()]];
        assert!((corpus_bleu(&h, &r) - 100.0).abs() < 1e-9);
        assert!((corpus_chrf(&h, &r) - 100.0).abs() < 1e-9);
        let u = vec![vec!["qqq zzz".to_string()]];
        assert_eq!(corpus_bleu(&h, &u), 0.0);
        assert!(corpus_chrf(&h, &u) < 5.0);
    }

    #[test]
    fn the_best_reference_counts() {
        let h = vec!["a b c d e".to_string()];
        let one = corpus_chrf(&h, &[vec!["x y z".to_string()]]);
        let two = corpus_chrf(&h, &[vec!["x y z".to_string(), "a b c d e".to_string()]]);
        assert!(one < 10.0 && (two - 100.0).abs() < 1e-9, "{one} {two}");
    }

    #[test]
    fn edit_distance_and_error_rate() {
        assert_eq!(edit_distance(&["a", "b", "c"], &["a", "c"]), 1);
        assert_eq!(edit_distance::<&str>(&[], &["a", "c"]), 2);
        let per = token_error_rate(
            &["HH AH L OW".to_string()],
            &[vec!["HH AH0 L OW1".to_string(), "HH AH L OW".to_string()]],
        );
        assert_eq!(per, 0.0);
        let per = token_error_rate(&["HH L OW".to_string()], &[vec!["HH AH L OW".to_string()]]);
        assert!((per - 0.25).abs() < 1e-12);
    }
}
