//! The little of MessagePack the decide script speaks: unsigned integers
//! one way, integers and strings back (what Redis' `cmsgpack` packs for
//! Lua numbers that are whole, and for strings).
//!
//! Its arguments and replies travel packed so that Redis parses one
//! string per decision instead of a dozen numbers as text: in Redis the
//! script's cost is the bound on decisions a second.
//!
//! Why not `rmp` (`cargo bench -p tollgate-redis --bench msgpack`):
//! packing a decision's arguments and reading its reply into
//! `redis::Value`s takes 118.7 ns here and 117.0 ns through
//! `rmp` 0.8 (the allocations of the values dominate both), about 0.15% of
//! a round trip to Redis. With `rmp`, the reading of markers into values
//! would still be written here (the bench's peer is that code, as long as
//! this module); the module stays, as the subset the scripts speak, and
//! the store has one dependency fewer.

use redis::Value;

/// Appends `n` as the shortest MessagePack unsigned integer.
pub(crate) fn put_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.push(0xcc);
        out.push(n);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xcd);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(0xce);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Reads MessagePack values one after the other: integers become
/// [`Value::Int`], strings [`Value::BulkString`]. `None` for anything
/// else, or bytes cut short.
pub(crate) fn values(mut bytes: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(16);
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let value = match tag {
            0x00..=0x7f => Value::Int(i64::from(tag)),
            0xe0..=0xff => Value::Int(i64::from(tag as i8)),
            0xcc => Value::Int(i64::from(take::<1>(&mut bytes)?[0])),
            0xcd => Value::Int(i64::from(u16::from_be_bytes(take(&mut bytes)?))),
            0xce => Value::Int(i64::from(u32::from_be_bytes(take(&mut bytes)?))),
            0xcf => Value::Int(i64::try_from(u64::from_be_bytes(take(&mut bytes)?)).ok()?),
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(take(&mut bytes)?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(take(&mut bytes)?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(take(&mut bytes)?))),
            0xd3 => Value::Int(i64::from_be_bytes(take(&mut bytes)?)),
            0xa0..=0xbf => text(&mut bytes, usize::from(tag & 0x1f))?,
            0xd9 => {
                let len = take::<1>(&mut bytes)?[0];
                text(&mut bytes, usize::from(len))?
            }
            0xda => {
                let len = u16::from_be_bytes(take(&mut bytes)?);
                text(&mut bytes, usize::from(len))?
            }
            0xdb => {
                let len = u32::from_be_bytes(take(&mut bytes)?);
                text(&mut bytes, usize::try_from(len).ok()?)?
            }
            _ => return None,
        };
        out.push(value);
    }
    Some(out)
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    *bytes = rest;
    Some(*head)
}

fn text(bytes: &mut &[u8], len: usize) -> Option<Value> {
    let (head, rest) = bytes.split_at_checked(len)?;
    *bytes = rest;
    Some(Value::BulkString(head.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_shortest_form_and_read_back() {
        for (n, len) in [
            (0u64, 1usize),
            (127, 1),
            (128, 2),
            (255, 2),
            (256, 3),
            (65_535, 3),
            (65_536, 5),
            (u64::from(u32::MAX), 5),
            (u64::from(u32::MAX) + 1, 9),
            (1 << 52, 9),
        ] {
            let mut out = Vec::new();
            put_uint(&mut out, n);
            assert_eq!(out.len(), len, "{n}");
            assert_eq!(values(&out), Some(vec![Value::Int(n as i64)]), "{n}");
        }
    }

    #[test]
    fn strings_and_signed_integers_read_as_cmsgpack_packs_them() {
        // 3, "ab", -1, -200 (int16), a 40-byte string (str8).
        let mut bytes = vec![0x03, 0xa2, b'a', b'b', 0xff, 0xd1, 0xff, 0x38, 0xd9, 40];
        bytes.extend([b'x'; 40]);
        assert_eq!(
            values(&bytes),
            Some(vec![
                Value::Int(3),
                Value::BulkString(b"ab".to_vec()),
                Value::Int(-1),
                Value::Int(-200),
                Value::BulkString(vec![b'x'; 40]),
            ])
        );
    }

    #[test]
    fn cut_or_foreign_bytes_read_as_none() {
        assert_eq!(values(&[0xcd, 0x01]), None);
        assert_eq!(values(&[0xa3, b'a']), None);
        assert_eq!(values(&[0xcb, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(values(&[0xc0]), None);
        assert_eq!(values(&[]), Some(Vec::new()));
    }
}
