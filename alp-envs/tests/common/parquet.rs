//! Parquet fixtures for the dataset tests (also included by alp-cli's tests).

use std::path::Path;
use std::sync::Arc;

/// Writes rows of optional string columns as a Parquet file (snappy pages).
pub fn write_parquet(path: &Path, names: &[&str], rows: &[Vec<Option<&str>>]) {
    use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;
    let fields = names
        .iter()
        .map(|n| {
            Arc::new(
                Type::primitive_type_builder(n, Physical::BYTE_ARRAY)
                    .with_logical_type(Some(LogicalType::String))
                    .with_repetition(Repetition::OPTIONAL)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let schema = Arc::new(
        Type::group_type_builder("schema")
            .with_fields(fields)
            .build()
            .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    for c in 0..names.len() {
        let mut col = rg.next_column().unwrap().unwrap();
        let vals: Vec<ByteArray> = rows
            .iter()
            .filter_map(|r| r[c])
            .map(ByteArray::from)
            .collect();
        let defs: Vec<i16> = rows.iter().map(|r| r[c].is_some() as i16).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&vals, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}
