/*
 * dhps coord: etcd v3 over its JSON gateway (libcurl + jansson). Design in
 * include/dhps/coord.h.
 */
#include "dhps/coord.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct dhps_coord {
    char url[DHPS_COORD_URL_MAX + 1];
    uint32_t timeout_ms, connect_timeout_ms;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_init_rc;
static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void dhps_coord_params_init(dhps_coord_params *p)
{
    memset(p, 0, sizeof *p);
    p->timeout_ms = 2000;
    p->connect_timeout_ms = 1000;
}

int dhps_coord_create(const dhps_coord_params *p, dhps_coord **out)
{
    if (!p || !out || !p->endpoint || !p->endpoint[0] ||
        strlen(p->endpoint) > DHPS_COORD_URL_MAX)
        return -EINVAL;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc < 0)
        return curl_init_rc;
    dhps_coord *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    strcpy(c->url, p->endpoint);
    size_t l = strlen(c->url);
    while (l && c->url[l - 1] == '/')
        c->url[--l] = '\0';
    c->timeout_ms = p->timeout_ms ? p->timeout_ms : 2000;
    c->connect_timeout_ms = p->connect_timeout_ms ? p->connect_timeout_ms : 1000;
    *out = c;
    return 0;
}

void dhps_coord_destroy(dhps_coord *c) { free(c); }

const char *dhps_coord_endpoint(const dhps_coord *c) { return c->url; }

/* ---- base64 and JSON helpers ------------------------------------------------------- */

static char *b64_enc(const void *buf, size_t len)
{
    char *s = malloc(4 * ((len + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, buf, (int)len);
    return s;
}

/* Decode s; returns a malloc'ed NUL-terminated buffer and its length, or NULL. */
static char *b64_dec(const char *s, size_t *len)
{
    size_t n = strlen(s);
    if (n % 4)
        return NULL;
    char *d = malloc(n / 4 * 3 + 1);
    if (!d)
        return NULL;
    int r = n ? EVP_DecodeBlock((unsigned char *)d, (const unsigned char *)s, (int)n) : 0;
    if (r < 0) {
        free(d);
        return NULL;
    }
    /* DecodeBlock counts padding bytes as zeros: take them off */
    if (n >= 1 && s[n - 1] == '=')
        r--;
    if (n >= 2 && s[n - 2] == '=')
        r--;
    d[r] = '\0';
    *len = (size_t)r;
    return d;
}

/* etcd's int64 fields are JSON strings (or absent = 0). */
static int64_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    if (json_is_integer(v))
        return json_integer_value(v);
    return 0;
}

static json_t *jstr_i64(int64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%" PRId64, v);
    return json_string(b);
}

static int set_b64(json_t *o, const char *k, const void *buf, size_t len)
{
    char *s = b64_enc(buf, len);
    if (!s || json_object_set_new(o, k, json_string(s)) < 0) {
        free(s);
        return -ENOMEM;
    }
    free(s);
    return 0;
}

/* range_end for a prefix: the key with its last byte incremented (trailing 0xff bytes
 * dropped); "\0" (all keys) when nothing is left. */
static int set_range_end(json_t *o, const char *key)
{
    size_t n = strlen(key);
    char *e = malloc(n + 1);
    if (!e)
        return -ENOMEM;
    memcpy(e, key, n + 1);
    while (n && (unsigned char)e[n - 1] == 0xff)
        n--;
    int rc;
    if (n == 0) {
        rc = set_b64(o, "range_end", "", 1);
    } else {
        e[n - 1]++;
        rc = set_b64(o, "range_end", e, n);
    }
    free(e);
    return rc;
}

static int parse_kv(json_t *j, dhps_coord_kv *kv)
{
    memset(kv, 0, sizeof *kv);
    size_t kl = 0;
    json_t *k = json_object_get(j, "key"), *v = json_object_get(j, "value");
    if (!json_is_string(k))
        return DHPS_E_MALFORMED;
    kv->key = b64_dec(json_string_value(k), &kl);
    kv->value = b64_dec(json_is_string(v) ? json_string_value(v) : "", &kv->value_len);
    if (!kv->key || !kv->value) {
        free(kv->key);
        free(kv->value);
        kv->key = kv->value = NULL;
        return DHPS_E_MALFORMED;
    }
    kv->create_revision = jint(j, "create_revision");
    kv->mod_revision = jint(j, "mod_revision");
    kv->version = jint(j, "version");
    kv->lease = jint(j, "lease");
    return 0;
}

void dhps_coord_kvs_free(dhps_coord_kv *kvs, int n)
{
    if (!kvs)
        return;
    for (int i = 0; i < n; i++) {
        free(kvs[i].key);
        free(kvs[i].value);
    }
    free(kvs);
}

/* ---- one unary call -------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
    size_t max;
};

static int buf_add(struct buf *b, const void *d, size_t n)
{
    if (b->len + n + 1 > b->max)
        return -1;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np)
            return -1;
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static size_t unary_write(char *d, size_t sz, size_t n, void *arg)
{
    return buf_add(arg, d, sz * n) == 0 ? sz * n : 0;
}

static int curl_err(CURLcode cc)
{
    switch (cc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return DHPS_E_TIMEOUT;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return DHPS_E_UNREACHABLE;
    default:
        return DHPS_E_UNREACHABLE;
    }
}

static void setup_common(CURL *h, struct curl_slist *hdr)
{
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_PROXY, "");
}

/* POST body (owned: decref'd here) to path; on 200 sets *resp to the parsed answer. An
 * error answer is mapped: lease not found -> DHPS_E_NOTFOUND, others -EIO. */
static int call(dhps_coord *c, const char *path, json_t *body, json_t **resp)
{
    *resp = NULL;
    char *txt = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!txt)
        return -ENOMEM;
    char url[DHPS_COORD_URL_MAX + 64];
    snprintf(url, sizeof url, "%s%s", c->url, path);
    int rc = -ENOMEM;
    struct buf b = {.max = 64u << 20};
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *h = curl_easy_init();
    if (!h || !hdr)
        goto out;
    setup_common(h, hdr);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, txt);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, unary_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    CURLcode cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        rc = curl_err(cc);
        /* a timeout before the connection opened is an unreachable etcd */
        curl_off_t connected = 0;
        if (rc == DHPS_E_TIMEOUT &&
            (curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connected) != CURLE_OK ||
             connected == 0))
            rc = DHPS_E_UNREACHABLE;
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    json_t *j = b.p ? json_loadb(b.p, b.len, 0, NULL) : NULL;
    if (status != 200) {
        const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
        if (!msg && j)
            msg = json_string_value(json_object_get(j, "message"));
        rc = (msg && strstr(msg, "lease not found")) ? DHPS_E_NOTFOUND : -EIO;
        json_decref(j);
        goto out;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        rc = DHPS_E_MALFORMED;
        goto out;
    }
    *resp = j;
    rc = 0;
out:
    if (h)
        curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    free(b.p);
    free(txt);
    return rc;
}

static int64_t header_rev(json_t *r)
{
    return jint(json_object_get(r, "header"), "revision");
}

/* ---- kv -------------------------------------------------------------------------- */

int dhps_coord_get(dhps_coord *c, const char *key, bool prefix, dhps_coord_kv **kvs,
                   int64_t *rev)
{
    if (!c || !key || !kvs)
        return -EINVAL;
    *kvs = NULL;
    json_t *b = json_object();
    if (!b || set_b64(b, "key", key, strlen(key)) < 0 || (prefix && set_range_end(b, key) < 0)) {
        json_decref(b);
        return -ENOMEM;
    }
    json_t *r;
    int rc = call(c, "/v3/kv/range", b, &r);
    if (rc < 0)
        return rc;
    if (rev)
        *rev = header_rev(r);
    json_t *arr = json_object_get(r, "kvs");
    size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
    if (n == 0) {
        json_decref(r);
        return 0;
    }
    dhps_coord_kv *out = calloc(n, sizeof *out);
    if (!out) {
        json_decref(r);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        rc = parse_kv(json_array_get(arr, i), &out[i]);
        if (rc < 0) {
            dhps_coord_kvs_free(out, (int)i);
            json_decref(r);
            return rc;
        }
    }
    json_decref(r);
    *kvs = out;
    return (int)n;
}

static json_t *put_req(const char *key, const void *val, size_t len, int64_t lease)
{
    json_t *p = json_object();
    if (!p || set_b64(p, "key", key, strlen(key)) < 0 || set_b64(p, "value", val, len) < 0 ||
        (lease && json_object_set_new(p, "lease", jstr_i64(lease)) < 0)) {
        json_decref(p);
        return NULL;
    }
    return p;
}

int dhps_coord_put(dhps_coord *c, const char *key, const void *val, size_t len, int64_t lease,
                   int64_t *rev)
{
    if (!c || !key || (len && !val))
        return -EINVAL;
    json_t *b = put_req(key, val ? val : "", len, lease), *r;
    if (!b)
        return -ENOMEM;
    int rc = call(c, "/v3/kv/put", b, &r);
    if (rc < 0)
        return rc;
    if (rev)
        *rev = header_rev(r);
    json_decref(r);
    return 0;
}

int dhps_coord_delete(dhps_coord *c, const char *key, bool prefix)
{
    if (!c || !key)
        return -EINVAL;
    json_t *b = json_object(), *r;
    if (!b || set_b64(b, "key", key, strlen(key)) < 0 || (prefix && set_range_end(b, key) < 0)) {
        json_decref(b);
        return -ENOMEM;
    }
    int rc = call(c, "/v3/kv/deleterange", b, &r);
    if (rc < 0)
        return rc;
    int64_t n = jint(r, "deleted");
    json_decref(r);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

int dhps_coord_cas(dhps_coord *c, const char *key, const void *val, size_t len,
                   int64_t expect_rev, int64_t lease, int64_t *rev)
{
    if (!c || !key || (len && !val) || expect_rev < 0)
        return -EINVAL;
    json_t *b = json_object(), *cmp = json_object(), *put = put_req(key, val ? val : "", len, lease);
    json_t *succ = json_object();
    int rc = -ENOMEM;
    if (!b || !cmp || !put || !succ || set_b64(cmp, "key", key, strlen(key)) < 0)
        goto fail;
    json_object_set_new(cmp, "result", json_string("EQUAL"));
    if (expect_rev == 0) {
        json_object_set_new(cmp, "target", json_string("CREATE"));
        json_object_set_new(cmp, "create_revision", json_string("0"));
    } else {
        json_object_set_new(cmp, "target", json_string("MOD"));
        json_object_set_new(cmp, "mod_revision", jstr_i64(expect_rev));
    }
    json_object_set_new(succ, "request_put", put);
    put = NULL;
    json_object_set_new(b, "compare", json_pack("[o]", cmp));
    cmp = NULL;
    json_object_set_new(b, "success", json_pack("[o]", succ));
    succ = NULL;
    json_t *r;
    rc = call(c, "/v3/kv/txn", b, &r);
    b = NULL;
    if (rc < 0)
        return rc;
    bool ok = json_is_true(json_object_get(r, "succeeded"));
    if (rev)
        *rev = header_rev(r);
    json_decref(r);
    return ok ? 0 : DHPS_E_CONFLICT;
fail:
    json_decref(b);
    json_decref(cmp);
    json_decref(put);
    json_decref(succ);
    return rc;
}

int dhps_coord_compact(dhps_coord *c, int64_t rev)
{
    if (!c || rev < 1)
        return -EINVAL;
    json_t *b = json_object(), *r;
    if (!b || json_object_set_new(b, "revision", jstr_i64(rev)) < 0 ||
        json_object_set_new(b, "physical", json_true()) < 0) {
        json_decref(b);
        return -ENOMEM;
    }
    int rc = call(c, "/v3/kv/compaction", b, &r);
    if (rc < 0)
        return rc;
    json_decref(r);
    return 0;
}

/* ---- leases ---------------------------------------------------------------------- */

int dhps_coord_lease_grant(dhps_coord *c, int64_t ttl_s, int64_t *id, int64_t *ttl_out)
{
    if (!c || !id || ttl_s < 1)
        return -EINVAL;
    json_t *b = json_object(), *r;
    if (!b || json_object_set_new(b, "TTL", jstr_i64(ttl_s)) < 0) {
        json_decref(b);
        return -ENOMEM;
    }
    int rc = call(c, "/v3/lease/grant", b, &r);
    if (rc < 0)
        return rc;
    *id = jint(r, "ID");
    if (ttl_out)
        *ttl_out = jint(r, "TTL");
    const char *e = json_string_value(json_object_get(r, "error"));
    json_decref(r);
    return (*id == 0 || (e && e[0])) ? -EIO : 0;
}

static json_t *id_req(int64_t id)
{
    json_t *b = json_object();
    if (b && json_object_set_new(b, "ID", jstr_i64(id)) < 0) {
        json_decref(b);
        return NULL;
    }
    return b;
}

int dhps_coord_lease_keepalive(dhps_coord *c, int64_t id, int64_t *ttl_out)
{
    if (!c || !id)
        return -EINVAL;
    json_t *b = id_req(id), *r;
    if (!b)
        return -ENOMEM;
    /* a streaming call in gRPC; through the gateway one request gives one answer */
    int rc = call(c, "/v3/lease/keepalive", b, &r);
    if (rc < 0)
        return rc;
    int64_t ttl = jint(json_object_get(r, "result"), "TTL");
    json_decref(r);
    if (ttl_out)
        *ttl_out = ttl;
    return ttl > 0 ? 0 : DHPS_E_NOTFOUND;
}

int dhps_coord_lease_revoke(dhps_coord *c, int64_t id)
{
    if (!c || !id)
        return -EINVAL;
    json_t *b = id_req(id), *r;
    if (!b)
        return -ENOMEM;
    int rc = call(c, "/v3/lease/revoke", b, &r);
    if (rc < 0)
        return rc;
    json_decref(r);
    return 0;
}

int dhps_coord_lease_ttl(dhps_coord *c, int64_t id, int64_t *ttl, int64_t *granted)
{
    if (!c || !id || !ttl)
        return -EINVAL;
    json_t *b = id_req(id), *r;
    if (!b)
        return -ENOMEM;
    int rc = call(c, "/v3/lease/timetolive", b, &r);
    if (rc < 0)
        return rc;
    *ttl = json_object_get(r, "TTL") ? jint(r, "TTL") : -1;
    if (granted)
        *granted = jint(r, "grantedTTL");
    json_decref(r);
    return 0;
}

/* ---- watch ----------------------------------------------------------------------- */

struct dhps_coord_watch {
    dhps_coord *c;
    char *key;
    bool prefix;
    dhps_coord_event_fn on_event;
    dhps_coord_status_fn on_status;
    void *arg;
    pthread_t th;
    _Atomic bool stop;
    _Atomic int64_t next_rev; /* resume from here */
    struct buf in;
    int stream_rc;            /* set by the parser: compaction, a canceled watch */
    bool created;
    bool down;                /* an outage was reported and not yet its end */
};

static void deliver(struct dhps_coord_watch *w, json_t *res)
{
    if (json_is_true(json_object_get(res, "created")) && !w->created) {
        w->created = true;
        if (w->on_status && w->down)
            w->on_status(w->arg, 0, atomic_load(&w->next_rev));
        w->down = false;
    }
    int64_t compact = jint(res, "compact_revision");
    if (compact > 0) {
        atomic_store(&w->next_rev, compact);
        if (w->on_status)
            w->on_status(w->arg, DHPS_E_STALE, compact);
        w->stream_rc = DHPS_E_STALE;
        return;
    }
    if (json_is_true(json_object_get(res, "canceled"))) {
        w->stream_rc = -EIO;
        return;
    }
    json_t *evs = json_object_get(res, "events");
    size_t i;
    json_t *e;
    json_array_foreach(evs, i, e)
    {
        dhps_coord_kv kv;
        if (parse_kv(json_object_get(e, "kv"), &kv) < 0)
            continue;
        const char *t = json_string_value(json_object_get(e, "type"));
        dhps_coord_event ev = {.type = (t && strcmp(t, "DELETE") == 0) ? DHPS_COORD_DELETE
                                                                         : DHPS_COORD_PUT,
                               .kv = &kv};
        if (kv.mod_revision >= atomic_load(&w->next_rev)) {
            w->on_event(w->arg, &ev);
            atomic_store(&w->next_rev, kv.mod_revision + 1);
        }
        free(kv.key);
        free(kv.value);
    }
}

static size_t watch_write(char *d, size_t sz, size_t n, void *arg)
{
    struct dhps_coord_watch *w = arg;
    if (atomic_load(&w->stop) || buf_add(&w->in, d, sz * n) < 0)
        return 0;
    size_t off = 0;
    while (off < w->in.len) {
        while (off < w->in.len && (w->in.p[off] == '\n' || w->in.p[off] == ' ' ||
                                   w->in.p[off] == '\r'))
            off++;
        if (off == w->in.len)
            break;
        json_error_t je;
        json_t *j = json_loadb(w->in.p + off, w->in.len - off, JSON_DISABLE_EOF_CHECK, &je);
        if (!j)
            break; /* incomplete: wait for more */
        off += je.position;
        json_t *res = json_object_get(j, "result");
        if (res)
            deliver(w, res);
        else if (json_object_get(j, "error"))
            w->stream_rc = -EIO;
        json_decref(j);
        if (w->stream_rc)
            break;
    }
    memmove(w->in.p, w->in.p + off, w->in.len - off);
    w->in.len -= off;
    if (w->in.p)
        w->in.p[w->in.len] = '\0';
    return w->stream_rc ? 0 : sz * n;
}

static int watch_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c_, curl_off_t d)
{
    struct dhps_coord_watch *w = arg;
    return atomic_load(&w->stop) ? 1 : 0;
}

static void nap_ms(struct dhps_coord_watch *w, uint32_t ms)
{
    for (uint32_t t = 0; t < ms && !atomic_load(&w->stop); t += 50) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int watch_once(struct dhps_coord_watch *w)
{
    json_t *cr = json_object(), *b = json_object();
    int rc = -ENOMEM;
    char *txt = NULL;
    if (!cr || !b || set_b64(cr, "key", w->key, strlen(w->key)) < 0 ||
        (w->prefix && set_range_end(cr, w->key) < 0))
        goto out;
    int64_t nr = atomic_load(&w->next_rev);
    if (nr > 0)
        json_object_set_new(cr, "start_revision", jstr_i64(nr));
    json_object_set(b, "create_request", cr);
    txt = json_dumps(b, JSON_COMPACT);
    if (!txt)
        goto out;
    char url[DHPS_COORD_URL_MAX + 64];
    snprintf(url, sizeof url, "%s/v3/watch", w->c->url);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *h = curl_easy_init();
    if (!h || !hdr) {
        if (h)
            curl_easy_cleanup(h);
        curl_slist_free_all(hdr);
        goto out;
    }
    setup_common(h, hdr);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, txt);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)w->c->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, w);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, watch_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, w);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 2L);
    w->in.len = 0;
    w->stream_rc = 0;
    w->created = false;
    CURLcode cc = curl_easy_perform(h);
    rc = w->stream_rc ? w->stream_rc : (cc == CURLE_OK ? DHPS_E_UNREACHABLE : curl_err(cc));
    if (rc == DHPS_E_TIMEOUT)
        rc = DHPS_E_UNREACHABLE;
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
out:
    free(txt);
    json_decref(cr);
    json_decref(b);
    return rc;
}

static void *watch_main(void *arg)
{
    struct dhps_coord_watch *w = arg;
    uint32_t backoff = 100;
    while (!atomic_load(&w->stop)) {
        int rc = watch_once(w);
        if (atomic_load(&w->stop))
            break;
        if (w->created)
            backoff = 100; /* the stream worked: retry soon */
        if (rc == DHPS_E_STALE)
            continue;      /* resume at the compact revision right away */
        if (!w->down) {
            w->down = true;
            if (w->on_status)
                w->on_status(w->arg, rc, atomic_load(&w->next_rev));
        }
        nap_ms(w, backoff);
        backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    }
    return NULL;
}

int dhps_coord_watch_start(dhps_coord *c, const char *key, bool prefix, int64_t start_rev,
                           dhps_coord_event_fn on_event, dhps_coord_status_fn on_status,
                           void *arg, dhps_coord_watch **out)
{
    if (!c || !key || !on_event || !out || start_rev < 0)
        return -EINVAL;
    struct dhps_coord_watch *w = calloc(1, sizeof *w);
    if (!w || !(w->key = strdup(key))) {
        free(w);
        return -ENOMEM;
    }
    w->c = c;
    w->prefix = prefix;
    w->on_event = on_event;
    w->on_status = on_status;
    w->arg = arg;
    w->in.max = 64u << 20;
    atomic_init(&w->stop, false);
    atomic_init(&w->next_rev, start_rev);
    int e = pthread_create(&w->th, NULL, watch_main, w);
    if (e) {
        free(w->key);
        free(w);
        return -e;
    }
    *out = w;
    return 0;
}

void dhps_coord_watch_stop(dhps_coord_watch *w)
{
    if (!w)
        return;
    atomic_store(&w->stop, true);
    pthread_join(w->th, NULL);
    free(w->in.p);
    free(w->key);
    free(w);
}

int64_t dhps_coord_watch_revision(const dhps_coord_watch *w)
{
    return atomic_load(&((struct dhps_coord_watch *)w)->next_rev) - 1;
}

/* ---- key schema ------------------------------------------------------------------ */

int dhps_coord_key(char *buf, size_t cap, const char *cluster, int kind, uint64_t arg)
{
    if (!buf || !cluster || !cluster[0] || strlen(cluster) > DHPS_COORD_CLUSTER_MAX ||
        strchr(cluster, '/'))
        return -EINVAL;
    int n;
    switch (kind) {
    case DHPS_COORD_KEY_NODES:
        n = snprintf(buf, cap, "/dhps/%s/nodes/", cluster);
        break;
    case DHPS_COORD_KEY_NODE:
        n = snprintf(buf, cap, "/dhps/%s/nodes/%" PRIu64, cluster, arg);
        break;
    case DHPS_COORD_KEY_MAP:
        n = snprintf(buf, cap, "/dhps/%s/map", cluster);
        break;
    case DHPS_COORD_KEY_HISTORY:
        n = snprintf(buf, cap, "/dhps/%s/map_history/", cluster);
        break;
    case DHPS_COORD_KEY_HISTORY_VERSION:
        n = snprintf(buf, cap, "/dhps/%s/map_history/%020" PRIu64, cluster, arg);
        break;
    default:
        return -EINVAL;
    }
    return (n < 0 || (size_t)n >= cap) ? -ENOSPC : n;
}
