/* dhps server: /metrics, /health and /fault over libmicrohttpd.
 *
 * Hostile peers (docs/security.md). The daemon runs on epoll (no FD_SETSIZE cliff) with
 * a bound on connections (metrics.max_connections) and on connections from one address
 * (metrics.max_per_ip); libmicrohttpd refuses connections past them at accept. A guard
 * gives every connection an absolute deadline to deliver a whole request header, from
 * its accept or from its last answer (metrics.header_timeout_ms): a thread shuts the
 * socket of any connection past it, so a slowloris peer dripping one header line every
 * few seconds holds a slot for at most the deadline (libmicrohttpd's own timeout only
 * counts idle time). An optional second listener (metrics.health_port) answers only
 * /health, /health/live and /health/ready from its own small budget, so a prober that
 * shares an address with an attacker still gets through. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <arpa/inet.h>
#include <microhttpd.h>

#include "dhps/log.h"
#include "durable.h"
#include "hold.h"
#include "srv_int.h"
#include "member.h"
#include "sync.h"
#include "util.h"

#define LOGM "server"

/* ---- metrics over HTTP ------------------------------------------------------------ */

/* One family's HELP and TYPE lines (Prometheus text 0.0.4: every family has both). */
static void fam(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The process_* families every Prometheus client exports, from /proc/self. Absent
 * values (no /proc) are left out rather than reported as 0. */
static void write_process_metrics(FILE *f)
{
    long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long long ut = 0, st = 0, start = 0;
    long rss = 0;
    bool have_stat = false;
    FILE *sf = fopen("/proc/self/stat", "r");
    if (sf) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, sf);
        buf[n] = 0;
        fclose(sf);
        char *p = strrchr(buf, ')'); /* comm may hold spaces: fields start after it */
        /* fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt
         * cmajflt utime(14) stime(15) cutime cstime priority nice threads itreal
         * starttime(22) vsize rss(24) */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d "
                               "%*d %*d %*d %*d %llu %*u %ld",
                        &ut, &st, &start, &rss) == 4)
            have_stat = tck > 0;
    }
    if (have_stat) {
        fam(f, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        fprintf(f, "process_cpu_seconds_total %.2f\n", (double)(ut + st) / (double)tck);
        fam(f, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        fprintf(f, "process_resident_memory_bytes %lld\n", (long long)rss * page);
        double btime = 0;
        FILE *pf = fopen("/proc/stat", "r");
        if (pf) {
            char line[256];
            while (fgets(line, sizeof line, pf))
                if (sscanf(line, "btime %lf", &btime) == 1)
                    break;
            fclose(pf);
        }
        if (btime > 0) {
            fam(f, "process_start_time_seconds", "gauge",
                "Start time of the process since unix epoch in seconds.");
            fprintf(f, "process_start_time_seconds %.2f\n", btime + (double)start / (double)tck);
        }
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long nfd = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                nfd++;
        closedir(d);
        fam(f, "process_open_fds", "gauge", "Number of open file descriptors.");
        fprintf(f, "process_open_fds %ld\n", nfd - 1); /* less the one opendir holds */
    }
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY) {
        fam(f, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        fprintf(f, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
}

static void write_metrics(dhps_server *s, FILE *f)
{
    fam(f, "dhps_build_info", "gauge", "Build of this dhps-server (value 1; labels say which).");
    fprintf(f, "dhps_build_info{version=\"%s\",proto=\"%d\"} 1\n", DHPS_VERSION_STRING,
            DHPS_PROTO_VERSION);
    write_process_metrics(f);
    srv_http_metrics(s, f);
    fam(f, "dhps_requests_total", "counter", "Requests by method and status.");
    for (int m = 0; m < NMETHODS; m++)
        for (int k = 0; k < NSTATUS; k++)
            fprintf(f, "dhps_requests_total{method=\"%s\",status=\"%s\"} %llu\n",
                    method_names[m], status_names[k], (unsigned long long)get(&s->req[m][k]));
    fam(f, "dhps_request_seconds", "histogram", "Handler latency by method, in seconds.");
    for (int m = 0; m < NMETHODS; m++) {
        uint64_t cum = 0;
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += get(&s->lat[m][b]);
            if (b < NBUCKETS - 1)
                fprintf(f, "dhps_request_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n",
                        method_names[m], lat_bounds_us[b] / 1e6, (unsigned long long)cum);
            else
                fprintf(f, "dhps_request_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n",
                        method_names[m], (unsigned long long)cum);
        }
        fprintf(f, "dhps_request_seconds_sum{method=\"%s\"} %.9f\n", method_names[m],
                get(&s->lat_sum_ns[m]) / 1e9);
        fprintf(f, "dhps_request_seconds_count{method=\"%s\"} %llu\n", method_names[m],
                (unsigned long long)cum);
    }
    /* per-table families: one HELP/TYPE block each, then a row per table */
    enum { T_LOOKED, T_FOUND, T_KEYS, T_LIVE, T_SEG, T_IDX, T_FRAG, T_EXP, T_EVI, T_STALE, T_COMP,
           T_INPLACE, T_N };
    static const struct { const char *name, *type, *help; } tf[T_N] = {
        {"dhps_keys_looked_up_total", "counter", "Keys asked for in lookups."},
        {"dhps_keys_found_total", "counter", "Keys found by lookups."},
        {"dhps_table_keys", "gauge", "Live keys (summed over the shards this node owns)."},
        {"dhps_table_live_bytes", "gauge", "Bytes of live records."},
        {"dhps_table_segment_bytes", "gauge", "Bytes of store segments allocated."},
        {"dhps_table_index_bytes", "gauge", "Bytes of the key index."},
        {"dhps_table_fragmentation_ratio", "gauge",
         "1 - live record bytes / bytes appended to live segments (0..1)."},
        {"dhps_table_expired_records_total", "counter", "Records dropped because they expired."},
        {"dhps_table_evicted_records_total", "counter", "Records evicted to stay within memory."},
        {"dhps_table_stale_updates_total", "counter",
         "Updates ignored because the store held a newer version."},
        {"dhps_table_compaction_bytes_total", "counter",
         "Bytes of live records compaction moved to free space."},
        {"dhps_table_inplace_updates_total", "counter",
         "Updates written over the stored record, leaving nothing to compact."},
    };
    table_agg *ag = calloc(s->cfg->ntables ? s->cfg->ntables : 1, sizeof *ag);
    if (ag)
        for (uint32_t i = 0; i < s->cfg->ntables; i++)
            srv_aggregate(s, &s->tables[i], &ag[i]);
    for (int k = 0; k < T_N && ag; k++) {
        fam(f, tf[k].name, tf[k].type, tf[k].help);
        for (uint32_t i = 0; i < s->cfg->ntables; i++) {
            srv_table *t = &s->tables[i];
            const table_agg *a = &ag[i];
            fprintf(f, "%s{table=\"%s\"} ", tf[k].name, t->c.name);
            switch (k) {
            case T_LOOKED: fprintf(f, "%llu\n", (unsigned long long)get(&t->looked_up)); break;
            case T_FOUND: fprintf(f, "%llu\n", (unsigned long long)get(&t->found)); break;
            case T_KEYS: fprintf(f, "%llu\n", (unsigned long long)a->st.keys); break;
            case T_LIVE: fprintf(f, "%llu\n", (unsigned long long)a->st.live_bytes); break;
            case T_SEG: fprintf(f, "%llu\n", (unsigned long long)a->st.segment_bytes); break;
            case T_IDX: fprintf(f, "%llu\n", (unsigned long long)a->st.index_bytes); break;
            case T_FRAG: fprintf(f, "%.6f\n", a->st.fragmentation); break;
            case T_EXP: fprintf(f, "%llu\n", (unsigned long long)a->st.expired_records); break;
            case T_EVI: fprintf(f, "%llu\n", (unsigned long long)a->st.evicted_records); break;
            case T_STALE: fprintf(f, "%llu\n", (unsigned long long)a->st.stale_updates); break;
            case T_COMP: fprintf(f, "%llu\n", (unsigned long long)a->st.compaction_bytes); break;
            default: fprintf(f, "%llu\n", (unsigned long long)a->st.inplace_updates); break;
            }
        }
    }
    free(ag);
    dhps_rpc_server_stats rs;
    memset(&rs, 0, sizeof rs);
    if (s->rpc)
        dhps_rpc_server_get_stats(s->rpc, &rs);
    fam(f, "dhps_rpc_handled_total", "counter", "Rpc requests handled, by transport.");
    for (int t = 0; t < DHPS_RPC_NTRANSPORTS; t++)
        fprintf(f, "dhps_rpc_handled_total{transport=\"%s\"} %llu\n",
                dhps_rpc_transport_name(t), (unsigned long long)rs.handled[t]);
    const struct { const char *name, *type, *help; uint64_t v; } rows[] = {
        {"dhps_rpc_accepted_total", "counter", "Rpc connections accepted.", rs.accepted},
        {"dhps_rpc_rejected_auth_total", "counter",
         "Rpc connections refused: the peer failed the secret handshake.", rs.rejected_auth},
        {"dhps_rpc_rejected_malformed_total", "counter", "Rpc frames refused as malformed.",
         rs.rejected_malformed},
        {"dhps_rpc_handler_errors_total", "counter", "Rpc handler calls that returned an error.",
         rs.handler_errors},
        {"dhps_rpc_unknown_method_total", "counter", "Rpc requests for an unknown method.",
         rs.unknown_method},
        {"dhps_rpc_open_connections", "gauge", "Rpc connections open now.", rs.open_conns},
        {"dhps_rpc_accepted_tls_total", "counter",
         "Rpc connections accepted over TLS (of dhps_rpc_accepted_total; the rest plain).",
         rs.accepted_tls},
        {"dhps_rpc_open_tls_connections", "gauge",
         "Rpc connections open now over TLS (of dhps_rpc_open_connections).", rs.open_tls},
        {"dhps_rpc_tls_handshake_failures_total", "counter",
         "Rpc TLS handshakes that failed (not TLS, a certificate refused, the peer gave up).",
         rs.tls_handshake_failures},
        {"dhps_rpc_rejected_plain_total", "counter",
         "Plain TCP rpc connections refused: tls.policy always.", rs.rejected_plain},
        {"dhps_rpc_rejected_limit_total", "counter",
         "Rpc connections refused at accept: listen.max_connections or max_conns_per_peer.",
         rs.rejected_limit},
        {"dhps_rpc_closed_budget_total", "counter",
         "Rpc connections closed: a frame would have passed listen.max_input_mb.",
         rs.closed_budget},
        {"dhps_rpc_closed_timeout_total", "counter",
         "Rpc connections closed: listen.frame_timeout_ms or listen.idle_timeout_s.",
         rs.closed_timeout},
        {"dhps_rpc_input_bytes", "gauge",
         "Rpc input buffered beyond 64 KiB per connection (bounded by listen.max_input_mb).",
         rs.input_bytes},
        {"dhps_rpc_duplicates_total", "counter",
         "Retried rpc requests answered from the duplicate cache.", rs.duplicates},
        {"dhps_rpc_verbs_failures_total", "counter", "RDMA verbs operations that failed.",
         rs.verbs_failures},
        {"dhps_fault_overflow_total", "counter",
         "Responses a delay fault rule should have held back, sent at once (hold bound "
         "reached).",
         rs.fault_overflow},
        {"dhps_snapshot_files_total", "counter",
         "Store snapshot files written (one per table shard per snapshot).",
         get(&s->snapshots_ok)},
        {"dhps_snapshot_file_errors_total", "counter", "Store snapshot files that failed.",
         get(&s->snapshot_errors)},
        {"dhps_last_snapshot_timestamp_seconds", "gauge",
         "Unix time of the last snapshot file written (0: none).", get(&s->last_snapshot_unix)},
        {"dhps_loaded_records", "gauge", "Records loaded from snapshots at start.",
         get(&s->loaded_records)},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fam(f, rows[i].name, rows[i].type, rows[i].help);
        fprintf(f, "%s %llu\n", rows[i].name, (unsigned long long)rows[i].v);
    }
    srv_durable_metrics(s, f);
    fam(f, "dhps_ready", "gauge",
        "1 when recovery is done and every store held at start is caught up.");
    fprintf(f, "dhps_ready %d\n", dhps_server_ready(s) ? 1 : 0);
    srv_hold_metrics(s, f);
    if (s->sync)
        srv_sync_metrics(s->sync, f);
    srv_fault_metrics(s->rpc, f);
    srv_member_metrics(__atomic_load_n(&s->member, __ATOMIC_ACQUIRE), f);
}

/* ---- /fault: the rpc server's fault rules, set at run time (admin.faults) ---------- */

typedef struct http_req { /* one request's body, gathered across handler calls */
    size_t len;
    bool too_big;
    char body[SRV_ADMIN_MAX_BODY];
} http_req;

/* ---- the connection guard: an absolute deadline for request headers -------------- */

typedef struct http_conn {
    struct http_conn *prev, *next; /* in the guard's list, under its mu */
    int fd;
    uint64_t since_ns;             /* accepted, or its last request answered */
    bool in_request;               /* a whole header arrived; the request is being served */
    bool cut;                      /* shut by the guard */
} http_conn;

struct srv_http_guard {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    http_conn head;                /* circular list of open connections */
    pthread_t th;
    bool running, stop;
    uint64_t deadline_ns;
    uint64_t open, cut_total;      /* under mu */
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                         enum MHD_ConnectionNotificationCode code)
{
    struct srv_http_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        http_conn *hc = calloc(1, sizeof *hc);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = hc;
        if (!hc)
            return; /* unguarded: libmicrohttpd's idle timeout still applies */
        hc->fd = ci ? ci->connect_fd : -1;
        hc->since_ns = mono_ns();
        pthread_mutex_lock(&g->mu);
        hc->next = g->head.next;
        hc->prev = &g->head;
        g->head.next->prev = hc;
        g->head.next = hc;
        g->open++;
        pthread_mutex_unlock(&g->mu);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        /* libmicrohttpd closes the socket after this returns: the guard, which holds
         * mu while it shuts sockets, never touches a closed (or reused) descriptor */
        http_conn *hc = *socket_context;
        pthread_mutex_lock(&g->mu);
        hc->prev->next = hc->next;
        hc->next->prev = hc->prev;
        g->open--;
        pthread_mutex_unlock(&g->mu);
        free(hc);
        *socket_context = NULL;
    }
}

/* The connection's request header is complete (the handler runs) or its answer is done. */
static void guard_mark(struct srv_http_guard *g, struct MHD_Connection *conn, bool in_request)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    http_conn *hc = ci ? ci->socket_context : NULL;
    if (!g || !hc)
        return;
    pthread_mutex_lock(&g->mu);
    hc->in_request = in_request;
    if (!in_request)
        hc->since_ns = mono_ns();
    pthread_mutex_unlock(&g->mu);
}

static void *guard_main(void *arg)
{
    struct srv_http_guard *g = arg;
    uint64_t tick_ns = g->deadline_ns / 4 < 250000000ull ? g->deadline_ns / 4 : 250000000ull;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        uint64_t now = mono_ns();
        for (http_conn *hc = g->head.next; hc != &g->head; hc = hc->next)
            if (!hc->in_request && !hc->cut && hc->fd >= 0 && now - hc->since_ns > g->deadline_ns) {
                shutdown(hc->fd, SHUT_RDWR); /* libmicrohttpd sees the end and closes it */
                hc->cut = true;
                g->cut_total++;
            }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t at = (uint64_t)ts.tv_nsec + tick_ns;
        ts.tv_sec += (time_t)(at / 1000000000ull);
        ts.tv_nsec = (long)(at % 1000000000ull);
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void guard_destroy(struct srv_http_guard *g)
{
    if (!g)
        return;
    if (g->running) {
        pthread_mutex_lock(&g->mu);
        g->stop = true;
        pthread_cond_signal(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->th, NULL);
    }
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g);
}

static struct srv_http_guard *guard_create(uint32_t deadline_ms)
{
    struct srv_http_guard *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->head.next = g->head.prev = &g->head;
    g->deadline_ns = (uint64_t)(deadline_ms ? deadline_ms : 2000) * 1000000ull;
    if (pthread_create(&g->th, NULL, guard_main, g)) {
        guard_destroy(g);
        return NULL;
    }
    g->running = true;
    return g;
}

static void http_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    guard_mark(cls, conn, false);
    free(*con_cls);
    *con_cls = NULL;
}

/* Queue body[0..len) (malloc'ed, taken over; NULL = out of memory) with code. */
static enum MHD_Result reply_len(struct MHD_Connection *conn, unsigned code,
                                 const char *ctype, char *body, size_t len)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body,
                                                                MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* reply_len of a NUL-terminated body. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, const char *ctype,
                             char *body)
{
    return reply_len(conn, code, ctype, body, body ? strlen(body) : 0);
}

__attribute__((format(printf, 3, 4))) static enum MHD_Result
reply_text(struct MHD_Connection *conn, unsigned code, const char *fmt, ...)
{
    char *t = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&t, fmt, ap) < 0)
        t = NULL;
    va_end(ap);
    return reply(conn, code, "text/plain; charset=utf-8", t);
}

/* Log a refused /fault request: the peer named, at most 5 lines a second (the daemon's
 * one thread calls it), with a count of the lines left out. */
static void fault_refused(dhps_server *s, struct MHD_Connection *conn, const char *method,
                          const char *err)
{
    char ip[INET_ADDRSTRLEN] = "?", more[64];
    if (!dhps_ratelimit_allow(&s->http_log_rl, 5, more, sizeof more))
        return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, ip,
                  sizeof ip);
    DHPS_LOG(DHPS_LOG_WARN, LOGM, "/fault %s from %s refused: %s%s", method, ip, err, more);
}

static enum MHD_Result http_fault(dhps_server *s, struct MHD_Connection *conn,
                                  const char *method, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    http_req *q = *con_cls;
    if (!q) { /* first call: headers only */
        if (!(q = calloc(1, sizeof *q)))
            return MHD_NO;
        *con_cls = q;
        return MHD_YES;
    }
    if (*upload_size) {
        if (q->len + *upload_size > SRV_ADMIN_MAX_BODY) {
            q->too_big = true;
        } else {
            memcpy(q->body + q->len, upload_data, *upload_size);
            q->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (!s->cfg->admin_faults)
        return reply_text(conn, MHD_HTTP_FORBIDDEN,
                          "fault admin is disabled on this node: set \"admin\": {\"faults\": "
                          "true} in its config\n");
    if (!strcmp(method, "GET") || !strcmp(method, "HEAD"))
        return reply(conn, MHD_HTTP_OK, "application/json", srv_fault_list_json(s->rpc));
    bool set = !strcmp(method, "PUT") || !strcmp(method, "POST");
    if (!set && strcmp(method, "DELETE"))
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                          "fault: method %s not allowed (GET, PUT, POST, DELETE)\n", method);
    if (q->too_big)
        return reply_text(conn, 413 /* content too large */,
                          "fault body: longer than %u bytes\n", SRV_ADMIN_MAX_BODY);
    const char *peer = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "peer");
    const char *port = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "port");
    const char *all = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "all");
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, SRV_ADMIN_AUTH_HEADER);
    char err[512];
    if (srv_admin_auth(s->secret, s->secret_len, auth, method, "/fault", peer ? peer : "",
                       port ? port : "", all ? all : "", q->body, q->len, time(NULL), err,
                       sizeof err)) {
        fault_refused(s, conn, method, err);
        return reply_text(conn, MHD_HTTP_UNAUTHORIZED, "%s\n", err);
    }
    int rp = srv_admin_replay_note(&s->replay, auth, time(NULL), err, sizeof err);
    if (rp) {
        fault_refused(s, conn, method, err);
        return reply_text(conn, rp == -EBUSY ? 429 /* too many requests */
                                             : MHD_HTTP_UNAUTHORIZED, "%s\n", err);
    }
    if (!s->rpc)
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "fault: rpc server stopped\n");
    if (set) {
        srv_fault_req fr;
        if (srv_fault_parse(q->body, q->len, &fr, err, sizeof err))
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "%s\n", err);
        int rc = dhps_rpc_server_fault_set(s->rpc, fr.peer, fr.port, &fr.f);
        if (rc == -ENOSPC)
            return reply_text(conn, MHD_HTTP_CONFLICT, "fault: %u rules already set; delete "
                              "one first\n", DHPS_RPC_FAULT_MAX_RULES);
        if (rc)
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "fault: %s\n", dhps_strerror(rc));
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "fault rule set: peer %s port %u: delay %u us (%u %%), "
                 "drop %u %%, partition %s", fr.peer, fr.port, fr.f.delay_us,
                 fr.f.delay_percent, fr.f.drop_percent, fr.f.partition ? "yes" : "no");
        return reply(conn, MHD_HTTP_OK, "application/json", srv_fault_list_json(s->rpc));
    }
    /* DELETE ?peer=IP|*[&port=P] or ?all=true */
    if (all && !strcmp(all, "true")) {
        int rc = dhps_rpc_server_fault_clear(s->rpc, NULL, 0);
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "fault rules cleared (all)");
        return reply(conn, MHD_HTTP_OK, "application/json",
                     strdup(rc == 0 ? "{\"deleted\":\"all\"}" : "{\"deleted\":\"none\"}"));
    }
    if (all)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST, "fault all: must be true\n");
    if (!peer || !*peer)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST,
                          "fault peer: required (?peer=IP or ?peer=*, optional &port=P; or "
                          "?all=true)\n");
    unsigned long pv = 0;
    if (port) {
        char *end = NULL;
        errno = 0;
        pv = strtoul(port, &end, 10);
        if (!*port || *end || errno || pv > 65535 || port[0] == '-' || port[0] == '+')
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "fault port: must be 0..65535\n");
    }
    int rc = dhps_rpc_server_fault_clear(s->rpc, peer, (uint16_t)pv);
    if (rc == -EINVAL)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST,
                          "fault peer: must be a numeric IPv4 address or \"*\" (with port 0)\n");
    if (rc == -ENOENT)
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "fault peer: no rule for %s port %lu\n",
                          peer, pv);
    DHPS_LOG(DHPS_LOG_WARN, LOGM, "fault rule cleared: peer %s port %lu", peer, pv);
    return reply(conn, MHD_HTTP_OK, "application/json", srv_fault_list_json(s->rpc));
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_size,
                                    void **con_cls)
{
    dhps_server *s = cls;
    guard_mark(s->http_guard, conn, true);
    if (!strcmp(url, "/fault"))
        return http_fault(s, conn, method, upload_data, upload_size, con_cls);
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return MHD_NO;
    char *body = NULL;
    size_t len = 0;
    unsigned code = MHD_HTTP_OK;
    const char *ctype = "text/plain; charset=utf-8";
    if (!strcmp(url, "/metrics")) {
        FILE *f = open_memstream(&body, &len);
        if (!f)
            return MHD_NO;
        write_metrics(s, f);
        fclose(f);
        ctype = "text/plain; version=0.0.4; charset=utf-8";
    } else if (!strcmp(url, "/health/live")) {
        body = strdup("live\n"); /* the process answers: restart it only when this fails */
        len = body ? strlen(body) : 0;
    } else if (!strcmp(url, "/health/ready") || !strcmp(url, "/health")) {
        /* ready = local recovery done and every store caught up from its peers; the
         * body says how far catch-up is (JSON on /health/ready) */
        bool ok = dhps_server_ready(s);
        code = ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
        if (!strcmp(url, "/health/ready") && s->sync) {
            body = srv_sync_status_json(s->sync);
            ctype = "application/json";
        } else {
            body = strdup(ok ? "ok\n"
                             : __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE) ? "catching up\n"
                                                                          : "loading\n");
        }
        len = body ? strlen(body) : 0;
    } else {
        code = MHD_HTTP_NOT_FOUND;
        body = strdup("not found: try /metrics, /health, /health/live, /health/ready or "
                      "/fault\n");
        len = body ? strlen(body) : 0;
    }
    return reply_len(conn, code, ctype, body, len);
}

/* The /health-only listener: everything else is 404. */
static enum MHD_Result health_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_size,
                                      void **con_cls)
{
    dhps_server *s = cls;
    if (strcmp(url, "/health") && strcmp(url, "/health/live") && strcmp(url, "/health/ready")) {
        guard_mark(s->http_guard, conn, true);
        char *body = strdup("not found: this port answers /health, /health/live and "
                            "/health/ready only\n");
        return reply_len(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", body,
                         body ? strlen(body) : 0);
    }
    return http_handler(cls, conn, url, method, version, upload_data, upload_size, con_cls);
}

/* One guarded epoll daemon on host:port, or on the given socket *fd (>= 0: listened on
 * here, then SO_REUSEADDR as MHD's own; the daemon gets a duplicate, *fd is closed here
 * and set to -1 in every case). NULL on failure. */
static struct MHD_Daemon *start_daemon(dhps_server *s, const char *host, uint16_t port,
                                       int *fd, MHD_AccessHandlerCallback fn,
                                       uint32_t max_conn, uint32_t max_per_ip)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sin.sin_addr);
    /* MHD gets a duplicate: whether a failed MHD_start_daemon closed it or not, *fd is
     * still ours to close, and no other thread's new fd can be closed by mistake */
    int given = -1;
    if (*fd >= 0 && (given = fcntl(*fd, F_DUPFD_CLOEXEC, 3)) < 0) {
        close(*fd);
        *fd = -1;
        return NULL;
    }
    struct MHD_OptionItem where[] = {
        given >= 0 ? (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, given, NULL}
                   : (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &sin},
        {MHD_OPTION_END, 0, NULL}};
    if (*fd >= 0) {
        /* listened on as given (SO_REUSEADDR only when that fails: TIME_WAIT of an
         * earlier server), SO_REUSEADDR set once it listens, as MHD's own: set first, it
         * would let another SO_REUSEADDR socket bind the port and listen before us (as in
         * dhps_rpc_server_start) */
        int one = 1;
        if (listen(*fd, 128) != 0 &&
            (errno != EADDRINUSE ||
             setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
             listen(*fd, 128) != 0)) {
            close(given);
            close(*fd);
            *fd = -1;
            return NULL;
        }
        setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    }
    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, port, NULL, NULL,
                         fn, s, MHD_OPTION_ARRAY, where,
                         MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conn,
                         MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)max_per_ip,
                         MHD_OPTION_NOTIFY_CONNECTION, guard_notify, s->http_guard,
                         MHD_OPTION_NOTIFY_COMPLETED, http_done, s->http_guard,
                         MHD_OPTION_END);
    if (*fd >= 0) /* the daemon holds its duplicate (a failed start may leak that one) */
        close(*fd);
    *fd = -1;
    return d;
}

/* The port d listens on (from its socket: also right for a given one). */
static uint16_t daemon_port(struct MHD_Daemon *d, uint16_t asked)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&a, &al) == 0 && al == sizeof a)
        return ntohs(a.sin_port);
    di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return di ? di->port : asked;
}

int srv_http_start(dhps_server *s, char *err, size_t errlen)
{
    const dhps_server_config *c = s->cfg;
    uint32_t maxc = c->metrics_max_connections ? c->metrics_max_connections : 64;
    uint32_t perip = c->metrics_max_per_ip ? c->metrics_max_per_ip : 16;
    if (!(s->http_guard = guard_create(c->metrics_header_timeout_ms))) {
        srv_errf(err, errlen, "metrics: out of memory or threads");
        return -ENOMEM;
    }
    s->http = start_daemon(s, c->metrics_host, c->metrics_port, &s->metrics_fd, http_handler,
                           maxc, perip < maxc ? perip : maxc);
    if (!s->http) {
        srv_errf(err, errlen, "metrics %s:%u: cannot start the HTTP server (port in use?)",
                 c->metrics_host, c->metrics_port);
        srv_http_stop(s);
        return -EADDRINUSE;
    }
    s->http_port = daemon_port(s->http, c->metrics_port);
    if (c->metrics_health_port >= 0) {
        /* a small budget of its own: probes are few and short */
        s->health = start_daemon(s, c->metrics_host, (uint16_t)c->metrics_health_port,
                                 &s->health_fd, health_handler, 16, 8);
        if (!s->health) {
            srv_errf(err, errlen, "metrics.health_port %s:%d: cannot start the HTTP server "
                     "(port in use?)", c->metrics_host, c->metrics_health_port);
            srv_http_stop(s);
            return -EADDRINUSE;
        }
        s->health_port = daemon_port(s->health, (uint16_t)c->metrics_health_port);
    }
    return 0;
}

void srv_http_stop(dhps_server *s)
{
    if (s->health) {
        MHD_stop_daemon(s->health);
        s->health = NULL;
    }
    if (s->http) {
        MHD_stop_daemon(s->http);
        s->http = NULL;
    }
    guard_destroy(s->http_guard); /* after the daemons: their callbacks use it */
    s->http_guard = NULL;
}

void srv_http_metrics(dhps_server *s, FILE *f)
{
    struct srv_http_guard *g = s->http_guard;
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    uint64_t open = g->open, cut = g->cut_total;
    pthread_mutex_unlock(&g->mu);
    fam(f, "dhps_http_connections", "gauge",
        "Open admin HTTP connections (metrics and health listeners).");
    fprintf(f, "dhps_http_connections %llu\n", (unsigned long long)open);
    fam(f, "dhps_http_header_timeouts_total", "counter",
        "Admin HTTP connections cut for not sending a whole request header in time.");
    fprintf(f, "dhps_http_header_timeouts_total %llu\n", (unsigned long long)cut);
}
