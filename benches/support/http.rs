//! A minimal HTTP/1.1 client for the load generators: one kept-alive connection per simulated
//! client, requests prepared as bytes, answers read by `Content-Length`. The same client for
//! every server measured, so that differences are the servers'.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One kept-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    body_at: usize,
}

impl Conn {
    pub async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
            body_at: 0,
        }
    }

    /// Sends one request and reads its whole answer; returns the status.
    pub async fn call(&mut self, req: &[u8]) -> u16 {
        self.stream.write_all(req).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .unwrap()
                    .to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "server closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.body_at = end + 4;
                return head[9..12].parse().unwrap();
            }
        }
    }

    pub fn body(&self) -> &str {
        std::str::from_utf8(&self.buf[self.body_at..]).unwrap()
    }

    /// The string field `key` of the last answer's (flat, compact) JSON body.
    pub fn field(&self, key: &str) -> &str {
        let body = self.body();
        let pat = format!("\"{key}\":\"");
        let Some(at) = body.find(&pat) else {
            panic!("no {key} in {body}");
        };
        let rest = &body[at + pat.len()..];
        &rest[..rest.find('"').unwrap()]
    }

    /// A request that must succeed; its body as JSON.
    pub async fn json(&mut self, req: &[u8]) -> serde_json::Value {
        let status = self.call(req).await;
        assert!(status < 300, "{status}: {}", self.body());
        serde_json::from_str(self.body()).unwrap()
    }
}

/// A GET with a bearer token.
pub fn get(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// A DELETE with a bearer token.
pub fn delete(path: &str, token: &str) -> Vec<u8> {
    format!("DELETE {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// A JSON POST with a bearer token.
pub fn post(path: &str, token: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A JSON POST without credentials (for servers that take none, or reject unknown ones).
pub fn post_plain(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An account `bench` and its tenant `shop`, made with the bootstrap key: the tenant as
/// created (with `pg_user` and `pg_password`).
pub async fn shop(conn: &mut Conn) -> serde_json::Value {
    let account = conn
        .json(&post("/v2/accounts", super::ROOT, r#"{"name":"bench"}"#))
        .await;
    let body = format!(
        r#"{{"name":"shop","account":"{}"}}"#,
        account["account_id"].as_str().unwrap()
    );
    conn.json(&post("/v2/tenants", super::ROOT, &body)).await
}
