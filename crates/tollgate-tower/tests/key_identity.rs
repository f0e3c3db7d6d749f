//! Two different keys never share a limit: what a key feeds the hasher
//! carries its kind and its length, and stores compare fingerprints only.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tollgate::{KeyedLimiter, Quota};
use tollgate_tower::Key;

/// Pairs of keys of different kinds whose bytes or numbers coincide.
fn pairs() -> Vec<(Key, Key)> {
    let v4 = Ipv4Addr::new(1, 2, 3, 4);
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    vec![
        (Key::from(IpAddr::V4(v4)), Key::bytes(v4.octets().to_vec())),
        (
            Key::from(IpAddr::V4(v4)),
            Key::bytes(u32::from(v4).to_ne_bytes().to_vec()),
        ),
        (Key::global(), Key::bytes(vec![0u8])),
        (Key::global(), Key::bytes(Vec::new())),
        (Key::from(IpAddr::V6(v6)), Key::bytes(v6.octets().to_vec())),
        (
            Key::from(IpAddr::V6(v6)),
            Key::bytes(u128::from(v6).to_ne_bytes().to_vec()),
        ),
        (Key::from(7u64), Key::bytes(7u64.to_ne_bytes().to_vec())),
        (
            Key::from(u64::from(u32::from(v4))),
            Key::from(IpAddr::V4(v4)),
        ),
        (Key::from("ab"), Key::from("a")),
    ]
}

/// What a key feeds a hasher, byte for byte.
#[derive(Default)]
struct Recorder(Vec<u8>);

impl Hasher for Recorder {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn fed(key: &Key) -> Vec<u8> {
    let mut recorder = Recorder::default();
    key.hash(&mut recorder);
    recorder.0
}

#[test]
fn keys_of_different_kinds_feed_the_hasher_different_input() {
    for (a, b) in pairs() {
        assert_ne!(a, b);
        assert_ne!(fed(&a), fed(&b), "{a:?} and {b:?}");
    }
}

#[test]
fn keys_whose_bytes_coincide_have_limits_of_their_own() {
    for (a, b) in pairs() {
        let limiter = KeyedLimiter::<Key>::new(Quota::per_minute(1).unwrap());
        assert!(limiter.check(&a, 1).is_ok());
        assert!(limiter.check(&a, 1).is_err(), "{a:?} is spent");
        assert!(limiter.check(&b, 1).is_ok(), "{b:?} shares {a:?}'s limit");
    }
}

/// What an IPv4 key feeds is its tag and octets, padded to eight bytes,
/// the same on every machine (the Redis store names keys by it), though
/// it is written as one integer.
#[test]
fn an_ipv4_key_feeds_its_tag_and_octets() {
    let key = Key::from(IpAddr::from([192, 0, 2, 7]));
    assert_eq!(fed(&key), [1, 192, 0, 2, 7, 0, 0, 0]);
}

/// A key built from an address gives it back and shows it; an IPv6 key
/// feeds its tag and sixteen octets, padded to 24 bytes, and the global
/// key its tag alone.
#[test]
fn a_key_keeps_its_address_and_its_hash_input() {
    for text in ["192.0.2.7", "2001:db8:1:2:3:4:5:6", "::1", "0.0.0.0"] {
        let address: IpAddr = text.parse().unwrap();
        let key = Key::from(address);
        assert_eq!(key.ip(), Some(address));
        assert_eq!(key.to_string(), text);
    }
    let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
    let mut input = vec![2];
    input.extend_from_slice(&v6.octets());
    input.resize(24, 0);
    assert_eq!(fed(&Key::from(IpAddr::V6(v6))), input);
    assert_eq!(fed(&Key::global()), [0]);
    assert_eq!(Key::from(7u64).ip(), None);
}
