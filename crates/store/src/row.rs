//! Column access that reads the same on SQLite and PostgreSQL rows.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::StoreError;

/// Rows read for a background task that must not stop over one bad row:
/// those that decoded, and those that did not, by id.
#[derive(Debug, Default)]
pub struct Decoded<T> {
    pub items: Vec<T>,
    pub bad: Vec<BadRow>,
}

/// A row that does not decode (a corrupt spec, an unknown status).
#[derive(Debug)]
pub struct BadRow {
    pub id: String,
    pub error: StoreError,
}

/// Decodes each row on its own; a row whose `id_col` cannot even be read is
/// reported as "?".
pub(crate) fn decode_each<R: Get, T>(
    rows: &[R],
    id_col: &str,
    decode: impl Fn(&R) -> Result<T, StoreError>,
) -> Decoded<T> {
    let mut out = Decoded { items: Vec::with_capacity(rows.len()), bad: Vec::new() };
    for r in rows {
        match decode(r) {
            Ok(t) => out.items.push(t),
            Err(error) => out.bad.push(BadRow { id: r.text(id_col).unwrap_or_else(|_| "?".into()), error }),
        }
    }
    out
}

pub(crate) trait Get {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;

    fn json<T: serde::de::DeserializeOwned>(&self, col: &str, what: &'static str) -> Result<T, StoreError> {
        serde_json::from_str(&self.text(col)?).map_err(|e| StoreError::corrupt(what, e))
    }
}

macro_rules! impl_get {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, col: &str) -> Result<String, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
                Ok(self.try_get(col)?)
            }
        }
    };
}

impl_get!(SqliteRow);
impl_get!(PgRow);

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("domain types serialize to JSON")
}
