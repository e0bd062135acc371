//! Real HTTP/1.1 servers on loopback for egress tests and benchmarks: each connection on its
//! own thread, keep-alive, bodies framed by Content-Length. A handler maps a request to a
//! response.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request method.
    pub method: String,
    /// Path with query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// The request body.
    pub body: Vec<u8>,
}

/// A response to send.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers (besides `content-length`, which is added).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, v: &serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(v).unwrap(),
        }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Answer {
        Answer {
            status,
            headers: vec![("location".into(), location.into())],
            body: Vec::new(),
        }
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// A running upstream; stops accepting when dropped.
pub struct Upstream {
    /// Its loopback port.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Starts serving on a free loopback port.
    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (handler, stop) = (handler.clone(), stop2.clone());
                std::thread::spawn(move || serve(conn, handler, stop));
            }
        });
        Upstream { port, stop }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Stops accepting and makes open connections close after their current request.
    pub fn shut_down(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn serve(conn: TcpStream, handler: Arc<Handler>, stop: Arc<AtomicBool>) {
    let mut writer = conn.try_clone().expect("clone");
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let answer = handler(&Seen {
            method,
            target,
            headers,
            body,
        });
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for (k, v) in &answer.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&answer.body);
        if writer.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// An upstream that answers with what it received, as JSON.
pub fn echo() -> Upstream {
    Upstream::start(|seen| {
        let mut answer = Answer::json(
            200,
            &serde_json::json!({
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers,
                "body": String::from_utf8_lossy(&seen.body),
            }),
        );
        // Echo the credential header back in a response header too.
        if let Some(auth) = seen.headers.get("authorization") {
            answer
                .headers
                .push(("x-echo-authorization".into(), auth.clone()));
        }
        answer
    })
}

/// A loopback server that hands each accepted connection to `serve` on its own thread (for
/// upstreams that misbehave on purpose: answering early, stalling mid-body). Counts connections.
pub struct RawUpstream {
    /// Its loopback port.
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    /// Starts accepting on a free loopback port.
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let (stop2, count) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                std::thread::spawn(move || serve(conn));
            }
        });
        RawUpstream {
            port,
            connections,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request head (request line and headers, names lower-cased); None at EOF.
pub fn read_head(reader: &mut impl BufRead) -> Option<(String, String, BTreeMap<String, String>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((method, target, headers))
}

/// Writes a response with a Content-Length.
pub fn write_answer(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> bool {
    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    w.write_all(&bytes).is_ok()
}
