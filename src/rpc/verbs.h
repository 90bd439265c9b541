/* Private: the RDMA verbs endpoint (RC QP, SEND/RECV over pre-registered slots). */
#ifndef DHPS_RPC_VERBS_H
#define DHPS_RPC_VERBS_H

#include <infiniband/verbs.h>

#include "wire.h"

typedef struct rpc_dev {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    uint8_t port;
    int gid_index;
    union ibv_gid gid;
    enum ibv_mtu mtu;
    bool fatal; /* device-fatal event seen, or the device left sysfs (atomic access) */
    char path[IBV_SYSFS_PATH_MAX]; /* uverbs sysfs node: gone once unregistration starts */
} rpc_dev;

/* Open the first device with an ACTIVE port. 0 or -ENODEV / -errno. */
int rpc_dev_open(rpc_dev **out);
void rpc_dev_close(rpc_dev *d);
/* Drain async events (non-blocking) and, when check_sysfs, test that the device is
 * still registered (a deleted Soft-RoCE link keeps working for open contexts until
 * they close, so events alone do not show it). Returns true when it is unusable.
 * Thread-safe. */
bool rpc_dev_check(rpc_dev *d, bool check_sysfs);

typedef struct vslot {
    uint64_t seq; /* WR sequence that last used this slot (done when <= vep.done) */
    bool held;    /* client: an in-flight call still owns the request bytes */
    uint32_t len; /* bytes of the frame in the slot (header included) */
} vslot;

/* A shared receive queue (server: one per worker) with its own receive CQ, completion
 * channel and registered slots; every QP of the worker receives into it. */
typedef struct vsrq {
    rpc_dev *dev;
    struct ibv_srq *srq;
    struct ibv_cq *rcq;
    struct ibv_comp_channel *cc;
    struct ibv_mr *mr;
    uint8_t *mem;
    uint32_t n, slot_bytes;
    struct ibv_recv_wr *rwr;
    struct ibv_sge *rsge;
    uint32_t *repost, nrepost;
    bool failed;
} vsrq;

int vsrq_create(rpc_dev *d, uint32_t n, uint32_t max_msg, vsrq **out);
void vsrq_destroy(vsrq *q);
int vsrq_event_fd(const vsrq *q);
void vsrq_arm(vsrq *q);
void vsrq_drain_events(vsrq *q);
/* One receive completion of a shared queue: ok false for an error completion (then
 * data is NULL). Return 0, or < 0 to stop after this one. */
typedef int (*vsrq_fn)(void *arg, uint32_t qp_num, bool ok, const uint8_t *data,
                       uint32_t len);
/* Poll the shared receive CQ once (up to 32 completions), re-post their slots in one
 * list. Returns completions handled or < 0 when the queue itself broke. */
int vsrq_rx(vsrq *q, vsrq_fn fn, void *arg);

typedef struct vep {
    rpc_dev *dev;
    struct ibv_cq *scq, *rcq;
    struct ibv_comp_channel *cc; /* receive-CQ events, to sleep when idle */
    struct ibv_qp *qp;
    struct ibv_mr *mr;
    uint8_t *mem;
    uint32_t nsend, nrecv, slot_bytes, max_inline, psn;
    vslot *ss;
    struct ibv_send_wr *wr;
    struct ibv_sge *sge;
    struct ibv_recv_wr *rwr;
    struct ibv_sge *rsge;
    uint32_t *repost, nrepost;
    struct ibv_send_wr *head, *tail; /* pending post list (one doorbell per flush) */
    uint64_t assigned, done;
    uint32_t cursor;
    int cur;      /* slot lent by reserve, or -1 */
    bool failed;
    uint64_t posts, signaled, inlined;
} vep;

/* Create an endpoint: CQs, an RC QP in INIT, one registered region of nsend + nrecv
 * slots (local write only), all receives posted. With srq, the QP receives into that
 * shared queue instead (nrecv is then ignored and the endpoint has no receive CQ). */
int vep_create(rpc_dev *d, uint32_t nsend, uint32_t nrecv, uint32_t max_msg, vsrq *srq,
               vep **out);
void vep_destroy(vep *v);
void vep_info(const vep *v, rpc_verbs_info *out);
/* Bring the QP to RTR and RTS toward the peer described by r. */
int vep_connect(vep *v, const rpc_verbs_info *r);
/* Sleeping: the completion channel's fd (non-blocking) wakes an epoll set. Arm asks
 * for an event on the next receive completion (then poll the CQ once more before
 * sleeping); drain consumes and acknowledges pending events. */
int vep_event_fd(const vep *v);
void vep_arm(vep *v);
void vep_drain_events(vep *v);
/* Force the QP into the error state (test hook). */
int vep_break(vep *v);
/* Process send completions; returns <0 on a completion error. */
int vep_poll_send(vep *v);
/* Free send slots now (not held, send completed). */
uint32_t vep_free_slots(vep *v);
uint8_t *vep_slot_payload(vep *v, uint32_t slot);

#endif
