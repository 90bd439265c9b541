/* RDMA verbs transport: RC queue pairs, SEND/RECV over pre-registered slots (no
 * remotely accessible memory), inline sends for small frames, one signalled WR per
 * post list (selective signalling), one ibv_post_send per flush (post lists). */
#include "internal.h"
#include "verbs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dhps/log.h"

bool dhps_rpc_verbs_available(void)
{
    rpc_dev *d = NULL;
    if (rpc_dev_open(&d))
        return false;
    rpc_dev_close(d);
    return true;
}

int rpc_dev_open(rpc_dev **out)
{
    int n = 0, rc = -ENODEV;
    *out = NULL;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list)
        return -ENODEV;
    for (int i = 0; i < n && rc; i++) {
        struct ibv_context *ctx = ibv_open_device(list[i]);
        if (!ctx)
            continue;
        struct ibv_port_attr pa;
        if (ibv_query_port(ctx, 1, &pa) != 0 || pa.state != IBV_PORT_ACTIVE) {
            ibv_close_device(ctx);
            continue;
        }
        rpc_dev *d = calloc(1, sizeof *d);
        if (!d) {
            ibv_close_device(ctx);
            rc = -ENOMEM;
            break;
        }
        d->ctx = ctx;
        d->port = 1;
        d->mtu = pa.active_mtu;
        const char *g = getenv("DHPS_RPC_GID_INDEX");
        if (!g)
            g = getenv("RXE_GID_INDEX");
        d->gid_index = g ? atoi(g) : (pa.link_layer == IBV_LINK_LAYER_ETHERNET ? 1 : 0);
        d->pd = ibv_alloc_pd(ctx);
        if (!d->pd || ibv_query_gid(ctx, d->port, d->gid_index, &d->gid) != 0) {
            rpc_dev_close(d);
            continue;
        }
        snprintf(d->path, sizeof d->path, "%s", list[i]->dev_path);
        int fl = fcntl(ctx->async_fd, F_GETFL);
        fcntl(ctx->async_fd, F_SETFL, fl | O_NONBLOCK);
        *out = d;
        rc = 0;
    }
    ibv_free_device_list(list);
    return rc;
}

void rpc_dev_close(rpc_dev *d)
{
    if (!d)
        return;
    if (d->pd)
        ibv_dealloc_pd(d->pd);
    if (d->ctx)
        ibv_close_device(d->ctx);
    free(d);
}

bool rpc_dev_check(rpc_dev *d, bool check_sysfs)
{
    struct ibv_async_event ev;
    struct stat st;
    if (check_sysfs && d->path[0] && stat(d->path, &st) != 0 && errno == ENOENT) {
        if (!__atomic_exchange_n(&d->fatal, true, __ATOMIC_RELAXED))
            DHPS_LOG(DHPS_LOG_WARN, RPC_LOG, "verbs device %s is gone", d->path);
    }
    while (ibv_get_async_event(d->ctx, &ev) == 0) {
        if (ev.event_type == IBV_EVENT_DEVICE_FATAL || ev.event_type == IBV_EVENT_PORT_ERR)
            __atomic_store_n(&d->fatal, true, __ATOMIC_RELAXED);
        DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "verbs async event: %s",
                 ibv_event_type_str(ev.event_type));
        ibv_ack_async_event(&ev);
    }
    return __atomic_load_n(&d->fatal, __ATOMIC_RELAXED);
}

uint8_t *vep_slot_payload(vep *v, uint32_t slot)
{
    return v->mem + (size_t)slot * v->slot_bytes + RPC_FRAME_HDR;
}

static int post_recvs(vep *v)
{
    if (!v->nrepost)
        return 0;
    for (uint32_t i = 0; i < v->nrepost; i++) {
        uint32_t s = v->repost[i];
        struct ibv_recv_wr *w = &v->rwr[s];
        w->wr_id = s;
        w->sg_list = &v->rsge[s];
        w->num_sge = 1;
        w->next = i + 1 < v->nrepost ? &v->rwr[v->repost[i + 1]] : NULL;
    }
    struct ibv_recv_wr *bad = NULL;
    int rc = ibv_post_recv(v->qp, &v->rwr[v->repost[0]], &bad);
    v->nrepost = 0;
    return rc ? -EIO : 0;
}

int vep_create(rpc_dev *d, uint32_t nsend, uint32_t nrecv, uint32_t max_msg, vsrq *srq,
               vep **out)
{
    int rc = -ENOMEM;
    *out = NULL;
    vep *v = calloc(1, sizeof *v);
    if (!v)
        return -ENOMEM;
    if (srq)
        nrecv = 0;
    v->dev = d;
    v->cur = -1;
    v->nsend = nsend;
    v->nrecv = nrecv;
    v->slot_bytes = (uint32_t)((RPC_FRAME_HDR + (size_t)max_msg + 63) & ~(size_t)63);
    size_t bytes = (size_t)(nsend + nrecv) * v->slot_bytes;
    v->mem = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    v->ss = calloc(nsend, sizeof *v->ss);
    v->wr = calloc(nsend, sizeof *v->wr);
    v->sge = calloc(nsend, sizeof *v->sge);
    v->rwr = calloc(nrecv + 1, sizeof *v->rwr);
    v->rsge = calloc(nrecv + 1, sizeof *v->rsge);
    v->repost = calloc(nrecv + 1, sizeof *v->repost);
    if (!v->mem || !v->ss || !v->wr || !v->sge || !v->rwr || !v->rsge || !v->repost)
        goto fail;
    rc = -EIO;
    /* least access: the peer never touches this memory directly (SEND/RECV only) */
    v->mr = ibv_reg_mr(d->pd, v->mem, bytes, IBV_ACCESS_LOCAL_WRITE);
    v->scq = ibv_create_cq(d->ctx, (int)nsend + 1, NULL, NULL, 0);
    if (!v->mr || !v->scq)
        goto fail;
    if (!srq) {
        v->cc = ibv_create_comp_channel(d->ctx);
        if (!v->cc)
            goto fail;
        int fl = fcntl(v->cc->fd, F_GETFL);
        fcntl(v->cc->fd, F_SETFL, fl | O_NONBLOCK);
        v->rcq = ibv_create_cq(d->ctx, (int)nrecv + 1, NULL, v->cc, 0);
        if (!v->rcq)
            goto fail;
    }
    struct ibv_qp_init_attr qa = {
        .send_cq = v->scq, .recv_cq = srq ? srq->rcq : v->rcq, .qp_type = IBV_QPT_RC,
        .srq = srq ? srq->srq : NULL,
        .cap = {.max_send_wr = nsend, .max_recv_wr = nrecv, .max_send_sge = 1,
                .max_recv_sge = 1, .max_inline_data = 128},
    };
    v->qp = ibv_create_qp(d->pd, &qa);
    if (!v->qp) {
        qa.cap.max_inline_data = 0;
        v->qp = ibv_create_qp(d->pd, &qa);
    }
    if (!v->qp)
        goto fail;
    v->max_inline = qa.cap.max_inline_data;
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = d->port,
                            .qp_access_flags = 0};
    if (ibv_modify_qp(v->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                        IBV_QP_ACCESS_FLAGS))
        goto fail;
    for (uint32_t i = 0; i < nsend; i++) {
        v->sge[i] = (struct ibv_sge){.addr = (uintptr_t)(v->mem + (size_t)i * v->slot_bytes),
                                     .lkey = v->mr->lkey};
        v->wr[i].sg_list = &v->sge[i];
        v->wr[i].num_sge = 1;
        v->wr[i].opcode = IBV_WR_SEND;
    }
    for (uint32_t i = 0; i < nrecv; i++) {
        v->rsge[i] = (struct ibv_sge){
            .addr = (uintptr_t)(v->mem + (size_t)(nsend + i) * v->slot_bytes),
            .length = v->slot_bytes, .lkey = v->mr->lkey};
        v->repost[v->nrepost++] = i;
    }
    if (post_recvs(v))
        goto fail;
    uint32_t psn;
    rpc_random(&psn, sizeof psn);
    v->psn = psn & 0xffffff;
    *out = v;
    return 0;
fail:
    vep_destroy(v);
    return rc;
}

/* ---- shared receive queue ------------------------------------------------------------ */

static int srq_post(vsrq *q)
{
    if (!q->nrepost)
        return 0;
    for (uint32_t i = 0; i < q->nrepost; i++) {
        uint32_t s = q->repost[i];
        struct ibv_recv_wr *w = &q->rwr[s];
        w->wr_id = s;
        w->sg_list = &q->rsge[s];
        w->num_sge = 1;
        w->next = i + 1 < q->nrepost ? &q->rwr[q->repost[i + 1]] : NULL;
    }
    struct ibv_recv_wr *bad = NULL;
    int rc = ibv_post_srq_recv(q->srq, &q->rwr[q->repost[0]], &bad);
    q->nrepost = 0;
    return rc ? -EIO : 0;
}

int vsrq_create(rpc_dev *d, uint32_t n, uint32_t max_msg, vsrq **out)
{
    int rc = -ENOMEM;
    *out = NULL;
    vsrq *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->dev = d;
    q->n = n;
    q->slot_bytes = (uint32_t)((RPC_FRAME_HDR + (size_t)max_msg + 63) & ~(size_t)63);
    size_t bytes = (size_t)n * q->slot_bytes;
    q->mem = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    q->rwr = calloc(n, sizeof *q->rwr);
    q->rsge = calloc(n, sizeof *q->rsge);
    q->repost = calloc(n, sizeof *q->repost);
    if (!q->mem || !q->rwr || !q->rsge || !q->repost)
        goto fail;
    rc = -EIO;
    q->mr = ibv_reg_mr(d->pd, q->mem, bytes, IBV_ACCESS_LOCAL_WRITE);
    q->cc = ibv_create_comp_channel(d->ctx);
    if (!q->mr || !q->cc)
        goto fail;
    int fl = fcntl(q->cc->fd, F_GETFL);
    fcntl(q->cc->fd, F_SETFL, fl | O_NONBLOCK);
    q->rcq = ibv_create_cq(d->ctx, (int)n + 1, NULL, q->cc, 0);
    struct ibv_srq_init_attr sa = {.attr = {.max_wr = n, .max_sge = 1}};
    q->srq = ibv_create_srq(d->pd, &sa);
    if (!q->rcq || !q->srq)
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        q->rsge[i] = (struct ibv_sge){.addr = (uintptr_t)(q->mem + (size_t)i * q->slot_bytes),
                                      .length = q->slot_bytes, .lkey = q->mr->lkey};
        q->repost[q->nrepost++] = i;
    }
    if (srq_post(q))
        goto fail;
    *out = q;
    return 0;
fail:
    vsrq_destroy(q);
    return rc;
}

void vsrq_destroy(vsrq *q)
{
    if (!q)
        return;
    if (q->srq)
        ibv_destroy_srq(q->srq);
    if (q->rcq) {
        vsrq_drain_events(q);
        ibv_destroy_cq(q->rcq);
    }
    if (q->cc)
        ibv_destroy_comp_channel(q->cc);
    if (q->mr)
        ibv_dereg_mr(q->mr);
    free(q->mem);
    free(q->rwr);
    free(q->rsge);
    free(q->repost);
    free(q);
}

int vsrq_event_fd(const vsrq *q) { return q->cc->fd; }

void vsrq_arm(vsrq *q)
{
    if (ibv_req_notify_cq(q->rcq, 0))
        q->failed = true;
}

void vsrq_drain_events(vsrq *q)
{
    struct ibv_cq *cq;
    void *ctx;
    while (ibv_get_cq_event(q->cc, &cq, &ctx) == 0)
        ibv_ack_cq_events(cq, 1);
}

int vsrq_rx(vsrq *q, vsrq_fn fn, void *arg)
{
    struct ibv_wc wc[32];
    int n = ibv_poll_cq(q->rcq, 32, wc);
    if (n < 0)
        return -EIO;
    for (int i = 0; i < n; i++) {
        if (wc[i].wr_id >= q->n)
            return -EIO;
        uint32_t s = (uint32_t)wc[i].wr_id;
        bool ok = wc[i].status == IBV_WC_SUCCESS && wc[i].opcode == IBV_WC_RECV;
        fn(arg, wc[i].qp_num, ok, ok ? q->mem + (size_t)s * q->slot_bytes : NULL,
           ok ? wc[i].byte_len : 0);
        q->repost[q->nrepost++] = s; /* the slot is free again either way */
    }
    /* re-post before this turn's responses are posted (credit rule, see verbs_rx) */
    if (srq_post(q))
        return -EIO;
    return n;
}

void vep_destroy(vep *v)
{
    if (!v)
        return;
    if (v->qp)
        ibv_destroy_qp(v->qp);
    if (v->scq)
        ibv_destroy_cq(v->scq);
    if (v->rcq) {
        vep_drain_events(v); /* destroy waits for every event to be acknowledged */
        ibv_destroy_cq(v->rcq);
    }
    if (v->cc)
        ibv_destroy_comp_channel(v->cc);
    if (v->mr)
        ibv_dereg_mr(v->mr);
    free(v->mem);
    free(v->ss);
    free(v->wr);
    free(v->sge);
    free(v->rwr);
    free(v->rsge);
    free(v->repost);
    free(v);
}

void vep_info(const vep *v, rpc_verbs_info *o)
{
    memset(o, 0, sizeof *o);
    memcpy(o->gid, v->dev->gid.raw, 16);
    o->qpn = v->qp->qp_num;
    o->psn = v->psn;
    o->slots = v->nrecv;
}

int vep_connect(vep *v, const rpc_verbs_info *r)
{
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_RTR, .path_mtu = v->dev->mtu, .dest_qp_num = r->qpn,
        .rq_psn = r->psn & 0xffffff, .max_dest_rd_atomic = 1, .min_rnr_timer = 12,
        .ah_attr = {.is_global = 1, .port_num = v->dev->port,
                    .grh = {.hop_limit = 1, .sgid_index = (uint8_t)v->dev->gid_index}},
    };
    memcpy(a.ah_attr.grh.dgid.raw, r->gid, 16);
    if (ibv_modify_qp(v->qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                                       IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                       IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
        return -EIO;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 12;   /* 4.096 us * 2^12 = 16.8 ms per try */
    a.retry_cnt = 3;  /* a dead path errors out in ~70 ms */
    a.rnr_retry = 7;
    a.sq_psn = v->psn;
    a.max_rd_atomic = 1;
    if (ibv_modify_qp(v->qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                       IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                       IBV_QP_MAX_QP_RD_ATOMIC))
        return -EIO;
    return 0;
}

int vep_event_fd(const vep *v) { return v->cc->fd; }

void vep_arm(vep *v)
{
    if (ibv_req_notify_cq(v->rcq, 0))
        v->failed = true;
}

void vep_drain_events(vep *v)
{
    struct ibv_cq *cq;
    void *ctx;
    while (ibv_get_cq_event(v->cc, &cq, &ctx) == 0)
        ibv_ack_cq_events(cq, 1);
}

int vep_break(vep *v)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
    return ibv_modify_qp(v->qp, &a, IBV_QP_STATE) ? -EIO : 0;
}

int vep_poll_send(vep *v)
{
    struct ibv_wc wc[16];
    int n;
    while ((n = ibv_poll_cq(v->scq, 16, wc)) > 0) {
        for (int i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) {
                DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "verbs send completion: %s",
                         ibv_wc_status_str(wc[i].status));
                v->failed = true;
                continue;
            }
            if (wc[i].wr_id > v->done)
                v->done = wc[i].wr_id; /* completes every earlier (unsignalled) WR */
        }
    }
    if (n < 0)
        v->failed = true;
    return v->failed ? -EIO : 0;
}

uint32_t vep_free_slots(vep *v)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < v->nsend; i++)
        if (!v->ss[i].held && v->ss[i].seq <= v->done)
            n++;
    return n;
}

/* ---- ops ----------------------------------------------------------------------------- */

static int find_slot(vep *v)
{
    for (uint32_t k = 0; k < v->nsend; k++) {
        uint32_t i = (v->cursor + k) % v->nsend;
        if (!v->ss[i].held && v->ss[i].seq <= v->done && (int)i != v->cur) {
            v->cursor = i + 1;
            return (int)i;
        }
    }
    return -1;
}

static uint8_t *verbs_reserve(conn *c, size_t payload)
{
    vep *v = c->v;
    if (!v || v->failed || payload > c->max_msg)
        return NULL;
    int s = find_slot(v);
    if (s < 0) {
        /* completions are cumulative: one poll usually frees a batch of slots */
        uint64_t until = dhps_mono_ns() + 20000000ull;
        while (s < 0 && !v->failed && dhps_mono_ns() < until) {
            if (vep_poll_send(v))
                return NULL;
            s = find_slot(v);
        }
        if (s < 0)
            return NULL;
    }
    v->cur = s;
    return v->mem + (size_t)s * v->slot_bytes + RPC_FRAME_HDR;
}

static void verbs_commit(conn *c, const rpc_frame *f)
{
    vep *v = c->v;
    uint32_t s = (uint32_t)v->cur;
    v->cur = -1;
    uint8_t *p = v->mem + (size_t)s * v->slot_bytes;
    rpc_frame_encode(f, p);
    uint32_t len = RPC_FRAME_HDR + f->len;
    v->ss[s].seq = ++v->assigned;
    v->ss[s].len = len;
    struct ibv_send_wr *w = &v->wr[s];
    w->wr_id = v->ss[s].seq;
    w->next = NULL;
    w->send_flags = len <= v->max_inline ? IBV_SEND_INLINE : 0;
    if (w->send_flags)
        v->inlined++;
    v->sge[s].length = len;
    if (v->tail)
        v->tail->next = w;
    else
        v->head = w;
    v->tail = w;
    c->verbs_dirty = true;
}

static int verbs_flush(conn *c)
{
    vep *v = c->v;
    c->verbs_dirty = false;
    if (!v || !v->head)
        return 0;
    v->tail->send_flags |= IBV_SEND_SIGNALED; /* one completion per post list */
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(v->qp, v->head, &bad);
    v->head = v->tail = NULL;
    v->posts++;
    v->signaled++;
    c->flushes++;
    if (rc) {
        v->failed = true;
        return -EIO;
    }
    return 0;
}

static int verbs_rx(conn *c, rpc_rx_fn fn, void *arg)
{
    vep *v = c->v;
    if (!v || v->failed)
        return -EIO;
    struct ibv_wc wc[32];
    int n = ibv_poll_cq(v->rcq, 32, wc), delivered = 0, rc = 0;
    if (n < 0)
        rc = -EIO;
    for (int i = 0; i < n; i++) {
        if (wc[i].status != IBV_WC_SUCCESS || wc[i].opcode != IBV_WC_RECV ||
            wc[i].wr_id >= v->nrecv) {
            if (wc[i].status != IBV_WC_WR_FLUSH_ERR)
                DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "verbs recv completion: %s",
                         ibv_wc_status_str(wc[i].status));
            rc = -EIO;
            continue;
        }
        if (rc)
            continue; /* after an error, drop the rest: the TCP retry covers them */
        uint32_t s = (uint32_t)wc[i].wr_id;
        const uint8_t *p = v->mem + (size_t)(v->nsend + s) * v->slot_bytes;
        rpc_frame f;
        long m = rpc_frame_parse(p, wc[i].byte_len, c->max_msg, false, &f);
        if (m <= 0 || (uint32_t)m != wc[i].byte_len || f.type == RPC_F_CTRL ||
            f.type == RPC_F_DOORBELL) {
            rc = DHPS_E_MALFORMED;
            continue;
        }
        int x = fn(arg, c, DHPS_RPC_VERBS, &f, p + RPC_FRAME_HDR);
        if (x != 0) {
            rc = x < 0 ? x : -EIO;
            continue;
        }
        v->repost[v->nrepost++] = s;
        delivered++;
    }
    /* re-post before this turn's responses are posted: a peer that sees our
     * response may count this receive as free again */
    if (!rc && post_recvs(v))
        rc = -EIO;
    if (rc == -EIO || rc == DHPS_E_MALFORMED)
        v->failed = true;
    return rc ? rc : delivered;
}

const rpc_ops rpc_verbs_ops = {
    .name = "verbs",
    .reserve = verbs_reserve,
    .commit = verbs_commit,
    .flush = verbs_flush,
    .rx = verbs_rx,
};
