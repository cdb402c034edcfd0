//! Parquet tables: the on-disk form of dataset splits and predictions, so that pandas, polars,
//! DuckDB or an external trainer read and write them. Writing builds one Arrow record batch;
//! reading gathers named columns across batches and accepts the types other writers choose
//! (any integer width, float32 or float64, plain or dictionary strings, list or fixed-size list).

use std::io;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

fn bad(path: &Path, msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

/// Columns to write, in order.
#[derive(Default)]
pub struct TableWriter {
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl TableWriter {
    pub fn new() -> TableWriter {
        TableWriter::default()
    }

    fn push(&mut self, name: &str, a: ArrayRef) -> &mut Self {
        self.fields
            .push(Field::new(name, a.data_type().clone(), a.null_count() > 0));
        self.columns.push(a);
        self
    }

    pub fn strings(&mut self, name: &str, xs: &[String]) -> &mut Self {
        self.push(
            name,
            Arc::new(arrow_array::StringArray::from_iter_values(xs)),
        )
    }

    /// Class ids written as their names (a dictionary column: pandas reads a categorical).
    pub fn categories(&mut self, name: &str, ids: &[u32], names: &[&str]) -> &mut Self {
        let keys = arrow_array::Int32Array::from_iter_values(ids.iter().map(|&i| i as i32));
        let values = Arc::new(arrow_array::StringArray::from_iter_values(names));
        let dict = arrow_array::DictionaryArray::<Int32Type>::try_new(keys, values)
            .expect("class ids index the label names");
        self.push(name, Arc::new(dict))
    }

    pub fn f32s(&mut self, name: &str, xs: &[f32]) -> &mut Self {
        self.push(name, Arc::new(arrow_array::Float32Array::from(xs.to_vec())))
    }

    pub fn i32s(&mut self, name: &str, xs: &[i32]) -> &mut Self {
        self.push(name, Arc::new(arrow_array::Int32Array::from(xs.to_vec())))
    }

    /// A row-major `rows x width` matrix as a fixed-size list column.
    pub fn f32_rows(&mut self, name: &str, xs: &[f32], width: usize) -> &mut Self {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Arc::new(arrow_array::Float32Array::from(xs.to_vec()));
        let list = arrow_array::FixedSizeListArray::try_new(item, width as i32, values, None)
            .expect("the matrix is rows x width");
        self.push(name, Arc::new(list))
    }

    /// A list of strings per row (e.g. a sentence's tokens).
    pub fn string_lists(&mut self, name: &str, rows: &[Vec<String>]) -> &mut Self {
        let mut b =
            arrow_array::builder::ListBuilder::new(arrow_array::builder::StringBuilder::new());
        for r in rows {
            for x in r {
                b.values().append_value(x);
            }
            b.append(true);
        }
        self.push(name, Arc::new(b.finish()))
    }

    /// A list of `width`-float lists per row: row `i` has `lens[i]` items (e.g. one probability
    /// row per token); `xs` is every item's floats, flattened in order.
    pub fn f32_row_lists(
        &mut self,
        name: &str,
        xs: &[f32],
        lens: &[usize],
        width: usize,
    ) -> &mut Self {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Arc::new(arrow_array::Float32Array::from(xs.to_vec()));
        let inner = arrow_array::FixedSizeListArray::try_new(item, width as i32, values, None)
            .expect("the items are n x width");
        let field = Arc::new(Field::new("item", inner.data_type().clone(), false));
        let list = arrow_array::ListArray::try_new(
            field,
            arrow_buffer::OffsetBuffer::from_lengths(lens.iter().copied()),
            Arc::new(inner),
            None,
        )
        .expect("row lengths add up to the items");
        self.push(name, Arc::new(list))
    }

    /// Writes the table (snappy-compressed) to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let schema = Arc::new(Schema::new(self.fields.clone()));
        let batch =
            RecordBatch::try_new(schema.clone(), self.columns.clone()).map_err(|e| bad(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = std::fs::File::create(path)?;
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| bad(path, e))?;
        w.write(&batch).map_err(|e| bad(path, e))?;
        w.close().map_err(|e| bad(path, e))?;
        Ok(())
    }
}

/// A table read whole: its batches, and the path for messages.
pub struct Table {
    path: std::path::PathBuf,
    batches: Vec<RecordBatch>,
    rows: usize,
}

impl Table {
    pub fn read(path: &Path) -> io::Result<Table> {
        let file = std::fs::File::open(path)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| bad(path, format!("not a Parquet file ({e})")))?
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| bad(path, e))?;
        let mut batches = Vec::new();
        let mut rows = 0;
        for b in reader {
            let b = b.map_err(|e| bad(path, e))?;
            rows += b.num_rows();
            batches.push(b);
        }
        Ok(Table {
            path: path.to_path_buf(),
            batches,
            rows,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn has(&self, name: &str) -> bool {
        self.batches
            .first()
            .is_some_and(|b| b.schema().column_with_name(name).is_some())
    }

    fn parts(&self, name: &str) -> io::Result<Vec<&ArrayRef>> {
        let mut out = Vec::with_capacity(self.batches.len());
        for b in &self.batches {
            let Some(a) = b.column_by_name(name) else {
                let have: Vec<String> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                return Err(bad(
                    &self.path,
                    format!("no column \"{name}\" (columns: {})", have.join(", ")),
                ));
            };
            if a.null_count() > 0 {
                return Err(bad(&self.path, format!("column \"{name}\" has nulls")));
            }
            out.push(a);
        }
        Ok(out)
    }

    fn wrong_type(&self, name: &str, t: &DataType, expected: &str) -> io::Error {
        bad(
            &self.path,
            format!("column \"{name}\" is {t}; expected {expected}"),
        )
    }

    /// A string column: plain (utf8, large utf8, utf8 view) or a dictionary of strings.
    pub fn strings(&self, name: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::with_capacity(self.rows);
        self.each_string(name, |s| out.push(s.to_string()))?;
        Ok(out)
    }

    /// Labels by name, mapped to ids with `index`; an unknown name is an error at its row.
    pub fn categories(
        &self,
        name: &str,
        index: impl Fn(&str) -> Option<u32>,
    ) -> io::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.rows);
        let mut unknown: Option<(usize, String)> = None;
        for a in self.parts(name)? {
            // A dictionary maps once per distinct value, not once per row.
            if let DataType::Dictionary(_, _) = a.data_type() {
                let d = a.as_any_dictionary();
                let mut ids = Vec::with_capacity(d.values().len());
                let values = self.string_values(name, d.values())?;
                for v in &values {
                    ids.push(index(v));
                }
                for k in d.normalized_keys() {
                    match ids[k] {
                        Some(i) => out.push(i),
                        None => {
                            unknown.get_or_insert((out.len(), values[k].clone()));
                            out.push(0);
                        }
                    }
                }
            } else {
                for v in self.string_values(name, a)? {
                    match index(&v) {
                        Some(i) => out.push(i),
                        None => {
                            unknown.get_or_insert((out.len(), v));
                            out.push(0);
                        }
                    }
                }
            }
        }
        match unknown {
            Some((row, v)) => Err(bad(
                &self.path,
                format!(
                    "row {row}: column \"{name}\" has \"{v}\", which is not a label of the spec"
                ),
            )),
            None => Ok(out),
        }
    }

    fn string_values(&self, name: &str, a: &ArrayRef) -> io::Result<Vec<String>> {
        Ok(match a.data_type() {
            DataType::Utf8 => a
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(String::from)
                .collect(),
            DataType::LargeUtf8 => a
                .as_string::<i64>()
                .iter()
                .flatten()
                .map(String::from)
                .collect(),
            DataType::Utf8View => a
                .as_string_view()
                .iter()
                .flatten()
                .map(String::from)
                .collect(),
            t => return Err(self.wrong_type(name, t, "strings")),
        })
    }

    fn each_string(&self, name: &str, mut f: impl FnMut(&str)) -> io::Result<()> {
        for a in self.parts(name)? {
            match a.data_type() {
                DataType::Dictionary(_, _) => {
                    let d = a.as_any_dictionary();
                    let values = self.string_values(name, d.values())?;
                    for k in d.normalized_keys() {
                        f(&values[k]);
                    }
                }
                _ => {
                    for v in self.string_values(name, a)? {
                        f(&v);
                    }
                }
            }
        }
        Ok(())
    }

    /// An integer column of any width, as i64.
    pub fn ints(&self, name: &str) -> io::Result<Vec<i64>> {
        let mut out = Vec::with_capacity(self.rows);
        for a in self.parts(name)? {
            macro_rules! take {
                ($t:ty) => {
                    out.extend(a.as_primitive::<$t>().values().iter().map(|&v| v as i64))
                };
            }
            match a.data_type() {
                DataType::Int8 => take!(Int8Type),
                DataType::Int16 => take!(Int16Type),
                DataType::Int32 => take!(Int32Type),
                DataType::Int64 => take!(Int64Type),
                DataType::UInt8 => take!(UInt8Type),
                DataType::UInt16 => take!(UInt16Type),
                DataType::UInt32 => take!(UInt32Type),
                DataType::UInt64 => take!(UInt64Type),
                t => return Err(self.wrong_type(name, t, "integers")),
            }
        }
        Ok(out)
    }

    /// A float column (float32 or float64), as f32.
    pub fn floats(&self, name: &str) -> io::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.rows);
        for a in self.parts(name)? {
            self.floats_into(name, a.as_ref(), &mut out)?;
        }
        Ok(out)
    }

    fn floats_into(&self, name: &str, a: &dyn Array, out: &mut Vec<f32>) -> io::Result<()> {
        match a.data_type() {
            DataType::Float32 => out.extend_from_slice(a.as_primitive::<Float32Type>().values()),
            DataType::Float64 => out.extend(
                a.as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as f32),
            ),
            t => return Err(self.wrong_type(name, t, "float32 or float64")),
        }
        Ok(())
    }

    /// A column of equal-length float lists, flattened row-major; `width` is checked per row.
    pub fn float_rows(&self, name: &str, width: usize) -> io::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.rows * width);
        let mut row = 0usize;
        for a in self.parts(name)? {
            self.float_rows_in(name, a, width, &mut row, &mut out, "one per label")?;
        }
        Ok(out)
    }

    /// Float lists of length `width` in `a` appended to `out`; `row` counts them for messages.
    fn float_rows_in(
        &self,
        name: &str,
        a: &ArrayRef,
        width: usize,
        row: &mut usize,
        out: &mut Vec<f32>,
        what: &str,
    ) -> io::Result<()> {
        let check = |len: usize, row: usize| {
            if len == width {
                Ok(())
            } else {
                Err(bad(
                    &self.path,
                    format!(
                        "row {row}: column \"{name}\" has {len} values; expected {width} ({what})"
                    ),
                ))
            }
        };
        if let DataType::FixedSizeList(_, n) = a.data_type() {
            check(*n as usize, *row)?;
            let l = a.as_fixed_size_list();
            let values = l.values().slice(l.offset() * width, l.len() * width);
            *row += l.len();
            return self.floats_into(name, &values, out);
        }
        let Some((offsets, values)) = list_parts(a) else {
            return Err(self.wrong_type(name, a.data_type(), "a list of floats per row"));
        };
        for w in offsets.windows(2) {
            check(w[1] - w[0], *row)?;
            *row += 1;
        }
        let (start, end) = (offsets[0], *offsets.last().unwrap_or(&0));
        self.floats_into(name, &values.slice(start, end - start), out)
    }

    /// A column of lists of `width`-float lists (e.g. per token, one probability per tag):
    /// every item's floats flattened in order, and each row's item count.
    pub fn float_row_lists(&self, name: &str, width: usize) -> io::Result<(Vec<f32>, Vec<usize>)> {
        let mut out = Vec::new();
        let mut lens = Vec::with_capacity(self.rows);
        let mut item = 0usize;
        for a in self.parts(name)? {
            let Some((offsets, values)) = list_parts(a) else {
                return Err(self.wrong_type(name, a.data_type(), "a list of float lists per row"));
            };
            lens.extend(offsets.windows(2).map(|w| w[1] - w[0]));
            let (start, end) = (offsets[0], *offsets.last().unwrap_or(&0));
            let inner = values.slice(start, end - start);
            self.float_rows_in(name, &inner, width, &mut item, &mut out, "one per tag")?;
        }
        Ok((out, lens))
    }

    /// A column of string lists (plain or dictionary strings inside).
    pub fn string_lists(&self, name: &str) -> io::Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(self.rows);
        for a in self.parts(name)? {
            let Some((offsets, values)) = list_parts(a) else {
                return Err(self.wrong_type(name, a.data_type(), "a list of strings per row"));
            };
            let (start, end) = (offsets[0], *offsets.last().unwrap_or(&0));
            let inner = values.slice(start, end - start);
            let flat: Vec<String> = if let DataType::Dictionary(_, _) = inner.data_type() {
                let d = inner.as_any_dictionary();
                let v = self.string_values(name, d.values())?;
                d.normalized_keys()
                    .into_iter()
                    .map(|k| v[k].clone())
                    .collect()
            } else {
                self.string_values(name, &inner)?
            };
            if flat.len() != end - start {
                return Err(bad(
                    &self.path,
                    format!("column \"{name}\" has null strings"),
                ));
            }
            let mut it = flat.into_iter();
            for w in offsets.windows(2) {
                out.push(it.by_ref().take(w[1] - w[0]).collect());
            }
        }
        Ok(out)
    }
}

/// The offsets and values of a list or large-list array (`None` for anything else).
fn list_parts(a: &ArrayRef) -> Option<(Vec<usize>, ArrayRef)> {
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            Some((
                l.value_offsets().iter().map(|&o| o as usize).collect(),
                l.values().clone(),
            ))
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            Some((
                l.value_offsets().iter().map(|&o| o as usize).collect(),
                l.values().clone(),
            ))
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = *n as usize;
            let values = l.values().slice(l.offset() * n, l.len() * n);
            Some(((0..=l.len()).map(|i| i * n).collect(), values))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_and_wrong_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let mut w = TableWriter::new();
        w.strings("id", &["a".into(), "b".into()])
            .categories("label", &[1, 0], &["x", "y"])
            .i32s("fold", &[-1, 2])
            .f32_rows("probs", &[0.1, 0.9, 0.8, 0.2], 2);
        w.write(&p).unwrap();
        let t = Table::read(&p).unwrap();
        assert_eq!(t.rows(), 2);
        assert_eq!(t.strings("id").unwrap(), ["a", "b"]);
        assert_eq!(t.strings("label").unwrap(), ["y", "x"]);
        let idx = |s: &str| ["y", "x"].iter().position(|n| *n == s).map(|i| i as u32);
        assert_eq!(t.categories("label", idx).unwrap(), [0, 1]);
        assert_eq!(t.ints("fold").unwrap(), [-1, 2]);
        assert_eq!(t.float_rows("probs", 2).unwrap(), [0.1, 0.9, 0.8, 0.2]);
        let e = t.float_rows("probs", 3).unwrap_err().to_string();
        assert!(e.contains("row 0") && e.contains("expected 3"), "{e}");
        let e = t.ints("nope").unwrap_err().to_string();
        assert!(
            e.contains("no column \"nope\"") && e.contains("probs"),
            "{e}"
        );
        let e = t.ints("id").unwrap_err().to_string();
        assert!(e.contains("expected integers"), "{e}");
        let only_x = |s: &str| (s == "x").then_some(0);
        let e = t.categories("label", only_x).unwrap_err().to_string();
        assert!(e.contains("row 0") && e.contains("\"y\""), "{e}");
    }

    #[test]
    fn nested_lists_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let tokens = vec![
            vec!["EU".to_string(), "rejects".into()],
            vec![],
            vec!["x".into()],
        ];
        let probs = [0.1f32, 0.9, 0.7, 0.3, 0.5, 0.5];
        TableWriter::new()
            .string_lists("tokens", &tokens)
            .f32_row_lists("probs", &probs, &[2, 0, 1], 2)
            .write(&p)
            .unwrap();
        let t = Table::read(&p).unwrap();
        assert_eq!(t.string_lists("tokens").unwrap(), tokens);
        let (flat, lens) = t.float_row_lists("probs", 2).unwrap();
        assert_eq!(
            (flat.as_slice(), lens.as_slice()),
            (&probs[..], &[2, 0, 1][..])
        );
        let e = t.float_row_lists("probs", 3).unwrap_err().to_string();
        assert!(e.contains("expected 3 (one per tag)"), "{e}");
        assert!(t.string_lists("probs").is_err());
    }
}
