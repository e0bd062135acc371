//! A minimal keep-alive HTTP/1.1 client for the load generator: one request at a time on one
//! connection (plain TCP or TLS with rustls), response bodies framed by `Content-Length`
//! (isogate always sends it) or `Transfer-Encoding: chunked` (which workerd may use).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// A byte stream a connection runs on.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One keep-alive connection.
pub struct Conn {
    /// Reads are buffered; writes go to the stream underneath (`get_mut`), one whole request
    /// at a time.
    reader: BufReader<Box<dyn Stream>>,
    out: Vec<u8>,
    host: String,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Conn {
    /// Connects to `addr` (`host:port`).
    pub fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn::over(Box::new(stream)))
    }

    /// Connects to `addr` with TLS as `sni`, and completes the handshake.
    pub fn connect_tls(
        addr: &str,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<Conn> {
        let mut tls = handshake(addr, sni, config)?;
        tls.flush()?;
        Ok(Conn::over(Box::new(tls)).with_host(sni))
    }

    fn over(stream: Box<dyn Stream>) -> Conn {
        Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(4096),
            host: "bench".into(),
        }
    }

    /// The `Host` header its requests carry (default `bench`).
    pub fn with_host(mut self, host: &str) -> Conn {
        self.host = host.to_string();
        self
    }

    /// Sends one request and reads the whole response: `(status, body)`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        )?;
        for (k, v) in headers {
            write!(self.out, "{k}: {v}\r\n")?;
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let stream = self.reader.get_mut();
        stream.write_all(&self.out)?;
        stream.flush()?;

        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(invalid("eof in headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v
                        .trim()
                        .parse()
                        .map_err(|_| invalid("bad content-length"))?;
                } else if k.eq_ignore_ascii_case("transfer-encoding")
                    && v.trim().eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        if chunked {
            return Ok((status, self.read_chunked()?));
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }

    /// Reads a chunked body, discarding chunk extensions and trailers.
    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(invalid("eof in chunk size"));
            }
            let size = line.trim_end().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line that ends the message.
                loop {
                    line.clear();
                    if self.reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            line.clear();
            self.reader.read_line(&mut line)?;
        }
    }
}

/// A TLS client stream to `addr` as `sni` whose handshake is complete.
pub fn handshake(
    addr: &str,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())
        .map_err(|_| invalid("bad server name"))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}
