//! A chat socket's connection once its handshake is done: WebSocket frames read through
//! tungstenite, and written by hand straight onto the TCP stream.
//!
//! A delivery is one small text frame, and a busy node writes hundreds of thousands a
//! second. Through tungstenite's sink each frame would take the split socket's lock, the
//! sink's readiness check, a conversion of the message and a copy into tungstenite's
//! buffer, and each write the upgraded connection's layers (loadtest round 19). Here the
//! writer holds the stream's write half, lock-free: a frame is a header and its text
//! appended to one buffer, and a write is one system call.
//!
//! Tungstenite still reads, on the read half: it unmasks, joins fragments, checks UTF-8 and
//! the size limits, and answers pings. What it writes (those answers) goes into `Controls`,
//! which the writer puts on the wire between its own frames. It writes an answer at its
//! next read, so a pong waits while the reader does (an action, a full backlog); browsers
//! do not ping, and a proxy's keep-alive ping is answered within its action. The answer to
//! a client's close is the writer's own (`Outgoing::close`), so it can follow every frame
//! queued before it: the reader reads nothing after a close, and tungstenite's own answer,
//! which it would write at that next read, is never written.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Frames are read in pieces of this size; the buffer is released while the socket is idle.
const READ_BUFFER: usize = 2 * 1024;
/// Answers to pings waiting for the writer, at most: a client that pings and pings but never
/// reads would otherwise have the node hold every pong.
const MAX_CONTROLS: usize = 16 * 1024;

/// An upgraded connection: its TCP stream, and whatever the client sent after its
/// handshake that the HTTP server had already read.
pub struct Connection {
    stream: TcpStream,
    read_ahead: Vec<u8>,
}

impl Connection {
    pub fn new(stream: TcpStream, read_ahead: Vec<u8>) -> Connection {
        Connection { stream, read_ahead }
    }

    /// The read side (frames, at most `max_frame_bytes` each) and the write side. The read
    /// side is boxed: tungstenite's state is a kilobyte, and the socket's future, which
    /// holds it across every wait, would otherwise take a larger allocation's size class.
    pub(super) fn split(self, max_frame_bytes: usize) -> (Box<Incoming>, Outgoing) {
        let (read, write) = self.stream.into_split();
        let controls = Arc::new(Controls::default());
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(max_frame_bytes))
            .max_frame_size(Some(max_frame_bytes));
        let incoming = WebSocketStream::from_partially_read(
            ReadSide {
                read,
                controls: controls.clone(),
            },
            self.read_ahead,
            Role::Server,
            Some(config),
        )
        // Made without a handshake, it is ready at its first poll: made here, outside the
        // socket's future, it takes no room in it.
        .now_or_never()
        .expect("a stream made without a handshake is ready at once");
        let outgoing = Outgoing {
            write,
            controls,
            out: Vec::new(),
            written: 0,
        };
        (Box::new(incoming), outgoing)
    }
}

/// Frames from the client, read by tungstenite.
pub(super) type Incoming = WebSocketStream<ReadSide>;

/// What tungstenite reads from (the stream's read half) and writes to (`Controls`).
pub(super) struct ReadSide {
    read: OwnedReadHalf,
    controls: Arc<Controls>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.controls.push(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Frames tungstenite wrote (pongs), waiting for the writer. Tungstenite writes out its
/// whole buffer at once, and this takes all of it, so what waits here is whole frames.
#[derive(Default)]
struct Controls {
    bytes: Mutex<Vec<u8>>,
    /// Something waits: the writer's look costs no lock while nothing does.
    waiting: AtomicBool,
    writer: AtomicWaker,
}

impl Controls {
    fn push(&self, frames: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if bytes.len() + frames.len() > MAX_CONTROLS {
            return Err(io::Error::other(
                "the client does not read the answers to its pings",
            ));
        }
        bytes.extend_from_slice(frames);
        drop(bytes);
        self.waiting.store(true, Ordering::Release);
        self.writer.wake();
        Ok(())
    }

    /// Moves what waits onto the end of `out`.
    fn take_into(&self, out: &mut Vec<u8>) {
        if self.waiting.swap(false, Ordering::Acquire) {
            let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
            out.extend_from_slice(&bytes);
            *bytes = Vec::new();
        }
    }

    fn poll_waiting(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.writer.register(cx.waker());
        // Pushed between the look above and the registration: no one was woken.
        if self.waiting.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The writer's side: frames appended, then written in one go.
pub(super) struct Outgoing {
    write: OwnedWriteHalf,
    controls: Arc<Controls>,
    /// Frames appended and not yet written in full.
    out: Vec<u8>,
    /// How much of `out` is on the wire.
    written: usize,
}

/// WebSocket opcodes (RFC 6455, 5.2).
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

impl Outgoing {
    /// Appends a text frame.
    pub(super) fn text(&mut self, text: &str) {
        self.frame(TEXT, &[text.as_bytes()]);
    }

    /// Appends a close frame with `code` and `reason`: the socket's last.
    pub(super) fn close(&mut self, code: u16, reason: &str) {
        // A control frame's payload is at most 125 bytes, two of them the code.
        debug_assert!(
            reason.len() <= 123,
            "a close reason of {} bytes",
            reason.len()
        );
        self.frame(CLOSE, &[&code.to_be_bytes(), reason.as_bytes()]);
    }

    /// Bytes held: appended, and not yet all written.
    pub(super) fn held(&self) -> usize {
        self.out.len()
    }

    /// Gives back the buffer's room, once everything in it is written, when it is more than
    /// `keep` bytes (the writer says how much an idle or a busy socket keeps).
    pub(super) fn release_beyond(&mut self, keep: usize) {
        if self.out.is_empty() && self.out.capacity() > keep {
            self.out = Vec::new();
        }
    }

    /// Ready once tungstenite has left an answer to a ping for the writer.
    pub(super) fn poll_controls(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.controls.poll_waiting(cx)
    }

    /// Appends a frame: unmasked, as a server's are, and whole (FIN set).
    fn frame(&mut self, opcode: u8, payload: &[&[u8]]) {
        let len: usize = payload.iter().map(|part| part.len()).sum();
        self.out.push(0x80 | opcode);
        match len {
            0..=125 => self.out.push(len as u8),
            126..=0xFFFF => {
                self.out.push(126);
                self.out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.out.push(127);
                self.out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        for part in payload {
            self.out.extend_from_slice(part);
        }
    }

    /// Writes every frame appended, and what tungstenite left (pongs) before them. Polled
    /// again after `Pending`, it goes on where the write stopped.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written == 0 && self.controls.waiting.load(Ordering::Acquire) {
            // Whole frames go first, before the writer's own, never inside one.
            let frames = std::mem::take(&mut self.out);
            self.controls.take_into(&mut self.out);
            self.out.extend_from_slice(&frames);
        }
        while self.written < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.write).poll_write(cx, &self.out[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        self.out.clear();
        Poll::Ready(Ok(()))
    }

    /// Writes everything appended.
    pub(super) async fn write(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::{Message, WebSocket};

    use super::*;

    /// A server's connection (`read_ahead` already read off it) and a client's socket.
    async fn pair(read_ahead: Vec<u8>) -> (Connection, WebSocketStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let client =
            WebSocketStream::from_raw_socket(client.expect("connect"), Role::Client, None).await;
        let (server, _) = accepted.expect("accept");
        (Connection::new(server, read_ahead), client)
    }

    /// What a client puts on the wire for `messages`: masked frames.
    fn client_bytes(messages: &[&str]) -> Vec<u8> {
        let mut socket = WebSocket::from_raw_socket(Cursor::new(Vec::new()), Role::Client, None);
        for message in messages {
            socket.send(Message::text(*message)).expect("written");
        }
        socket.get_ref().get_ref().clone()
    }

    #[tokio::test]
    async fn frames_of_every_length_arrive_whole_and_the_close_last() {
        let (connection, mut client) = pair(Vec::new()).await;
        let (_incoming, mut outgoing) = connection.split(1024);
        let texts: Vec<String> = [0, 1, 125, 126, 127, 65_535, 65_536, 200_000]
            .iter()
            .map(|&len| "é".repeat(len / 2) + &"x".repeat(len % 2))
            .collect();
        for text in &texts {
            outgoing.text(text);
        }
        outgoing.close(4001, "Logged out.");
        let (written, read) = tokio::join!(outgoing.write(), async {
            let mut read = Vec::new();
            while let Some(Ok(message)) = client.next().await {
                let last = message.is_close();
                read.push(message);
                if last {
                    break;
                }
            }
            read
        });
        written.expect("written");
        let mut expected: Vec<Message> = texts.iter().map(|t| Message::text(t.as_str())).collect();
        expected.push(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "Logged out.".into(),
        })));
        assert_eq!(read, expected);
    }

    #[tokio::test]
    async fn what_the_client_sent_with_its_handshake_is_read_first() {
        let bytes = client_bytes(&["first", "second"]);
        // The HTTP server read the first frame and half the second past the request.
        let split = bytes.len() - 4;
        let (connection, client) = pair(bytes[..split].to_vec()).await;
        let mut raw = client.into_inner();
        tokio::io::AsyncWriteExt::write_all(&mut raw, &bytes[split..])
            .await
            .expect("sent");
        let (mut incoming, _outgoing) = connection.split(1024);
        for expected in ["first", "second"] {
            let read = incoming.next().await.expect("a frame").expect("read");
            assert_eq!(read, Message::text(expected));
        }
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_the_writers_frames() {
        let (connection, mut client) = pair(Vec::new()).await;
        let (mut incoming, mut outgoing) = connection.split(1024);
        client
            .send(Message::Ping(b"are you there".as_slice().into()))
            .await
            .expect("sent");
        client.send(Message::text("after")).await.expect("sent");
        // The reader sees the ping, and tungstenite answers it at its next read.
        assert!(matches!(incoming.next().await, Some(Ok(Message::Ping(_)))));
        assert_eq!(
            incoming.next().await.expect("a frame").expect("read"),
            Message::text("after")
        );
        std::future::poll_fn(|cx| outgoing.poll_controls(cx)).await;
        outgoing.text("a frame of the writer's");
        outgoing.write().await.expect("written");
        assert_eq!(
            client.next().await.expect("a frame").expect("read"),
            Message::Pong(b"are you there".as_slice().into())
        );
        assert_eq!(
            client.next().await.expect("a frame").expect("read"),
            Message::text("a frame of the writer's")
        );
    }

    #[test]
    fn answers_the_writer_never_takes_are_bounded() {
        let controls = Controls::default();
        let pong = [0u8; 127];
        let mut held = 0;
        while controls.push(&pong).is_ok() {
            held += pong.len();
            assert!(held <= MAX_CONTROLS, "held {held} bytes");
        }
        assert!(held + pong.len() > MAX_CONTROLS);
        let mut out = Vec::new();
        controls.take_into(&mut out);
        assert_eq!(out.len(), held);
        assert!(controls.push(&pong).is_ok(), "taken, there is room again");
    }
}
