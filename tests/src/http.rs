//! A minimal HTTP/1.1 GET client for tests and the demo (loopback only, `Connection: close`).

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status code and body of a GET.
pub async fn get(addr: SocketAddr, path_and_query: &str) -> Result<(u16, String)> {
    let reply = request(addr, path_and_query, &[]).await?;
    Ok((reply.status, reply.body))
}

/// Status code and body of a GET with `Authorization: Bearer <token>` (a researcher token, for
/// the full raw export).
pub async fn get_bearer(
    addr: SocketAddr,
    path_and_query: &str,
    token: &str,
) -> Result<(u16, String)> {
    let auth = format!("Bearer {token}");
    let reply = request(addr, path_and_query, &[("Authorization", &auth)]).await?;
    Ok((reply.status, reply.body))
}

/// A whole answer: status, header lines and (de-chunked) body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// The status line and header lines, as sent.
    pub head: String,
    pub body: String,
}

impl Reply {
    /// The value of the header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A GET with `headers` added.
pub async fn request(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no header/body separator in response");
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Reply {
        status,
        head: head.to_string(),
        body,
    })
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk header")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk trailer")?;
    }
}
