//! Resuming by content: every record carries the SHA-256 of its input
//! line, and a rerun skips exactly the lines whose current content already
//! has a settled record (a success, or `bad_input`, which would fail the
//! same way again).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The SHA-256 of a line's bytes (without its newline).
pub(crate) fn hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// A hash as the 64 lowercase hex digits written in records.
pub(crate) fn hex(hash: &[u8; 32]) -> String {
    // The digest type's own lowercase hex.
    format!("{:x}", sha2::digest::Output::<Sha256>::from(*hash))
}

/// What identifies a line's content in memory: the first 128 bits of its
/// hash (a collision among a billion lines has odds of 1 in 10^20).
type Id = u128;

fn id(hash: &[u8; 32]) -> Id {
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash[..16]);
    Id::from_be_bytes(first)
}

fn parse_id(hex: &str) -> Option<Id> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Id::from_str_radix(&hex[..32], 16).ok()
}

/// The settled records of an earlier run, counted by content: two identical
/// lines need two records.
#[derive(Debug, Default)]
pub(crate) struct Earlier {
    settled: HashMap<Id, u32>,
    /// Records that could not be matched to content at all: cut short by a
    /// crash, or without a hash.
    pub(crate) unreadable: u64,
}

impl Earlier {
    /// Takes one settled record of this content, if there is one left.
    pub(crate) fn take(&mut self, hash: &[u8; 32]) -> bool {
        let id = id(hash);
        match self.settled.get_mut(&id) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                self.settled.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Settled records no line of the input took: lines edited or removed
    /// since.
    pub(crate) fn untaken(&self) -> u64 {
        self.settled.values().map(|&n| u64::from(n)).sum()
    }

    /// Reads the settled records of `output`: only a regular file is read
    /// (a pipe or a device has no earlier records, and reading one would
    /// hang or take its data); a missing file has none.
    pub(crate) fn read(output: &Path) -> Result<Self, String> {
        let mut earlier = Self::default();
        match std::fs::metadata(output) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(earlier),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(earlier),
            Err(e) => return Err(format!("cannot read {}: {e}", output.display())),
        }
        let file =
            File::open(output).map_err(|e| format!("cannot read {}: {e}", output.display()))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| format!("cannot read {}: {e}", output.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // A line cut short by a crash is not JSON, and so not settled.
            let Ok(record) = serde_json::from_slice::<Value>(&line) else {
                earlier.unreadable += 1;
                continue;
            };
            let settled = record["ok"] == Value::Bool(true)
                || record["kind"] == Value::String("bad_input".into());
            match record["input_sha256"].as_str().and_then(parse_id) {
                Some(id) if settled => *earlier.settled.entry(id).or_default() += 1,
                Some(_) => {}
                None => earlier.unreadable += 1,
            }
        }
        Ok(earlier)
    }
}

/// Opens the output for appending. A regular file cut short by a crash gets
/// its last line ended, so that the next record starts on a line of its own.
pub(crate) fn open_output(output: &Path) -> Result<File, String> {
    let regular = std::fs::metadata(output).map_or(true, |m| m.is_file());
    let cannot = |e: std::io::Error| format!("cannot write {}: {e}", output.display());
    if !regular {
        return OpenOptions::new().append(true).open(output).map_err(cannot);
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(output)
        .map_err(cannot)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .map_err(|e| format!("cannot read {}: {e}", output.display()))?;
        if last[0] != b'\n' {
            file.write_all(b"\n").map_err(cannot)?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_the_sha256_of_the_line() {
        // printf 'abc' | sha256sum
        assert_eq!(
            hex(&hash(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_id(&hex(&hash(b"abc"))), Some(id(&hash(b"abc"))));
        assert_eq!(parse_id("ba78"), None);
        assert_eq!(parse_id(&"g".repeat(64)), None);
    }

    #[test]
    fn identical_lines_need_a_record_each() {
        let mut earlier = Earlier::default();
        earlier.settled.insert(id(&hash(b"x")), 2);
        assert!(earlier.take(&hash(b"x")));
        assert_eq!(earlier.untaken(), 1);
        assert!(earlier.take(&hash(b"x")));
        assert!(!earlier.take(&hash(b"x")));
        assert!(!earlier.take(&hash(b"y")));
        assert_eq!(earlier.untaken(), 0);
    }
}
