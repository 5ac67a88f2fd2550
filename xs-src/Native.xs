/*
 * Native.xs: the Perl side of the seam. Converts between Perl values and the
 * plain C records of pagi_native.h; all protocol logic lives in Rust (ffi.rs
 * and below) or in PAGI::Server. Every SV is made and freed here, on the
 * Perl thread; the Rust IO thread never sees one.
 */
#define PERL_NO_GET_CONTEXT
#include "EXTERN.h"
#include "perl.h"
#include "XSUB.h"

#include "pagi_native.h"

/* Scratch space for response headers; reused by every call (one Perl thread). */
static pn_header *pn_scratch = NULL;
static size_t pn_scratch_cap = 0;

/* The read-only values of every scope's `pagi` hash. Each scope gets its
 * own small hash holding them, so an app that adds a key changes only its
 * own scope, and assigning to a value croaks. */
static SV *pn_pagi_version = NULL;

static SV *pn_new_pagi_info(pTHX) {
    HV *info = newHV();
    (void)hv_stores(info, "version", SvREFCNT_inc_simple_NN(pn_pagi_version));
    (void)hv_stores(info, "spec_version", SvREFCNT_inc_simple_NN(pn_pagi_version));
    return newRV_noinc((SV *)info);
}

static void pn_croak_last(pTHX_ const char *method) {
    const char *msg = NULL;
    size_t len = pagi_native_last_error(&msg);
    croak("PAGI::Server::Native::%s: %.*s", method, (int)len, msg ? msg : "");
}

static pn_engine *pn_engine_from(pTHX_ SV *sv, const char *method) {
    if (!sv_isobject(sv) || !sv_derived_from(sv, "PAGI::Server::Native"))
        croak("%s: not a PAGI::Server::Native object", method);
    {
        pn_engine *e = INT2PTR(pn_engine *, SvIV(SvRV(sv)));
        if (!e)
            croak("%s: engine already destroyed", method);
        return e;
    }
}

/* Bytes of `sv` for the engine; text with wide characters is refused by name. */
static const char *pn_bytes(pTHX_ SV *sv, const char *method, const char *what, STRLEN *len) {
    SvGETMAGIC(sv);
    if (!SvOK(sv)) {
        *len = 0;
        return "";
    }
    if (SvROK(sv) && !SvAMAGIC(sv))
        croak("PAGI::Server::Native::%s: %s must be a byte string, not a reference", method, what);
    if (SvUTF8(sv)) {
        SV *copy = sv_2mortal(newSVsv_nomg(sv));
        if (!sv_utf8_downgrade(copy, TRUE))
            croak("PAGI::Server::Native::%s: %s contains wide characters (encode it to bytes)", method, what);
        return SvPV_nomg(copy, *len);
    }
    return SvPV_nomg(sv, *len);
}

/* Converts [[name, value], ...] into the scratch array; returns the count. */
static size_t pn_headers_in(pTHX_ SV *headers, const char *method) {
    AV *av;
    SSize_t i, n;
    SvGETMAGIC(headers);
    if (!SvOK(headers))
        return 0;
    if (!SvROK(headers) || SvTYPE(SvRV(headers)) != SVt_PVAV)
        croak("PAGI::Server::Native::%s: headers must be an array reference of [name, value] pairs", method);
    av = (AV *)SvRV(headers);
    n = av_len(av) + 1;
    if ((size_t)n > pn_scratch_cap) {
        pn_scratch_cap = (size_t)n * 2 + 16;
        Renew(pn_scratch, pn_scratch_cap, pn_header);
    }
    for (i = 0; i < n; i++) {
        SV **pair = av_fetch(av, i, 0);
        AV *p;
        SV **name, **value;
        STRLEN nl, vl;
        if (!pair || !SvROK(*pair) || SvTYPE(SvRV(*pair)) != SVt_PVAV || av_len((AV *)SvRV(*pair)) != 1)
            croak("PAGI::Server::Native::%s: header %d is not a [name, value] pair", method, (int)i);
        p = (AV *)SvRV(*pair);
        name = av_fetch(p, 0, 0);
        value = av_fetch(p, 1, 0);
        if (!name || !SvOK(*name) || !value || !SvOK(*value))
            croak("PAGI::Server::Native::%s: header %d has an undefined name or value", method, (int)i);
        pn_scratch[i].name.ptr = pn_bytes(aTHX_ *name, method, "header name", &nl);
        pn_scratch[i].name.len = nl;
        pn_scratch[i].value.ptr = pn_bytes(aTHX_ *value, method, "header value", &vl);
        pn_scratch[i].value.len = vl;
    }
    return (size_t)n;
}

static SV *pn_sv(pTHX_ pn_str s) {
    return newSVpvn(s.len ? s.ptr : "", s.len);
}

static SV *pn_pair(pTHX_ SV *a, SV *b) {
    AV *av = newAV();
    av_extend(av, 1);
    av_push(av, a);
    av_push(av, b);
    return newRV_noinc((SV *)av);
}

/* Builds the http scope of a request in PAGI shape (PAGI-SPEC section 2). */
static SV *pn_scope(pTHX_ const pn_request *r) {
    HV *hv = newHV();
    AV *headers = newAV();
    SV *path = pn_sv(aTHX_ r->path);
    size_t i;
    if (r->path_is_utf8 && !is_ascii_string((const U8 *)SvPVX(path), SvCUR(path)))
        SvUTF8_on(path);
    av_extend(headers, r->n_headers);
    for (i = 0; i < r->n_headers; i++)
        av_push(headers, pn_pair(aTHX_ pn_sv(aTHX_ r->headers[i].name), pn_sv(aTHX_ r->headers[i].value)));
    hv_ksplit(hv, 16);
    if (r->scope_kind == PN_SCOPE_WEBSOCKET) {
        (void)hv_stores(hv, "type", newSVpvs("websocket"));
        (void)hv_stores(hv, "scheme", r->tls ? newSVpvs("wss") : newSVpvs("ws"));
    } else {
        (void)hv_stores(hv, "type", r->scope_kind == PN_SCOPE_SSE ? newSVpvs("sse") : newSVpvs("http"));
        (void)hv_stores(hv, "method", pn_sv(aTHX_ r->method));
        (void)hv_stores(hv, "scheme", pn_sv(aTHX_ r->scheme));
    }
    (void)hv_stores(hv, "pagi", pn_new_pagi_info(aTHX));
    (void)hv_stores(hv, "http_version", pn_sv(aTHX_ r->http_version));
    (void)hv_stores(hv, "path", path);
    (void)hv_stores(hv, "raw_path", pn_sv(aTHX_ r->raw_path));
    (void)hv_stores(hv, "query_string", pn_sv(aTHX_ r->query_string));
    (void)hv_stores(hv, "root_path", newSVpvs(""));
    (void)hv_stores(hv, "headers", newRV_noinc((SV *)headers));
    if (r->tls) {
        /* The tls extension (PAGI-SPEC 4); PAGI::Server adds its own extensions beside it. */
        HV *ext = newHV(), *tls = newHV();
        AV *chain = newAV();
        size_t c;
        for (c = 0; c < r->tls->n_client_chain; c++)
            av_push(chain, pn_sv(aTHX_ r->tls->client_chain[c]));
        (void)hv_stores(tls, "server_cert", pn_sv(aTHX_ r->tls->server_cert));
        (void)hv_stores(tls, "client_cert_chain", newRV_noinc((SV *)chain));
        (void)hv_stores(tls, "client_cert_name", r->tls->client_cert_name.ptr ? pn_sv(aTHX_ r->tls->client_cert_name) : newSV(0));
        (void)hv_stores(tls, "client_cert_error", newSV(0));
        (void)hv_stores(tls, "tls_version", newSVuv(r->tls->version));
        (void)hv_stores(tls, "cipher_suite", newSVuv(r->tls->cipher_suite));
        (void)hv_stores(ext, "tls", newRV_noinc((SV *)tls));
        (void)hv_stores(hv, "extensions", newRV_noinc((SV *)ext));
    }
    if (r->has_client)
        (void)hv_stores(hv, "client", pn_pair(aTHX_ pn_sv(aTHX_ r->client_host), newSVuv(r->client_port)));
    (void)hv_stores(hv, "server", pn_pair(aTHX_ pn_sv(aTHX_ r->server_host),
                                          r->has_server_port ? newSVuv(r->server_port) : newSV(0)));
    return newRV_noinc((SV *)hv);
}

/* A string the engine had as UTF-8 text, as Perl characters. */
static SV *pn_text_sv(pTHX_ pn_str s) {
    SV *sv = pn_sv(aTHX_ s);
    if (!is_ascii_string((const U8 *)SvPVX(sv), SvCUR(sv)))
        SvUTF8_on(sv);
    return sv;
}

/* A group message as the hash Perl subscribers get (node: undef when local). */
static SV *pn_group_sv(pTHX_ const pn_group_msg *g) {
    HV *hv = newHV();
    (void)hv_stores(hv, "group", pn_text_sv(aTHX_ g->group));
    if (g->text) {
        SV *t = pn_sv(aTHX_ g->data);
        SvUTF8_on(t);   /* validated as UTF-8 by the engine */
        (void)hv_stores(hv, "text", t);
    }
    else
        (void)hv_stores(hv, "bytes", pn_sv(aTHX_ g->data));
    if (g->event.ptr)
        (void)hv_stores(hv, "event", pn_text_sv(aTHX_ g->event));
    if (g->event_id.ptr)
        (void)hv_stores(hv, "id", pn_text_sv(aTHX_ g->event_id));
    if (g->retry >= 0)
        (void)hv_stores(hv, "retry", newSViv((IV)g->retry));
    (void)hv_stores(hv, "node", g->node.ptr ? pn_text_sv(aTHX_ g->node) : newSV(0));
    return newRV_noinc((SV *)hv);
}

/* Decodes one reply value (the encoding of ffi.rs encode_value): nil is
 * undef, integers IVs, data byte strings, statuses strings, arrays array
 * references. Advances *p; a malformed value croaks. */
static SV *pn_value_sv(pTHX_ const unsigned char **p, const unsigned char *end, int depth) {
    unsigned char tag;
    uint32_t n;
    if (*p >= end || depth > 64)
        croak("PAGI::Server::Native::drain_events: malformed reply value");
    tag = *(*p)++;
    if (tag == 'n')
        return newSV(0);
    if (tag == 'i') {
        uint64_t v = 0;
        int i;
        if (end - *p < 8)
            croak("PAGI::Server::Native::drain_events: malformed reply value");
        for (i = 0; i < 8; i++)
            v = (v << 8) | (*p)[i];
        *p += 8;
        return newSViv((IV)(int64_t)v);
    }
    if (end - *p < 4)
        croak("PAGI::Server::Native::drain_events: malformed reply value");
    n = ((uint32_t)(*p)[0] << 24) | ((uint32_t)(*p)[1] << 16) | ((uint32_t)(*p)[2] << 8) | (uint32_t)(*p)[3];
    *p += 4;
    if (tag == 'd' || tag == 's') {
        SV *sv;
        if ((size_t)(end - *p) < n)
            croak("PAGI::Server::Native::drain_events: malformed reply value");
        sv = newSVpvn((const char *)*p, n);
        *p += n;
        return sv;
    }
    if (tag == 'a') {
        AV *av = newAV();
        uint32_t i;
        for (i = 0; i < n; i++)
            av_push(av, pn_value_sv(aTHX_ p, end, depth + 1));
        return newRV_noinc((SV *)av);
    }
    croak("PAGI::Server::Native::drain_events: malformed reply value");
    return NULL;
}

/* One event as an array: [kind, id, ...] (see the POD of drain_events). */
static SV *pn_event_sv(pTHX_ const pn_event *ev) {
    AV *av = newAV();
    av_extend(av, 4);
    av_push(av, newSVuv(ev->kind));
    av_push(av, newSVuv(ev->id));
    switch (ev->kind) {
    case PN_EV_REQUEST:
        av_push(av, pn_scope(aTHX_ ev->request));
        av_push(av, ev->request->has_body ? pn_sv(aTHX_ ev->request->body) : newSV(0));
        break;
    case PN_EV_BODY:
        av_push(av, pn_sv(aTHX_ ev->data));
        av_push(av, newSViv(ev->more));
        break;
    case PN_EV_WS_MESSAGE: {
        SV *data = pn_sv(aTHX_ ev->data);
        if (ev->more)
            SvUTF8_on(data);    /* text, already validated as UTF-8 by the engine */
        av_push(av, data);
        av_push(av, newSViv(ev->more));
        break;
    }
    case PN_EV_WS_DISCONNECT: {
        SV *reason = pn_sv(aTHX_ ev->data);
        SvUTF8_on(reason);
        av_push(av, newSViv(ev->more));
        av_push(av, reason);
        break;
    }
    case PN_EV_DONE:
        av_push(av, newSVnv(ev->at));
        break;
    case PN_EV_DISCONNECT:
    case PN_EV_FATAL:
        av_push(av, pn_sv(aTHX_ ev->data));
        break;
    case PN_EV_LOG:
        av_push(av, pn_sv(aTHX_ ev->level));
        av_push(av, pn_sv(aTHX_ ev->data));
        break;
    case PN_EV_GROUP_MESSAGE:
        av_push(av, pn_group_sv(aTHX_ ev->group));
        break;
    case PN_EV_REPLY:
        av_push(av, newSViv(ev->more));
        if (ev->more) {
            const unsigned char *p = (const unsigned char *)ev->data.ptr;
            av_push(av, ev->data.len ? pn_value_sv(aTHX_ &p, p + ev->data.len, 0) : newSV(0));
        }
        else
            av_push(av, pn_text_sv(aTHX_ ev->data));
        break;
    default:
        break;
    }
    return newRV_noinc((SV *)av);
}

static IV pn_sent(pTHX_ int rc, const char *method) {
    if (rc == PN_ERROR)
        pn_croak_last(aTHX_ method);
    return rc == PN_OK ? 1 : 0;
}


/* ---- PAGI::Server::HTTP fast path ------------------------------------------
 * The two events nearly every response is made of (http.response.start and
 * an in-memory http.response.body) are checked and queued here without a
 * Perl sub call per step. Anything else, anything unusual, and every case
 * that must fail goes to the Perl method (PAGI::Server::HTTP::send), which
 * has the whole set of rules and their messages: this only takes the cases
 * that method would accept, with the same effects. */

static SV *pn_hv_get(pTHX_ HV *hv, const char *key, I32 klen) {
    SV **svp = hv_fetch(hv, key, klen, 0);
    return svp ? *svp : NULL;
}
#define PN_GET(hv, key) pn_hv_get(aTHX_ (hv), "" key "", sizeof(key) - 1)

static int pn_true(pTHX_ SV *sv) {
    return sv && SvTRUE(sv);
}

static IV pn_iv(pTHX_ SV *sv) {
    return sv && SvOK(sv) ? SvIV(sv) : 0;
}

static void pn_set_iv(pTHX_ HV *hv, const char *key, I32 klen, IV v) {
    SV **svp = hv_fetch(hv, key, klen, 1);
    if (svp)
        sv_setiv(*svp, v);
}
#define PN_SET(hv, key, v) pn_set_iv(aTHX_ (hv), "" key "", sizeof(key) - 1, (v))

/* A plain byte string (or undef): no reference, no characters above 0xFF. */
static int pn_plain_bytes(pTHX_ SV *sv) {
    if (!sv || !SvOK(sv))
        return 1;
    if (SvROK(sv) || SvGMAGICAL(sv) || SvUTF8(sv))
        return 0;
    return SvPOK(sv) || SvIOK(sv) || SvNOK(sv);
}

/* headers as the Perl path accepts them without a second look: undef, or an
 * array of [name, value] pairs of plain byte strings. Fills the scratch array. */
static int pn_headers_plain(pTHX_ SV *headers, size_t *count) {
    AV *av;
    SSize_t i, n;
    *count = 0;
    if (!headers || !SvOK(headers))
        return 1;
    if (SvGMAGICAL(headers) || !SvROK(headers) || SvTYPE(SvRV(headers)) != SVt_PVAV || SvRMAGICAL(SvRV(headers)))
        return 0;
    av = (AV *)SvRV(headers);
    n = av_len(av) + 1;
    if ((size_t)n > pn_scratch_cap) {
        pn_scratch_cap = (size_t)n * 2 + 16;
        Renew(pn_scratch, pn_scratch_cap, pn_header);
    }
    for (i = 0; i < n; i++) {
        SV **pair = av_fetch(av, i, 0);
        AV *p;
        SV **name, **value;
        STRLEN nl, vl;
        if (!pair || !SvROK(*pair) || SvTYPE(SvRV(*pair)) != SVt_PVAV || SvRMAGICAL(SvRV(*pair)))
            return 0;
        p = (AV *)SvRV(*pair);
        if (av_len(p) != 1)
            return 0;
        name = av_fetch(p, 0, 0);
        value = av_fetch(p, 1, 0);
        if (!name || !value || !SvOK(*name) || !SvOK(*value) || !pn_plain_bytes(aTHX_ *name) || !pn_plain_bytes(aTHX_ *value))
            return 0;
        pn_scratch[i].name.ptr = SvPV_nomg(*name, nl);
        pn_scratch[i].name.len = nl;
        pn_scratch[i].value.ptr = SvPV_nomg(*value, vl);
        pn_scratch[i].value.len = vl;
    }
    *count = (size_t)n;
    return 1;
}

/* A status the Perl path accepts: three digits, the first not 0. */
static int pn_status_plain(pTHX_ SV *sv, IV *status) {
    STRLEN len;
    const char *p;
    if (!sv || !SvOK(sv) || SvROK(sv) || SvGMAGICAL(sv))
        return 0;
    p = SvPV_nomg(sv, len);
    if (len != 3 || p[0] < '1' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9')
        return 0;
    *status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    return 1;
}

static SV *pn_done_future = NULL;

/* PAGI::Server::_flush_soon, without the call when it would return at once. */
static void pn_flush_soon(pTHX_ HV *self) {
    SV *in_drain = get_sv("PAGI::Server::IN_DRAIN", 0);
    SV *server = PN_GET(self, "server");
    if (in_drain && SvTRUE(in_drain))
        return;
    if (!server || !SvROK(server))
        return;
    if (pn_true(aTHX_ PN_GET((HV *)SvRV(server), "flush_pending")))
        return;
    {
        dSP;
        ENTER;
        SAVETMPS;
        PUSHMARK(SP);
        XPUSHs(server);
        PUTBACK;
        call_method("_flush_soon", G_DISCARD);
        FREETMPS;
        LEAVE;
    }
}

/* $self->$method(@args) in scalar context, with up to two arguments; the
 * result, with a reference of its own. */
static SV *pn_call_method(pTHX_ SV *self, const char *method, SV *arg, SV *arg2) {
    SV *result;
    int count;
    dSP;
    ENTER;
    SAVETMPS;
    PUSHMARK(SP);
    XPUSHs(self);
    if (arg)
        XPUSHs(arg);
    if (arg2)
        XPUSHs(arg2);
    PUTBACK;
    count = call_method(method, G_SCALAR);
    SPAGAIN;
    result = count > 0 ? newSVsv(POPs) : newSV(0);
    PUTBACK;
    FREETMPS;
    LEAVE;
    return result;
}

/* What every fast path starts from: the scope object, the event hash and
 * its type, the server hash and the engine. */
typedef struct {
    HV *self, *ev, *server;
    pn_engine *e;
    UV id;
    const char *type;
    STRLEN type_len;
} pn_fast;

/* 0 when anything is unusual (the Perl method then takes the event). */
static int pn_fast_begin(pTHX_ SV *self_rv, SV *event_rv, pn_fast *f) {
    SV *type, *engine_sv, *server_sv;
    if (!SvROK(self_rv) || SvTYPE(SvRV(self_rv)) != SVt_PVHV)
        return 0;
    if (!event_rv || !SvROK(event_rv) || SvTYPE(SvRV(event_rv)) != SVt_PVHV || SvRMAGICAL(SvRV(event_rv)))
        return 0;
    f->self = (HV *)SvRV(self_rv);
    f->ev = (HV *)SvRV(event_rv);
    type = PN_GET(f->ev, "type");
    if (!type || !SvPOK(type) || SvGMAGICAL(type))
        return 0;
    f->type = SvPV_nomg(type, f->type_len);
    server_sv = PN_GET(f->self, "server");
    engine_sv = PN_GET(f->self, "engine");
    if (!server_sv || !SvROK(server_sv) || !engine_sv || !sv_isobject(engine_sv))
        return 0;
    f->server = (HV *)SvRV(server_sv);
    f->e = INT2PTR(pn_engine *, SvIV(SvRV(engine_sv)));
    if (!f->e)
        return 0;
    if (pn_done_future == NULL) {
        pn_done_future = get_sv("PAGI::Server::Scope::DONE", 0);
        if (!pn_done_future || !SvROK(pn_done_future)) {
            pn_done_future = NULL;
            return 0;
        }
        SvREFCNT_inc_simple_void_NN(pn_done_future);
    }
    f->id = (UV)pn_iv(aTHX_ PN_GET(f->self, "id"));
    return 1;
}

#define PN_TYPE_IS(f, lit) ((f)->type_len == sizeof(lit) - 1 && memEQ((f)->type, lit, sizeof(lit) - 1))

/* The shared done Future, after a flush is arranged: what a send that need
 * not wait returns. */
static SV *pn_fast_done(pTHX_ pn_fast *f) {
    pn_flush_soon(aTHX_ f->self);
    return newSVsv(pn_done_future);
}

/* PAGI::Server::Scope::_after_send in C for the usual case: done unless the
 * bytes buffered before this send ($buffered minus $added) reached the high
 * watermark, when the Perl method arranges the wait. */
static SV *pn_fast_after_send(pTHX_ pn_fast *f, SV *self_rv, int rc, size_t buffered, size_t added) {
    if (rc == PN_OK && (IV)buffered - (IV)added >= pn_iv(aTHX_ PN_GET(f->server, "high_watermark")))
        return pn_call_method(aTHX_ self_rv, "_after_send", sv_2mortal(newSVuv(buffered)), sv_2mortal(newSVuv(added)));
    return pn_fast_done(aTHX_ f);
}

/* 1 when queued (RETVAL set), 0 when the Perl method must take the event. */
static int pn_http_send_fast(pTHX_ SV *self_rv, SV *event_rv, SV **retval) {
    pn_fast f;
    HV *self;
    if (!pn_fast_begin(aTHX_ self_rv, event_rv, &f))
        return 0;
    self = f.self;
    if (pn_true(aTHX_ PN_GET(f.server, "validate_events")) || pn_true(aTHX_ PN_GET(self, "gone")))
        return 0;
    if (PN_TYPE_IS(&f, "http.response.body")) {
        SV *body = PN_GET(f.ev, "body");
        SV *file = PN_GET(f.ev, "file"), *fh = PN_GET(f.ev, "fh");
        STRLEN bl = 0;
        const char *b = "";
        size_t buffered = 0;
        int more, rc;
        if ((file && SvOK(file)) || (fh && SvOK(fh)) || !pn_plain_bytes(aTHX_ body))
            return 0;
        if (pn_iv(aTHX_ PN_GET(self, "state")) != 1 || pn_true(aTHX_ PN_GET(self, "body_ended")) || pn_true(aTHX_ PN_GET(self, "streaming")))
            return 0;
        more = pn_true(aTHX_ PN_GET(f.ev, "more"));
        if (body && SvOK(body))
            b = SvPV_nomg(body, bl);
        rc = pagi_native_http_body(f.e, f.id, b, bl, more, &buffered);
        if (rc == PN_ERROR)
            return 0;    /* nothing was queued; the Perl path reports it */
        PN_SET(self, "bytes_sent", pn_iv(aTHX_ PN_GET(self, "bytes_sent")) + (IV)bl);
        if (!more) {
            /* A final body never waits for drain. */
            if (pn_true(aTHX_ PN_GET(self, "trailers")))
                PN_SET(self, "body_ended", 1);
            else
                PN_SET(self, "state", 2);
            *retval = pn_fast_done(aTHX_ &f);
            return 1;
        }
        *retval = pn_fast_after_send(aTHX_ &f, self_rv, rc, buffered, bl);
        return 1;
    }
    if (PN_TYPE_IS(&f, "http.response.start")) {
        IV status;
        size_t nh;
        if (pn_iv(aTHX_ PN_GET(self, "state")) != 0 || pn_true(aTHX_ PN_GET(f.ev, "trailers")))
            return 0;
        if (!pn_status_plain(aTHX_ PN_GET(f.ev, "status"), &status) || !pn_headers_plain(aTHX_ PN_GET(f.ev, "headers"), &nh))
            return 0;
        if (pagi_native_http_start(f.e, f.id, status, pn_scratch, nh, 0) == PN_ERROR)
            return 0;
        PN_SET(self, "state", 1);
        PN_SET(self, "status", status);
        PN_SET(self, "trailers", 0);
        *retval = newSVsv(pn_done_future);
        return 1;
    }
    return 0;
}

/* websocket.send of a text or byte string after the accept: the one event an
 * open WebSocket sends over and over. Same rules as _send_message, whose
 * cases this leaves alone it hands back (0). */
static int pn_ws_send_fast(pTHX_ SV *self_rv, SV *event_rv, SV **retval) {
    pn_fast f;
    SV *text, *bytes;
    STRLEN dl;
    const char *d;
    size_t buffered = 0;
    int rc, is_text;
    if (!pn_fast_begin(aTHX_ self_rv, event_rv, &f) || !PN_TYPE_IS(&f, "websocket.send"))
        return 0;
    if (pn_true(aTHX_ PN_GET(f.self, "gone")) || pn_iv(aTHX_ PN_GET(f.self, "state")) != 1)
        return 0;
    text = PN_GET(f.ev, "text");
    bytes = PN_GET(f.ev, "bytes");
    if (text && !SvOK(text))
        text = NULL;
    if (bytes && !SvOK(bytes))
        bytes = NULL;
    if ((text != NULL) == (bytes != NULL))
        return 0;
    is_text = text != NULL;
    if (is_text) {
        if (SvROK(text) || SvGMAGICAL(text))
            return 0;
        d = SvPVutf8(text, dl);     /* characters go out UTF-8 encoded, as ws_send_text does */
    } else {
        if (!pn_plain_bytes(aTHX_ bytes))
            return 0;
        d = SvPV_nomg(bytes, dl);
    }
    rc = pagi_native_ws_send(f.e, f.id, d, dl, is_text, &buffered);
    if (rc == PN_ERROR)
        return 0;
    *retval = pn_fast_after_send(aTHX_ &f, self_rv, rc, buffered, 0);
    return 1;
}

/* sse.send on a started stream: data plus optional event and id, the event
 * an SSE stream sends over and over. Same rules as _sse_send; a retry
 * field, and every case this does not take, go to the Perl method. */
static int pn_sse_send_fast(pTHX_ SV *self_rv, SV *event_rv, SV **retval) {
    pn_fast f;
    SV *data, *name, *eid, *retry, *gone;
    STRLEN dl = 0, nl = 0, il = 0;
    const char *d, *n = NULL, *i = NULL;
    size_t buffered = 0;
    int rc;
    if (!pn_fast_begin(aTHX_ self_rv, event_rv, &f) || !PN_TYPE_IS(&f, "sse.send"))
        return 0;
    gone = PN_GET(f.self, "gone");
    if ((gone && SvOK(gone)) || pn_true(aTHX_ PN_GET(f.self, "closed")) || pn_true(aTHX_ PN_GET(f.self, "declined"))
        || pn_iv(aTHX_ PN_GET(f.self, "state")) != 1)
        return 0;
    data = PN_GET(f.ev, "data");
    name = PN_GET(f.ev, "event");
    eid = PN_GET(f.ev, "id");
    retry = PN_GET(f.ev, "retry");
    if (!data || !SvOK(data) || SvROK(data) || SvGMAGICAL(data) || (retry && SvOK(retry)))
        return 0;
    if ((name && (SvROK(name) || SvGMAGICAL(name))) || (eid && (SvROK(eid) || SvGMAGICAL(eid))))
        return 0;
    /* Text fields are characters; the engine gets them UTF-8 encoded (as sse_send). */
    d = SvPVutf8(data, dl);
    if (name && SvOK(name))
        n = SvPVutf8(name, nl);
    if (eid && SvOK(eid))
        i = SvPVutf8(eid, il);
    rc = pagi_native_sse_send(f.e, f.id, n, nl, d, dl, i, il, -1, &buffered);
    if (rc == PN_ERROR)
        return 0;
    *retval = pn_fast_after_send(aTHX_ &f, self_rv, rc, buffered, 0);
    return 1;
}

/* ---- $send as an XSUB bound to its scope -----------------------------------
 * The $send an app gets is an anonymous XSUB holding its scope object, not a
 * Perl closure around an XS function: each send enters one sub, not two. Magic
 * on the CV holds the object's reference, so the object lives as long as the
 * CV and is released with it; the magic's table only marks it as ours. */
static MGVTBL pn_bound_send_vtbl;

typedef int (*pn_send_fast_fn)(pTHX_ SV *self_rv, SV *event_rv, SV **retval);

static SV *pn_bound_send_run(pTHX_ CV *cv, SV *event, pn_send_fast_fn fast) {
    SV *self = (SV *)CvXSUBANY(cv).any_ptr;
    SV *result = NULL;
    if (!fast(aTHX_ self, event, &result))
        result = pn_call_method(aTHX_ self, "send", event ? event : &PL_sv_undef, NULL);
    return result;
}

#define PN_BOUND_SEND_XSUB(name, fast)                                              \
    static XSPROTO(name) {                                                          \
        dXSARGS;                                                                    \
        SV *result = pn_bound_send_run(aTHX_ cv, items > 0 ? ST(0) : NULL, fast);   \
        ST(0) = sv_2mortal(result);                                                 \
        XSRETURN(1);                                                                \
    }
PN_BOUND_SEND_XSUB(pn_http_bound_send, pn_http_send_fast)
PN_BOUND_SEND_XSUB(pn_ws_bound_send, pn_ws_send_fast)
PN_BOUND_SEND_XSUB(pn_sse_bound_send, pn_sse_send_fast)

static SV *pn_bound_send_new(pTHX_ SV *self, XSUBADDR_t xsub) {
    CV *cv;
    SV *self_ref;
    if (!SvROK(self) || SvTYPE(SvRV(self)) != SVt_PVHV)
        croak("_bound_send: not a scope object");
    cv = newXS_flags(NULL, xsub, __FILE__, NULL, 0);
    self_ref = newSVsv(self);
    /* The magic takes its own reference to self_ref (MGf_REFCOUNTED). */
    sv_magicext((SV *)cv, self_ref, PERL_MAGIC_ext, &pn_bound_send_vtbl, NULL, 0);
    SvREFCNT_dec(self_ref);
    CvXSUBANY(cv).any_ptr = (void *)self_ref;
    return newRV_noinc((SV *)cv);
}

MODULE = PAGI::Server::Native    PACKAGE = PAGI::Server::Native

PROTOTYPES: DISABLE

BOOT:
{
    pn_pagi_version = newSVpvs("0.3");
    SvREADONLY_on(pn_pagi_version);
}

SV *
_new(const char *class)
  CODE:
    {
        pn_engine *e = pagi_native_new();
        if (!e)
            croak("PAGI::Server::Native::new: cannot create the engine");
        RETVAL = sv_setref_pv(newSV(0), class, (void *)e);
    }
  OUTPUT:
    RETVAL

void
_set_option(pn_engine *e, SV *name, SV *value)
  CODE:
    {
        STRLEN nl, vl;
        const char *n = SvPV(name, nl);
        const char *v = SvPV(value, vl);
        if (pagi_native_set_option(e, n, nl, v, vl) != PN_OK)
            pn_croak_last(aTHX_ "new");
    }

void
_listen_fd(pn_engine *e, int fd, int tls = 0)
  CODE:
    if (pagi_native_listen_fd(e, fd, tls) != PN_OK)
        pn_croak_last(aTHX_ "listen_fd");

void
start(pn_engine *e)
  CODE:
    if (pagi_native_start(e) != PN_OK)
        pn_croak_last(aTHX_ "start");

int
fd(pn_engine *e)
  CODE:
    if (pagi_native_fd(e, &RETVAL) != PN_OK)
        pn_croak_last(aTHX_ "fd");
  OUTPUT:
    RETVAL

SV *
drain_events(pn_engine *e, UV max = 256)
  CODE:
    {
        const pn_event *events = NULL;
        size_t n = 0, i;
        AV *out;
        if (pagi_native_drain(e, (size_t)max, &events, &n) != PN_OK)
            pn_croak_last(aTHX_ "drain_events");
        out = newAV();
        av_extend(out, n);
        for (i = 0; i < n; i++)
            av_push(out, pn_event_sv(aTHX_ &events[i]));
        RETVAL = newRV_noinc((SV *)out);
    }
  OUTPUT:
    RETVAL

void
flush(pn_engine *e)
  CODE:
    if (pagi_native_flush(e) != PN_OK)
        pn_croak_last(aTHX_ "flush");

void
shutdown(pn_engine *e, NV grace = 30)
  CODE:
    if (pagi_native_shutdown(e, grace) != PN_OK)
        pn_croak_last(aTHX_ "shutdown");

IV
respond_full(pn_engine *e, UV id, IV status, SV *headers, SV *body)
  CODE:
    {
        STRLEN bl;
        size_t nh = pn_headers_in(aTHX_ headers, "respond_full");
        const char *b = pn_bytes(aTHX_ body, "respond_full", "body", &bl);
        RETVAL = pn_sent(aTHX_ pagi_native_respond_full(e, id, status, pn_scratch, nh, b, bl), "respond_full");
    }
  OUTPUT:
    RETVAL

IV
http_start(pn_engine *e, UV id, IV status, SV *headers, int trailers = 0)
  CODE:
    {
        size_t nh = pn_headers_in(aTHX_ headers, "http_start");
        RETVAL = pn_sent(aTHX_ pagi_native_http_start(e, id, status, pn_scratch, nh, trailers), "http_start");
    }
  OUTPUT:
    RETVAL

IV
http_body(pn_engine *e, UV id, SV *body, int more = 0)
  CODE:
    {
        STRLEN bl;
        size_t buffered = 0;
        const char *b = pn_bytes(aTHX_ body, "http_body", "body", &bl);
        int rc = pagi_native_http_body(e, id, b, bl, more, &buffered);
        if (rc == PN_ERROR)
            pn_croak_last(aTHX_ "http_body");
        RETVAL = rc == PN_OK ? (IV)buffered : -1;
    }
  OUTPUT:
    RETVAL

IV
_http_file(pn_engine *e, UV id, SV *path, int fd, IV offset, IV length)
  CODE:
    {
        STRLEN pl = 0;
        const char *p = SvOK(path) ? SvPVutf8(path, pl) : "";
        if (offset < 0)
            croak("PAGI::Server::Native::http_file: offset must not be negative");
        RETVAL = pn_sent(aTHX_ pagi_native_http_file(e, id, p, pl, fd, (uint64_t)offset, (int64_t)length), "http_file");
    }
  OUTPUT:
    RETVAL

IV
http_trailers(pn_engine *e, UV id, SV *headers)
  CODE:
    {
        size_t nh = pn_headers_in(aTHX_ headers, "http_trailers");
        RETVAL = pn_sent(aTHX_ pagi_native_http_trailers(e, id, pn_scratch, nh), "http_trailers");
    }
  OUTPUT:
    RETVAL

IV
ws_accept(pn_engine *e, UV id, SV *subprotocol, SV *headers)
  CODE:
    {
        STRLEN pl = 0;
        const char *p = SvOK(subprotocol) ? SvPVutf8(subprotocol, pl) : "";
        size_t nh = pn_headers_in(aTHX_ headers, "ws_accept");
        RETVAL = pn_sent(aTHX_ pagi_native_ws_accept(e, id, p, pl, pn_scratch, nh), "ws_accept");
    }
  OUTPUT:
    RETVAL

IV
ws_send_text(pn_engine *e, UV id, SV *text)
  CODE:
    {
        STRLEN tl;
        size_t buffered = 0;
        const char *t;
        int rc;
        if (SvROK(text) && !SvAMAGIC(text))
            croak("PAGI::Server::Native::ws_send_text: text must be a string, not a reference");
        t = SvPVutf8(text, tl);     /* characters are sent UTF-8 encoded */
        rc = pagi_native_ws_send(e, id, t, tl, 1, &buffered);
        if (rc == PN_ERROR)
            pn_croak_last(aTHX_ "ws_send_text");
        RETVAL = rc == PN_OK ? (IV)buffered : -1;
    }
  OUTPUT:
    RETVAL

IV
ws_send_bytes(pn_engine *e, UV id, SV *bytes)
  CODE:
    {
        STRLEN bl;
        size_t buffered = 0;
        const char *b = pn_bytes(aTHX_ bytes, "ws_send_bytes", "bytes", &bl);
        int rc = pagi_native_ws_send(e, id, b, bl, 0, &buffered);
        if (rc == PN_ERROR)
            pn_croak_last(aTHX_ "ws_send_bytes");
        RETVAL = rc == PN_OK ? (IV)buffered : -1;
    }
  OUTPUT:
    RETVAL

IV
ws_close(pn_engine *e, UV id, IV code = 1000, SV *reason = NULL)
  CODE:
    {
        STRLEN rl = 0;
        const char *r = (reason && SvOK(reason)) ? SvPVutf8(reason, rl) : "";
        RETVAL = pn_sent(aTHX_ pagi_native_ws_close(e, id, code, r, rl), "ws_close");
    }
  OUTPUT:
    RETVAL

IV
ws_credit(pn_engine *e, UV id, UV n = 1)
  CODE:
    RETVAL = pn_sent(aTHX_ pagi_native_ws_credit(e, id, (uint32_t)n), "ws_credit");
  OUTPUT:
    RETVAL

IV
ws_keepalive(pn_engine *e, UV id, NV interval, NV timeout = 0)
  CODE:
    RETVAL = pn_sent(aTHX_ pagi_native_ws_keepalive(e, id, interval, timeout), "ws_keepalive");
  OUTPUT:
    RETVAL

IV
sse_start(pn_engine *e, UV id, IV status, SV *headers)
  CODE:
    {
        size_t nh = pn_headers_in(aTHX_ headers, "sse_start");
        RETVAL = pn_sent(aTHX_ pagi_native_sse_start(e, id, status, pn_scratch, nh), "sse_start");
    }
  OUTPUT:
    RETVAL

IV
sse_send(pn_engine *e, UV id, SV *data, SV *event = NULL, SV *event_id = NULL, SV *retry = NULL)
  CODE:
    {
        /* Text fields are characters; the engine gets them UTF-8 encoded. */
        STRLEN dl = 0, el = 0, il = 0;
        const char *d = SvOK(data) ? SvPVutf8(data, dl) : "";
        const char *ev = (event && SvOK(event)) ? SvPVutf8(event, el) : NULL;
        const char *iv = (event_id && SvOK(event_id)) ? SvPVutf8(event_id, il) : NULL;
        IV r = (retry && SvOK(retry)) ? SvIV(retry) : -1;
        size_t buffered = 0;
        int rc = pagi_native_sse_send(e, id, ev, el, d, dl, iv, il, r, &buffered);
        if (rc == PN_ERROR)
            pn_croak_last(aTHX_ "sse_send");
        RETVAL = rc == PN_OK ? (IV)buffered : -1;
    }
  OUTPUT:
    RETVAL

IV
sse_comment(pn_engine *e, UV id, SV *comment)
  CODE:
    {
        STRLEN cl = 0;
        const char *c = SvOK(comment) ? SvPVutf8(comment, cl) : "";
        size_t buffered = 0;
        int rc = pagi_native_sse_comment(e, id, c, cl, &buffered);
        if (rc == PN_ERROR)
            pn_croak_last(aTHX_ "sse_comment");
        RETVAL = rc == PN_OK ? (IV)buffered : -1;
    }
  OUTPUT:
    RETVAL

IV
sse_keepalive(pn_engine *e, UV id, NV interval, SV *comment = NULL)
  CODE:
    {
        STRLEN cl = 0;
        const char *c = (comment && SvOK(comment)) ? SvPVutf8(comment, cl) : "";
        RETVAL = pn_sent(aTHX_ pagi_native_sse_keepalive(e, id, interval, c, cl), "sse_keepalive");
    }
  OUTPUT:
    RETVAL

IV
want_body(pn_engine *e, UV id)
  CODE:
    RETVAL = pn_sent(aTHX_ pagi_native_want_body(e, id), "want_body");
  OUTPUT:
    RETVAL

IV
abort(pn_engine *e, UV id)
  CODE:
    RETVAL = pn_sent(aTHX_ pagi_native_abort(e, id), "abort");
  OUTPUT:
    RETVAL

IV
wait_writable(pn_engine *e, UV id)
  CODE:
    {
        int must_wait = 0;
        if (pagi_native_wait_writable(e, id, &must_wait) != PN_OK)
            pn_croak_last(aTHX_ "wait_writable");
        RETVAL = must_wait;
    }
  OUTPUT:
    RETVAL

SV *
stats(pn_engine *e, SV *id = NULL)
  CODE:
    {
        HV *hv = newHV();
        if (id && SvOK(id)) {
            uint64_t bytes_read = 0, buffered = 0;
            int rc = pagi_native_request_stats(e, SvUV(id), &bytes_read, &buffered);
            if (rc == PN_ERROR)
                pn_croak_last(aTHX_ "stats");
            if (rc == PN_GONE) {
                SvREFCNT_dec((SV *)hv);
                XSRETURN_UNDEF;
            }
            (void)hv_stores(hv, "bytes_read", newSVuv(bytes_read));
            (void)hv_stores(hv, "buffered", newSVuv(buffered));
        } else {
            pn_stats s;
            if (pagi_native_stats(e, &s) != PN_OK) {
                SvREFCNT_dec((SV *)hv);
                pn_croak_last(aTHX_ "stats");
            }
            (void)hv_stores(hv, "connections_active", newSVuv(s.connections_active));
            (void)hv_stores(hv, "connections_total", newSVuv(s.connections_total));
            (void)hv_stores(hv, "requests_total", newSVuv(s.requests_total));
            (void)hv_stores(hv, "requests_active", newSVuv(s.requests_active));
            (void)hv_stores(hv, "events_pending", newSVuv(s.events_pending));
        }
        RETVAL = newRV_noinc((SV *)hv);
    }
  OUTPUT:
    RETVAL

void
write_watermarks(pn_engine *e)
  PPCODE:
    {
        size_t high = 0, low = 0;
        if (pagi_native_write_watermarks(e, &high, &low) != PN_OK)
            pn_croak_last(aTHX_ "write_watermarks");
        mXPUSHu(high);
        mXPUSHu(low);
    }

IV
group_join(pn_engine *e, UV id, SV *group, int sse = 0)
  CODE:
    {
        STRLEN gl;
        const char *g = SvPVutf8(group, gl);
        RETVAL = pn_sent(aTHX_ pagi_native_group_join(e, id, g, gl, sse), "group_join");
    }
  OUTPUT:
    RETVAL

IV
group_leave(pn_engine *e, UV id, SV *group)
  CODE:
    {
        STRLEN gl;
        const char *g = SvPVutf8(group, gl);
        RETVAL = pn_sent(aTHX_ pagi_native_group_leave(e, id, g, gl), "group_leave");
    }
  OUTPUT:
    RETVAL

UV
group_publish(pn_engine *e, SV *group, int is_text, SV *data, SV *event = NULL, SV *event_id = NULL, SV *retry = NULL, UV exclude = 0)
  CODE:
    {
        /* Text is characters (sent UTF-8 encoded); bytes must be a byte string. */
        STRLEN gl, dl, el = 0, il = 0;
        const char *g = SvPVutf8(group, gl);
        const char *d = is_text ? SvPVutf8(data, dl) : pn_bytes(aTHX_ data, "group_publish", "bytes", &dl);
        const char *ev = (event && SvOK(event)) ? SvPVutf8(event, el) : NULL;
        const char *iv = (event_id && SvOK(event_id)) ? SvPVutf8(event_id, il) : NULL;
        IV r = (retry && SvOK(retry)) ? SvIV(retry) : -1;
        uint64_t token = 0;
        if (pagi_native_group_publish(e, g, gl, is_text, d, dl, ev, el, iv, il, r, exclude, &token) != PN_OK)
            pn_croak_last(aTHX_ "group_publish");
        RETVAL = (UV)token;
    }
  OUTPUT:
    RETVAL

void
group_subscribe(pn_engine *e, SV *group, int on = 1)
  CODE:
    {
        STRLEN gl;
        const char *g = SvPVutf8(group, gl);
        if (pagi_native_group_subscribe(e, g, gl, on) != PN_OK)
            pn_croak_last(aTHX_ "group_subscribe");
    }

UV
group_count(pn_engine *e, SV *group)
  CODE:
    {
        STRLEN gl;
        const char *g = SvPVutf8(group, gl);
        uint64_t n = 0;
        if (pagi_native_group_count(e, g, gl, &n) != PN_OK)
            pn_croak_last(aTHX_ "group_count");
        RETVAL = (UV)n;
    }
  OUTPUT:
    RETVAL

UV
query_cluster_count(pn_engine *e, SV *group)
  CODE:
    {
        STRLEN gl;
        const char *g = SvPVutf8(group, gl);
        uint64_t token = 0;
        if (pagi_native_query_cluster_count(e, g, gl, &token) != PN_OK)
            pn_croak_last(aTHX_ "query_cluster_count");
        RETVAL = (UV)token;
    }
  OUTPUT:
    RETVAL

UV
query_redis(pn_engine *e, ...)
  CODE:
    {
        /* Arguments are byte strings (encode characters first). */
        pn_str *args = NULL;
        uint64_t token = 0;
        int i, n = items - 1;
        Newx(args, n > 0 ? n : 1, pn_str);
        SAVEFREEPV(args);
        for (i = 0; i < n; i++) {
            STRLEN l;
            args[i].ptr = pn_bytes(aTHX_ ST(i + 1), "query_redis", "argument", &l);
            args[i].len = l;
        }
        if (pagi_native_query_redis(e, args, (size_t)n, &token) != PN_OK)
            pn_croak_last(aTHX_ "query_redis");
        RETVAL = (UV)token;
    }
  OUTPUT:
    RETVAL

SV *
group_stats(pn_engine *e)
  CODE:
    {
        pn_group_stats s;
        HV *hv;
        if (pagi_native_group_stats(e, &s) != PN_OK)
            pn_croak_last(aTHX_ "group_stats");
        hv = newHV();
        (void)hv_stores(hv, "published", newSVuv(s.published));
        (void)hv_stores(hv, "delivered", newSVuv(s.delivered));
        (void)hv_stores(hv, "delivered_direct", newSVuv(s.delivered_direct));
        (void)hv_stores(hv, "skipped", newSVuv(s.skipped));
        (void)hv_stores(hv, "dropped", newSVuv(s.dropped));
        (void)hv_stores(hv, "redis_publish_failed", newSVuv(s.redis_publish_failed));
        (void)hv_stores(hv, "redis_reconnects", newSVuv(s.redis_reconnects));
        (void)hv_stores(hv, "redis_connected", newSVuv(s.redis_connected));
        RETVAL = newRV_noinc((SV *)hv);
    }
  OUTPUT:
    RETVAL

void
check_tls(pn_engine *e)
  CODE:
    if (pagi_native_check_tls(e) != PN_OK)
        pn_croak_last(aTHX_ "check_tls");

SV *
build_info(...)
  CODE:
    {
        const char *text = NULL;
        size_t len = pagi_native_build_info(&text);
        RETVAL = newSVpvn(text, len);
    }
  OUTPUT:
    RETVAL

void
DESTROY(SV *self)
  CODE:
    if (SvROK(self)) {
        pn_engine *e = INT2PTR(pn_engine *, SvIV(SvRV(self)));
        if (e) {
            pagi_native_free(e);
            sv_setiv(SvRV(self), 0);
        }
    }

int
CLONE_SKIP(...)
  CODE:
    RETVAL = 1;
  OUTPUT:
    RETVAL

MODULE = PAGI::Server::Native    PACKAGE = PAGI::Server::HTTP

SV *
_bound_send(SV *self)
  CODE:
    RETVAL = pn_bound_send_new(aTHX_ self, pn_http_bound_send);
  OUTPUT:
    RETVAL

MODULE = PAGI::Server::Native    PACKAGE = PAGI::Server::WebSocket

SV *
_bound_send(SV *self)
  CODE:
    RETVAL = pn_bound_send_new(aTHX_ self, pn_ws_bound_send);
  OUTPUT:
    RETVAL

MODULE = PAGI::Server::Native    PACKAGE = PAGI::Server::SSE

SV *
_bound_send(SV *self)
  CODE:
    RETVAL = pn_bound_send_new(aTHX_ self, pn_sse_bound_send);
  OUTPUT:
    RETVAL
