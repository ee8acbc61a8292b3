//! The benchmark results format that `dma bench --json` writes and `dma plot` reads: JSON lines
//! (one record per line; blank lines and lines starting with `#` are skipped) or one JSON array
//! of the same records.
//!
//! ```text
//! {"kind":"forward","impl":"dma-cpu","n":4096,"time_ms":12.5,"device":"cpu","dtype":"f32","batch":1,"heads":4,"head_dim":64,"window":256,"reps":5}
//! ```
//!
//! Required: `kind` (what was timed: `forward`, `forward_backward`, `backward`, `decode`, or any
//! other name), `impl` (the implementation: `dma-cpu`, `dma-cuda`, `sdpa-cudnn`, `sdpa-flash`, any
//! name), `n` (the sequence length, queries = keys; for `decode` the context, i.e. the number of
//! cached keys one new query attends over) and `time_ms` (the median time of one call, in
//! milliseconds). Optional and only descriptive: `device`, `dtype`, `batch`, `heads`, `head_dim`,
//! `window`, `reps`, `note`; fields not named here are ignored, so other tools may add their own.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: String,
    #[serde(rename = "impl")]
    pub implementation: String,
    pub n: usize,
    pub time_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Record {
    /// A record with only the required fields.
    pub fn new(kind: &str, implementation: &str, n: usize, time_ms: f64) -> Self {
        Record {
            kind: kind.into(),
            implementation: implementation.into(),
            n,
            time_ms,
            device: None,
            dtype: None,
            batch: None,
            heads: None,
            head_dim: None,
            window: None,
            reps: None,
            note: None,
        }
    }

    fn check(&self) -> Result<()> {
        if self.kind.is_empty() || self.implementation.is_empty() {
            bail!("`kind` and `impl` must not be empty");
        }
        if self.n == 0 {
            bail!("`n` must be at least 1");
        }
        if !(self.time_ms.is_finite() && self.time_ms > 0.0) {
            bail!("`time_ms` must be a positive number, got {}", self.time_ms);
        }
        Ok(())
    }
}

/// Writes `records` to `path` as JSON lines (replacing the file).
pub fn write(path: &Path, records: &[Record]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(r)?;
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the records of `path`: JSON lines or a JSON array.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records = parse(&text).with_context(|| format!("{}", path.display()))?;
    if records.is_empty() {
        bail!("{} holds no records", path.display());
    }
    Ok(records)
}

/// Parses JSON lines or a JSON array of records, checking each.
pub fn parse(text: &str) -> Result<Vec<Record>> {
    if text.trim_start().starts_with('[') {
        let records: Vec<Record> = serde_json::from_str(text)?;
        for (i, r) in records.iter().enumerate() {
            r.check().with_context(|| format!("record {}", i + 1))?;
        }
        return Ok(records);
    }
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r: Record = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        r.check().with_context(|| format!("line {}", i + 1))?;
        records.push(r);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_arrays_round_trip() {
        let mut a = Record::new("forward", "dma-cpu", 4096, 12.5);
        a.window = Some(256);
        let b = Record::new("decode", "sdpa-flash", 8192, 0.25);
        let lines = format!(
            "# comment\n{}\n\n{}\n",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(parse(&lines).unwrap(), vec![a.clone(), b.clone()]);
        let array = serde_json::to_string(&vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(parse(&array).unwrap(), vec![a, b]);
        // Unknown fields are fine; a missing time is not.
        assert!(parse(r#"{"kind":"forward","impl":"x","n":1,"time_ms":1,"gpu":"H100"}"#).is_ok());
        let err = parse(r#"{"kind":"forward","impl":"x","n":1}"#).unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        assert!(parse(r#"{"kind":"forward","impl":"x","n":1,"time_ms":-1}"#).is_err());
    }
}
