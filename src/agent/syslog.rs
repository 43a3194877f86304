//! `agent --source syslog`: RFC 5424 and RFC 3164 messages over UDP (one per datagram) and
//! TCP (RFC 6587: octet-counted `LEN SP MSG`, or newline-delimited). A message that is not
//! syslog is shipped as a plain line (level UNKNOWN), never dropped.
//!
//! Invariants:
//! - a TCP frame is octet-counted only when it starts with `DIGITS SP <` (a count, a space
//!   and the `<` of a priority); anything else is newline-delimited, so a plain line that
//!   starts with a digit (`2024-05-01 12:00:00 disk full`) is one message, not an error
//! - no frame costs more than `max_line_bytes`: a longer line is cut there (marked
//!   `truncated`, counted) and the rest discarded up to its newline; an octet count above
//!   the limit is a framing error: the bytes up to the next newline are skipped, counted,
//!   and logged once per connection. No framing problem closes a connection
//! - at most `max_connections` TCP connections are open (a semaphore; more are closed at
//!   once and counted), and a connection silent for `idle_timeout` is closed: memory is
//!   bounded by connections × read buffer, whatever the peers do
//! - a failed `accept` (out of file descriptors, say) is counted and followed by a backoff
//!   (doubling from [`ACCEPT_BACKOFF_FIRST`] to [`ACCEPT_BACKOFF_MAX`]), logged once per
//!   streak of failures, so that it cannot spin and starve the other sources

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::sources::{InputCounters, LineBuffer, MAX_CHUNK_EVENTS, SourceMessage, lossy_line, read_line_bounded};
use super::tls::ServerTls;
use crate::event::foreign::Defaults;
use crate::event::{Level, LogEvent, line, syslog};

/// Read buffer of one TCP connection. 64 KiB holds hundreds of typical messages, so that a
/// fast sender's frames are handed over in chunks; 1,000 connections cost 64 MB at most.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Longest octet count: 10 digits is more than any sane limit; a longer run of digits is
/// not a count.
const MAX_COUNT_DIGITS: usize = 10;
/// First pause after a failed `accept`; it doubles up to [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest pause after failed `accept`s: short enough to take connections again soon once
/// descriptors are free.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Limits of the syslog listeners.
#[derive(Debug, Clone, Copy)]
pub struct SyslogLimits {
    pub max_line_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

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

pub async fn listen_udp(
    socket: UdpSocket,
    limits: SyslogLimits,
    counters: Arc<InputCounters>,
    events: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) {
    let mut datagram = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut datagram) => received,
            _ = shutdown.cancelled() => return,
        };
        match received {
            Ok((length, peer)) => {
                let truncated = length > limits.max_line_bytes;
                let kept = length.min(limits.max_line_bytes);
                let message = lossy_line(&datagram[..kept], truncated);
                let mut event = to_event(&message, peer);
                if truncated {
                    counters.mark_truncated(&mut event);
                }
                if events.send(SourceMessage::Event(event)).await.is_err() {
                    return;
                }
            }
            Err(error) => warn!(error = %error, "syslog UDP receive failed"),
        }
    }
}

/// Takes connections until `shutdown`; over TLS when `tls` is given.
pub async fn listen_tcp(
    listener: TcpListener,
    tls: Option<ServerTls>,
    limits: SyslogLimits,
    counters: Arc<InputCounters>,
    events: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) {
    let connection_permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    let mut failed_accepts: u64 = 0;
    // Refusals are logged once until a connection is taken again.
    let mut refusal_logged = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                InputCounters::count(&counters.accept_errors);
                if failed_accepts == 0 {
                    warn!(error = %error, "syslog TCP accept failed: backing off (logged once until accepts succeed)");
                }
                failed_accepts += 1;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if failed_accepts > 0 {
            info!(failed_accepts, "syslog TCP accepting again");
            failed_accepts = 0;
            backoff = ACCEPT_BACKOFF_FIRST;
        }
        let Ok(permit) = connection_permits.clone().try_acquire_owned() else {
            InputCounters::count(&counters.refused_connections);
            if !refusal_logged {
                warn!(%peer, max_connections = limits.max_connections, "syslog TCP connection refused: too many open (logged once until one is taken)");
                refusal_logged = true;
            }
            drop(stream);
            continue;
        };
        refusal_logged = false;
        let (counters, events, shutdown, tls) = (counters.clone(), events.clone(), shutdown.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => read_connection(stream, peer, limits, counters, events, shutdown).await,
                Some(tls) => {
                    if let Some(tls_stream) = tls.handshake(stream, peer).await {
                        read_connection(tls_stream, peer, limits, counters, events, shutdown).await;
                    }
                }
            }
            drop(permit);
        });
    }
}

/// One frame read from a TCP connection.
enum FrameRead {
    /// A message is in the frame buffer.
    Message,
    /// An octet count over the limit: skipped to the next newline.
    Unframed { count: usize },
    /// The peer closed the connection.
    End,
}

async fn read_connection<S: AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    limits: SyslogLimits,
    counters: Arc<InputCounters>,
    messages: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut frame = LineBuffer::default();
    let mut framing_error_logged = false;
    let mut truncation_logged = false;
    // Frames already in the read buffer go out together: one channel message per chunk.
    let mut chunk = Vec::with_capacity(MAX_CHUNK_EVENTS);
    loop {
        frame.clear();
        let read = tokio::select! {
            read = read_frame(&mut reader, &mut frame, limits) => read,
            // Frames already parsed (buffered ones) are handed over first.
            _ = shutdown.cancelled(), if chunk.is_empty() => break,
        };
        match read {
            Ok(FrameRead::End) => break,
            Ok(FrameRead::Message) => {
                let message = lossy_line(&frame.bytes, frame.truncated);
                let message = message.trim_end_matches(['\n', '\r']);
                if !message.trim().is_empty() {
                    let mut event = to_event(message, peer);
                    if frame.truncated {
                        counters.mark_truncated(&mut event);
                        if !truncation_logged {
                            warn!(%peer, max_line_bytes = limits.max_line_bytes, "syslog TCP message cut at the line limit (logged once per connection)");
                            truncation_logged = true;
                        }
                    }
                    chunk.push(event);
                }
            }
            Ok(FrameRead::Unframed { count }) => {
                InputCounters::count(&counters.framing_errors);
                if !framing_error_logged {
                    warn!(%peer, count, max_line_bytes = limits.max_line_bytes, "syslog TCP octet count over the line limit: skipped to the next newline (logged once per connection)");
                    framing_error_logged = true;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                InputCounters::count(&counters.idle_connections_closed);
                debug!(%peer, idle_timeout = ?limits.idle_timeout, "syslog TCP connection idle: closed");
                break;
            }
            Err(error) => {
                debug!(%peer, error = %error, "syslog TCP connection failed");
                break;
            }
        }
        if (chunk.len() >= MAX_CHUNK_EVENTS || !frame_buffered(reader.buffer(), limits.max_line_bytes))
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

/// The octet count of a frame starting `COUNT SP <`, and where its message starts; `None`
/// when `bytes` does not start so (or not yet all of it is there).
fn octet_header(bytes: &[u8]) -> Option<(usize, usize)> {
    let digits = bytes.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if digits == 0 || digits > MAX_COUNT_DIGITS || bytes[0] == b'0' {
        return None;
    }
    if bytes.get(digits) != Some(&b' ') || bytes.get(digits + 1) != Some(&b'<') {
        return None;
    }
    let count = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
    Some((count, digits + 1))
}

/// Whether `buffered` holds a whole frame, so that reading it cannot wait for the peer.
fn frame_buffered(buffered: &[u8], max_line_bytes: usize) -> bool {
    match octet_header(buffered) {
        Some((count, start)) if count <= max_line_bytes => buffered.len() >= start + count,
        _ => memchr::memchr(b'\n', buffered).is_some(),
    }
}

/// Waits for bytes from the peer, at most `idle`.
async fn fill<R: AsyncBufRead + Unpin>(reader: &mut R, idle: Duration) -> std::io::Result<&[u8]> {
    tokio::time::timeout(idle, reader.fill_buf())
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Reads one frame into `frame` (empty on entry).
async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    frame: &mut LineBuffer,
    limits: SyslogLimits,
) -> std::io::Result<FrameRead> {
    // The header is taken a byte at a time while it can still be `COUNT SP <`; the bytes
    // taken stay in `frame`, the start of a newline-delimited message if it is not one.
    let count = loop {
        let available = fill(reader, limits.idle_timeout).await?;
        let Some(&byte) = available.first() else {
            return Ok(if frame.bytes.is_empty() {
                FrameRead::End
            } else {
                FrameRead::Message
            });
        };
        let taken = &frame.bytes;
        let in_count = taken.iter().all(u8::is_ascii_digit);
        let fits = if in_count {
            (byte.is_ascii_digit() && taken.len() < MAX_COUNT_DIGITS && !(taken.is_empty() && byte == b'0'))
                || (byte == b' ' && !taken.is_empty())
        } else {
            false // after the space: only `<` makes it a count, and it is not taken
        };
        if fits {
            frame.bytes.push(byte);
            reader.consume(1);
            continue;
        }
        if !in_count && byte == b'<' {
            let digits = &frame.bytes[..frame.bytes.len() - 1];
            let count: usize = std::str::from_utf8(digits)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(usize::MAX); // over the limit: a framing error below
            break Some(count);
        }
        break None;
    };
    let Some(count) = count else {
        read_line_bounded(reader, frame, limits.max_line_bytes, Some(limits.idle_timeout)).await?;
        return Ok(FrameRead::Message);
    };
    frame.clear();
    if count > limits.max_line_bytes {
        let mut skipped = LineBuffer::default();
        read_line_bounded(reader, &mut skipped, 0, Some(limits.idle_timeout)).await?;
        return Ok(FrameRead::Unframed { count });
    }
    while frame.bytes.len() < count {
        let available = fill(reader, limits.idle_timeout).await?;
        if available.is_empty() {
            // The peer closed inside the frame: what came is shipped, marked as cut.
            frame.truncated = true;
            return Ok(FrameRead::Message);
        }
        let wanted = (count - frame.bytes.len()).min(available.len());
        frame.bytes.extend_from_slice(&available[..wanted]);
        reader.consume(wanted);
    }
    Ok(FrameRead::Message)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_count_space_priority_is_octet_counted() {
        assert_eq!(octet_header(b"12 <34>1 - x"), Some((12, 3)));
        assert_eq!(octet_header(b"2024-05-01 12:00:00 CRITICAL disk full"), None);
        assert_eq!(octet_header(b"12 apples\n"), None);
        assert_eq!(octet_header(b"012 <34>"), None);
        assert_eq!(octet_header(b"12345678901 <34>"), None);
        assert!(frame_buffered(b"5 <1>ab", 100));
        assert!(!frame_buffered(b"5 <1>a", 100));
        assert!(frame_buffered(b"2024-05-01 x\n", 100));
        assert!(!frame_buffered(b"2024-05-01 x", 100));
    }
}
