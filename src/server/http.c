/* dhps server: /metrics, /health and /fault over libmicrohttpd. */
#define _GNU_SOURCE
#include <errno.h>
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
    enum { T_LOOKED, T_FOUND, T_KEYS, T_LIVE, T_SEG, T_IDX, T_FRAG, T_EXP, T_EVI, T_STALE, T_N };
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
            default: fprintf(f, "%llu\n", (unsigned long long)a->st.stale_updates); break;
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

static void http_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
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
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "/fault %s refused: %s", method, err);
        return reply_text(conn, MHD_HTTP_UNAUTHORIZED, "%s\n", err);
    }
    int rp = srv_admin_replay_note(&s->replay, auth, time(NULL), err, sizeof err);
    if (rp) {
        DHPS_LOG(DHPS_LOG_WARN, LOGM, "/fault %s refused: %s", method, err);
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

int srv_http_start(dhps_server *s, char *err, size_t errlen)
{
    const dhps_server_config *c = s->cfg;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(c->metrics_port)};
    inet_pton(AF_INET, c->metrics_host, &sin.sin_addr);
    s->http = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, c->metrics_port, NULL,
                               NULL, http_handler, s, MHD_OPTION_SOCK_ADDR, &sin,
                               MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                               MHD_OPTION_NOTIFY_COMPLETED, http_done, NULL,
                               MHD_OPTION_END);
    if (!s->http) {
        srv_errf(err, errlen, "metrics %s:%u: cannot start the HTTP server (port in use?)",
                 c->metrics_host, c->metrics_port);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->http, MHD_DAEMON_INFO_BIND_PORT);
    s->http_port = di ? di->port : c->metrics_port;
    return 0;
}

void srv_http_stop(dhps_server *s)
{
    if (s->http) {
        MHD_stop_daemon(s->http);
        s->http = NULL;
    }
}
