//! What a request is counted against: its key.
//!
//! A [`KeyExtractor`] reads a [`Key`] from a request. The built-in ones:
//!
//! | extractor | key |
//! |---|---|
//! | [`Global`] | one key for every request |
//! | [`PeerIp`] | the address of the connection's peer |
//! | [`ClientIp`] | the client's address from `X-Forwarded-For` or `Forwarded`, believed only when it came through a listed trusted proxy |
//! | [`HeaderKey`] | a header's value, such as an API key |
//! | [`KeyFn`] | whatever a closure returns |
//!
//! IP keys are grouped by prefix ([`IpGrouping`]): by default each IPv4
//! address is its own key and IPv6 addresses share a key per /64, the block
//! one subscriber usually holds. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
//! count as the IPv4 address they carry.
//!
//! A request without a key, with one longer than the layer's
//! `max_key_len`, or with the key's header twice, is refused or counted
//! against the global key as [`MissingKey`] says (a header sent twice is
//! always refused unless [`HeaderKey::duplicates`] picks a copy). Keys of
//! different kinds never share a limit: what a [`Key`] hashes carries its
//! kind and length.
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use http::Request;
//! use tollgate_tower::key::{ClientIp, HeaderKey, Key, KeyErrorKind, KeyExtractor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Behind a load balancer at 10.0.0.2, which appends the client's address.
//! let client_ip = ClientIp::trusting(["10.0.0.0/8"])?;
//! let mut request = Request::builder()
//!     // The leftmost entry is the client's own claim: not believed.
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
//!     .body(())?;
//! request
//!     .extensions_mut()
//!     .insert(SocketAddr::from(([10, 0, 0, 2], 443)));
//! let key = client_ip.extract(&request)?;
//! assert_eq!(key, Key::from("203.0.113.9".parse::<IpAddr>()?));
//!
//! // An API key sent twice is refused rather than keyed by either copy.
//! let twice = Request::builder()
//!     .header("x-api-key", "alice")
//!     .header("x-api-key", "mallory")
//!     .body(())?;
//! let error = HeaderKey::new("x-api-key")?.extract(&twice).unwrap_err();
//! assert_eq!(error.kind(), KeyErrorKind::Duplicated);
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, FORWARDED};
use http::{Request, StatusCode};
use ipnet::IpNet;

use crate::response::{Rejection, RejectionKind};
use crate::{ConfigError, ConfigErrorKind};

/// What a request is counted against: one limit's state is kept per key.
///
/// ```
/// use std::net::IpAddr;
/// use tollgate_tower::Key;
///
/// let by_ip = Key::from("192.0.2.7".parse::<IpAddr>()?);
/// assert_eq!(by_ip.to_string(), "192.0.2.7");
/// let by_api_key = Key::from("team-42");
/// assert_eq!(by_api_key.len(), 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Repr);

/// Addresses are held as aligned integers rather than as `IpAddr` (whose
/// octets sit at an odd offset inside the enum): a key is built, moved and
/// read on every request, and word-sized fields keep those moves in whole
/// words that the processor forwards from store to load.
#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Global,
    /// An IPv4 address's bits.
    V4(u32),
    /// An IPv6 address's bits, high word first.
    V6([u64; 2]),
    Number(u64),
    Bytes(Bytes),
}

impl Key {
    /// The one key of a global limit.
    pub const fn global() -> Self {
        Self(Repr::Global)
    }

    /// A key of arbitrary bytes (an API key, a tenant's name).
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        Self(Repr::Bytes(bytes.into()))
    }

    /// The key's length in bytes, as checked against the layer's maximum
    /// key length: the bytes of a text key, 0 for the global key, 4 or 16
    /// for an IP address, 8 for a number.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Global => 0,
            Repr::V4(_) => 4,
            Repr::V6(_) => 16,
            Repr::Number(_) => 8,
            Repr::Bytes(bytes) => bytes.len(),
        }
    }

    /// Whether this is the [global key](Self::global).
    #[inline]
    pub fn is_global(&self) -> bool {
        matches!(self.0, Repr::Global)
    }

    /// Whether this is the global key (or an empty byte key).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address, for a key made from one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.0 {
            Repr::V4(bits) => Some(IpAddr::V4(Ipv4Addr::from_bits(bits))),
            Repr::V6(words) => Some(IpAddr::V6(ipv6(words))),
            _ => None,
        }
    }
}

impl Hash for Key {
    /// A kind tag first, and a byte key's length before its bytes: stores
    /// tell keys apart by fingerprint only, so two keys of different kinds
    /// (an IPv4 address and the 4-byte key of its bytes, the global key and
    /// the key `[0]`) must never feed the hasher the same input. Every
    /// kind's input starts with its tag byte and has a fixed layout, and
    /// each is fed in one write (a byte key in two), little-endian on
    /// every machine: a hash costs one call of the hasher, not one a part.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            // One integer, which a hasher may take in one step.
            Repr::V4(bits) => state.write_u64(v4_input(*bits)),
            _ => self.hash_other(state),
        }
    }
}

impl Key {
    /// Every kind but an IPv4 address (hashed inline, on the per-IP hot
    /// path): the same layout rules.
    #[inline(never)]
    fn hash_other<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Global => state.write(&[0]),
            Repr::V4(bits) => state.write_u64(v4_input(*bits)),
            Repr::V6([high, low]) => {
                let mut input = [0u8; 24];
                input[0] = 2;
                input[1..9].copy_from_slice(&high.to_be_bytes());
                input[9..17].copy_from_slice(&low.to_be_bytes());
                state.write(&input);
            }
            Repr::Number(n) => {
                let mut input = [0u8; 16];
                input[0] = 3;
                input[1..9].copy_from_slice(&n.to_le_bytes());
                state.write(&input);
            }
            Repr::Bytes(bytes) => {
                // The length in the seven bytes after the tag (a key is
                // far shorter than 2^56 bytes).
                let length = (bytes.len() as u64) << 8 | 4;
                state.write(&length.to_le_bytes());
                state.write(bytes);
            }
        }
    }
}

/// The IPv6 address of a key's two words.
fn ipv6([high, low]: [u64; 2]) -> Ipv6Addr {
    Ipv6Addr::from_bits(u128::from(high) << 64 | u128::from(low))
}

/// An IPv4 key's input to the hasher: its tag and octets in one word,
/// whose native bytes are the input, as `write` would take them.
#[inline]
fn v4_input(bits: u32) -> u64 {
    let [a, b, c, d] = bits.to_be_bytes();
    u64::from_ne_bytes([1, a, b, c, d, 0, 0, 0])
}

impl From<IpAddr> for Key {
    #[inline]
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(Repr::V4(v4.to_bits())),
            IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                Self(Repr::V6([(bits >> 64) as u64, bits as u64]))
            }
        }
    }
}

impl From<u64> for Key {
    fn from(n: u64) -> Self {
        Self(Repr::Number(n))
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Self::bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        Self::bytes(text)
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Self {
        Self::bytes(Bytes::copy_from_slice(bytes))
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Self {
        Self::bytes(bytes)
    }
}

impl fmt::Display for Key {
    /// The key for logs: text keys are shown lossily and cut at 64 bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("(global)"),
            Repr::V4(bits) => write!(f, "{}", Ipv4Addr::from_bits(*bits)),
            Repr::V6(words) => write!(f, "{}", ipv6(*words)),
            Repr::Number(n) => write!(f, "{n}"),
            Repr::Bytes(bytes) => {
                let shown = bytes.get(..64).unwrap_or(bytes);
                f.write_str(&String::from_utf8_lossy(shown))?;
                if shown.len() < bytes.len() {
                    f.write_str("…")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// Why no key could be read from a request.
#[derive(Clone, Debug)]
pub struct KeyError {
    kind: KeyErrorKind,
    message: Cow<'static, str>,
}

/// The kinds of [`KeyError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyErrorKind {
    /// The request does not carry what the key is read from (a header,
    /// say): the client's fault, answered 400.
    Missing,
    /// The key is longer than the layer's maximum: answered 400.
    TooLong,
    /// The request carries the key's header more than once, and the
    /// extractor was not told which copy to take: answered 400, whatever
    /// the layer does with missing keys (a client must not choose its
    /// bucket by sending two).
    Duplicated,
    /// The server gave the request no peer address: it was not served with
    /// connection info (axum's `into_make_service_with_connect_info`, say).
    /// The server's fault, answered 500.
    NoPeerAddress,
}

impl KeyError {
    /// An error of the given kind with a message for the client and the log.
    pub fn new(kind: KeyErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub const fn kind(&self) -> KeyErrorKind {
        self.kind
    }

    /// The status a request without a key is answered with, when the layer
    /// is set to reject it.
    pub const fn status(&self) -> StatusCode {
        match self.kind {
            KeyErrorKind::Missing | KeyErrorKind::TooLong | KeyErrorKind::Duplicated => {
                StatusCode::BAD_REQUEST
            }
            KeyErrorKind::NoPeerAddress => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn no_peer() -> Self {
        Self::new(
            KeyErrorKind::NoPeerAddress,
            "the request carries no peer address: serve the app with connection info \
             (axum: `into_make_service_with_connect_info::<SocketAddr>()`; hyper: insert \
             the peer's `SocketAddr` into the request's extensions)",
        )
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyError {}

/// Reads the key a request is counted against.
///
/// Implemented for every request body type by the built-in extractors; a
/// [`KeyFn`] wraps a closure over one body type.
pub trait KeyExtractor<B>: Send + Sync + 'static {
    /// The request's key, or why it has none.
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError>;
}

/// One key for every request: a global limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl<B> KeyExtractor<B> for Global {
    #[inline]
    fn extract(&self, _: &Request<B>) -> Result<Key, KeyError> {
        Ok(Key::global())
    }
}

/// How IP addresses are grouped into keys: by prefix length.
///
/// The default keeps each IPv4 address apart (/32) and groups IPv6
/// addresses by /64, since one subscriber usually holds a whole /64 and
/// could otherwise rotate through 2^64 keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpGrouping {
    v4: u8,
    v6: u8,
}

impl Default for IpGrouping {
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl IpGrouping {
    /// Groups by the given prefix lengths (IPv4 0 to 32, IPv6 0 to 128).
    pub fn new(v4_prefix: u8, v6_prefix: u8) -> Result<Self, ConfigError> {
        if v4_prefix > 32 {
            return Err(ConfigError::with_kind(
                ConfigErrorKind::Prefix,
                format!("an IPv4 prefix is 0 to 32 bits long, not {v4_prefix}"),
            ));
        }
        if v6_prefix > 128 {
            return Err(ConfigError::with_kind(
                ConfigErrorKind::Prefix,
                format!("an IPv6 prefix is 0 to 128 bits long, not {v6_prefix}"),
            ));
        }
        Ok(Self {
            v4: v4_prefix,
            v6: v6_prefix,
        })
    }

    /// The key of an address: IPv4-mapped IPv6 read as IPv4, then masked
    /// to the group's prefix.
    #[inline]
    pub fn key(&self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => self.key_v4(v4),
            IpAddr::V6(v6) => self.key_v6(v6),
        }
    }

    /// An IPv4 address's key: its bits masked, in registers throughout.
    #[inline]
    fn key_v4(&self, v4: Ipv4Addr) -> Key {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.v4)).unwrap_or(0);
        Key(Repr::V4(v4.to_bits() & mask))
    }

    /// An IPv6 address's key; an IPv4-mapped one is read as IPv4.
    #[inline(never)]
    fn key_v6(&self, v6: Ipv6Addr) -> Key {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return self.key_v4(v4);
        }
        let mask = u128::MAX.checked_shl(128 - u32::from(self.v6)).unwrap_or(0);
        Key::from(IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask)))
    }
}

/// The peer address the server recorded for the request's connection.
///
/// Looked for, in order: axum's `ConnectInfo<SocketAddr>` (feature `axum`),
/// tonic's `TcpConnectInfo` (feature `tonic`), and a plain [`SocketAddr`] in
/// the request's extensions (what a hand-written hyper server inserts).
pub fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
    {
        return Some(addr);
    }
    extensions.get::<SocketAddr>().copied()
}

/// The connection's peer address as the key: right for a server that
/// clients reach directly. Behind a proxy every request would share the
/// proxy's key; use [`ClientIp`] there.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIp {
    grouping: IpGrouping,
}

impl PeerIp {
    /// Keyed by peer address, grouped by the default prefixes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keyed by peer address, grouped as given.
    pub fn grouped(grouping: IpGrouping) -> Self {
        Self { grouping }
    }
}

impl<B> KeyExtractor<B> for PeerIp {
    #[inline(always)]
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        let peer = peer_addr(request).ok_or_else(KeyError::no_peer)?;
        Ok(self.grouping.key(peer.ip()))
    }
}

/// Which header a trusted proxy writes the client's address into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, most load
    /// balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// The client's address, read through trusted proxies.
///
/// The connection's peer is believed only if it is a listed trusted proxy;
/// then the forwarding header is read from the right (each proxy appends
/// the address it received from) and the key is the **rightmost address
/// that is not a trusted proxy**. Entries to its left were written by the
/// client and change nothing, so a client cannot escape its limit by
/// sending a forged `X-Forwarded-For`. A peer that is not a trusted proxy
/// is keyed by its own address, whatever its headers say.
///
/// An entry that cannot be read (`unknown`, an obfuscated name, garbage)
/// stops the walk: the key is then the last trusted proxy's address, so
/// such clients share one key rather than pick their own.
///
/// Only one header is read, the one the proxies write ([`ForwardedHeader`];
/// `X-Forwarded-For` by default): were both read, a client could hide
/// behind the one its proxy leaves alone.
///
/// ```
/// use tollgate_tower::ClientIp;
///
/// let key = ClientIp::trusting(["10.0.0.0/8", "127.0.0.1"])?;
/// assert!(ClientIp::trusting(["10.0.0.0/33"]).is_err());
/// # Ok::<(), tollgate_tower::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardedHeader,
    grouping: IpGrouping,
}

impl ClientIp {
    /// Trusts the given proxies: addresses (`"10.1.2.3"`, `"::1"`) or CIDR
    /// blocks (`"10.0.0.0/8"`, `"fd00::/8"`).
    pub fn trusting<I>(proxies: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut trusted = Vec::new();
        for proxy in proxies {
            let text = proxy.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(ConfigError::with_kind(
                            ConfigErrorKind::Proxy,
                            format!(
                                "{text:?} is neither an IP address nor a CIDR block \
                             (write \"10.0.0.1\" or \"10.0.0.0/8\")"
                            ),
                        ))
                    }
                },
            };
            trusted.push(net.trunc());
        }
        Ok(Self {
            trusted: trusted.into(),
            header: ForwardedHeader::XForwardedFor,
            grouping: IpGrouping::default(),
        })
    }

    /// Reads the given header instead of `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups client addresses as given.
    #[must_use]
    pub fn grouped(mut self, grouping: IpGrouping) -> Self {
        self.grouping = grouping;
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that came from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let mut last = peer.to_canonical();
        if !self.is_trusted(last) {
            return last;
        }
        let name: HeaderName = match self.header {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => FORWARDED,
        };
        for value in headers.get_all(name).iter().rev() {
            let Ok(text) = value.to_str() else {
                return last;
            };
            for entry in text.rsplit(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let parsed = match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(entry),
                    ForwardedHeader::Forwarded => forwarded_for(entry),
                };
                let Some(ip) = parsed.map(|ip| ip.to_canonical()) else {
                    return last;
                };
                if !self.is_trusted(ip) {
                    return ip;
                }
                last = ip;
            }
        }
        last
    }
}

impl<B> KeyExtractor<B> for ClientIp {
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        let peer = peer_addr(request).ok_or_else(KeyError::no_peer)?;
        Ok(self
            .grouping
            .key(self.client_ip(peer.ip(), request.headers())))
    }
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    // An IPv4 address with a port.
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A header's value as the key (an API key, a tenant id). A request without
/// the header, or with an empty one, has no key.
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
    duplicates: Duplicates,
}

/// What [`HeaderKey`] does with a request that carries its header more
/// than once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Duplicates {
    /// Refuse the request (400, or gRPC `INVALID_ARGUMENT`): the default.
    /// A proxy or an app that authenticates on another copy of the header
    /// would otherwise let a client choose the bucket it is counted in.
    #[default]
    Reject,
    /// Key by the first copy: only where whatever checks the header reads
    /// the first copy too.
    First,
    /// Key by the last copy: where a trusted proxy appends its own.
    Last,
}

impl HeaderKey {
    /// Keyed by the value of the named header (`"x-api-key"`); a request
    /// with two copies of it is refused (see [`duplicates`](Self::duplicates)).
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let name = HeaderName::try_from(name).map_err(|_| {
            ConfigError::with_kind(
                ConfigErrorKind::HeaderName,
                format!("{name:?} is not a valid header name"),
            )
        })?;
        Ok(Self {
            name,
            duplicates: Duplicates::Reject,
        })
    }

    /// What to do with a request that carries the header more than once.
    #[must_use]
    pub const fn duplicates(mut self, duplicates: Duplicates) -> Self {
        self.duplicates = duplicates;
        self
    }
}

impl<B> KeyExtractor<B> for HeaderKey {
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        let mut values = request.headers().get_all(&self.name).iter();
        let first = values.next();
        let chosen = match (self.duplicates, values.next()) {
            (_, None) => first,
            (Duplicates::First, Some(_)) => first,
            (Duplicates::Last, Some(second)) => Some(values.next_back().unwrap_or(second)),
            (Duplicates::Reject, Some(_)) => {
                return Err(KeyError::new(
                    KeyErrorKind::Duplicated,
                    format!(
                        "the request carries the {} header more than once",
                        self.name
                    ),
                ))
            }
        };
        match chosen {
            Some(value) if !value.is_empty() => Ok(Key::from(value.as_bytes())),
            _ => Err(KeyError::new(
                KeyErrorKind::Missing,
                format!("the request has no {} header", self.name),
            )),
        }
    }
}

/// A closure as a key extractor: `None` means the request has no key.
///
/// ```
/// use axum::body::Body;
/// use http::Request;
/// use tollgate_tower::{Key, KeyFn};
///
/// // One key per tenant, read from the path: /t/{tenant}/...
/// let by_tenant = KeyFn::new(|request: &Request<Body>| {
///     let tenant = request.uri().path().strip_prefix("/t/")?.split('/').next()?;
///     Some(Key::from(tenant))
/// });
/// ```
#[derive(Clone)]
pub struct KeyFn<F> {
    f: F,
}

impl<F> KeyFn<F> {
    /// Wraps the closure.
    pub const fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<B, F, K> KeyExtractor<B> for KeyFn<F>
where
    F: Fn(&Request<B>) -> Option<K> + Send + Sync + 'static,
    K: Into<Key>,
{
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        (self.f)(request).map(Into::into).ok_or_else(|| {
            KeyError::new(
                KeyErrorKind::Missing,
                "the request carries no rate-limit key",
            )
        })
    }
}

/// The default maximum key length, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 256;

/// What to do with a request from which no key can be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Reject it: 400 when the request lacks the key (or its key is too
    /// long), 500 when the server gave no peer address.
    #[default]
    Reject,
    /// Count it against one shared key, as a global limit would.
    Global,
}

/// How the layers read keys: what a request without one gets, and the
/// longest key accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyRules {
    pub(crate) missing: MissingKey,
    pub(crate) max_len: usize,
}

impl Default for KeyRules {
    fn default() -> Self {
        Self {
            missing: MissingKey::Reject,
            max_len: DEFAULT_MAX_KEY_LEN,
        }
    }
}

impl KeyRules {
    /// The one rule both layers' builders apply: a key length cap of 0
    /// would refuse every request.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.max_len == 0 {
            return Err(ConfigError::with_kind(
                ConfigErrorKind::Limit,
                "max_key_len must be at least 1 byte",
            ));
        }
        Ok(())
    }

    /// Reads a request's key; a key over the maximum length counts as
    /// missing, and a missing key is an error or the global key.
    pub(crate) fn read<B, K: KeyExtractor<B>>(
        &self,
        extractor: &K,
        request: &Request<B>,
    ) -> Result<Key, KeyError> {
        let read = extractor.extract(request);
        match self.accepted(&read) {
            Ok(Some(_)) => read,
            Ok(None) => Ok(Key::global()),
            Err(error) => Err(error),
        }
    }

    /// Whether a key read is accepted as it is (`Some`, the key), stands
    /// for the global key (`None`: none was found, or one too long, and
    /// such requests count against one shared key), or is refused. Lends
    /// the key rather than moving it: the layer's hot path keeps the key
    /// where the extractor wrote it.
    #[inline]
    pub(crate) fn accepted<'k>(
        &self,
        read: &'k Result<Key, KeyError>,
    ) -> Result<Option<&'k Key>, KeyError> {
        match read {
            Ok(key) if key.len() <= self.max_len => Ok(Some(key)),
            _ => self.fallback(read),
        }
    }

    /// A key too long, or none: the global key or the error.
    #[cold]
    #[inline(never)]
    fn fallback<'k>(&self, read: &Result<Key, KeyError>) -> Result<Option<&'k Key>, KeyError> {
        let error = match read {
            Ok(key) => KeyError::new(
                KeyErrorKind::TooLong,
                format!(
                    "the rate-limit key is {} bytes long; at most {} are accepted",
                    key.len(),
                    self.max_len
                ),
            ),
            Err(error) => error.clone(),
        };
        match self.missing {
            _ if error.kind() == KeyErrorKind::Duplicated => Err(error),
            MissingKey::Global => Ok(None),
            MissingKey::Reject => Err(error),
        }
    }
}

pub(crate) fn no_key(error: &KeyError, grpc: bool) -> Rejection {
    if error.kind() == KeyErrorKind::NoPeerAddress {
        tracing::error!(%error, "no rate-limit key");
    } else {
        tracing::debug!(%error, "no rate-limit key");
    }
    Rejection::new(RejectionKind::NoKey, error.status(), error.to_string()).grpc(grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, xff: &[&str]) -> Request<()> {
        let mut builder = Request::builder();
        for value in xff {
            builder = builder.header("x-forwarded-for", *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        request
    }

    fn ip(text: &str) -> Key {
        Key::from(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn nodes_with_ports_and_brackets() {
        assert_eq!(parse_node("192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            parse_node("192.0.2.1:4711"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_node("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_node("[2001:db8::1]:4711"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_node("[2001:db8::1]x"), None);
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(parse_node("1.2.3.4:99999"), None);
        assert_eq!(
            forwarded_for(r#"for="[2001:db8:cafe::17]:4711";proto=https"#),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        assert_eq!(
            forwarded_for("proto=http;FOR=192.0.2.60"),
            Some("192.0.2.60".parse().unwrap())
        );
    }

    #[test]
    fn rightmost_untrusted_hop() {
        let key = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
        // Untrusted peer: its headers change nothing.
        let r = request("203.0.113.9:1000", &["198.51.100.1"]);
        assert_eq!(key.extract(&r).unwrap(), ip("203.0.113.9"));
        // Trusted peer: the rightmost untrusted entry, whatever lies left of it.
        let r = request("10.0.0.1:1000", &["6.6.6.6, 198.51.100.1, 10.0.0.2"]);
        assert_eq!(key.extract(&r).unwrap(), ip("198.51.100.1"));
        // Entries spread over several header lines read as one list.
        let r = request("10.0.0.1:1000", &["6.6.6.6", "198.51.100.1", "10.0.0.2"]);
        assert_eq!(key.extract(&r).unwrap(), ip("198.51.100.1"));
        // An unreadable hop stops the walk at the last trusted proxy.
        let r = request("10.0.0.1:1000", &["198.51.100.1, unknown, 10.0.0.2"]);
        assert_eq!(key.extract(&r).unwrap(), ip("10.0.0.2"));
        // No header behind a trusted proxy: the proxy itself.
        let r = request("10.0.0.1:1000", &[]);
        assert_eq!(key.extract(&r).unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_header() {
        let key = ClientIp::trusting(["127.0.0.1"])
            .unwrap()
            .header(ForwardedHeader::Forwarded);
        let mut r = request("127.0.0.1:1", &["6.6.6.6"]);
        r.headers_mut().insert(
            FORWARDED,
            "for=1.1.1.1, for=\"[2001:db8::5]:80\";proto=https"
                .parse()
                .unwrap(),
        );
        assert_eq!(key.extract(&r).unwrap(), ip("2001:db8::"));
    }

    #[test]
    fn grouping_and_mapped_addresses() {
        let g = IpGrouping::default();
        assert_eq!(g.key("::ffff:192.0.2.1".parse().unwrap()), ip("192.0.2.1"));
        assert_eq!(
            g.key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            ip("2001:db8:1:2::")
        );
        let g = IpGrouping::new(24, 128).unwrap();
        assert_eq!(g.key("192.0.2.77".parse().unwrap()), ip("192.0.2.0"));
        assert_eq!(g.key("2001:db8::6".parse().unwrap()), ip("2001:db8::6"));
        let g = IpGrouping::new(0, 0).unwrap();
        assert_eq!(g.key("192.0.2.77".parse().unwrap()), ip("0.0.0.0"));
        assert!(IpGrouping::new(33, 64).is_err());
        assert!(IpGrouping::new(32, 129).is_err());
    }

    proptest::proptest! {
        /// Whatever bytes a client puts in the forwarding headers, reading
        /// them never panics, and the key is the trusted peer or an address
        /// that appears in the header.
        #[test]
        fn hostile_forwarding_headers(
            xff in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..4),
            forwarded in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
            text in "[0-9a-f:.,\\[\\] ;=\"forunkw_]{0,80}",
        ) {
            let mut request = request("10.0.0.1:1", &[]);
            for value in xff.iter().map(Vec::as_slice).chain([text.as_bytes()]) {
                if let Ok(value) = http::HeaderValue::from_bytes(value) {
                    request.headers_mut().append("x-forwarded-for", value);
                }
            }
            if let Ok(value) = http::HeaderValue::from_bytes(&forwarded) {
                request.headers_mut().append(FORWARDED, value);
            }
            for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
                let key = ClientIp::trusting(["10.0.0.0/8"]).unwrap().header(header);
                let ip = key.extract(&request).unwrap().ip().unwrap();
                let peer: IpAddr = "10.0.0.1".parse().unwrap();
                let seen = ip == peer || request.headers().iter().any(|(_, v)| {
                    String::from_utf8_lossy(v.as_bytes()).contains(&ip.to_string())
                        || ip.is_ipv6()
                });
                proptest::prop_assert!(seen, "{ip} is neither the peer nor in the headers");
            }
        }
    }

    #[test]
    fn peer_and_header_keys() {
        let r = request("[::ffff:192.0.2.3]:5", &[]);
        assert_eq!(PeerIp::new().extract(&r).unwrap(), ip("192.0.2.3"));
        let bare = Request::new(());
        let err = PeerIp::new().extract(&bare).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::NoPeerAddress);
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);

        let by_header = HeaderKey::new("x-api-key").unwrap();
        let err = by_header.extract(&bare).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Missing);
        let with = Request::builder()
            .header("x-api-key", "k1")
            .body(())
            .unwrap();
        assert_eq!(by_header.extract(&with).unwrap(), Key::from("k1"));
        assert!(HeaderKey::new("bad header").is_err());
    }
}
