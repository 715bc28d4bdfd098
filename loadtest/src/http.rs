//! Just enough HTTP/1.1 to create accounts: one request per connection, `Connection: close`,
//! the whole response read to EOF. A full client would add more to the build than the rest of
//! the load generator together.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SESSION_COOKIE;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The value of the session cookie the response sets, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, value)| {
                let pair = value.split(';').next()?.trim();
                let (name, value) = pair.split_once('=')?;
                (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_owned())
            })
    }
}

/// Sends one request to `addr` and reads the response. `host` is the `Host` header and,
/// with `http://`, the `Origin` the server's same-origin check wants on POSTs.
pub async fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = form.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if form.is_some() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {}={cookie}\r\n", SESSION_COOKIE));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Joins a chunked body. Chunk sizes count bytes; the pages read here are ASCII around the
/// markers searched for, and a lossy split only blurs text nobody reads.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            out.push_str(&tail[..tail.len().min(size)]);
            break;
        }
        let cut = (0..=size)
            .rev()
            .find(|&i| tail.is_char_boundary(i))
            .unwrap_or(0);
        out.push_str(&tail[..cut]);
        rest = tail[size..].strip_prefix("\r\n").unwrap_or(&tail[size..]);
    }
    out
}

/// Percent-encodes a form value.
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn see_other_with_cookie_is_read() {
        let raw = b"HTTP/1.1 303 See Other\r\nlocation: /\r\nset-cookie: wirechat_session=abc%2Fdef; HttpOnly; SameSite=Lax; Path=/\r\ncontent-length: 0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 303);
        assert_eq!(response.session_cookie().as_deref(), Some("abc%2Fdef"));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, "hello world");
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(form_encode("a b&c"), "a%20b%26c");
    }
}
