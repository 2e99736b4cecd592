//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2), pure: the bytes a connection has sent so far in, a verdict out.
//! No sockets, no clock, no allocation but the exported TLV values.
//!
//! The one promise the supervisor builds on: [`Parse::Incomplete`] means
//! that *every* byte given belongs to the header, so the caller may
//! consume them all and still never take a byte of what the client sends
//! after it. A v1 header ends at its first CRLF, which is not among them;
//! a v2 header is `16 + len` bytes, more than were given.
//!
//! Why not a crate: `ppp`, the well-kept parser, depends on `thiserror`,
//! a procedural macro, which this crate's static build cannot compile
//! (see `.cargo/config.toml`); this file is small, strict, unit-tested
//! and has a fuzz target (`fuzz/fuzz_targets/proxy_header.rs`).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::plan::ProxyVersion;

/// The longest v1 line, CRLF included (the specification's worst case,
/// `PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX: usize = 107;

/// The fixed part of a v2 header: signature, version and command,
/// family, length.
pub const V2_PREAMBLE: usize = 16;

/// The most bytes a v2 header may carry after its preamble (addresses and
/// TLVs). The specification lets the 16-bit length go to 65,535 but sizes
/// the header for one 536-byte segment; the largest address block (two
/// Unix paths) is 216 bytes and HAProxy's TLVs (ALPN, authority, unique
/// id, the SSL fields) fit in a few hundred more. A larger one is refused:
/// it bounds what the daemon buffers per pending connection.
pub const V2_MAX_LEN: usize = 1024;

/// The longest header of either version.
pub const MAX_HEADER: usize = V2_PREAMBLE + V2_MAX_LEN;

/// The longest TLV value exported to a handler, in bytes before escaping
/// (an authority is a host name of at most 253, an ALPN protocol name at
/// most 255). A longer one makes the header invalid rather than cut.
pub const TLV_VALUE_MAX: usize = 255;

/// The longest `PP2_TYPE_UNIQUE_ID`, as the specification fixes it.
const UNIQUE_ID_MAX: usize = 128;

/// The v2 signature.
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What every v1 line starts with.
const V1_PREFIX: &[u8] = b"PROXY ";

/// What the bytes seen so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole header yet; every byte given is part of it.
    Incomplete,
    /// Not a header the service accepts, and no byte more can change it.
    Invalid(&'static str),
    /// A whole, valid header.
    Complete(Header),
}

/// A complete, valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what is consumed from the connection.
    pub len: usize,
    /// The original client and the address it connected to; `None` when
    /// the header names none the daemon can use (v1 `UNKNOWN`, v2 `LOCAL`,
    /// an unspecified family, Unix or datagram addresses): the
    /// connection's own addresses are kept.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// A v2 `LOCAL` command: the proxy's own connection (a health check).
    pub local: bool,
    /// The TLVs exported to the handler, escaped, in the order received.
    pub tlvs: Vec<(Tlv, String)>,
}

/// The v2 TLVs a handler sees (SPEC §10.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tlv {
    /// `PP2_TYPE_ALPN`.
    Alpn,
    /// `PP2_TYPE_AUTHORITY` (the TLS SNI, usually).
    Authority,
    /// `PP2_TYPE_UNIQUE_ID`.
    UniqueId,
    /// `PP2_SUBTYPE_SSL_VERSION`, inside `PP2_TYPE_SSL`.
    SslVersion,
    /// `PP2_SUBTYPE_SSL_CN`, inside `PP2_TYPE_SSL`.
    SslCn,
}

impl Tlv {
    /// The handler's variable for it.
    pub fn var(self) -> &'static str {
        match self {
            Tlv::Alpn => "TINYINETD_PROXY_ALPN",
            Tlv::Authority => "TINYINETD_PROXY_AUTHORITY",
            Tlv::UniqueId => "TINYINETD_PROXY_UNIQUE_ID",
            Tlv::SslVersion => "TINYINETD_PROXY_SSL_VERSION",
            Tlv::SslCn => "TINYINETD_PROXY_SSL_CN",
        }
    }
}

/// Judges `buf`, the first bytes of a connection (it may hold more than
/// the header: only `Header::len` of them are the header's), for a
/// service that accepts `accept`.
pub fn parse(buf: &[u8], accept: ProxyVersion) -> Parse {
    let Some(&first) = buf.first() else {
        return Parse::Incomplete;
    };
    let (v1, v2) = match accept {
        ProxyVersion::V1 => (true, false),
        ProxyVersion::V2 => (false, true),
        ProxyVersion::Any => (true, true),
    };
    match first {
        b'P' if v1 => parse_v1(buf),
        b'\r' if v2 => parse_v2(buf),
        _ => Parse::Invalid(match accept {
            ProxyVersion::V1 => "not a PROXY protocol v1 header",
            ProxyVersion::V2 => "not a PROXY protocol v2 header",
            ProxyVersion::Any => "not a PROXY protocol header",
        }),
    }
}

fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(V1_MAX)];
    let n = V1_PREFIX.len().min(window.len());
    if window[..n] != V1_PREFIX[..n] {
        return Parse::Invalid("not a PROXY protocol v1 header");
    }
    if let Some(end) = window.windows(2).position(|w| w == b"\r\n") {
        // The same bytes refused below while no CRLF had come: a verdict
        // must not depend on how the client's bytes were split.
        if window[..end].contains(&b'\n') {
            return Parse::Invalid("v1 line ended by LF without CR");
        }
        if window[..end].contains(&b'\r') {
            return Parse::Invalid("v1 line with a CR not followed by LF");
        }
        return match v1_line(&window[n..end]) {
            Ok(addrs) => Parse::Complete(Header {
                len: end + 2,
                addrs,
                local: false,
                tlvs: Vec::new(),
            }),
            Err(why) => Parse::Invalid(why),
        };
    }
    if window.len() >= V1_MAX {
        return Parse::Invalid("v1 line without CRLF within 107 bytes");
    }
    // No CRLF yet: refuse now what no later byte can mend.
    if window.contains(&b'\n') {
        return Parse::Invalid("v1 line ended by LF without CR");
    }
    if window[..window.len() - 1].contains(&b'\r') {
        return Parse::Invalid("v1 line with a CR not followed by LF");
    }
    let rest = &window[n..];
    let k = rest.len().min(8);
    let known = [&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"]
        .iter()
        .any(|p| rest[..k.min(p.len())] == p[..k.min(p.len())]);
    if !known {
        return Parse::Invalid("v1 line with an unknown protocol");
    }
    // Past the known check, a `U` starts `UNKNOWN`, whose rest is free.
    let unknown = rest.first() == Some(&b'U');
    let text = rest.strip_suffix(b"\r").unwrap_or(rest);
    if !unknown
        && !text
            .iter()
            .all(|&b| b.is_ascii_digit() || b" .:TCP46abcdefABCDEF".contains(&b))
    {
        return Parse::Invalid("v1 line with a byte no address or port has");
    }
    Parse::Incomplete
}

/// The part of a v1 line after `PROXY ` and before its CRLF.
fn v1_line(rest: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, &'static str> {
    // "the receiver must ignore anything presented before the CRLF"
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(None);
    }
    let text = std::str::from_utf8(rest).map_err(|_| "v1 line that is not text")?;
    let mut fields = text.split(' ');
    let mut next = || fields.next().ok_or("v1 line with a field missing");
    let (proto, src, dst, sport, dport) = (next()?, next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err("v1 line with a field too many");
    }
    let ip = |s: &str| -> Result<IpAddr, &'static str> {
        match proto {
            "TCP4" => s
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| "v1 line with a bad IPv4 address"),
            "TCP6" => s
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| "v1 line with a bad IPv6 address"),
            _ => Err("v1 line with an unknown protocol"),
        }
    };
    let (src, dst) = (ip(src)?, ip(dst)?);
    let (sport, dport) = (v1_port(sport)?, v1_port(dport)?);
    Ok(Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    )))
}

/// A decimal port: 0..65535, no sign, no leading zero (the specification
/// forbids them, octal being a possible reading).
fn v1_port(s: &str) -> Result<u16, &'static str> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err("v1 line with a bad port");
    }
    s.parse().map_err(|_| "v1 line with a bad port")
}

fn parse_v2(buf: &[u8]) -> Parse {
    let n = SIG.len().min(buf.len());
    if buf[..n] != SIG[..n] {
        return Parse::Invalid("not a PROXY protocol v2 header");
    }
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Parse::Invalid("v2 header of another version than 2");
        }
        if ver_cmd & 0x0f > 1 {
            return Parse::Invalid("v2 header with an unknown command");
        }
    }
    if let Some(&fam) = buf.get(13) {
        if fam >> 4 > 3 || fam & 0x0f > 2 {
            return Parse::Invalid("v2 header with an unknown family or protocol");
        }
    }
    if buf.len() < V2_PREAMBLE {
        return Parse::Incomplete;
    }
    let local = buf[12] & 0x0f == 0;
    let (family, protocol) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_LEN {
        return Parse::Invalid("v2 header longer than 1040 bytes");
    }
    let addr_len = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    // A LOCAL header's block is skipped whatever it holds.
    if !local && len < addr_len {
        return Parse::Invalid("v2 header too short for its address family");
    }
    if buf.len() < V2_PREAMBLE + len {
        return Parse::Incomplete;
    }
    let block = &buf[V2_PREAMBLE..V2_PREAMBLE + len];
    let mut header = Header {
        len: V2_PREAMBLE + len,
        addrs: None,
        local,
        tlvs: Vec::new(),
    };
    if local {
        return Parse::Complete(header);
    }
    // Datagrams, Unix sockets, an unspecified family: not what a TCP
    // connection can be; the connection's own addresses are kept (the
    // specification's fallback to UNSPEC).
    header.addrs = match (family, protocol) {
        (1, 1) => {
            let ip =
                |i: usize| Ipv4Addr::from([block[i], block[i + 1], block[i + 2], block[i + 3]]);
            let port = |i: usize| u16::from_be_bytes([block[i], block[i + 1]]);
            Some((
                SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            ))
        }
        (2, 1) => {
            let ip = |i: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&block[i..i + 16]);
                Ipv6Addr::from(a)
            };
            let port = |i: usize| u16::from_be_bytes([block[i], block[i + 1]]);
            Some((
                SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            ))
        }
        _ => None,
    };
    match tlvs(&block[addr_len..], &mut header.tlvs, false) {
        Ok(()) => Parse::Complete(header),
        Err(why) => Parse::Invalid(why),
    }
}

/// Reads a run of TLVs (`ssl`: the sub-TLVs of `PP2_TYPE_SSL`), keeping
/// the exported ones. Each must fit in the run exactly; types not
/// exported (CRC32C, NOOP, NETNS, the custom range, the other SSL
/// fields) are skipped. The CRC32C checksum is not verified (optional for
/// receivers): the header comes from a trusted proxy over a TCP
/// connection with its own checksums.
fn tlvs(mut b: &[u8], out: &mut Vec<(Tlv, String)>, ssl: bool) -> Result<(), &'static str> {
    while !b.is_empty() {
        if b.len() < 3 {
            return Err("v2 header with a TLV cut short");
        }
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
        let Some(value) = b.get(3..3 + len) else {
            return Err("v2 header with a TLV longer than the header");
        };
        let kind = match (ssl, b[0]) {
            (false, 0x01) => Some(Tlv::Alpn),
            (false, 0x02) => Some(Tlv::Authority),
            (false, 0x05) if len > UNIQUE_ID_MAX => {
                return Err("v2 header with a unique id longer than 128 bytes")
            }
            (false, 0x05) => Some(Tlv::UniqueId),
            (false, 0x20) => {
                // client (1 byte) and verify (4 bytes), then sub-TLVs.
                let sub = value
                    .get(5..)
                    .ok_or("v2 header with an SSL TLV cut short")?;
                tlvs(sub, out, true)?;
                None
            }
            (true, 0x21) => Some(Tlv::SslVersion),
            (true, 0x22) => Some(Tlv::SslCn),
            _ => None,
        };
        if let Some(kind) = kind {
            if value.len() > TLV_VALUE_MAX {
                return Err("v2 header with a TLV value longer than 255 bytes");
            }
            if out.iter().any(|(k, _)| *k == kind) {
                return Err("v2 header with a TLV given twice");
            }
            out.push((kind, escape_value(value)));
        }
        b = &b[3 + len..];
    }
    Ok(())
}

/// A TLV's bytes as an environment value: printable ASCII as is, a
/// backslash doubled, every other byte `\xNN`. At most four characters per
/// byte, so a value is at most `4 * TLV_VALUE_MAX` long.
pub fn escape_value(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for &b in v {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// Checks the promise the supervisor relies on, for `data` delivered one
/// byte at a time (the fuzz target and a property test call it): while
/// [`Parse::Incomplete`], every byte seen is the header's; once a verdict
/// is given it stays the same however many bytes follow; nothing is still
/// incomplete at [`MAX_HEADER`] bytes. `Err` says what broke.
/// (Quadratic in `data.len()`: meant for inputs of a few hundred bytes.)
pub fn check_prefixes(data: &[u8], accept: ProxyVersion) -> Result<(), String> {
    let mut verdict: Option<Parse> = None;
    for k in 0..=data.len() {
        let p = parse(&data[..k], accept);
        match (&verdict, &p) {
            (None, Parse::Incomplete) if k >= MAX_HEADER => {
                return Err(format!("still incomplete at {k} bytes"))
            }
            (None, Parse::Incomplete) => {}
            (None, Parse::Complete(h)) if h.len != k => {
                return Err(format!("complete at {k} bytes but {} long", h.len))
            }
            (None, _) => verdict = Some(p),
            // Invalid stays invalid (its reason may be told better later).
            (Some(Parse::Invalid(_)), Parse::Invalid(_)) => {}
            (Some(v), _) if *v != p => {
                return Err(format!("verdict {v:?} became {p:?} at {k} bytes"))
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
