//! The floor: a bare TLS + WebSocket echo server.
//!
//! It does what any such server must (TCP accept, TLS 1.3 handshake with a
//! P-256 certificate like Parley's, WebSocket upgrade, 4 KiB buffers, one
//! task per connection) and nothing else: no token check, no router. It
//! answers each upgrade with a `QueueEmpty` frame, so the generator's login
//! path is the same as against Parley, then echoes every binary message.
//! Figures against it are what this machine can do at all; Parley's read as
//! a ratio to them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use parley_proto::limits::MAX_FRAME_BYTES;
use parley_proto::v1::{QueueEmpty, ServerFrame, server_frame};
use prost::Message as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Same bound as Parley's gateway on TLS + upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Same as Parley's default and far above tokio's 1024, so a login storm
/// is not limited by the accept queue.
const BACKLOG: u32 = 8192;

/// Writes a self-signed ECDSA P-256 certificate for 127.0.0.1 and
/// localhost to `dir/cert.pem` and `dir/key.pem` unless both exist.
pub fn ensure_cert(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)?;
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let generated = params.self_signed(&key_pair)?;
    std::fs::write(&cert, generated.pem())?;
    std::fs::write(&key, key_pair.serialize_pem())?;
    Ok((cert, key))
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds `addr` (loopback only) with a deep backlog.
pub fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the echo server listens on loopback only"
    );
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(BACKLOG)?)
}

/// Serves until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    cert: &Path,
    key: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = acceptor(cert, key)?;
    let hello: bytes::Bytes = ServerFrame {
        frame: Some(server_frame::Frame::QueueEmpty(QueueEmpty {})),
    }
    .encode_to_vec()
    .into();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of files or similar: wait instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let hello = hello.clone();
        // Handshakes run in the connection's task, never in the accept loop.
        tokio::spawn(async move {
            let _ = serve(tcp, acceptor, hello).await;
        });
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    hello: bytes::Bytes,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let mut ws = timeout(HANDSHAKE_TIMEOUT, async {
        let tls = acceptor.accept(tcp).await?;
        anyhow::Ok(tokio_tungstenite::accept_async_with_config(tls, Some(config)).await?)
    })
    .await??;
    ws.send(Message::Binary(hello)).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) => ws.send(Message::Binary(b)).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}
