//! `agent --source syslog`: RFC 5424 and RFC 3164 messages over UDP (one per datagram) and
//! TCP (newline-delimited, or octet-counted as in RFC 6587 `LEN SP MSG`, told apart by the
//! first byte of each frame). A message that is not syslog is shipped as a plain line
//! (level UNKNOWN), never dropped.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sources::{MAX_CHUNK_EVENTS, SourceMessage};
use crate::event::foreign::Defaults;
use crate::event::{Level, LogEvent, line, syslog};

/// Largest frame accepted on TCP; longer octet counts are a framing error.
const MAX_FRAME_BYTES: usize = 1024 * 1024;

fn to_event(message: &str, peer: SocketAddr) -> LogEvent {
    let peer_host = peer.ip().to_string();
    syslog::parse("", message, &peer_host).unwrap_or_else(|_| {
        let defaults = Defaults {
            level: Level::Unknown,
            service: "syslog",
            host: &peer_host,
        };
        line::parse_line("", message, &defaults).0
    })
}

pub async fn listen_udp(socket: UdpSocket, events: mpsc::Sender<SourceMessage>, shutdown: CancellationToken) {
    let mut datagram = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut datagram) => received,
            _ = shutdown.cancelled() => return,
        };
        match received {
            Ok((length, peer)) => {
                let message = String::from_utf8_lossy(&datagram[..length]);
                if events
                    .send(SourceMessage::Event(to_event(&message, peer)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => warn!(error = %error, "syslog UDP receive failed"),
        }
    }
}

pub async fn listen_tcp(listener: TcpListener, events: mpsc::Sender<SourceMessage>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(read_connection(stream, peer, events.clone(), shutdown.clone()));
            }
            Err(error) => warn!(error = %error, "syslog TCP accept failed"),
        }
    }
}

async fn read_connection(
    stream: TcpStream,
    peer: SocketAddr,
    messages: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) {
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let mut frame = Vec::with_capacity(1024);
    // Frames already in the read buffer go out together: one channel message per chunk.
    let mut chunk = Vec::with_capacity(MAX_CHUNK_EVENTS);
    loop {
        frame.clear();
        let read = tokio::select! {
            read = read_frame(&mut reader, &mut frame) => read,
            // Frames already parsed (buffered ones) are handed over first.
            _ = shutdown.cancelled(), if chunk.is_empty() => break,
        };
        match read {
            Ok(false) => break,
            Ok(true) => {
                let message = String::from_utf8_lossy(&frame);
                let message = message.trim_end_matches(['\n', '\r']);
                if !message.trim().is_empty() {
                    chunk.push(to_event(message, peer));
                }
            }
            Err(error) => {
                warn!(%peer, error = %error, "syslog TCP connection closed on a framing error");
                break;
            }
        }
        if (chunk.len() >= MAX_CHUNK_EVENTS || !frame_buffered(reader.buffer()))
            && !chunk.is_empty()
            && messages
                .send(SourceMessage::Chunk(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(MAX_CHUNK_EVENTS),
                )))
                .await
                .is_err()
        {
            return;
        }
    }
    if !chunk.is_empty() {
        let _ = messages.send(SourceMessage::Chunk(chunk)).await;
    }
}

/// Whether `buffered` holds a whole frame, so that reading it cannot wait for the peer.
fn frame_buffered(buffered: &[u8]) -> bool {
    match buffered.first() {
        None => false,
        Some(first) if first.is_ascii_digit() => {
            let Some(space) = memchr::memchr(b' ', buffered) else {
                return false;
            };
            std::str::from_utf8(&buffered[..space])
                .ok()
                .and_then(|digits| digits.parse::<usize>().ok())
                .is_some_and(|length| buffered.len() > space + length)
        }
        Some(_) => memchr::memchr(b'\n', buffered).is_some(),
    }
}

/// Reads one frame into `frame`. Returns false at end of stream.
async fn read_frame(reader: &mut BufReader<TcpStream>, frame: &mut Vec<u8>) -> std::io::Result<bool> {
    let first = match reader.fill_buf().await?.first() {
        None => return Ok(false),
        Some(byte) => *byte,
    };
    if !first.is_ascii_digit() {
        return Ok(reader.read_until(b'\n', frame).await? > 0);
    }
    // Octet counting: "LEN SP MSG".
    let mut length_text = Vec::with_capacity(8);
    reader.read_until(b' ', &mut length_text).await?;
    let length: usize = std::str::from_utf8(length_text.trim_ascii_end())
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|length| *length <= MAX_FRAME_BYTES)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "invalid octet count {:?}",
                String::from_utf8_lossy(&length_text)
            ))
        })?;
    frame.resize(length, 0);
    reader.read_exact(frame).await?;
    Ok(true)
}

/// Binds the configured addresses, so that a bad address stops startup with its name.
pub async fn bind(
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
) -> std::io::Result<(Option<UdpSocket>, Option<TcpListener>)> {
    let udp_socket = match udp {
        Some(address) => Some(UdpSocket::bind(address).await?),
        None => None,
    };
    let tcp_listener = match tcp {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    };
    info!(udp = ?udp, tcp = ?tcp, "syslog listening");
    Ok((udp_socket, tcp_listener))
}
