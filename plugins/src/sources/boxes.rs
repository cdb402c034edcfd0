//! Reading box annotations for `dataset` with `task: detection`: COCO JSON (`.json`), Pascal VOC
//! XML (`.xml`, or a folder of them) and CSV (`image,xmin,ymin,xmax,ymax,label`, one box per
//! line, `image_path` also read as `image`; a line with empty corners is an image without boxes). Every image is copied into the
//! dataset artifact under a name its content picks, so the artifact holds what it was built
//! from; every box is checked (inside its image, a positive area, a known class) and problems
//! are named by file and record (COCO: the annotation's index and id; VOC: line:col; CSV: line).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use relabel_tasks::data::{LabelSpec, Split};
use relabel_tasks::detection::{check_box, BBox};

use crate::sources::dataset::BadRow;

/// One image as read: its file (as the annotations name it), size (None: read it from the
/// file), and boxes with class names.
#[derive(Debug, Clone, Default)]
pub struct RawImage {
    pub file: String,
    pub size: Option<[u32; 2]>,
    /// (where, class name, corners): `where` names the record for messages.
    pub boxes: Vec<(String, String, [f64; 4])>,
    /// Where the image itself is named (for messages about it).
    pub at: String,
}

/// Reads the images and boxes of one annotation file (or VOC folder); an error for a file that
/// cannot be read at all, bad records in `bad`. Also returns COCO's category names in id order.
pub fn read_annotations(
    path: &Path,
    shown: &str,
    bad: &mut Vec<BadRow>,
) -> Result<(Vec<RawImage>, Vec<String>), String> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{shown}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "{shown}: a folder of annotations holds no .xml files"
            ));
        }
        let mut out = Vec::new();
        for f in files {
            let name = format!(
                "{shown}/{}",
                f.file_name().unwrap_or_default().to_string_lossy()
            );
            out.push(read_voc(&f, &name)?);
        }
        return Ok((out, Vec::new()));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => read_coco(path, shown, bad),
        "xml" => Ok((vec![read_voc(path, shown)?], Vec::new())),
        "csv" => Ok((read_csv(path, shown, bad)?, Vec::new())),
        _ => Err(format!(
            "{shown}: detection annotations are COCO JSON (.json), Pascal VOC XML (.xml or a folder of them) or CSV (.csv: image,xmin,ymin,xmax,ymax,label)"
        )),
    }
}

fn read_coco(
    path: &Path,
    shown: &str,
    bad: &mut Vec<BadRow>,
) -> Result<(Vec<RawImage>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{shown}:{}:{}: {e}", e.line(), e.column()))?;
    let list = |key: &str| -> Result<&Vec<serde_json::Value>, String> {
        v.get(key)
            .and_then(|x| x.as_array())
            .ok_or_else(|| format!("{shown}: a COCO file has a list \"{key}\""))
    };
    let mut categories: Vec<(i64, String)> = Vec::new();
    for (i, c) in list("categories")?.iter().enumerate() {
        match (c["id"].as_i64(), c["name"].as_str()) {
            (Some(id), Some(n)) => categories.push((id, n.to_string())),
            _ => {
                return Err(format!(
                    "{shown}: categories[{i}] needs an integer \"id\" and a string \"name\""
                ))
            }
        }
    }
    categories.sort();
    let cat: HashMap<i64, &str> = categories.iter().map(|(i, n)| (*i, n.as_str())).collect();
    let mut images: Vec<RawImage> = Vec::new();
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    for (i, im) in list("images")?.iter().enumerate() {
        let at = format!("images[{i}]");
        let (Some(id), Some(file)) = (im["id"].as_i64(), im["file_name"].as_str()) else {
            bad.push(BadRow {
                file: shown.to_string(),
                row: 0,
                reason: format!(
                    "{shown}: {at}: needs an integer \"id\" and a string \"file_name\""
                ),
            });
            continue;
        };
        let size = match (im["width"].as_u64(), im["height"].as_u64()) {
            (Some(w), Some(h)) => Some([w as u32, h as u32]),
            _ => None,
        };
        by_id.insert(id, images.len());
        images.push(RawImage {
            file: file.to_string(),
            size,
            boxes: Vec::new(),
            at: format!("{shown}: {at}"),
        });
    }
    for (i, a) in list("annotations")?.iter().enumerate() {
        let at = match a["id"].as_i64() {
            Some(id) => format!("annotations[{i}] (id {id})"),
            None => format!("annotations[{i}]"),
        };
        let fail = |reason: String| BadRow {
            file: shown.to_string(),
            row: 0,
            reason: format!("{shown}: {at}: {reason}"),
        };
        let Some(&img) = a["image_id"].as_i64().and_then(|id| by_id.get(&id)) else {
            bad.push(fail(format!(
                "image_id {} is not an image of the file",
                a["image_id"]
            )));
            continue;
        };
        let Some(name) = a["category_id"].as_i64().and_then(|c| cat.get(&c)) else {
            bad.push(fail(format!(
                "category_id {} is not a category of the file",
                a["category_id"]
            )));
            continue;
        };
        let bb: Option<Vec<f64>> = a["bbox"]
            .as_array()
            .map(|xs| xs.iter().filter_map(|x| x.as_f64()).collect());
        let Some([x, y, w, h]) = bb.as_deref().and_then(|b| <[f64; 4]>::try_from(b).ok()) else {
            bad.push(fail(
                "\"bbox\" must be four numbers [x, y, width, height]".into(),
            ));
            continue;
        };
        images[img].boxes.push((
            format!("{shown}: {at}"),
            name.to_string(),
            [x, y, x + w, y + h],
        ));
    }
    Ok((images, categories.into_iter().map(|(_, n)| n).collect()))
}

fn read_voc(path: &Path, shown: &str) -> Result<RawImage, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
    let pos = |n: roxmltree::Node| {
        let p = doc.text_pos_at(n.range().start);
        format!("{shown}:{}:{}", p.row, p.col)
    };
    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children().find(|c| c.has_tag_name(tag))
    }
    let text_of = |n: roxmltree::Node, tag: &str| -> Result<String, String> {
        child(n, tag)
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
            .ok_or_else(|| format!("{}: <{}> needs a <{tag}>", pos(n), n.tag_name().name()))
    };
    let num = |n: roxmltree::Node, tag: &str| -> Result<f64, String> {
        let t = text_of(n, tag)?;
        t.parse::<f64>().map_err(|_| {
            format!(
                "{}: <{tag}> is \"{t}\", not a number",
                pos(child(n, tag).unwrap_or(n))
            )
        })
    };
    let root = doc.root_element();
    let file = text_of(root, "filename")?;
    let size = match child(root, "size") {
        Some(s) => Some([num(s, "width")? as u32, num(s, "height")? as u32]),
        None => None,
    };
    let mut boxes = Vec::new();
    for o in root.children().filter(|c| c.has_tag_name("object")) {
        let name = text_of(o, "name")?;
        let b =
            child(o, "bndbox").ok_or_else(|| format!("{}: <object> needs a <bndbox>", pos(o)))?;
        boxes.push((
            pos(o),
            name,
            [
                num(b, "xmin")?,
                num(b, "ymin")?,
                num(b, "xmax")?,
                num(b, "ymax")?,
            ],
        ));
    }
    Ok(RawImage {
        file,
        size,
        boxes,
        at: pos(root),
    })
}

fn read_csv(path: &Path, shown: &str, bad: &mut Vec<BadRow>) -> Result<Vec<RawImage>, String> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| format!("{shown}: {e}"))?;
    let header = r.headers().map_err(|e| format!("{shown}: {e}"))?.clone();
    let col = |name: &str| -> Result<usize, String> {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            format!(
                "{shown}:1: the header has no column \"{name}\" (box CSVs have image,xmin,ymin,xmax,ymax,label)"
            )
        })
    };
    // `image_path` is DeepForest's name for the column.
    let (ci, cx0, cy0, cx1, cy1, cl) = (
        col("image").or_else(|e| col("image_path").map_err(|_| e))?,
        col("xmin")?,
        col("ymin")?,
        col("xmax")?,
        col("ymax")?,
        col("label")?,
    );
    let mut images: Vec<RawImage> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let fail = |reason: String| BadRow {
            file: shown.to_string(),
            row: line,
            reason,
        };
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                bad.push(fail(e.to_string()));
                continue;
            }
        };
        let get = |k: usize| rec.get(k).unwrap_or("").trim();
        let file = get(ci);
        if file.is_empty() {
            bad.push(fail("empty \"image\"".into()));
            continue;
        }
        let k = *at.entry(file.to_string()).or_insert_with(|| {
            images.push(RawImage {
                file: file.to_string(),
                size: None,
                boxes: Vec::new(),
                at: format!("{shown}:{line}"),
            });
            images.len() - 1
        });
        let corners = [get(cx0), get(cy0), get(cx1), get(cy1)];
        if corners.iter().all(|c| c.is_empty()) && get(cl).is_empty() {
            continue; // an image without boxes
        }
        let parsed: Result<Vec<f64>, _> = corners.iter().map(|c| c.parse::<f64>()).collect();
        let Ok(c) = parsed else {
            bad.push(fail(format!(
                "the corners {corners:?} are not four numbers"
            )));
            continue;
        };
        images[k].boxes.push((
            format!("{shown}:{line}"),
            get(cl).to_string(),
            [c[0], c[1], c[2], c[3]],
        ));
    }
    Ok(images)
}

/// Turns read images into a split: finds each image (under `image_dir`), reads its size when
/// the annotations do not give it (and checks it when they do), copies it into
/// `artifact/images/` under a name its content picks, and checks every box. Returns the split;
/// problems go to `bad`.
#[allow(clippy::too_many_arguments)]
pub fn to_split(
    images: Vec<RawImage>,
    spec: &LabelSpec,
    image_dir: &Path,
    artifact: Option<&Path>,
    shown: &str,
    seen: &mut HashMap<String, String>,
    bad: &mut Vec<BadRow>,
) -> Split {
    let mut split = Split::default();
    for im in images {
        let fail = |reason: String| BadRow {
            file: shown.to_string(),
            row: 0,
            reason,
        };
        let file = image_dir.join(&im.file);
        let dims = match image::ImageReader::open(&file).and_then(|r| r.with_guessed_format()) {
            Ok(r) => r.into_dimensions().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let [w, h] = match (dims, im.size) {
            (Ok((w, h)), Some([aw, ah])) if (w, h) != (aw, ah) => {
                bad.push(fail(format!(
                    "{}: the annotations say {} is {aw}x{ah}, but the image is {w}x{h}",
                    im.at, im.file
                )));
                continue;
            }
            (Ok((w, h)), _) => [w, h],
            (Err(e), _) => {
                bad.push(fail(format!(
                    "{}: image {} cannot be read ({}): {e}",
                    im.at,
                    im.file,
                    file.display()
                )));
                continue;
            }
        };
        let mut boxes = Vec::with_capacity(im.boxes.len());
        let mut ok = true;
        for (at, name, c) in &im.boxes {
            let Some(class) = spec.index(name) else {
                bad.push(fail(format!(
                    "{at}: class \"{name}\" is not a label of the spec{}",
                    relabel_engine::diag::did_you_mean(name, spec.names().iter().copied())
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default()
                )));
                ok = false;
                continue;
            };
            let b = BBox {
                class,
                xmin: c[0] as f32,
                ymin: c[1] as f32,
                xmax: c[2] as f32,
                ymax: c[3] as f32,
            };
            if let Err(e) = check_box(&b, w as f64, h as f64) {
                bad.push(fail(format!("{at}: {e}")));
                ok = false;
                continue;
            }
            // Boxes may overhang by the half pixel `check_box` allows: clamp them in.
            boxes.push(BBox {
                xmin: b.xmin.max(0.0),
                ymin: b.ymin.max(0.0),
                xmax: b.xmax.min(w as f32),
                ymax: b.ymax.min(h as f32),
                ..b
            });
        }
        if !ok {
            continue;
        }
        if let Some(first) = seen.insert(im.file.clone(), im.at.clone()) {
            bad.push(fail(format!(
                "{}: image {} is annotated twice (first at {first})",
                im.at, im.file
            )));
            continue;
        }
        let stored = match artifact {
            Some(dir) => match copy_image(&file, dir) {
                Ok(p) => p,
                Err(e) => {
                    bad.push(fail(format!("{}: copying {}: {e}", im.at, file.display())));
                    continue;
                }
            },
            None => file.display().to_string(),
        };
        split.ids.push(im.file.clone());
        split.texts.push(stored);
        split.sizes.push([w, h]);
        split.boxes.push(boxes);
    }
    split
}

/// Copies an image into `dir/images/` as `<digest>.<ext>`; returns the path relative to `dir`.
fn copy_image(file: &Path, dir: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(file)?;
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_else(|| "img".into());
    let images = relabel_tasks::data::IMAGES_DIR;
    let name = format!("{images}/{}.{ext}", &blake3::hash(&bytes).to_hex()[..24]);
    let to = dir.join(&name);
    if !to.exists() {
        std::fs::create_dir_all(dir.join(images))?;
        std::fs::write(&to, bytes)?;
    }
    Ok(name)
}

/// The label set of a detection dataset without `labels:`: COCO's categories (in id order)
/// when the train file is COCO, else the distinct class names of train's boxes, sorted.
pub fn spec_of(categories: &[String], images: &[RawImage]) -> Option<LabelSpec> {
    let names: Vec<String> = if !categories.is_empty() {
        categories.to_vec()
    } else {
        let set: std::collections::BTreeSet<&str> = images
            .iter()
            .flat_map(|im| im.boxes.iter().map(|(_, n, _)| n.as_str()))
            .collect();
        set.into_iter().map(str::to_string).collect()
    };
    (!names.is_empty()).then(|| LabelSpec::from_names(names))
}

/// Box counts per class of a split, by name.
pub fn per_class(split: &Split, spec: &LabelSpec) -> BTreeMap<String, usize> {
    let mut m: BTreeMap<String, usize> = spec.names().iter().map(|n| (n.to_string(), 0)).collect();
    for b in split.boxes.iter().flatten() {
        if let Some(n) = spec.names().get(b.class as usize) {
            *m.entry(n.to_string()).or_default() += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(dir: &Path, name: &str, w: u32, h: u32) {
        image::GrayImage::new(w, h).save(dir.join(name)).unwrap();
    }

    #[test]
    fn voc_and_csv_annotations_read_and_bad_boxes_are_named_by_line() {
        let d = tempfile::tempdir().unwrap();
        png(d.path(), "a.png", 40, 30);
        png(d.path(), "b.png", 20, 20);
        std::fs::write(
            d.path().join("a.xml"),
            "<annotation>\n  <filename>a.png</filename>\n  <size><width>40</width><height>30</height></size>\n  <object>\n    <name>cat</name>\n    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>25</ymax></bndbox>\n  </object>\n</annotation>\n",
        )
        .unwrap();
        let mut bad = Vec::new();
        let (ims, _) = read_annotations(&d.path().join("a.xml"), "a.xml", &mut bad).unwrap();
        assert_eq!(ims[0].boxes.len(), 1);
        assert_eq!(ims[0].boxes[0].0, "a.xml:4:3");
        // DeepForest's CSV names the image column `image_path`; a line with no corners is an
        // image without boxes.
        std::fs::write(
            d.path().join("b.csv"),
            "image_path,xmin,ymin,xmax,ymax,label\na.png,1,1,10,10,dog\nb.png,,,,,\na.png,5,5,50,9,cat\n",
        )
        .unwrap();
        let (ims, _) = read_annotations(&d.path().join("b.csv"), "b.csv", &mut bad).unwrap();
        assert_eq!(ims.len(), 2);
        assert!(ims[1].boxes.is_empty());
        let spec = LabelSpec::from_names(["cat".to_string(), "dog".to_string()]);
        let mut seen = HashMap::new();
        let split = to_split(ims, &spec, d.path(), None, "b.csv", &mut seen, &mut bad);
        // a.png has a box past its right edge (x 50 in a 40-wide image): left out, named.
        assert_eq!(split.ids, vec!["b.png"]);
        assert_eq!(bad.len(), 1);
        let e = bad[0].to_string();
        assert!(
            e.starts_with("b.csv:4: ") && e.contains("outside the 40x30 image"),
            "{e}"
        );
        // A number that is not one names its element.
        std::fs::write(
            d.path().join("c.xml"),
            "<annotation><filename>a.png</filename>\n<object><name>cat</name><bndbox><xmin>one</xmin><ymin>2</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object></annotation>",
        )
        .unwrap();
        let e = read_annotations(&d.path().join("c.xml"), "c.xml", &mut bad).unwrap_err();
        assert!(e.starts_with("c.xml:2:33: <xmin> is \"one\""), "{e}");
    }
}
