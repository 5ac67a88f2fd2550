//! xfer: one large HTTP upload (POST, streamed from a fixed pattern) or
//! download (GET, counted and discarded), timed. Memory use is one chunk,
//! whatever the size.

use std::time::Instant;

use loadgen::{parse_url, Args, HttpReader, Json, Url};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const USAGE: &str = "\
usage: xfer --url http://HOST:PORT/PATH (--upload BYTES | --download) [--expect BYTES] [--chunk BYTES]
  --upload    POST a body of BYTES (Content-Length), streamed in chunks
  --download  GET and count the body (Content-Length, chunked or close-delimited)
  --expect    download: the body must be exactly BYTES long;
              upload: the response body must be the number BYTES
  --chunk     write size for uploads (default 65536)
BYTES is an integer, optionally with K, M or G (powers of 1024).
Prints one JSON line: tool mode bytes seconds mib_per_s status response_body
(the first 200 bytes of the response body; for a successful download, empty).
Exits 1 on a connection error, a non-2xx status or a failed --expect.
";

const SHOWN_BODY: usize = 200;

fn main() {
    let args = Args::parse("xfer", USAGE, &["download"], &["url", "upload", "expect", "chunk"]);
    let url = parse_url(args.required("url"), "http").unwrap_or_else(|e| args.usage_error(&e));
    let upload = args.get("upload").map(|_| args.size("upload", 0));
    let download = args.flag("download");
    if upload.is_some() == download {
        args.usage_error("give exactly one of --upload BYTES and --download");
    }
    let expect = args.get("expect").map(|_| args.size("expect", 0));
    let chunk = args.size("chunk", 65536) as usize;
    if chunk == 0 {
        args.usage_error("--chunk must be positive");
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let t0 = Instant::now();
    let outcome = rt.block_on(async {
        match upload {
            Some(n) => do_upload(&url, n, chunk).await,
            None => do_download(&url).await,
        }
    });
    let seconds = t0.elapsed().as_secs_f64();

    let mode = if download { "download" } else { "upload" };
    let (res, mut failure) = match outcome {
        Ok(r) => (r, None),
        Err((r, e)) => (r, Some(e)),
    };
    if failure.is_none() && !(200..300).contains(&res.status) {
        failure = Some(format!("status {}", res.status));
    }
    if let (None, Some(want)) = (&failure, expect) {
        if download && res.bytes != want {
            failure = Some(format!("received {} body bytes, expected {want}", res.bytes));
        }
        if !download {
            let got = String::from_utf8_lossy(&res.body);
            let number: Option<u64> = got.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).and_then(|s| s.parse().ok());
            if number != Some(want) {
                failure = Some(format!("response body {got:?} does not report {want} bytes"));
            }
        }
    }
    // A successful download's first bytes are just the payload.
    let shown = if download && failure.is_none() { String::new() } else { String::from_utf8_lossy(&res.body).into_owned() };
    Json::new()
        .str("tool", "xfer")
        .str("mode", mode)
        .int("bytes", res.bytes)
        .num("seconds", seconds, 3)
        .num("mib_per_s", res.bytes as f64 / 1048576.0 / seconds, 1)
        .int("status", res.status as u64)
        .str("response_body", &shown)
        .print();
    if let Some(e) = failure {
        eprintln!("xfer: {mode} failed: {e}");
        std::process::exit(1);
    }
}

/// What came back: status (0 if none), body bytes moved (sent for an upload,
/// received for a download), and the response body's first bytes.
#[derive(Default)]
struct Outcome {
    status: u16,
    bytes: u64,
    body: Vec<u8>,
}

type Result<T> = std::result::Result<T, (Outcome, String)>;

fn fail<T>(res: Outcome, e: String) -> Result<T> {
    Err((res, e))
}

async fn connect(url: &Url) -> std::result::Result<TcpStream, String> {
    let tcp = TcpStream::connect(&url.authority).await.map_err(|e| format!("connect {}: {e}", url.authority))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    Ok(tcp)
}

// Reads a whole response, keeping the body's first bytes in `res`.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(reader: &mut HttpReader<R>, res: &mut Outcome, count: bool) -> std::result::Result<(), String> {
    let head = reader.read_head(false).await?;
    res.status = head.status;
    let body = &mut res.body;
    let n = reader
        .read_body(head.framing, |data| {
            if body.len() < SHOWN_BODY {
                body.extend_from_slice(&data[..data.len().min(SHOWN_BODY - body.len())]);
            }
        })
        .await?;
    if count {
        res.bytes = n;
    }
    Ok(())
}

async fn do_download(url: &Url) -> Result<Outcome> {
    let mut res = Outcome::default();
    let mut tcp = match connect(url).await {
        Ok(t) => t,
        Err(e) => return fail(res, e),
    };
    let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", url.path, url.host);
    if let Err(e) = tcp.write_all(req.as_bytes()).await {
        return fail(res, format!("send request: {e}"));
    }
    let mut reader = HttpReader::with_read_size(tcp, 256 * 1024);
    match read_response(&mut reader, &mut res, true).await {
        Ok(()) => Ok(res),
        Err(e) => fail(res, e),
    }
}

async fn do_upload(url: &Url, total: u64, chunk: usize) -> Result<Outcome> {
    let mut res = Outcome::default();
    let mut tcp = match connect(url).await {
        Ok(t) => t,
        Err(e) => return fail(res, e),
    };
    let (rd, mut wr) = tcp.split();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n",
        url.path, url.host
    );
    // A fixed pattern, so the body is never held in memory whole.
    let pattern: Vec<u8> = (0..chunk).map(|i| b'a' + (i % 26) as u8).collect();
    let mut sent = 0u64;
    let outcome = {
        let writer = async {
            wr.write_all(head.as_bytes()).await.map_err(|e| format!("send head: {e}"))?;
            while sent < total {
                let n = (total - sent).min(chunk as u64) as usize;
                wr.write_all(&pattern[..n]).await.map_err(|e| format!("send body after {sent} bytes: {e}"))?;
                sent += n as u64;
            }
            wr.flush().await.map_err(|e| format!("flush: {e}"))
        };
        // The response is read while the body goes out, so a server that
        // answers early (an error status) is seen instead of a writer stuck
        // forever.
        let mut reader = HttpReader::new(rd);
        let response = read_response(&mut reader, &mut res, false);
        tokio::pin!(writer, response);
        tokio::select! {
            w = &mut writer => match w {
                Ok(()) => response.await,
                // The server may have answered before giving up on the body.
                Err(e) => match response.await {
                    Ok(()) => Err(format!("{e} (server answered early)")),
                    Err(_) => Err(e),
                },
            },
            r = &mut response => match r {
                Ok(()) => Err("the server answered before the whole body was sent".to_string()),
                Err(e) => Err(e),
            },
        }
    };
    res.bytes = sent;
    match outcome {
        Ok(()) => Ok(res),
        Err(e) => fail(res, e),
    }
}
