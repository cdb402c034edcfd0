//! Crop images for detection questions: the region around a dispute's two boxes, enlarged, with
//! the annotated box drawn in orange and the proposed one in blue, so a person (or a review
//! page) sees exactly what is asked.

use std::path::Path;

use image::{Rgb, RgbImage};
use relabel_tasks::detection::{BBox, BoxSite};

/// The annotated box's colour.
pub const ANNOTATED: [u8; 3] = [255, 140, 0];
/// The proposed box's colour.
pub const PROPOSED: [u8; 3] = [30, 144, 255];

/// The region a crop shows, in image pixels: both boxes with half their size again around them
/// (at least 16 px), inside the image.
pub fn region(site: &BoxSite, width: u32, height: u32) -> [u32; 4] {
    let boxes: Vec<&BBox> = site.annotated.iter().chain(site.proposed.iter()).collect();
    let x0 = boxes.iter().map(|b| b.xmin).fold(f32::INFINITY, f32::min);
    let y0 = boxes.iter().map(|b| b.ymin).fold(f32::INFINITY, f32::min);
    let x1 = boxes
        .iter()
        .map(|b| b.xmax)
        .fold(f32::NEG_INFINITY, f32::max);
    let y1 = boxes
        .iter()
        .map(|b| b.ymax)
        .fold(f32::NEG_INFINITY, f32::max);
    let mx = ((x1 - x0) * 0.5).max(16.0);
    let my = ((y1 - y0) * 0.5).max(16.0);
    let c = |v: f32, hi: u32| v.round().clamp(0.0, hi as f32) as u32;
    let r = [
        c(x0 - mx, width),
        c(y0 - my, height),
        c(x1 + mx, width),
        c(y1 + my, height),
    ];
    [r[0], r[1], r[2].max(r[0] + 1), r[3].max(r[1] + 1)]
}

/// The crop of `image` for `site` with both boxes drawn, the region shown and the factor it
/// was enlarged by.
pub fn crop(image: &Path, site: &BoxSite) -> Result<(RgbImage, [u32; 4], u32), String> {
    Ok(render(&open(image)?, site, [true, true]))
}

/// A change as the report shows it: the same region before (the annotated box, orange) and
/// after (the box that replaced it, blue; none for a removed box).
pub fn before_after(image: &Path, site: &BoxSite) -> Result<(RgbImage, RgbImage), String> {
    let img = open(image)?;
    Ok((
        render(&img, site, [true, false]).0,
        render(&img, site, [false, true]).0,
    ))
}

fn open(image: &Path) -> Result<RgbImage, String> {
    Ok(image::open(image)
        .map_err(|e| format!("{}: {e}", image.display()))?
        .to_rgb8())
}

/// The region around `site`'s boxes, enlarged, with the annotated and/or the proposed box drawn
/// (`which`); the region and the enlargement.
fn render(img: &RgbImage, site: &BoxSite, which: [bool; 2]) -> (RgbImage, [u32; 4], u32) {
    let r = region(site, img.width(), img.height());
    let (w, h) = (
        (r[2] - r[0]).min(img.width() - r[0]),
        (r[3] - r[1]).min(img.height() - r[1]),
    );
    let part = image::imageops::crop_imm(img, r[0], r[1], w.max(1), h.max(1)).to_image();
    // Small regions are enlarged (nearest pixel, so nothing is invented) to about 256 px.
    let k = (256 / w.max(h).max(1)).clamp(1, 8);
    let mut big = image::imageops::resize(
        &part,
        part.width() * k,
        part.height() * k,
        image::imageops::FilterType::Nearest,
    );
    let boxes = [(site.annotated, ANNOTATED), (site.proposed, PROPOSED)];
    for ((b, colour), on) in boxes.into_iter().zip(which) {
        if let (Some(b), true) = (b, on) {
            draw(&mut big, &b, r, k, colour);
        }
    }
    (big, r, k)
}

/// Writes the crop of `image` for `site` to `to` (PNG); returns the region shown and the
/// factor it was enlarged by.
pub fn write_crop(image: &Path, site: &BoxSite, to: &Path) -> Result<([u32; 4], u32), String> {
    let (big, r, k) = crop(image, site)?;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    big.save(to).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok((r, k))
}

/// The crop as a `data:image/png;base64,...` URL (an OpenAI `image_url` content part's url),
/// with the region shown and the enlargement.
pub fn crop_data_url(image: &Path, site: &BoxSite) -> Result<(String, [u32; 4], u32), String> {
    use base64::Engine as _;
    let (big, r, k) = crop(image, site)?;
    let mut png = std::io::Cursor::new(Vec::new());
    big.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| format!("{}: encoding the crop: {e}", image.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
    Ok((format!("data:image/png;base64,{b64}"), r, k))
}

/// A detection flag's image file (under the dataset version `ds_dir`) and its dispute site.
pub fn image_of(
    f: &crate::flags::Flag,
    ds: &crate::data::Dataset,
    ds_dir: &Path,
) -> Result<(std::path::PathBuf, BoxSite), String> {
    let site: BoxSite =
        serde_json::from_value(f.site.clone()).map_err(|e| format!("row {}: {e}", f.id))?;
    let split = ds
        .split(&f.split)
        .ok_or_else(|| format!("no split {}", f.split))?;
    let row = relabel_tasks::rows::row_of(split, f)?;
    Ok((ds_dir.join(&split.texts[row]), site))
}

/// A detection question's crop for a multimodal endpoint: its data URL and what it shows.
#[derive(Debug, Clone)]
pub struct Picture {
    pub url: String,
    region: [u32; 4],
    scale: u32,
    annotated: Option<String>,
    proposed: Option<String>,
}

impl Picture {
    /// The crop of flag `f`'s image with both candidate boxes drawn.
    pub fn of(
        f: &crate::flags::Flag,
        ds: &crate::data::Dataset,
        ds_dir: &Path,
    ) -> Result<Picture, String> {
        let (image, site) = image_of(f, ds, ds_dir)?;
        let (url, region, scale) = crop_data_url(&image, &site)?;
        Ok(Picture {
            url,
            region,
            scale,
            annotated: site.annotated.map(|_| f.label.clone()),
            proposed: site.proposed.map(|_| f.candidate.clone()),
        })
    }

    /// What the picture shows, option by option in the order asked (which colour is whose
    /// box), without saying which reading is the current one.
    pub fn note(&self, order: [&str; 2]) -> String {
        let r = self.region;
        let mut s = format!(
            "The picture is the region x {}-{}, y {}-{} of the image, enlarged {}x.",
            r[0], r[2], r[1], r[3], self.scale
        );
        for o in order {
            let colour = if self.annotated.as_deref() == Some(o) {
                Some("orange")
            } else if self.proposed.as_deref() == Some(o) {
                Some("blue")
            } else {
                None
            };
            match colour {
                Some(c) => s.push_str(&format!(" Option \"{o}\" is the {c} box.")),
                None => s.push_str(&format!(" Option \"{o}\" draws no box.")),
            }
        }
        s
    }
}

/// A two-pixel outline of `b` (image pixels) on the crop of region `r` enlarged `k` times.
fn draw(img: &mut RgbImage, b: &BBox, r: [u32; 4], k: u32, colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let at = |v: f32, o: u32| ((v - o as f32) * k as f32).round() as i64;
    let (x0, y0, x1, y1) = (
        at(b.xmin, r[0]),
        at(b.ymin, r[1]),
        at(b.xmax, r[0]) - 1,
        at(b.ymax, r[1]) - 1,
    );
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, Rgb(colour));
        }
    };
    for t in 0..2 {
        for x in x0..=x1 {
            put(x, y0 + t);
            put(x, y1 - t);
        }
        for y in y0..=y1 {
            put(x0 + t, y);
            put(x1 - t, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_shows_both_boxes_in_their_colours() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.png");
        RgbImage::from_pixel(100, 80, Rgb([0, 0, 0]))
            .save(&src)
            .unwrap();
        let b = |x0: f32, x1: f32| BBox {
            class: 0,
            xmin: x0,
            ymin: 20.0,
            xmax: x1,
            ymax: 40.0,
        };
        let site = BoxSite {
            issue: relabel_tasks::detection::BoxIssue::Location,
            annotated: Some(b(10.0, 30.0)),
            proposed: Some(b(40.0, 60.0)),
        };
        let out = dir.path().join("crops/0.png");
        let (r, k) = write_crop(&src, &site, &out).unwrap();
        assert_eq!(r, [0, 4, 85, 56]);
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.width(), 85 * k);
        // The annotated box's left edge and the proposed box's left edge.
        assert_eq!(img.get_pixel(10 * k, 26 * k).0, ANNOTATED);
        assert_eq!(img.get_pixel(40 * k, 26 * k).0, PROPOSED);
        // Inside a box, the image itself.
        assert_eq!(img.get_pixel(20 * k, 26 * k).0, [0, 0, 0]);
    }
}
