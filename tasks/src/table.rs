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
            let check = |len: usize, row: usize| {
                if len == width {
                    Ok(())
                } else {
                    Err(bad(
                        &self.path,
                        format!("row {row}: column \"{name}\" has {len} values; expected {width} (one per label)"),
                    ))
                }
            };
            match a.data_type() {
                DataType::FixedSizeList(_, n) => {
                    check(*n as usize, row)?;
                    let l = a.as_fixed_size_list();
                    let values = l.values().slice(l.offset() * width, l.len() * width);
                    self.floats_into(name, &values, &mut out)?;
                    row += l.len();
                }
                DataType::List(_) | DataType::LargeList(_) => {
                    let (offsets, values): (Vec<usize>, &ArrayRef) =
                        if let DataType::List(_) = a.data_type() {
                            let l = a.as_list::<i32>();
                            let o = l.value_offsets().iter().map(|&o| o as usize);
                            (o.collect(), l.values())
                        } else {
                            let l = a.as_list::<i64>();
                            let o = l.value_offsets().iter().map(|&o| o as usize);
                            (o.collect(), l.values())
                        };
                    for w in offsets.windows(2) {
                        check(w[1] - w[0], row)?;
                        row += 1;
                    }
                    let (start, end) = (offsets[0], *offsets.last().unwrap_or(&0));
                    self.floats_into(name, &values.slice(start, end - start), &mut out)?;
                }
                t => return Err(self.wrong_type(name, t, "a list of floats per row")),
            }
        }
        Ok(out)
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
}
