//! The PROXY protocol (v1 text and v2 binary) in front of a listener, so the real client
//! address survives a load balancer. Parsing is done by the `ppp` crate; this module only reads
//! the header's bytes, bounded in size and time, and never a byte past the header: what follows
//! (a TLS ClientHello on an implicit-TLS port, or the first command) stays in the socket for TLS
//! and the protocol. Whether a peer must send a header at all is `net::accept`'s decision.
use std::{net::SocketAddr, time::Duration};

use ppp::{HeaderResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted proxy may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest v1 header, CRLF included (the specification's limit).
const V1_MAX: usize = 107;

/// The longest v2 header accepted: 16 fixed bytes and the addresses with a few TLVs.
const V2_MAX: usize = 1024;

/// v2's fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// Bytes read before the version is known: v2's signature is 12 bytes and the shortest v1
/// header (`PROXY UNKNOWN\r\n`) is 15, so neither ends within them.
const SIGNATURE: usize = 12;

/// Reads a PROXY header from the start of `stream`, exactly: nothing after it is consumed.
/// Returns the client address it names (none for a v2 `LOCAL` or a v1 `UNKNOWN` header, such as
/// a load balancer's own health check).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, String> {
    tokio::time::timeout(HEADER_TIMEOUT, read_exact_header(stream))
        .await
        .map_err(|_| format!("no PROXY header within {} s", HEADER_TIMEOUT.as_secs()))?
}

async fn read_exact_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, String> {
    let mut buf = vec![0u8; SIGNATURE];
    fill(stream, &mut buf).await?;
    if buf == v2::PROTOCOL_PREFIX {
        // Version/command, family/protocol, then the length of what follows, big-endian.
        buf.resize(V2_FIXED, 0);
        fill(stream, &mut buf[SIGNATURE..]).await?;
        let length = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if V2_FIXED + length > V2_MAX {
            return Err(format!("PROXY v2 header of {length} bytes is too long"));
        }
        buf.resize(V2_FIXED + length, 0);
        fill(stream, &mut buf[V2_FIXED..]).await?;
    } else if buf.starts_with(b"PROXY ") {
        // The line ends at its first CR, which must be followed by LF. While the last byte read
        // is not a CR, at least two bytes (CR LF) are still to come, so two can be read at once.
        loop {
            let want = match buf.iter().position(|&b| b == b'\r') {
                Some(cr) if cr + 1 < buf.len() => break,
                Some(_) => 1,
                None => 2,
            };
            if buf.len() + want > V1_MAX {
                return Err("PROXY v1 header longer than 107 bytes".to_string());
            }
            let at = buf.len();
            buf.resize(at + want, 0);
            fill(stream, &mut buf[at..]).await?;
        }
        // ppp reads an UNKNOWN line leniently; the line must end in CR LF all the same.
        if !buf.ends_with(b"\r\n") || buf.iter().filter(|&&b| b == b'\r').count() != 1 {
            return Err("invalid PROXY header: the line does not end with CRLF".to_string());
        }
    } else {
        return Err("the connection does not start with a PROXY header".to_string());
    }
    parse(&buf)
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), String> {
    stream
        .read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "connection closed inside the PROXY header".to_string()
            }
            _ => format!("reading the PROXY header: {e}"),
        })
}

/// Parses a complete header; `buf` must be exactly the header.
fn parse(buf: &[u8]) -> Result<Option<SocketAddr>, String> {
    let (used, addr) = match HeaderResult::parse(buf) {
        HeaderResult::V1(Ok(header)) => {
            let addr = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            (header.header.len(), addr)
        }
        HeaderResult::V2(Ok(header)) => {
            let addr = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            (header.len(), addr)
        }
        HeaderResult::V1(Err(err)) => return Err(format!("invalid PROXY header: {err}")),
        HeaderResult::V2(Err(err)) => return Err(format!("invalid PROXY header: {err}")),
    };
    if used != buf.len() {
        return Err("invalid PROXY header: trailing bytes".to_string());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: v2::Command) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | command,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:40000".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::1]:25".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("v2 header")
    }

    /// Reads a header from `input` and returns the address and what is left unread.
    async fn split(input: &[u8]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let mut rest = input;
        let addr = read_header(&mut rest).await;
        (addr, rest.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_client_address_and_leave_what_follows_unread() {
        let (addr, rest) = split(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO x\r\n").await;
        assert_eq!(addr, Ok(Some("203.0.113.7:40000".parse().expect("addr"))));
        assert_eq!(rest, b"EHLO x\r\n");

        let mut input = v2_header(v2::Command::Proxy);
        input.extend_from_slice(b"QUIT\r\n");
        let (addr, rest) = split(&input).await;
        assert_eq!(addr, Ok(Some("[2001:db8::7]:40000".parse().expect("addr"))));
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn a_tls_client_hello_in_the_same_segment_is_left_for_tls() {
        // A load balancer writes the header and the client's first flight together.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for header in [
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 993\r\n".to_vec(),
            v2_header(v2::Command::Proxy),
        ] {
            let mut input = header;
            input.extend_from_slice(&hello);
            let (addr, rest) = split(&input).await;
            assert_eq!(addr, Ok(Some("[2001:db8::7]:40000".parse().expect("addr"))));
            assert_eq!(rest, hello);
        }
    }

    #[tokio::test]
    async fn the_shortest_headers_are_read_without_waiting_for_more() {
        // A reader that wants more than the header would wait here until the timeout.
        let (client, mut server) = tokio::io::duplex(64);
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY UNKNOWN\r\n")
            .await
            .expect("write");
        let read = tokio::time::timeout(Duration::from_secs(1), read_header(&mut server)).await;
        assert_eq!(read.expect("read without waiting"), Ok(None));

        tokio::io::AsyncWriteExt::write_all(&mut client, &v2_header(v2::Command::Local))
            .await
            .expect("write");
        let read = tokio::time::timeout(Duration::from_secs(1), read_header(&mut server)).await;
        assert_eq!(read.expect("read without waiting"), Ok(None));
    }

    #[tokio::test]
    async fn bad_or_long_headers_are_refused() {
        for input in [
            &b"EHLO attacker.example\r\n"[..],
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\rEHLO x\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",
            b"PROXY TCP4 203.0.113.7",
            // ppp takes this UNKNOWN line (the fuzzer found it): it does not end in CRLF.
            b"PROXY UNKNOWN 1 N 1 \n\r0\x16\x03:7 \x039\x03",
        ] {
            assert!(
                split(input).await.0.is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        long.extend_from_slice(b"\r\n");
        let (addr, rest) = split(&long).await;
        assert!(addr.is_err());
        assert!(rest.len() > 90, "at most 107 bytes are read");

        let mut v2_long = v2_header(v2::Command::Proxy);
        v2_long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        v2_long.resize(2100, 0);
        assert!(split(&v2_long).await.0.is_err());
    }
}
