//! The PROXY protocol (v1 text and v2 binary) in front of a listener, so the real client
//! address survives a load balancer. Parsing is done by the `ppp` crate; this module only reads
//! the header's bytes, bounded in size and time.
use std::{net::SocketAddr, time::Duration};

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;

/// The longest header accepted: v1 is at most 107 bytes; v2 with TLVs is capped here.
const MAX_HEADER: usize = 1024;

/// Reads a PROXY header from the start of `stream`; returns the client address it names (none
/// for a `LOCAL`/`UNKNOWN` header, such as a load balancer's health check) and any bytes read
/// past it.
pub async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(232);
    let read = async {
        loop {
            let mut chunk = [0u8; 256];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the PROXY header: {e}"))?;
            if n == 0 {
                return Err("connection closed before the PROXY header".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            let result = HeaderResult::parse(&buf);
            if result.is_incomplete() {
                if buf.len() > MAX_HEADER {
                    return Err("PROXY header too long".to_string());
                }
                continue;
            }
            match result {
                HeaderResult::V1(Ok(header)) => {
                    let used = header.header.len();
                    let addr = match header.addresses {
                        v1::Addresses::Tcp4(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        v1::Addresses::Tcp6(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        v1::Addresses::Unknown => None,
                    };
                    return Ok((addr, buf[used..].to_vec()));
                }
                HeaderResult::V2(Ok(header)) => {
                    let used = header.len();
                    let addr = match header.addresses {
                        v2::Addresses::IPv4(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        v2::Addresses::IPv6(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        _ => None,
                    };
                    return Ok((addr, buf[used..].to_vec()));
                }
                HeaderResult::V1(Err(err)) => return Err(format!("invalid PROXY header: {err}")),
                HeaderResult::V2(Err(err)) => return Err(format!("invalid PROXY header: {err}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "no PROXY header within 5 s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_and_v2_give_the_client_address_and_keep_what_follows() {
        let mut v1 = &b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO x\r\n"[..];
        let (addr, rest) = read_header(&mut v1).await.expect("v1");
        assert_eq!(addr, Some("203.0.113.7:40000".parse().expect("addr")));
        assert_eq!(rest, b"EHLO x\r\n");

        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:40000".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::1]:25".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("v2 header");
        let mut input = header.clone();
        input.extend_from_slice(b"QUIT\r\n");
        let (addr, rest) = read_header(&mut &input[..]).await.expect("v2");
        assert_eq!(addr, Some("[2001:db8::7]:40000".parse().expect("addr")));
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn a_connection_without_a_header_is_refused() {
        let mut plain = &b"EHLO attacker.example\r\n"[..];
        assert!(read_header(&mut plain).await.is_err());
    }
}
