//! The in-memory store's hash table against hashbrown's `HashTable`
//! holding the same 16-byte entries (a key's 64-bit fingerprint and its
//! TAT), as a store would use it: does the hand-written table earn its
//! place?
//!
//! For 1,000,000 entries (random fingerprints): nanoseconds to insert each
//! into a table sized for them, to find each (hits), to look up absent
//! fingerprints (misses), and the bytes the table takes per entry, both
//! at the store's cap (90% load) and after growing from empty (the memory
//! store doubles a shard's table at seven eighths full; hashbrown grows
//! itself).
//! Rounds interleaved; the median of each figure.
//!
//! ```text
//! cargo bench -p tollgate --bench table [-- ROUNDS]
//! ```

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use hashbrown::HashTable;

// The store's table, compiled into the bench (it is internal to the
// crate).
#[path = "../src/budget/table.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod table;
use table::{Slot, Table};

const N: usize = 1_000_000;

/// splitmix64: fingerprints spread as a keyed hash's are.
fn fingerprints(seed: u64, n: usize) -> Vec<u64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

fn ns_each(start: Instant, n: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Slots for `n` entries at the store's cap: 90% load.
fn capped_slots(n: usize) -> usize {
    n * 10 / 9 + 1
}

struct Figures {
    insert: f64,
    hit: f64,
    miss: f64,
    bytes_capped: f64,
    bytes_grown: f64,
}

fn tollgate_table(keys: &[u64], absent: &[u64]) -> Figures {
    let mut table = Table::with_slots(capped_slots(keys.len()));
    let start = Instant::now();
    for (i, &fp) in keys.iter().enumerate() {
        table.insert_new(fp, i as u64 + 1);
    }
    let insert = ns_each(start, keys.len());
    let start = Instant::now();
    let mut sum = 0u64;
    for &fp in keys {
        sum = sum.wrapping_add(table.find(fp).map_or(0, |i| table.tat_at(i)));
    }
    let hit = ns_each(start, keys.len());
    black_box(sum);
    let start = Instant::now();
    let mut found = 0usize;
    for &fp in absent {
        found += usize::from(table.find(fp).is_some());
    }
    let miss = ns_each(start, absent.len());
    black_box(found);
    let bytes_capped = (table.slots() * std::mem::size_of::<Slot>()) as f64 / keys.len() as f64;
    // Grown as the memory store grows a shard below its cap: doubled
    // when seven eighths full.
    let mut grown = Table::with_slots(16);
    for (i, &fp) in keys.iter().enumerate() {
        if grown.len() >= grown.slots() - grown.slots() / 8 {
            grown = grown.resized(grown.slots() * 2);
        }
        grown.insert_new(fp, i as u64 + 1);
    }
    let bytes_grown = (grown.slots() * std::mem::size_of::<Slot>()) as f64 / keys.len() as f64;
    Figures {
        insert,
        hit,
        miss,
        bytes_capped,
        bytes_grown,
    }
}

fn hashbrown_table(keys: &[u64], absent: &[u64]) -> Figures {
    // The fingerprint is the hash: no hashing beyond it.
    let hash = |fp: u64| fp;
    let mut table: HashTable<Slot> = HashTable::with_capacity(keys.len());
    let start = Instant::now();
    for (i, &fp) in keys.iter().enumerate() {
        table.insert_unique(
            hash(fp),
            Slot {
                fp,
                tat: i as u64 + 1,
            },
            |s| hash(s.fp),
        );
    }
    let insert = ns_each(start, keys.len());
    let start = Instant::now();
    let mut sum = 0u64;
    for &fp in keys {
        sum = sum.wrapping_add(table.find(hash(fp), |s| s.fp == fp).map_or(0, |s| s.tat));
    }
    let hit = ns_each(start, keys.len());
    black_box(sum);
    let start = Instant::now();
    let mut found = 0usize;
    for &fp in absent {
        found += usize::from(table.find(hash(fp), |s| s.fp == fp).is_some());
    }
    let miss = ns_each(start, absent.len());
    black_box(found);
    let bytes_capped = table.allocation_size() as f64 / keys.len() as f64;
    let mut grown: HashTable<Slot> = HashTable::new();
    for (i, &fp) in keys.iter().enumerate() {
        grown.insert_unique(
            hash(fp),
            Slot {
                fp,
                tat: i as u64 + 1,
            },
            |s| hash(s.fp),
        );
    }
    let bytes_grown = grown.allocation_size() as f64 / keys.len() as f64;
    Figures {
        insert,
        hit,
        miss,
        bytes_capped,
        bytes_grown,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let keys = fingerprints(1, N);
    let absent = fingerprints(2, N);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..rounds {
        if round % 2 == 0 {
            ours.push(tollgate_table(&keys, &absent));
            theirs.push(hashbrown_table(&keys, &absent));
        } else {
            theirs.push(hashbrown_table(&keys, &absent));
            ours.push(tollgate_table(&keys, &absent));
        }
    }
    println!("| {N} entries (median of {rounds}) | insert ns | hit ns | miss ns | bytes an entry at the cap | bytes an entry grown |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, figures) in [("tollgate's table", ours), ("hashbrown HashTable", theirs)] {
        let pick = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pick(|f| f.insert),
            pick(|f| f.hit),
            pick(|f| f.miss),
            pick(|f| f.bytes_capped),
            pick(|f| f.bytes_grown),
        );
    }
}
