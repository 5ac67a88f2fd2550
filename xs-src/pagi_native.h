/*
 * pagi_native.h: the C ABI between the Rust engine (xs-src/ffi.rs) and the
 * Perl glue (xs-src/Native.xs). Written by hand; keep it in step with ffi.rs.
 *
 * Conventions: every function returns PN_OK, PN_GONE (the request id is no
 * longer live: the command was dropped, which PAGI treats as a no-op) or
 * PN_ERROR, after which pagi_native_last_error() gives the message. Byte
 * strings are (pointer, length) pairs; the engine copies what it keeps.
 * Records returned by pagi_native_drain stay valid until the next drain.
 */
#ifndef PAGI_NATIVE_H
#define PAGI_NATIVE_H

#include <stddef.h>
#include <stdint.h>

typedef struct pn_engine pn_engine;

typedef struct { const char *ptr; size_t len; } pn_str;
typedef struct { pn_str name; pn_str value; } pn_header;

#define PN_OK     0
#define PN_GONE   1
#define PN_ERROR -1

/* Event kinds; PAGI::Server::Native mirrors them as EV_* constants. */
#define PN_EV_REQUEST    1
#define PN_EV_BODY       2
#define PN_EV_WRITABLE   3
#define PN_EV_DISCONNECT 4
#define PN_EV_DONE       5
#define PN_EV_STOPPED    6
#define PN_EV_LOG        7
#define PN_EV_FATAL      8
#define PN_EV_SHUTDOWN   9   /* graceful shutdown began during this request */
#define PN_EV_WS_MESSAGE 10  /* more: 1 for text (valid UTF-8), 0 for bytes */
#define PN_EV_WS_DISCONNECT 11  /* more: close code; data: reason */
#define PN_EV_GROUP_MESSAGE 12  /* group: the message, for Perl's subscribers */
#define PN_EV_REPLY      13  /* id: token; more: 1 ok (data: encoded value), 0 error (data: message) */

#define PN_SCOPE_HTTP      0
#define PN_SCOPE_WEBSOCKET 1
#define PN_SCOPE_SSE       2

typedef struct {
    uint32_t version;            /* 0x0303 TLS 1.2, 0x0304 TLS 1.3 */
    uint32_t cipher_suite;       /* IANA id */
    pn_str server_cert;          /* PEM */
    pn_str client_cert_name;     /* RFC 4514; ptr NULL when none */
    const pn_str *client_chain;  /* PEM, leaf first */
    size_t n_client_chain;
} pn_tls;

typedef struct {
    pn_str method, path, raw_path, query_string, http_version, scheme;
    pn_str client_host, server_host;
    uint32_t client_port, server_port;
    int32_t has_client;          /* 0 on Unix-domain sockets: no `client` in scope */
    int32_t has_server_port;     /* 0 on Unix-domain sockets: server is [path, undef] */
    int32_t path_is_utf8;
    int32_t scope_kind;          /* PN_SCOPE_* */
    int32_t has_body;            /* body holds the complete request body */
    pn_str body;
    const pn_header *headers;
    size_t n_headers;
    const pn_tls *tls;           /* NULL on cleartext connections */
} pn_request;

/* A group message; absent strings have ptr NULL. */
typedef struct {
    pn_str group, data, event, event_id, node;
    int32_t text;                /* data is text (valid UTF-8), else bytes */
    int64_t retry;               /* -1 when absent */
} pn_group_msg;

typedef struct {
    uint64_t published, delivered, delivered_direct, skipped, dropped;
    uint64_t redis_publish_failed, redis_reconnects, redis_connected;
} pn_group_stats;

typedef struct {
    uint32_t kind;               /* PN_EV_* */
    int32_t more;                /* PN_EV_BODY: more body follows */
    uint64_t id;                 /* request id, 0 for engine-wide events */
    pn_str data;                 /* body bytes, disconnect reason, log or fatal message */
    pn_str level;                /* PN_EV_LOG: debug, info, warn or error */
    const pn_request *request;   /* PN_EV_REQUEST only */
    double at;                   /* PN_EV_DONE: when the response was complete (epoch seconds) */
    const pn_group_msg *group;   /* PN_EV_GROUP_MESSAGE only */
} pn_event;

typedef struct {
    uint64_t connections_active, connections_total;
    uint64_t requests_total, requests_active, events_pending;
} pn_stats;

pn_engine *pagi_native_new(void);
void pagi_native_free(pn_engine *e);
int pagi_native_set_option(pn_engine *e, const char *name, size_t name_len, const char *value, size_t value_len);
int pagi_native_listen_fd(pn_engine *e, int fd, int tls);
int pagi_native_start(pn_engine *e);
int pagi_native_fd(pn_engine *e, int *fd);
int pagi_native_drain(pn_engine *e, size_t max, const pn_event **events, size_t *count);
int pagi_native_flush(pn_engine *e);
int pagi_native_shutdown(pn_engine *e, double grace);
int pagi_native_respond_full(pn_engine *e, uint64_t id, int64_t status, const pn_header *headers, size_t n_headers, const char *body, size_t body_len);
int pagi_native_http_start(pn_engine *e, uint64_t id, int64_t status, const pn_header *headers, size_t n_headers, int trailers);
int pagi_native_http_body(pn_engine *e, uint64_t id, const char *data, size_t len, int more, size_t *buffered);
int pagi_native_http_file(pn_engine *e, uint64_t id, const char *path, size_t path_len, int fd, uint64_t offset, int64_t length);
int pagi_native_http_trailers(pn_engine *e, uint64_t id, const pn_header *headers, size_t n_headers);
int pagi_native_ws_accept(pn_engine *e, uint64_t id, const char *subprotocol, size_t subprotocol_len, const pn_header *headers, size_t n_headers);
int pagi_native_ws_send(pn_engine *e, uint64_t id, const char *data, size_t len, int text, size_t *buffered);
int pagi_native_ws_close(pn_engine *e, uint64_t id, int64_t code, const char *reason, size_t reason_len);
int pagi_native_ws_credit(pn_engine *e, uint64_t id, uint32_t n);
int pagi_native_ws_keepalive(pn_engine *e, uint64_t id, double interval, double timeout);
int pagi_native_sse_start(pn_engine *e, uint64_t id, int64_t status, const pn_header *headers, size_t n_headers);
int pagi_native_sse_send(pn_engine *e, uint64_t id, const char *event, size_t event_len, const char *data, size_t data_len, const char *event_id, size_t event_id_len, int64_t retry, size_t *buffered);
int pagi_native_sse_comment(pn_engine *e, uint64_t id, const char *comment, size_t len, size_t *buffered);
int pagi_native_sse_keepalive(pn_engine *e, uint64_t id, double interval, const char *comment, size_t len);
int pagi_native_want_body(pn_engine *e, uint64_t id);
int pagi_native_abort(pn_engine *e, uint64_t id);
int pagi_native_wait_writable(pn_engine *e, uint64_t id, int *must_wait);
int pagi_native_stats(pn_engine *e, pn_stats *out);
int pagi_native_request_stats(pn_engine *e, uint64_t id, uint64_t *bytes_read, uint64_t *buffered);
int pagi_native_write_watermarks(pn_engine *e, size_t *high, size_t *low);
int pagi_native_group_join(pn_engine *e, uint64_t id, const char *group, size_t group_len, int sse);
int pagi_native_group_leave(pn_engine *e, uint64_t id, const char *group, size_t group_len);
int pagi_native_group_publish(pn_engine *e, const char *group, size_t group_len, int text, const char *data, size_t data_len,
                              const char *event, size_t event_len, const char *event_id, size_t event_id_len,
                              int64_t retry, uint64_t exclude, uint64_t *token);
int pagi_native_group_subscribe(pn_engine *e, const char *group, size_t group_len, int on);
int pagi_native_group_count(pn_engine *e, const char *group, size_t group_len, uint64_t *count);
int pagi_native_query_cluster_count(pn_engine *e, const char *group, size_t group_len, uint64_t *token);
int pagi_native_query_redis(pn_engine *e, const pn_str *args, size_t n, uint64_t *token);
int pagi_native_group_stats(pn_engine *e, pn_group_stats *out);
size_t pagi_native_last_error(const char **message);
size_t pagi_native_build_info(const char **text);
int pagi_native_check_tls(pn_engine *e);

#endif
