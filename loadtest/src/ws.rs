//! The client side of a WebSocket, as far as the load generator uses it: the upgrade with
//! the session cookie, text frames out (masked, as a client must), and frames in, read
//! from one buffer per socket and lent out as `&str` without a copy.
//!
//! The generator shares two cores with the server it measures: what it spends per frame
//! received is taken from the server, and a run whose generator is busy past 90 % is not
//! valid. So per frame this does only what a frame needs, where a general client
//! (tokio-tungstenite) registers a waker per poll, allocates a message and zeroes its read
//! buffer before each read; the kernel's receive path is most of what is left.
//!
//! It talks to servers on loopback that the bench started, so it checks only what tells a
//! refused upgrade from an accepted one (the status line), not `Sec-WebSocket-Accept`, and
//! it does not police what the servers never send (reserved bits and opcodes, oversized
//! control frames).

use std::io;

use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a read buffer starts at, and returns to once a large frame has been read.
const BUFFER: usize = 4 * 1024;
/// The most an emptied output buffer keeps; a burst's more is given back.
const KEEP_OUT: usize = 16 * 1024;
/// The most an upgrade response's head may take.
const MAX_HEAD: usize = 16 * 1024;
/// The largest frame accepted; the server's own limit on what it sends is far below.
const MAX_FRAME: usize = 64 * 1024 * 1024;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A frame received.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a str),
    /// The close code the server gave (1005: none).
    Close(u16),
    /// Binary or pong. A ping is answered and not handed out.
    Other,
}

/// A frame's header as read from the start of `bytes`.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// Where the payload starts.
    at: usize,
    len: usize,
}

/// The header at the start of `bytes`, or None while it is incomplete.
fn header(bytes: &[u8]) -> io::Result<Option<Header>> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if second & 0x80 != 0 {
        return Err(invalid("the server masked a frame"));
    }
    let (len, at) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= MAX_FRAME)
        .ok_or_else(|| invalid("a frame larger than 64 MiB"))?;
    Ok(Some(Header {
        fin: first & 0x80 != 0,
        opcode: first & 0x0F,
        at,
        len,
    }))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Appends one masked client frame.
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// What `next` found, by position, so the buffer is borrowed only once the loop is done.
enum Found {
    Text(usize, usize),
    Fragmented,
    Close(u16),
    Other,
}

pub struct Ws<S = TcpStream> {
    stream: S,
    /// Bytes read and not yet taken are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A text message arriving in fragments, and whether it was handed out last time.
    fragments: Vec<u8>,
    in_fragments: bool,
    fragments_taken: bool,
    /// A xorshift state for the masks: a load generator needs them varied, not secret.
    mask_state: u32,
    /// Bytes to send, from whole frames, not yet written: a write cut short by a cancelled
    /// `next` (a pong) leaves its rest here rather than half a frame on the wire.
    pending: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// Upgrades `stream` with a GET of `target` (path and query) carrying `headers` (each
    /// line without its CRLF). The response's head must say 101; bytes after it are frames.
    pub async fn upgrade(
        mut stream: S,
        host: &str,
        target: &str,
        headers: &[&str],
    ) -> Result<Self, String> {
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for line in headers {
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut buf = vec![0; BUFFER];
        let mut end = 0;
        let head_end = loop {
            if let Some(at) = memmem::find(&buf[..end], b"\r\n\r\n") {
                break at + 4;
            }
            if end == buf.len() {
                if buf.len() >= MAX_HEAD {
                    return Err("handshake: the response's head is over 16 KiB".into());
                }
                buf.resize(buf.len() * 2, 0);
            }
            match stream.read(&mut buf[end..]).await {
                Ok(0) => return Err("handshake: closed before the response".into()),
                Ok(n) => end += n,
                Err(e) => return Err(format!("handshake: {e}")),
            }
        };
        let status = buf[..head_end]
            .split(|&b| b == b'\r')
            .next()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if status.split(' ').nth(1) != Some("101") {
            return Err(format!("handshake: {status}"));
        }
        Ok(Ws {
            stream,
            buf,
            start: head_end,
            end,
            fragments: Vec::new(),
            in_fragments: false,
            fragments_taken: false,
            mask_state: 0x9E37_79B9 ^ (target.len() as u32),
            pending: Vec::new(),
        })
    }

    fn mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_ne_bytes()
    }

    /// Sends each text as a frame of its own, in one write.
    pub async fn send_texts(
        &mut self,
        texts: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> io::Result<()> {
        for text in texts {
            let mask = self.mask();
            encode(&mut self.pending, TEXT, text.as_ref().as_bytes(), mask);
        }
        self.write_pending().await
    }

    /// Writes out `pending`. Each write's progress is kept as it completes, so a caller
    /// that stops waiting leaves the rest for the next call, not a frame cut in two.
    async fn write_pending(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let n = self.stream.write(&self.pending).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.drain(..n);
        }
        if self.pending.capacity() > KEEP_OUT {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// The next frame, or None once the server closed the connection without a close frame.
    pub async fn next(&mut self) -> io::Result<Option<Incoming<'_>>> {
        if self.fragments_taken {
            self.fragments_taken = false;
            self.fragments.clear();
        }
        if !self.pending.is_empty() {
            self.write_pending().await?;
        }
        // A buffer grown for a large frame goes back to its first size once what is left
        // fits, as thousands of sockets share the process.
        if self.buf.len() > BUFFER && self.end - self.start <= BUFFER {
            let mut small = vec![0; BUFFER];
            small[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
            self.buf = small;
            self.end -= self.start;
            self.start = 0;
        }
        let found = loop {
            let Some(frame) = header(&self.buf[self.start..self.end])? else {
                if !self.read(0).await? {
                    return Ok(None);
                }
                continue;
            };
            let from = self.start + frame.at;
            let to = from + frame.len;
            if to > self.end {
                if !self.read(frame.at + frame.len).await? {
                    return Ok(None);
                }
                continue;
            }
            self.start = to;
            match frame.opcode {
                TEXT if !self.in_fragments && frame.fin => break Found::Text(from, to),
                TEXT if !self.in_fragments => {
                    self.in_fragments = true;
                    self.fragments.extend_from_slice(&self.buf[from..to]);
                }
                CONTINUATION if self.in_fragments => {
                    self.fragments.extend_from_slice(&self.buf[from..to]);
                    if frame.fin {
                        self.in_fragments = false;
                        break Found::Fragmented;
                    }
                }
                TEXT | CONTINUATION => return Err(invalid("a message's fragments out of order")),
                CLOSE => {
                    let code = match self.buf[from..to] {
                        [high, low, ..] => u16::from_be_bytes([high, low]),
                        _ => 1005,
                    };
                    break Found::Close(code);
                }
                PING => {
                    let mask = self.mask();
                    encode(&mut self.pending, PONG, &self.buf[from..to], mask);
                    self.write_pending().await?;
                }
                _ => break Found::Other,
            }
        };
        let text =
            |bytes| std::str::from_utf8(bytes).map_err(|_| invalid("text that is not UTF-8"));
        Ok(Some(match found {
            Found::Text(from, to) => Incoming::Text(text(&self.buf[from..to])?),
            Found::Fragmented => {
                self.fragments_taken = true;
                Incoming::Text(text(&self.fragments)?)
            }
            Found::Close(code) => Incoming::Close(code),
            Found::Other => Incoming::Other,
        }))
    }

    /// Reads more, with room for at least `need` bytes from `start`; false at the end of the
    /// stream. Consumed bytes are dropped first.
    async fn read(&mut self, need: usize) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0
            && (self.end == self.buf.len() || need > self.buf.len() - self.start)
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need > self.buf.len() - self.start {
            // With room beyond the frame, so what follows it comes in the same read.
            self.buf
                .resize((self.start + need).max(self.buf.len() * 2), 0);
        } else if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame: unmasked.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len @ 126..=0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn headers_are_read_at_each_length_form() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let frame = server_frame(true, TEXT, &vec![b'a'; len]);
            let h = header(&frame).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.len), (true, TEXT, len));
            assert_eq!(h.at + h.len, frame.len());
            assert_eq!(header(&frame[..h.at - 1]).unwrap(), None);
        }
        assert!(header(&[0x81, 0x85]).is_err(), "a masked server frame");
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode(&mut out, TEXT, b"hello", [1, 2, 3, 4]);
        assert_eq!(&out[..2], &[0x81, 0x85]);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .zip([1u8, 2, 3, 4].iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"hello");
        let mut long = Vec::new();
        encode(&mut long, TEXT, &[0; 300], [0; 4]);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 1, 44]);
    }

    /// A server's side in memory: each read hands out at most `piece` bytes of `incoming`,
    /// and each write takes at most `piece` bytes, so every split of a frame is exercised.
    struct Trickle {
        incoming: Vec<u8>,
        at: usize,
        piece: usize,
        written: Vec<u8>,
        /// Bytes writes may take before they wait (never woken), as a full send buffer.
        write_budget: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self
                .piece
                .min(buf.remaining())
                .min(self.incoming.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.incoming[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = self.piece.min(buf.len()).min(self.write_budget);
            if n == 0 {
                return std::task::Poll::Pending;
            }
            self.write_budget -= n;
            self.written.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn trickle(response: &[u8], frames: &[u8], piece: usize) -> Trickle {
        Trickle {
            incoming: [response, frames].concat(),
            at: 0,
            piece,
            written: Vec::new(),
            write_budget: usize::MAX,
        }
    }

    /// The client frames in `bytes`, unmasked: (opcode, payload).
    fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while let [first, second, rest @ ..] = bytes {
            let len = usize::from(second & 0x7F);
            assert!(len < 126 && second & 0x80 != 0, "short and masked");
            let (mask, rest) = rest.split_at(4);
            let payload = rest[..len].iter().zip(mask.iter().cycle());
            frames.push((first & 0x0F, payload.map(|(b, m)| b ^ m).collect()));
            bytes = &rest[len..];
        }
        frames
    }

    const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    #[tokio::test]
    async fn frames_arrive_whole_however_the_bytes_are_split() {
        let big = "x".repeat(70_000);
        let mut bytes = server_frame(true, TEXT, b"one");
        bytes.extend(server_frame(false, TEXT, b"fr"));
        bytes.extend(server_frame(true, PING, b"p"));
        bytes.extend(server_frame(true, CONTINUATION, b"agment"));
        bytes.extend(server_frame(true, TEXT, big.as_bytes()));
        bytes.extend(server_frame(true, TEXT, b"after"));
        bytes.extend(server_frame(true, CLOSE, &1001u16.to_be_bytes()));
        for piece in [1, 2, 3, 7, 100_000] {
            let stream = trickle(SWITCHING, &bytes, piece);
            let mut ws = Ws::upgrade(stream, "h", "/ws/chat/", &["Cookie: a=b"])
                .await
                .unwrap();
            assert_eq!(ws.next().await.unwrap(), Some(Incoming::Text("one")));
            assert_eq!(ws.next().await.unwrap(), Some(Incoming::Text("fragment")));
            assert_eq!(ws.next().await.unwrap(), Some(Incoming::Text(big.as_str())));
            assert_eq!(ws.next().await.unwrap(), Some(Incoming::Text("after")));
            assert_eq!(ws.next().await.unwrap(), Some(Incoming::Close(1001)));
            assert_eq!(
                ws.buf.len(),
                BUFFER,
                "the buffer shrank once the large frame was read"
            );
            assert_eq!(ws.next().await.unwrap(), None, "the end of the stream");
            ws.send_texts(["hi", "there"]).await.unwrap();
            let written = &ws.stream.written;
            let head_end = memmem::find(written, b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&written[..head_end]);
            assert!(head.starts_with("GET /ws/chat/ HTTP/1.1\r\nHost: h\r\n"));
            assert!(head.contains("\r\nCookie: a=b\r\n"));
            assert_eq!(
                client_frames(&written[head_end..]),
                [
                    (PONG, b"p".to_vec()),
                    (TEXT, b"hi".to_vec()),
                    (TEXT, b"there".to_vec())
                ],
                "the ping answered, then the texts, each frame whole (piece {piece})"
            );
        }
    }

    /// `select!` drops a socket's read whenever another branch wins: a pong cut short there
    /// goes out whole with the next write, not as half a frame before it.
    #[tokio::test]
    async fn a_pong_cut_short_by_a_dropped_read_goes_out_whole() {
        use futures_util::FutureExt;
        let mut bytes = server_frame(true, PING, b"ping!");
        bytes.extend(server_frame(true, TEXT, b"after"));
        let mut ws = Ws::upgrade(trickle(SWITCHING, &bytes, 100), "h", "/", &[])
            .await
            .unwrap();
        let head = ws.stream.written.len();
        ws.stream.write_budget = 4;
        assert!(ws.next().now_or_never().is_none(), "the pong's write waits");
        assert_eq!(
            ws.stream.written.len(),
            head + 4,
            "a part of the pong went out"
        );
        ws.stream.write_budget = usize::MAX;
        ws.send_texts(["hi"]).await.unwrap();
        assert_eq!(
            client_frames(&ws.stream.written[head..]),
            [(PONG, b"ping!".to_vec()), (TEXT, b"hi".to_vec())]
        );
        assert_eq!(ws.next().await.unwrap(), Some(Incoming::Text("after")));
    }

    #[tokio::test]
    async fn a_refused_upgrade_says_its_status() {
        let stream = trickle(
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
            &[],
            5,
        );
        let error = Ws::upgrade(stream, "h", "/", &[]).await.err().unwrap();
        assert_eq!(error, "handshake: HTTP/1.1 403 Forbidden");
        let error = Ws::upgrade(trickle(b"HTTP/1.1 101", &[], 5), "h", "/", &[])
            .await
            .err()
            .unwrap();
        assert_eq!(error, "handshake: closed before the response");
    }
}
