//! The C ABI declared in `pagi_native.h`: the only `extern "C"` items.
//!
//! Every function runs inside [`guard`], which turns both errors and panics
//! into `PN_ERROR` plus a message for `pagi_native_last_error`, so a Rust
//! panic becomes a Perl `croak`, never a crashed interpreter.

use crate::seam::bodies::BodyPool;
use crate::seam::engine::{Engine, FileSource, Sent};
use crate::seam::event::{Event, GroupMessage, Headers, Query, RequestEvent, Value};
use crate::server::runtime::panic_message;
use bytes::Bytes;
use std::cell::RefCell;
use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

pub const PN_OK: c_int = 0;
pub const PN_GONE: c_int = 1;
pub const PN_ERROR: c_int = -1;

/// `pn_str`: a borrowed byte string.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PnStr {
    pub ptr: *const c_char,
    pub len: usize,
}

impl PnStr {
    const EMPTY: PnStr = PnStr { ptr: ptr::null(), len: 0 };

    fn of(b: &[u8]) -> PnStr {
        PnStr { ptr: b.as_ptr() as *const c_char, len: b.len() }
    }

    /// A present string: never a null `ptr`, even when empty.
    fn of_str(s: &str) -> PnStr {
        PnStr { ptr: if s.is_empty() { c"".as_ptr() } else { s.as_ptr() as *const c_char }, len: s.len() }
    }

    /// SAFETY: `ptr` must point to `len` readable bytes (or len == 0).
    unsafe fn bytes(&self) -> &[u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr as *const u8, self.len)
        }
    }
}

/// `pn_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PnHeader {
    pub name: PnStr,
    pub value: PnStr,
}

/// `pn_request`.
#[repr(C)]
pub struct PnRequest {
    pub method: PnStr,
    pub path: PnStr,
    pub raw_path: PnStr,
    pub query_string: PnStr,
    pub http_version: PnStr,
    pub scheme: PnStr,
    pub client_host: PnStr,
    pub server_host: PnStr,
    pub client_port: u32,
    pub server_port: u32,
    pub has_client: i32,
    pub has_server_port: i32,
    pub path_is_utf8: i32,
    pub scope_kind: i32,
    pub has_body: i32,
    pub body: PnStr,
    pub headers: *const PnHeader,
    pub n_headers: usize,
    pub tls: *const PnTls,
}

/// `pn_tls`.
#[repr(C)]
pub struct PnTls {
    pub version: u32,
    pub cipher_suite: u32,
    pub server_cert: PnStr,
    pub client_cert_name: PnStr,
    pub client_chain: *const PnStr,
    pub n_client_chain: usize,
}

/// `pn_event`.
#[repr(C)]
pub struct PnEvent {
    pub kind: u32,
    pub more: i32,
    pub id: u64,
    pub data: PnStr,
    pub level: PnStr,
    pub request: *const PnRequest,
    /// PN_EV_DONE: when the response was complete (epoch seconds).
    pub at: f64,
    /// PN_EV_GROUP_MESSAGE only.
    pub group: *const PnGroupMessage,
}

/// `pn_group_msg`: a group message for Perl's subscribers. Absent strings
/// have a null `ptr`.
#[repr(C)]
pub struct PnGroupMessage {
    pub group: PnStr,
    pub data: PnStr,
    pub event: PnStr,
    pub event_id: PnStr,
    pub node: PnStr,
    pub text: i32,
    /// -1 when absent.
    pub retry: i64,
}

/// `pn_stats`.
#[repr(C)]
pub struct PnStats {
    pub connections_active: u64,
    pub connections_total: u64,
    pub requests_total: u64,
    pub requests_active: u64,
    pub events_pending: u64,
}

/// `pn_engine`: the engine plus the C records of its last drained batch.
pub struct Handle {
    engine: Engine,
    events: Vec<PnEvent>,
    requests: Vec<PnRequest>,
    headers: Vec<PnHeader>,
    tls: Vec<PnTls>,
    chains: Vec<PnStr>,
    groups: Vec<PnGroupMessage>,
    /// Reply values in the byte encoding `Native.xs` decodes (see [`encode_value`]).
    replies: Vec<Vec<u8>>,
    /// Where body bytes from Perl are copied to (see [`crate::seam::bodies`]).
    bodies: Arc<BodyPool>,
}

thread_local! {
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn set_error(msg: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = msg.into_bytes());
}

/// Runs `f`, mapping `Err` and panics to `PN_ERROR` with a message.
fn guard(name: &str, f: impl FnOnce() -> Result<c_int, String>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(code)) => code,
        Ok(Err(msg)) => {
            set_error(msg);
            PN_ERROR
        }
        Err(p) => {
            set_error(format!("Rust panic in {name}: {}", panic_message(&*p)));
            PN_ERROR
        }
    }
}

/// Borrows the handle behind `e`, refusing null and use after fork.
///
/// SAFETY: `e` must be null or a pointer returned by `pagi_native_new` and not freed.
unsafe fn handle<'a>(e: *mut Handle) -> Result<&'a mut Handle, String> {
    let h = e.as_mut().ok_or_else(|| "null engine".to_string())?;
    h.engine.check_pid()?;
    Ok(h)
}

/// SAFETY: `h` must point to `n` valid `PnHeader`s whose strings are readable.
unsafe fn headers_from(h: *const PnHeader, n: usize) -> Headers {
    if n == 0 || h.is_null() {
        return Vec::new();
    }
    std::slice::from_raw_parts(h, n)
        .iter()
        .map(|p| (Bytes::copy_from_slice(p.name.bytes()), Bytes::copy_from_slice(p.value.bytes())))
        .collect()
}

fn sent_code(s: Sent) -> c_int {
    match s {
        Sent::Queued(_) => PN_OK,
        Sent::Gone => PN_GONE,
    }
}

#[no_mangle]
pub extern "C" fn pagi_native_new() -> *mut Handle {
    let made = catch_unwind(|| {
        Box::into_raw(Box::new(Handle {
            engine: Engine::new(),
            events: Vec::new(),
            requests: Vec::new(),
            headers: Vec::new(),
            tls: Vec::new(),
            chains: Vec::new(),
            groups: Vec::new(),
            replies: Vec::new(),
            bodies: BodyPool::new(),
        }))
    });
    made.unwrap_or(ptr::null_mut())
}

/// Frees the engine (joining its IO thread); in a forked child of a started
/// engine it does nothing, since the thread and fds belong to the parent.
///
/// # Safety
/// `e` must be null or come from `pagi_native_new`, and is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_free(e: *mut Handle) {
    if e.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if (*e).engine.owned_by_this_process() {
            drop(Box::from_raw(e));
        }
    }));
}

/// # Safety
/// `e` from `pagi_native_new`; name/value readable for their lengths.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_set_option(e: *mut Handle, name: *const c_char, name_len: usize, value: *const c_char, value_len: usize) -> c_int {
    guard("set_option", || {
        let h = handle(e)?;
        let name = PnStr { ptr: name, len: name_len };
        let value = PnStr { ptr: value, len: value_len };
        let name = std::str::from_utf8(name.bytes()).map_err(|_| "option name is not UTF-8".to_string())?;
        let value = std::str::from_utf8(value.bytes()).map_err(|_| format!("{name}: value is not UTF-8"))?;
        h.engine.set_option(name, value).map(|_| PN_OK)
    })
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_listen_fd(e: *mut Handle, fd: c_int, tls: c_int) -> c_int {
    guard("listen_fd", || handle(e)?.engine.listen_fd(fd, tls != 0).map(|_| PN_OK))
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_start(e: *mut Handle) -> c_int {
    guard("start", || handle(e)?.engine.start().map(|_| PN_OK))
}

/// # Safety
/// `e` from `pagi_native_new`; `fd` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_fd(e: *mut Handle, fd: *mut c_int) -> c_int {
    guard("fd", || {
        let n = handle(e)?.engine.fd()?;
        *fd.as_mut().ok_or("null fd pointer")? = n;
        Ok(PN_OK)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; `events` and `count` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_drain(e: *mut Handle, max: usize, events: *mut *const PnEvent, count: *mut usize) -> c_int {
    guard("drain_events", || {
        let h = handle(e)?;
        h.engine.drain(max)?;
        h.build_records();
        *events.as_mut().ok_or("null events pointer")? = h.events.as_ptr();
        *count.as_mut().ok_or("null count pointer")? = h.events.len();
        Ok(PN_OK)
    })
}

impl Handle {
    /// Lays out C records for `engine.batch`; the vectors are filled before any
    /// pointer into them is taken, so no pointer outlives a reallocation.
    fn build_records(&mut self) {
        self.events.clear();
        self.requests.clear();
        self.headers.clear();
        self.tls.clear();
        self.chains.clear();
        self.groups.clear();
        self.replies.clear();
        let batch = &self.engine.batch;
        for ev in batch {
            match ev {
                Event::GroupMessage(d) => {
                    let opt = |s: &Option<String>| s.as_deref().map_or(PnStr::EMPTY, |v| PnStr::of_str(v));
                    self.groups.push(PnGroupMessage {
                        group: PnStr::of(d.group.as_bytes()),
                        data: PnStr::of(&d.message.data),
                        event: opt(&d.message.event),
                        event_id: opt(&d.message.id),
                        node: opt(&d.node),
                        text: d.message.text as i32,
                        retry: d.message.retry.map_or(-1, |r| r.min(i64::MAX as u64) as i64),
                    });
                }
                Event::Reply { result, .. } => {
                    let mut buf = Vec::new();
                    match &**result {
                        Ok(v) => encode_value(v, &mut buf),
                        Err(e) => buf.extend_from_slice(e.as_bytes()),
                    }
                    self.replies.push(buf);
                }
                _ => {}
            }
        }
        for ev in batch {
            if let Event::Request(r) = ev {
                self.headers.extend(r.headers.iter().map(|(n, v)| PnHeader { name: PnStr::of(n), value: PnStr::of(v) }));
                if let Some(t) = &r.tls {
                    self.chains.extend(t.client_chain.iter().map(|c| PnStr::of(c.as_bytes())));
                }
            }
        }
        let mut chain_at = 0;
        for ev in batch {
            if let Event::Request(r) = ev {
                if let Some(t) = &r.tls {
                    let n = t.client_chain.len();
                    self.tls.push(PnTls {
                        version: t.version as u32,
                        cipher_suite: t.cipher_suite as u32,
                        server_cert: PnStr::of(t.server_cert.as_bytes()),
                        client_cert_name: t.client_name.as_deref().map_or(PnStr::EMPTY, |n| PnStr::of(n.as_bytes())),
                        client_chain: if n == 0 { ptr::null() } else { self.chains[chain_at..].as_ptr() },
                        n_client_chain: n,
                    });
                    chain_at += n;
                }
            }
        }
        let (mut header_at, mut tls_at) = (0, 0);
        for ev in batch {
            if let Event::Request(r) = ev {
                let n = r.headers.len();
                let hp = if n == 0 { ptr::null() } else { self.headers[header_at..].as_ptr() };
                header_at += n;
                let tp = if r.tls.is_some() {
                    tls_at += 1;
                    &self.tls[tls_at - 1] as *const PnTls
                } else {
                    ptr::null()
                };
                self.requests.push(request_record(r, hp, n, tp));
            }
        }
        let (mut request_at, mut group_at, mut reply_at) = (0, 0, 0);
        for ev in batch {
            let mut rec = PnEvent { kind: 0, more: 0, id: 0, data: PnStr::EMPTY, level: PnStr::EMPTY, request: ptr::null(), at: 0.0, group: ptr::null() };
            match ev {
                Event::Request(r) => {
                    rec.kind = 1;
                    rec.id = r.id;
                    rec.request = &self.requests[request_at];
                    request_at += 1;
                }
                Event::Body { id, data, more } => {
                    rec.kind = 2;
                    rec.id = *id;
                    rec.data = PnStr::of(data);
                    rec.more = *more as i32;
                }
                Event::Writable { id } => {
                    rec.kind = 3;
                    rec.id = *id;
                }
                Event::Disconnect { id, reason } => {
                    rec.kind = 4;
                    rec.id = *id;
                    rec.data = PnStr::of(reason.as_str().as_bytes());
                }
                Event::Done { id, at } => {
                    rec.kind = 5;
                    rec.id = *id;
                    rec.at = *at;
                }
                Event::Stopped => rec.kind = 6,
                Event::WsMessage { id, data, text } => {
                    rec.kind = 10;
                    rec.id = *id;
                    rec.data = PnStr::of(data);
                    rec.more = *text as i32;
                }
                Event::WsDisconnect { id, code, reason } => {
                    rec.kind = 11;
                    rec.id = *id;
                    rec.more = *code as i32;
                    rec.data = PnStr::of(reason.as_bytes());
                }
                Event::ShutdownNotice { id } => {
                    rec.kind = 9;
                    rec.id = *id;
                }
                Event::Log { level, message } => {
                    rec.kind = 7;
                    rec.level = PnStr::of(level.as_bytes());
                    rec.data = PnStr::of(message.as_bytes());
                }
                Event::Fatal { message } => {
                    rec.kind = 8;
                    rec.data = PnStr::of(message.as_bytes());
                }
                Event::GroupMessage(_) => {
                    rec.kind = 12;
                    rec.group = &self.groups[group_at];
                    group_at += 1;
                }
                Event::Reply { token, result } => {
                    rec.kind = 13;
                    rec.id = *token;
                    rec.more = result.is_ok() as i32;
                    rec.data = PnStr::of(&self.replies[reply_at]);
                    reply_at += 1;
                }
            }
            self.events.push(rec);
        }
    }
}

fn request_record(r: &RequestEvent, headers: *const PnHeader, n_headers: usize, tls: *const PnTls) -> PnRequest {
    PnRequest {
        method: PnStr::of(&r.method),
        path: PnStr::of(&r.path),
        raw_path: PnStr::of(&r.raw_path),
        query_string: PnStr::of(&r.query_string),
        http_version: PnStr::of(r.http_version.as_bytes()),
        scheme: PnStr::of(r.scheme.as_bytes()),
        client_host: r.client.as_ref().map_or(PnStr::EMPTY, |c| PnStr::of(c.0.as_bytes())),
        server_host: PnStr::of(r.server.0.as_bytes()),
        client_port: r.client.as_ref().map_or(0, |c| c.1 as u32),
        server_port: r.server.1.map_or(0, u32::from),
        has_client: r.client.is_some() as i32,
        has_server_port: r.server.1.is_some() as i32,
        path_is_utf8: r.path_is_utf8 as i32,
        scope_kind: r.kind as i32,
        has_body: r.body.is_some() as i32,
        body: r.body.as_deref().map_or(PnStr::EMPTY, PnStr::of),
        headers,
        n_headers,
        tls,
    }
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_flush(e: *mut Handle) -> c_int {
    guard("flush", || handle(e)?.engine.flush().map(|_| PN_OK))
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_shutdown(e: *mut Handle, grace: f64) -> c_int {
    guard("shutdown", || handle(e)?.engine.shutdown(grace).map(|_| PN_OK))
}

/// # Safety
/// `e` from `pagi_native_new`; headers and body readable for their lengths.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_respond_full(e: *mut Handle, id: u64, status: i64, headers: *const PnHeader, n_headers: usize, body: *const c_char, body_len: usize) -> c_int {
    guard("respond_full", || {
        let h = handle(e)?;
        let body = h.bodies.copy(PnStr { ptr: body, len: body_len }.bytes());
        h.engine.respond_full(id, status, headers_from(headers, n_headers), body).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; headers readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_http_start(e: *mut Handle, id: u64, status: i64, headers: *const PnHeader, n_headers: usize, trailers: c_int) -> c_int {
    guard("http_start", || {
        let h = handle(e)?;
        h.engine.http_start(id, status, headers_from(headers, n_headers), trailers != 0).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; data readable; `buffered` writable or null.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_http_body(e: *mut Handle, id: u64, data: *const c_char, len: usize, more: c_int, buffered: *mut usize) -> c_int {
    guard("http_body", || {
        let h = handle(e)?;
        let data = h.bodies.copy(PnStr { ptr: data, len }.bytes());
        let sent = h.engine.http_body(id, data, more != 0)?;
        if let (Some(out), Sent::Queued(n)) = (buffered.as_mut(), &sent) {
            *out = *n;
        }
        Ok(sent_code(sent))
    })
}

/// `path` (when `path_len` > 0) or else `fd` names the file; `length` < 0 means to the end.
///
/// # Safety
/// `e` from `pagi_native_new`; `path` readable for `path_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_http_file(e: *mut Handle, id: u64, path: *const c_char, path_len: usize, fd: c_int, offset: u64, length: i64) -> c_int {
    guard("http_file", || {
        let h = handle(e)?;
        let path_str = PnStr { ptr: path, len: path_len };
        let path_bytes = path_str.bytes();
        let source = if path_len > 0 {
            FileSource::Path(std::str::from_utf8(path_bytes).map_err(|_| "file path is not UTF-8".to_string())?)
        } else {
            FileSource::Fd(fd)
        };
        let length = (length >= 0).then_some(length as u64);
        h.engine.http_file(id, source, offset, length).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; headers readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_http_trailers(e: *mut Handle, id: u64, headers: *const PnHeader, n_headers: usize) -> c_int {
    guard("http_trailers", || {
        let h = handle(e)?;
        h.engine.http_trailers(id, headers_from(headers, n_headers)).map(sent_code)
    })
}

/// `subprotocol_len` 0 means none.
///
/// # Safety
/// `e` from `pagi_native_new`; strings and headers readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_ws_accept(e: *mut Handle, id: u64, subprotocol: *const c_char, subprotocol_len: usize, headers: *const PnHeader, n_headers: usize) -> c_int {
    guard("ws_accept", || {
        let h = handle(e)?;
        let p = PnStr { ptr: subprotocol, len: subprotocol_len };
        let p = if subprotocol_len == 0 { None } else { Some(std::str::from_utf8(p.bytes()).map_err(|_| "subprotocol is not UTF-8".to_string())?) };
        h.engine.ws_accept(id, p, headers_from(headers, n_headers)).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; data readable; `buffered` writable or null.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_ws_send(e: *mut Handle, id: u64, data: *const c_char, len: usize, text: c_int, buffered: *mut usize) -> c_int {
    guard("ws_send", || {
        let h = handle(e)?;
        let data = h.bodies.copy(PnStr { ptr: data, len }.bytes());
        let sent = h.engine.ws_send(id, data, text != 0)?;
        if let (Some(out), Sent::Queued(n)) = (buffered.as_mut(), &sent) {
            *out = *n;
        }
        Ok(sent_code(sent))
    })
}

/// # Safety
/// `e` from `pagi_native_new`; reason readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_ws_close(e: *mut Handle, id: u64, code: i64, reason: *const c_char, reason_len: usize) -> c_int {
    guard("ws_close", || {
        let h = handle(e)?;
        let r = PnStr { ptr: reason, len: reason_len };
        let r = std::str::from_utf8(r.bytes()).map_err(|_| "reason is not UTF-8".to_string())?;
        h.engine.ws_close(id, code, r).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_ws_credit(e: *mut Handle, id: u64, n: u32) -> c_int {
    guard("ws_credit", || handle(e)?.engine.ws_credit(id, n).map(sent_code))
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_ws_keepalive(e: *mut Handle, id: u64, interval: f64, timeout: f64) -> c_int {
    guard("ws_keepalive", || handle(e)?.engine.ws_keepalive(id, interval, timeout).map(sent_code))
}

/// SAFETY: `ptr` null (None) or readable for `len` bytes of UTF-8.
unsafe fn opt_str<'a>(ptr: *const c_char, len: usize, what: &str) -> Result<Option<&'a str>, String> {
    if ptr.is_null() {
        return Ok(None);
    }
    let bytes: &'a [u8] = if len == 0 { &[] } else { std::slice::from_raw_parts(ptr as *const u8, len) };
    std::str::from_utf8(bytes).map(Some).map_err(|_| format!("{what} is not UTF-8"))
}

/// # Safety
/// `e` from `pagi_native_new`; headers readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_sse_start(e: *mut Handle, id: u64, status: i64, headers: *const PnHeader, n_headers: usize) -> c_int {
    guard("sse_start", || handle(e)?.engine.sse_start(id, status, headers_from(headers, n_headers)).map(sent_code))
}

/// Null `event` or `event_id` means absent; `retry` < 0 means absent.
///
/// # Safety
/// `e` from `pagi_native_new`; strings readable; `buffered` writable or null.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_sse_send(
    e: *mut Handle, id: u64, event: *const c_char, event_len: usize, data: *const c_char, data_len: usize,
    event_id: *const c_char, event_id_len: usize, retry: i64, buffered: *mut usize,
) -> c_int {
    guard("sse_send", || {
        let h = handle(e)?;
        let event = opt_str(event, event_len, "event")?;
        let data = opt_str(data, data_len, "data")?.unwrap_or("");
        let event_id = opt_str(event_id, event_id_len, "id")?;
        let retry = (retry >= 0).then_some(retry as u64);
        let sent = h.engine.sse_send(id, event, data, event_id, retry)?;
        if let (Some(out), Sent::Queued(n)) = (buffered.as_mut(), &sent) {
            *out = *n;
        }
        Ok(sent_code(sent))
    })
}

/// # Safety
/// `e` from `pagi_native_new`; comment readable; `buffered` writable or null.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_sse_comment(e: *mut Handle, id: u64, comment: *const c_char, len: usize, buffered: *mut usize) -> c_int {
    guard("sse_comment", || {
        let h = handle(e)?;
        let comment = opt_str(comment, len, "comment")?.unwrap_or("");
        let sent = h.engine.sse_comment(id, comment)?;
        if let (Some(out), Sent::Queued(n)) = (buffered.as_mut(), &sent) {
            *out = *n;
        }
        Ok(sent_code(sent))
    })
}

/// # Safety
/// `e` from `pagi_native_new`; comment readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_sse_keepalive(e: *mut Handle, id: u64, interval: f64, comment: *const c_char, len: usize) -> c_int {
    guard("sse_keepalive", || {
        let h = handle(e)?;
        let comment = opt_str(comment, len, "comment")?.unwrap_or("");
        h.engine.sse_keepalive(id, interval, comment).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_want_body(e: *mut Handle, id: u64) -> c_int {
    guard("want_body", || handle(e)?.engine.want_body(id).map(sent_code))
}

/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_abort(e: *mut Handle, id: u64) -> c_int {
    guard("abort", || handle(e)?.engine.abort(id).map(sent_code))
}

/// # Safety
/// `e` from `pagi_native_new`; `must_wait` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_wait_writable(e: *mut Handle, id: u64, must_wait: *mut c_int) -> c_int {
    guard("wait_writable", || {
        let w = handle(e)?.engine.wait_writable(id);
        *must_wait.as_mut().ok_or("null pointer")? = w as c_int;
        Ok(PN_OK)
    })
}

/// Encodes a reply value for `Native.xs`: `n` nil; `i` and an i64; `d`
/// (data) or `s` (status) and a u32 length and the bytes; `a` and a u32
/// count and the items. Integers big-endian.
fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.push(b'n'),
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Data(d) => {
            out.push(b'd');
            out.extend_from_slice(&(d.len() as u32).to_be_bytes());
            out.extend_from_slice(d);
        }
        Value::Status(s) => {
            out.push(b's');
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            out.push(b'a');
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for i in items {
                encode_value(i, out);
            }
        }
    }
}

/// SAFETY: `p` readable for `len` bytes (or len == 0).
unsafe fn str_arg<'a>(p: *const c_char, len: usize, what: &str) -> Result<&'a str, String> {
    let b: &'a [u8] = if len == 0 || p.is_null() { &[] } else { std::slice::from_raw_parts(p as *const u8, len) };
    std::str::from_utf8(b).map_err(|_| format!("'{what}' is not UTF-8"))
}

/// Stream `id` joins `group`; `sse` when it is an SSE stream.
///
/// # Safety
/// `e` from `pagi_native_new`; `group` readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_group_join(e: *mut Handle, id: u64, group: *const c_char, group_len: usize, sse: c_int) -> c_int {
    guard("group_join", || {
        let h = handle(e)?;
        h.engine.group_join(id, str_arg(group, group_len, "group")?, sse != 0).map(sent_code)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; `group` readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_group_leave(e: *mut Handle, id: u64, group: *const c_char, group_len: usize) -> c_int {
    guard("group_leave", || {
        let h = handle(e)?;
        h.engine.group_leave(id, str_arg(group, group_len, "group")?).map(sent_code)
    })
}

/// Publishes; null `event`/`event_id` are absent, `retry` < 0 absent,
/// `exclude` 0 none. Writes the reply token.
///
/// # Safety
/// `e` from `pagi_native_new`; strings readable; `token` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_group_publish(
    e: *mut Handle, group: *const c_char, group_len: usize, text: c_int, data: *const c_char, data_len: usize,
    event: *const c_char, event_len: usize, event_id: *const c_char, event_id_len: usize, retry: i64, exclude: u64, token: *mut u64,
) -> c_int {
    guard("group_publish", || {
        let h = handle(e)?;
        let message = GroupMessage {
            text: text != 0,
            data: Bytes::copy_from_slice(PnStr { ptr: data, len: data_len }.bytes()),
            event: opt_str(event, event_len, "event")?.map(str::to_string),
            id: opt_str(event_id, event_id_len, "id")?.map(str::to_string),
            retry: (retry >= 0).then_some(retry as u64),
        };
        let t = h.engine.group_publish(str_arg(group, group_len, "group")?, message, (exclude != 0).then_some(exclude))?;
        *token.as_mut().ok_or("null token pointer")? = t;
        Ok(PN_OK)
    })
}

/// Perl's subscribers begin (`on` 1) or stop wanting the messages of `group`.
///
/// # Safety
/// `e` from `pagi_native_new`; `group` readable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_group_subscribe(e: *mut Handle, group: *const c_char, group_len: usize, on: c_int) -> c_int {
    guard("group_subscribe", || {
        let h = handle(e)?;
        h.engine.group_subscribe(str_arg(group, group_len, "group")?, on != 0).map(|_| PN_OK)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; `group` readable; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_group_count(e: *mut Handle, group: *const c_char, group_len: usize, count: *mut u64) -> c_int {
    guard("group_count", || {
        let h = handle(e)?;
        let n = h.engine.group_count(str_arg(group, group_len, "group")?);
        *count.as_mut().ok_or("null count pointer")? = n as u64;
        Ok(PN_OK)
    })
}

/// Asks for the cluster-wide member count of `group`; writes the reply token.
///
/// # Safety
/// `e` from `pagi_native_new`; `group` readable; `token` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_query_cluster_count(e: *mut Handle, group: *const c_char, group_len: usize, token: *mut u64) -> c_int {
    guard("query_cluster_count", || {
        let h = handle(e)?;
        let group = str_arg(group, group_len, "group")?.to_string();
        let t = h.engine.query(Query::ClusterCount { group })?;
        *token.as_mut().ok_or("null token pointer")? = t;
        Ok(PN_OK)
    })
}

/// Sends a Redis command (`n` arguments); writes the reply token.
///
/// # Safety
/// `e` from `pagi_native_new`; `args` points to `n` readable strings; `token` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_query_redis(e: *mut Handle, args: *const PnStr, n: usize, token: *mut u64) -> c_int {
    guard("query_redis", || {
        let h = handle(e)?;
        let args = if n == 0 || args.is_null() { Vec::new() } else { std::slice::from_raw_parts(args, n).iter().map(|a| a.bytes().to_vec()).collect() };
        let t = h.engine.query(Query::Redis { args })?;
        *token.as_mut().ok_or("null token pointer")? = t;
        Ok(PN_OK)
    })
}

/// `pn_group_stats`.
#[repr(C)]
pub struct PnGroupStats {
    pub published: u64,
    pub delivered: u64,
    pub delivered_direct: u64,
    pub skipped: u64,
    pub dropped: u64,
    pub redis_publish_failed: u64,
    pub redis_reconnects: u64,
    pub redis_connected: u64,
}

/// # Safety
/// `e` from `pagi_native_new`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_group_stats(e: *mut Handle, out: *mut PnGroupStats) -> c_int {
    guard("group_stats", || {
        let h = handle(e)?;
        let [published, delivered, delivered_direct, skipped, dropped, redis_publish_failed, redis_reconnects, redis_connected] = h.engine.group_stats();
        *out.as_mut().ok_or("null stats pointer")? =
            PnGroupStats { published, delivered, delivered_direct, skipped, dropped, redis_publish_failed, redis_reconnects, redis_connected };
        Ok(PN_OK)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_stats(e: *mut Handle, out: *mut PnStats) -> c_int {
    guard("stats", || {
        let h = handle(e)?;
        if h.engine.test_panic() == Some("stats") {
            panic!("test panic in an extern function (PAGI_NATIVE_TEST_PANIC=stats)");
        }
        let s = h.engine.snapshot();
        *out.as_mut().ok_or("null stats pointer")? = PnStats {
            connections_active: s.connections_active,
            connections_total: s.connections_total,
            requests_total: s.requests_total,
            requests_active: s.requests_active,
            events_pending: s.events_pending,
        };
        Ok(PN_OK)
    })
}

/// # Safety
/// `e` from `pagi_native_new`; out pointers writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_request_stats(e: *mut Handle, id: u64, bytes_read: *mut u64, buffered: *mut u64) -> c_int {
    guard("stats", || {
        let h = handle(e)?;
        match h.engine.request_stats(id) {
            Some((r, b)) => {
                *bytes_read.as_mut().ok_or("null pointer")? = r;
                *buffered.as_mut().ok_or("null pointer")? = b;
                Ok(PN_OK)
            }
            None => Ok(PN_GONE),
        }
    })
}

/// # Safety
/// `e` from `pagi_native_new`; out pointers writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_write_watermarks(e: *mut Handle, high: *mut usize, low: *mut usize) -> c_int {
    guard("write_watermarks", || {
        let h = handle(e)?;
        *high.as_mut().ok_or("null pointer")? = h.engine.config().write_high_watermark;
        *low.as_mut().ok_or("null pointer")? = h.engine.config().write_low_watermark;
        Ok(PN_OK)
    })
}

/// What the engine was built with: crate version and main dependencies.
///
/// # Safety
/// `text` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_build_info(text: *mut *const c_char) -> usize {
    const INFO: &str = concat!("pagi-server-native ", env!("CARGO_PKG_VERSION"), "; ", env!("PAGI_DEP_VERSIONS"));
    if let Some(t) = text.as_mut() {
        *t = INFO.as_ptr() as *const c_char;
    }
    INFO.len()
}

/// Builds the TLS configuration from the `ssl_*` options without starting,
/// so a bad certificate or key is reported when the server is constructed.
///
/// # Safety
/// `e` from `pagi_native_new`.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_check_tls(e: *mut Handle) -> c_int {
    guard("check_tls", || {
        let h = handle(e)?;
        crate::server::tls::build(h.engine.config()).map(|_| PN_OK)
    })
}

/// The message of the last `PN_ERROR` on this thread; valid until the next call.
///
/// # Safety
/// `message` writable.
#[no_mangle]
pub unsafe extern "C" fn pagi_native_last_error(message: *mut *const c_char) -> usize {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        if let Some(m) = message.as_mut() {
            *m = e.as_ptr() as *const c_char;
        }
        e.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_panics_become_codes_with_messages() {
        assert_eq!(guard("t", || Err("bad thing".into())), PN_ERROR);
        let mut p = ptr::null();
        let n = unsafe { pagi_native_last_error(&mut p) };
        let msg = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
        assert_eq!(msg, b"bad thing");
        assert_eq!(guard("t", || panic!("boom")), PN_ERROR);
        let n = unsafe { pagi_native_last_error(&mut p) };
        let msg = String::from_utf8(unsafe { std::slice::from_raw_parts(p as *const u8, n) }.to_vec()).unwrap();
        assert!(msg.contains("panic in t") && msg.contains("boom"), "{msg}");
    }

    #[test]
    fn commands_before_start_are_refused() {
        let e = pagi_native_new();
        unsafe {
            assert_eq!(pagi_native_want_body(e, 1), PN_ERROR);
            assert_eq!(pagi_native_set_option(e, b"timeout".as_ptr() as _, 7, b"5".as_ptr() as _, 1), PN_OK);
            assert_eq!(pagi_native_set_option(e, b"nope".as_ptr() as _, 4, b"5".as_ptr() as _, 1), PN_ERROR);
            pagi_native_free(e);
        }
    }
}
