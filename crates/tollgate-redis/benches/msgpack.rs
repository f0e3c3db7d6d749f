//! The store's hand-written MessagePack codec against `rmp`'s, on what
//! one decision carries: its arguments packed (a dimension: `n`,
//! `max_wait`, interval, burst, cost) and the script's reply unpacked (a
//! decision of one dimension: twelve integers and an empty string) into
//! `redis::Value`s, as the store reads it. Rounds interleaved; the median
//! of each.
//!
//! ```text
//! cargo bench -p tollgate-redis --bench msgpack [-- ROUNDS]
//! ```

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use redis::Value;

// The store's codec, compiled into the bench (it is internal to the
// crate).
#[path = "../src/msgpack.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod msgpack;
use msgpack::{put_uint, values};

const ITERATIONS: u32 = 1_000_000;

/// A decision's arguments: one dimension, 2 s of wait, 1 ms interval, a
/// burst of 60,000, a cost of 1.
const ARGS: [u64; 5] = [1, 2_000_000, 1_000, 60_000, 1];

/// The reply to a decision of one dimension, as the script packs it.
fn reply() -> Vec<u8> {
    let mut out = Vec::new();
    for n in [
        0u64,
        0,
        0,
        1_765_000_000_000_000,
        0,
        0,
        1,
        0,
        1_765_000_000_001_000,
        0,
        1_000,
    ] {
        put_uint(&mut out, n);
    }
    out.push(0xa0); // ''
    out
}

fn ours(reply: &[u8]) -> usize {
    let mut args = Vec::with_capacity(32);
    for n in ARGS {
        put_uint(&mut args, black_box(n));
    }
    let read = values(black_box(reply)).expect("a reply");
    args.len() + read.len()
}

fn rmp_read(mut bytes: &[u8]) -> Option<Vec<Value>> {
    use rmp::Marker;
    let mut out = Vec::with_capacity(16);
    while !bytes.is_empty() {
        let marker = rmp::decode::read_marker(&mut bytes).ok()?;
        let value = match marker {
            Marker::FixPos(n) => Value::Int(i64::from(n)),
            Marker::FixNeg(n) => Value::Int(i64::from(n)),
            Marker::U8 => Value::Int(i64::from(
                rmp::decode::RmpRead::read_data_u8(&mut bytes).ok()?,
            )),
            Marker::U16 => Value::Int(i64::from(
                rmp::decode::RmpRead::read_data_u16(&mut bytes).ok()?,
            )),
            Marker::U32 => Value::Int(i64::from(
                rmp::decode::RmpRead::read_data_u32(&mut bytes).ok()?,
            )),
            Marker::U64 => Value::Int(
                i64::try_from(rmp::decode::RmpRead::read_data_u64(&mut bytes).ok()?).ok()?,
            ),
            Marker::I8 => Value::Int(i64::from(
                rmp::decode::RmpRead::read_data_i8(&mut bytes).ok()?,
            )),
            Marker::I16 => Value::Int(i64::from(
                rmp::decode::RmpRead::read_data_i16(&mut bytes).ok()?,
            )),
            Marker::I32 => Value::Int(i64::from(
                rmp::decode::RmpRead::read_data_i32(&mut bytes).ok()?,
            )),
            Marker::I64 => Value::Int(rmp::decode::RmpRead::read_data_i64(&mut bytes).ok()?),
            Marker::FixStr(len) => text(&mut bytes, usize::from(len))?,
            Marker::Str8 => {
                let len = rmp::decode::RmpRead::read_data_u8(&mut bytes).ok()?;
                text(&mut bytes, usize::from(len))?
            }
            Marker::Str16 => {
                let len = rmp::decode::RmpRead::read_data_u16(&mut bytes).ok()?;
                text(&mut bytes, usize::from(len))?
            }
            Marker::Str32 => {
                let len = rmp::decode::RmpRead::read_data_u32(&mut bytes).ok()?;
                text(&mut bytes, usize::try_from(len).ok()?)?
            }
            _ => return None,
        };
        out.push(value);
    }
    Some(out)
}

fn text(bytes: &mut &[u8], len: usize) -> Option<Value> {
    let (head, rest) = bytes.split_at_checked(len)?;
    *bytes = rest;
    Some(Value::BulkString(head.to_vec()))
}

fn theirs(reply: &[u8]) -> usize {
    let mut args = Vec::with_capacity(32);
    for n in ARGS {
        rmp::encode::write_uint(&mut args, black_box(n)).expect("a Vec takes it");
    }
    let read = rmp_read(black_box(reply)).expect("a reply");
    args.len() + read.len()
}

fn time(f: fn(&[u8]) -> usize, reply: &[u8]) -> f64 {
    let start = Instant::now();
    let mut sum = 0usize;
    for _ in 0..ITERATIONS {
        sum = sum.wrapping_add(f(reply));
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(9);
    let reply = reply();
    // Both read the same values.
    assert_eq!(values(&reply), rmp_read(&reply));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            a.push(time(ours, &reply));
            b.push(time(theirs, &reply));
        } else {
            b.push(time(theirs, &reply));
            a.push(time(ours, &reply));
        }
    }
    let (a, b) = (median(a), median(b));
    println!("| a decision's arguments packed and reply read (median of {rounds}) | ns |");
    println!("|---|---:|");
    println!("| tollgate-redis' codec | {a:.1} |");
    println!("| rmp 0.8 | {b:.1} ({:.2}x) |", b / a);
}
