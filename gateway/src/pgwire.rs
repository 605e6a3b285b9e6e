//! The PostgreSQL wire protocol (version 3), as far as a front door needs it: the startup
//! packets a client may open with, the authentication messages, the few backend messages read
//! before the relay, and errors with their SQLSTATE.
//!
//! Every read is bounded: a startup packet is at most [`MAX_STARTUP`] bytes (PostgreSQL's own
//! limit), an authentication message at most [`MAX_AUTH`], so a client cannot make the
//! Gateway allocate what it likes.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP: usize = 10_000;
/// The longest SASL message a client may send.
pub const MAX_AUTH: usize = 8_192;
/// The longest message read from a backend before the relay (its errors, parameters).
pub const MAX_BACKEND: usize = 1 << 20;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3: u32 = 196_608;

/// What a client opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// A startup message: protocol 3.`minor`, and its parameters in order.
    Start {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one startup packet (after the TLS handshake, or before any).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Startup> {
    let len = r.read_u32().await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(invalid("startup packet length out of bounds"));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await?;
    parse_startup(&body)
}

/// The body of a startup packet (its code, then what the code says).
pub fn parse_startup(body: &[u8]) -> io::Result<Startup> {
    let code = u32::from_be_bytes(
        body.get(..4)
            .ok_or_else(|| invalid("short"))?
            .try_into()
            .unwrap(),
    );
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(Startup::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(Startup::GssEnc),
        CANCEL_REQUEST if rest.len() == 8 => Ok(Startup::Cancel {
            pid: u32::from_be_bytes(rest[..4].try_into().unwrap()),
            secret: u32::from_be_bytes(rest[4..].try_into().unwrap()),
        }),
        c if c >> 16 == 3 => {
            let text = |b: &[u8]| {
                String::from_utf8(b.to_vec()).map_err(|_| invalid("a parameter is not UTF-8"))
            };
            // `name\0value\0` pairs, then a lone `\0`, then nothing.
            let cstring = |at: usize| -> io::Result<(&[u8], usize)> {
                let len = rest
                    .get(at..)
                    .and_then(|r| r.iter().position(|b| *b == 0))
                    .ok_or_else(|| invalid("unterminated parameters"))?;
                Ok((&rest[at..at + len], at + len + 1))
            };
            let mut params = Vec::new();
            let mut at = 0;
            loop {
                let (key, next) = cstring(at)?;
                if key.is_empty() {
                    if next != rest.len() {
                        return Err(invalid("data after the parameters"));
                    }
                    break;
                }
                let (value, next) = cstring(next)?;
                params.push((text(key)?, text(value)?));
                at = next;
            }
            Ok(Startup::Start {
                minor: (c & 0xffff) as u16,
                params,
            })
        }
        _ => Err(invalid("unknown startup code")),
    }
}

/// One message: its type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Reads one message of at most `max` bytes.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Message> {
    let tag = r.read_u8().await?;
    let len = r.read_u32().await? as usize;
    if len < 4 || len - 4 > max {
        return Err(invalid("message length out of bounds"));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await?;
    Ok(Message { tag, body })
}

/// Messages read from a stream as they come: what was read and not yet handled is kept, so
/// that waiting for more can be given up at any point (in a `select!`) without losing a byte.
#[derive(Debug, Default)]
pub struct Frames {
    buf: Vec<u8>,
    at: usize,
}

impl Frames {
    /// Reads what `r` has (at least one byte, or 0 at its end). Cancel-safe.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 1 << 16 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.reserve(1 << 14);
        r.read_buf(&mut self.buf).await
    }

    /// The next whole message read, if there is one; an error for one longer than `max`.
    pub fn next(&mut self, max: usize) -> io::Result<Option<Message>> {
        Ok(self.next_raw(max)?.map(|raw| Message {
            tag: raw[0],
            body: raw[5..].to_vec(),
        }))
    }

    /// The next whole message read, in place (its tag, length and body), if there is one; an
    /// error for one longer than `max`. What it returns stays readable until
    /// [`Frames::consume`].
    pub fn next_raw(&mut self, max: usize) -> io::Result<Option<&[u8]>> {
        let rest = &self.buf[self.at..];
        if rest.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        if len < 4 || len - 4 > max {
            return Err(invalid("message length out of bounds"));
        }
        if rest.len() < 1 + len {
            return Ok(None);
        }
        let at = self.at;
        self.at += 1 + len;
        Ok(Some(&self.buf[at..at + 1 + len]))
    }

    /// Makes room for the rest of a message read only in part.
    pub fn consume(&mut self) {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
    }

    /// Whether nothing read is left.
    pub fn is_empty(&self) -> bool {
        self.at == self.buf.len()
    }
}

/// Writes messages built into a buffer.
#[derive(Debug, Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    fn message(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.0.push(tag);
        self.0
            .extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        self.0.extend_from_slice(body);
        self
    }

    fn auth(&mut self, kind: u32, data: &[u8]) -> &mut Self {
        let mut body = kind.to_be_bytes().to_vec();
        body.extend_from_slice(data);
        self.message(b'R', &body)
    }

    pub fn auth_ok(&mut self) -> &mut Self {
        self.auth(0, &[])
    }

    /// AuthenticationSASL with `mechanisms`.
    pub fn auth_sasl(&mut self, mechanisms: &[&str]) -> &mut Self {
        let mut list = Vec::new();
        for m in mechanisms {
            list.extend_from_slice(m.as_bytes());
            list.push(0);
        }
        list.push(0);
        self.auth(10, &list)
    }

    pub fn auth_sasl_continue(&mut self, data: &str) -> &mut Self {
        self.auth(11, data.as_bytes())
    }

    /// AuthenticationCleartextPassword.
    pub fn auth_cleartext(&mut self) -> &mut Self {
        self.auth(3, b"")
    }

    pub fn auth_sasl_final(&mut self, data: &str) -> &mut Self {
        self.auth(12, data.as_bytes())
    }

    pub fn backend_key(&mut self, pid: u32, secret: u32) -> &mut Self {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(&secret.to_be_bytes());
        self.message(b'K', &body)
    }

    /// NegotiateProtocolVersion: the newest minor version served, and the options not known.
    pub fn negotiate(&mut self, minor: u32, unknown: &[String]) -> &mut Self {
        let mut body = minor.to_be_bytes().to_vec();
        body.extend_from_slice(&(unknown.len() as u32).to_be_bytes());
        for o in unknown {
            body.extend_from_slice(o.as_bytes());
            body.push(0);
        }
        self.message(b'v', &body)
    }

    /// ErrorResponse, FATAL, with `code` (SQLSTATE) and `message`.
    pub fn error(&mut self, code: &str, message: &str) -> &mut Self {
        self.error_of("FATAL", code, message)
    }

    /// ErrorResponse of `severity` (`ERROR`: the connection goes on).
    pub fn error_of(&mut self, severity: &str, code: &str, message: &str) -> &mut Self {
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        self.message(b'E', &body)
    }

    /// A startup message for protocol 3.0.
    pub fn startup(&mut self, params: &[(String, String)]) -> &mut Self {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        self.0
            .extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        self.0.extend_from_slice(&body);
        self
    }

    /// SASLInitialResponse (`mechanism`, `data`) or, without a mechanism, SASLResponse.
    pub fn sasl(&mut self, mechanism: Option<&str>, data: &str) -> &mut Self {
        let mut body = Vec::new();
        if let Some(m) = mechanism {
            body.extend_from_slice(m.as_bytes());
            body.push(0);
            body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        }
        body.extend_from_slice(data.as_bytes());
        self.message(b'p', &body)
    }

    /// A CancelRequest packet.
    pub fn cancel(&mut self, pid: u32, secret: u32) -> &mut Self {
        self.0.extend_from_slice(&16u32.to_be_bytes());
        self.0.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        self.0.extend_from_slice(&pid.to_be_bytes());
        self.0.extend_from_slice(&secret.to_be_bytes());
        self
    }

    pub fn raw(&mut self, m: &Message) -> &mut Self {
        self.message(m.tag, &m.body)
    }

    /// A message of `tag` with `body`.
    pub fn put(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.message(tag, body)
    }

    pub async fn send<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.0).await?;
        w.flush().await?;
        self.0.clear();
        Ok(())
    }
}

/// The fields of an ErrorResponse or NoticeResponse body: (code letter, value).
pub fn fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

/// A SASLInitialResponse: the mechanism and the client's first message.
pub fn sasl_initial(body: &[u8]) -> Option<(String, String)> {
    let nul = body.iter().position(|b| *b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?.to_owned();
    let rest = body.get(nul + 1..)?;
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = rest.get(4..)?;
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some((mechanism, std::str::from_utf8(data).ok()?.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut out = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(rest);
        out
    }

    async fn read(bytes: &[u8]) -> io::Result<Startup> {
        read_startup(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn startup_packets_are_read_as_the_protocol_says() {
        assert_eq!(read(&packet(SSL_REQUEST, &[])).await.unwrap(), Startup::Ssl);
        assert_eq!(
            read(&packet(GSSENC_REQUEST, &[])).await.unwrap(),
            Startup::GssEnc
        );
        let mut key = 7u32.to_be_bytes().to_vec();
        key.extend_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            read(&packet(CANCEL_REQUEST, &key)).await.unwrap(),
            Startup::Cancel { pid: 7, secret: 9 }
        );
        let start = read(&packet(PROTOCOL_3, b"user\0u_1\0database\0app\0\0"))
            .await
            .unwrap();
        assert_eq!(
            start,
            Startup::Start {
                minor: 0,
                params: vec![
                    ("user".into(), "u_1".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
        let newer = read(&packet(PROTOCOL_3 + 2, b"user\0u\0\0")).await.unwrap();
        assert!(matches!(newer, Startup::Start { minor: 2, .. }));
    }

    #[tokio::test]
    async fn bad_startup_packets_are_refused_without_allocating_what_they_claim() {
        for bad in [
            vec![0, 0, 0, 4],                          // too short
            vec![0x7f, 0xff, 0xff, 0xff],              // 2 GB claimed
            packet(1234, &[]),                         // unknown code
            packet(PROTOCOL_3, b"user\0u_1\0"),        // unterminated
            packet(PROTOCOL_3, b"user\0u_1\0\0extra"), // data after the end
            packet(PROTOCOL_3, b"user\0\xff\xfe\0\0"), // not UTF-8
            packet(CANCEL_REQUEST, &[1, 2, 3]),        // short key
        ] {
            assert!(read(&bad).await.is_err(), "{bad:?}");
        }
        assert!(read_message(&mut &[b'p', 0x7f, 0, 0, 0][..], MAX_AUTH)
            .await
            .is_err());
    }

    #[test]
    fn messages_are_framed_and_errors_carry_their_sqlstate() {
        let mut out = Out::default();
        out.error("28P01", "password authentication failed");
        let bytes = &out.0;
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 1);
        let f = fields(&bytes[5..]);
        assert!(f.contains(&(b'C', "28P01".into())));
        assert!(f.contains(&(b'S', "FATAL".into())));

        let mut out = Out::default();
        out.sasl(Some("SCRAM-SHA-256"), "n,,n=,r=abc");
        let body = &out.0[5..];
        assert_eq!(
            sasl_initial(body),
            Some(("SCRAM-SHA-256".into(), "n,,n=,r=abc".into()))
        );
        assert_eq!(
            sasl_initial(b"x\0\0\0\0\x09abc"),
            None,
            "a length that lies"
        );
    }
}

/// The startup and authentication parsers against bytes no client library wrote: an answer
/// or an error, never a panic, and never a buffer larger than the bounds allow.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_startup_packet_parses_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_startup(&bytes);
            let _ = block(read_startup(&mut &bytes[..]));
        }

        #[test]
        fn any_length_prefix_is_held_to_the_bound(
            tag: u8,
            len: u32,
            rest in proptest::collection::vec(any::<u8>(), 0..300),
            max in 0usize..256,
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&rest);
            if let Ok(m) = block(read_message(&mut &bytes[..], max)) {
                prop_assert!(m.body.len() <= max);
                prop_assert_eq!(m.body.len() + 4, len as usize);
            }
            let mut startup = len.to_be_bytes().to_vec();
            startup.extend_from_slice(&rest);
            let _ = block(read_startup(&mut &startup[..]));
        }

        #[test]
        fn any_sasl_initial_response_parses_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some((mechanism, data)) = sasl_initial(&bytes) {
                prop_assert!(mechanism.len() + data.len() < bytes.len());
            }
            let _ = fields(&bytes);
        }
    }
}
