//! Where connections go and where they come from.
//!
//! The generator only ever talks to loopback: a target outside 127.0.0.0/8
//! is refused before anything connects. Connections leave from many
//! `127.x.y.z` source addresses, with `IP_BIND_ADDRESS_NO_PORT` set before
//! `bind`, so the kernel picks the source port at `connect` time per 4-tuple
//! and the ~28k ephemeral ports are not one shared pool for every session.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context as _, bail};
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};

/// The gateway (or echo server) a run talks to, parsed from a `wss://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given, for the upgrade request and the result file.
    pub url: String,
    pub addr: SocketAddrV4,
    /// The TLS name to verify: the URL's host (an IP address works).
    pub server_name: ServerName<'static>,
}

impl Target {
    /// Parses `wss://127.x.y.z:PORT/path` (or `wss://localhost:PORT/path`)
    /// and refuses anything that is not loopback.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("wss") {
            bail!("{url:?}: the scheme must be wss");
        }
        let host = uri.host().context("the URL has no host")?;
        let ip: Ipv4Addr = match host {
            "localhost" => Ipv4Addr::LOCALHOST,
            other => other
                .parse()
                .with_context(|| format!("{other:?} is not an IPv4 address (loopback only)"))?,
        };
        if !ip.is_loopback() {
            bail!("refusing target {ip}: only loopback (127.0.0.0/8) targets are allowed");
        }
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| anyhow::anyhow!("{host:?} is not a valid TLS name"))?;
        Ok(Self {
            url: url.to_string(),
            addr: SocketAddrV4::new(ip, uri.port_u16().unwrap_or(443)),
            server_name,
        })
    }
}

/// Hands out source addresses round-robin from a block of loopback
/// addresses, one block per worker process so workers never share one.
#[derive(Debug)]
pub struct SourcePool {
    /// `127.<base>.0.0`: the worker's block.
    base: u8,
    /// How many addresses of the block are used.
    size: u16,
    next: u16,
}

impl SourcePool {
    /// Addresses per worker: 1,024 addresses x ~28k ports each is far more
    /// 4-tuples than a worker's 19,000 sessions and a login loop's TIME_WAITs.
    pub const SIZE: u16 = 1024;

    /// The pool of worker `worker` (0-based). Blocks start at 127.10.0.0,
    /// clear of 127.0.0.1, where servers listen.
    pub fn for_worker(worker: usize) -> Self {
        Self {
            base: 10u8.saturating_add(u8::try_from(worker % 200).unwrap_or(0)),
            size: Self::SIZE,
            next: 0,
        }
    }

    pub fn next_addr(&mut self) -> Ipv4Addr {
        let addr = self.nth(usize::from(self.next));
        self.next = (self.next + 1) % self.size;
        addr
    }

    /// The address of connection `i` (cycling through the block).
    pub fn nth(&self, i: usize) -> Ipv4Addr {
        let i = u16::try_from(i % usize::from(self.size)).unwrap_or(0);
        // Host numbers 1..=1024 over the last two octets: never x.y.0.0.
        let [hi, lo] = (i + 1).to_be_bytes();
        Ipv4Addr::new(127, self.base, hi, lo)
    }
}

/// TCP connect to `target` from `source`, without Nagle.
pub async fn connect_from(source: Ipv4Addr, target: SocketAddrV4) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .map_err(std::io::Error::from)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let stream = socket.connect(SocketAddr::V4(target)).await?;
    // Frames are small and latency is measured: no Nagle delay.
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_only() {
        let t = Target::parse("wss://127.0.0.1:5443/v1/ws").expect("loopback");
        assert_eq!(t.addr, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5443));
        Target::parse("wss://127.3.2.1:1/v1/ws").expect("all of 127/8");
        Target::parse("wss://localhost:1/v1/ws").expect("localhost");
        for bad in [
            "wss://10.0.0.1:5443/v1/ws",
            "wss://8.8.8.8/v1/ws",
            "wss://example.com/v1/ws",
            "wss://[::1]:5443/v1/ws",
            "ws://127.0.0.1:5443/v1/ws",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn pools_are_disjoint_and_cycle() {
        let mut a = SourcePool::for_worker(0);
        let mut b = SourcePool::for_worker(1);
        let first = a.next_addr();
        assert_ne!(first, b.next_addr());
        assert!(first.is_loopback());
        let mut seen = std::collections::HashSet::new();
        seen.insert(first);
        for _ in 1..SourcePool::SIZE {
            assert!(seen.insert(a.next_addr()), "no repeat within a cycle");
        }
        assert_eq!(a.next_addr(), first);
    }

    #[tokio::test]
    async fn connects_from_a_chosen_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("addr") else {
            panic!("v4 listener");
        };
        let source = Ipv4Addr::new(127, 10, 0, 7);
        let (client, accepted) = tokio::join!(connect_from(source, addr), listener.accept());
        let client = client.expect("connects");
        let (_server, peer) = accepted.expect("accepts");
        assert_eq!(peer.ip(), std::net::IpAddr::V4(source));
        assert_eq!(client.local_addr().expect("local").ip(), peer.ip());
    }
}
