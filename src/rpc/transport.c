/* rpc transports behind one ops table: TCP (send buffer + one send per flush; plain or
 * TLS underneath, tls.h) and shared memory (SPSC byte rings, frames in place, doorbell on
 * TCP when the consumer sleeps). Plus small I/O helpers used by the hello. */
#include "internal.h"
#include "verbs.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/rand.h>
#include <openssl/evp.h>

#include "dhps/log.h"

int rpc_random(void *buf, size_t n)
{
    return RAND_bytes(buf, (int)n) == 1 ? 0 : -EIO;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void rpc_host_id(const uint8_t *override, uint8_t out[RPC_HOST_ID])
{
    memset(out, 0, RPC_HOST_ID);
    if (override) {
        memcpy(out, override, RPC_HOST_ID);
        return;
    }
    char s[64] = {0};
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, s, sizeof s - 1);
        close(fd);
        if (n < 0)
            n = 0;
        s[n] = 0;
    }
    int k = 0, hi = -1;
    for (char *p = s; *p && k < (int)RPC_HOST_ID; p++) {
        int v = hexval(*p);
        if (v < 0)
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            out[k++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
}

void dhps_rpc_host_id(const char *label, uint8_t out[DHPS_RPC_HOST_ID_LEN])
{
    _Static_assert(DHPS_RPC_HOST_ID_LEN == RPC_HOST_ID, "host id length");
    rpc_host_id(NULL, out);
    if (!label || !*label)
        return;
    size_t l = strlen(label);
    uint8_t md[EVP_MAX_MD_SIZE], *buf = malloc(RPC_HOST_ID + l);
    unsigned int mdl = 0;
    if (!buf)
        return; /* the boot id alone: still a valid id, only coarser */
    memcpy(buf, out, RPC_HOST_ID);
    memcpy(buf + RPC_HOST_ID, label, l);
    int ok = EVP_Digest(buf, RPC_HOST_ID + l, md, &mdl, EVP_sha256(), NULL);
    free(buf);
    if (ok != 1 || mdl < RPC_HOST_ID)
        return;
    memcpy(out, md, RPC_HOST_ID);
}

void rpc_tune_socket(int fd, uint32_t busy_poll_us)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (busy_poll_us) {
        int v = (int)busy_poll_us;
        if (setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &v, sizeof v) != 0)
            DHPS_LOG(DHPS_LOG_INFO, RPC_LOG, "SO_BUSY_POLL not set: %s", strerror(errno));
    }
}

/* The connection's byte stream, plain or TLS: > 0 bytes moved, 0 (recv) the peer closed,
 * -EAGAIN nothing now, or an error code (DHPS_E_UNREACHABLE; TLS: also DHPS_E_TLS,
 * DHPS_E_MALFORMED). */
static long stream_send(int fd, rpc_tls *t, const void *p, size_t n)
{
    if (t)
        return rpc_tls_write(t, p, n);
    for (;;) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            return (long)w;
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return -EAGAIN;
        return DHPS_E_UNREACHABLE;
    }
}

static long stream_recv(int fd, rpc_tls *t, void *p, size_t n)
{
    if (t)
        return rpc_tls_read(t, p, n);
    for (;;) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r >= 0)
            return (long)r;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        return DHPS_E_UNREACHABLE;
    }
}

int rpc_hio_put(rpc_hio *h, const rpc_hello *m)
{
    long n = rpc_hello_encode(m, h->out, sizeof h->out);
    if (n < 0)
        return -EINVAL;
    h->out_off = 0;
    h->out_len = (size_t)n;
    return 0;
}

int rpc_hio_flush(rpc_hio *h, int fd, rpc_tls *t)
{
    while (h->out_off < h->out_len) {
        long w = stream_send(fd, t, h->out + h->out_off, h->out_len - h->out_off);
        if (w > 0) {
            h->out_off += (size_t)w;
            continue;
        }
        return w == -EAGAIN ? 0 : (int)w;
    }
    int r = t ? rpc_tls_flush(t) : 0; /* records the session gathered */
    return r == -EAGAIN ? 0 : r < 0 ? r : 1;
}

int rpc_hio_read(rpc_hio *h, int fd, rpc_tls *t, rpc_hello *m)
{
    for (;;) {
        size_t need = RPC_HELLO_HDR;
        if (h->in_len >= RPC_HELLO_HDR) {
            long n = rpc_hello_parse(h->in, h->in_len, m);
            if (n < 0)
                return (int)n;
            if (n > 0) {
                h->in_len = 0;
                return 1;
            }
            /* the body length is bounded by the parse above */
            need += (uint32_t)h->in[8] | (uint32_t)h->in[9] << 8 |
                    (uint32_t)h->in[10] << 16 | (uint32_t)h->in[11] << 24;
            if (need <= h->in_len || need > sizeof h->in)
                return DHPS_E_MALFORMED;
        }
        long r = stream_recv(fd, t, h->in + h->in_len, need - h->in_len);
        if (r > 0) {
            h->in_len += (size_t)r;
            continue;
        }
        return r == 0 ? DHPS_E_UNREACHABLE : r == -EAGAIN ? 0 : (int)r;
    }
}

/* ---- connection ------------------------------------------------------------------- */

int conn_init(conn *c, int fd, rpc_tls *tls, uint32_t max_msg, bool is_server)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->tls = tls;
    c->max_msg = max_msg;
    c->is_server = is_server;
    c->transport = DHPS_RPC_TCP;
    /* room for frames up to 64 KiB and what follows them; a larger frame grows the
     * buffer for itself (conn_in_grow) and it shrinks back once consumed */
    size_t whole = RPC_FRAME_HDR + (size_t)max_msg + 65536;
    c->in_base = whole < RPC_FRAME_HDR + 131072u ? whole : RPC_FRAME_HDR + 131072u;
    c->in.cap = c->in_base;
    c->in.p = malloc(c->in.cap);
    c->out.cap = 65536;
    c->out.p = malloc(c->out.cap);
    if (!c->in.p || !c->out.p) {
        conn_fini(c);
        return -ENOMEM;
    }
    return 0;
}

/* Make room for a frame of `total` bytes (header + payload) at the start of in, charging
 * the bytes above in_base to the server's input budget. 0, DHPS_E_BUSY (budget), -ENOMEM. */
static int conn_in_grow(conn *c, size_t total)
{
    size_t want = total + 65536; /* and a little of what follows */
    if (want <= c->in.cap)
        return 0;
    if (c->in_used) {
        uint64_t more = want - c->in.cap;
        uint64_t now = atomic_fetch_add_explicit(c->in_used, more, memory_order_relaxed);
        if (c->in_limit && now + more > c->in_limit) {
            atomic_fetch_sub_explicit(c->in_used, more, memory_order_relaxed);
            return DHPS_E_BUSY;
        }
    }
    uint8_t *np = realloc(c->in.p, want);
    if (!np) {
        if (c->in_used)
            atomic_fetch_sub_explicit(c->in_used, want - c->in.cap, memory_order_relaxed);
        return -ENOMEM;
    }
    c->in.p = np;
    c->in.cap = want;
    c->in_grown_ns = dhps_mono_ns();
    return 0;
}

void conn_in_shrink(conn *c, uint64_t now)
{
    if (c->in.cap <= c->in_base || c->in.len > c->in_base || now - c->in_grown_ns < 1000000000ull)
        return;
    uint8_t *np = realloc(c->in.p, c->in_base);
    if (!np)
        return; /* keep the larger buffer: still charged, still correct */
    if (c->in_used)
        atomic_fetch_sub_explicit(c->in_used, c->in.cap - c->in_base, memory_order_relaxed);
    c->in.p = np;
    c->in.cap = c->in_base;
}

void conn_fini(conn *c)
{
    rpc_tls_free(c->tls); /* close_notify, if it fits, before the socket closes */
    c->tls = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->in_used && c->in.cap > c->in_base)
        atomic_fetch_sub_explicit(c->in_used, c->in.cap - c->in_base, memory_order_relaxed);
    c->in_used = NULL;
    free(c->in.p);
    free(c->out.p);
    c->in.p = c->out.p = NULL;
    if (c->shm_base)
        munmap(c->shm_base, c->shm_len);
    c->shm_base = NULL;
    vep_destroy(c->v);
    c->v = NULL;
}

/* ---- TCP ops ---------------------------------------------------------------------- */

static uint8_t *tcp_reserve(conn *c, size_t payload)
{
    obuf *o = &c->out;
    size_t need = RPC_FRAME_HDR + payload;
    if (o->cap - o->tail < need) {
        if (o->head) { /* compact */
            memmove(o->p, o->p + o->head, o->tail - o->head);
            o->tail -= o->head;
            o->head = 0;
        }
        if (o->cap - o->tail < need) {
            size_t nc = o->cap * 2;
            while (nc - o->tail < need)
                nc *= 2;
            uint8_t *np = realloc(o->p, nc);
            if (!np)
                return NULL;
            o->p = np;
            o->cap = nc;
        }
    }
    return o->p + o->tail + RPC_FRAME_HDR;
}

static void tcp_commit(conn *c, const rpc_frame *f)
{
    rpc_frame_encode(f, c->out.p + c->out.tail);
    c->out.tail += RPC_FRAME_HDR + f->len;
    c->tcp_dirty = true;
}

static int tcp_flush(conn *c)
{
    obuf *o = &c->out;
    if (o->head == o->tail) {
        int r = c->tls ? rpc_tls_flush(c->tls) : 0; /* records gathered earlier */
        if (r == -EAGAIN)
            return 0;
        c->tcp_dirty = false;
        return r;
    }
    c->flushes++;
    while (o->head < o->tail) {
        long w = stream_send(c->fd, c->tls, o->p + o->head, o->tail - o->head);
        if (w > 0) {
            o->head += (size_t)w;
            continue;
        }
        if (w == -EAGAIN)
            return 0; /* stays dirty; the loop retries (EPOLLOUT, or EPOLLIN for a TLS
                         write that waits for the peer: tls->want_read) */
        return (int)w;
    }
    o->head = o->tail = 0;
    if (c->tls && rpc_tls_unsent(c->tls))
        return 0; /* records gathered by the session wait for room: stays dirty */
    c->tcp_dirty = false;
    return 0;
}

/* Read what the stream has into c->in while at least `room` bytes are free. Plain: one
 * recv (the kernel hands over what it has). TLS: records until the session has nothing
 * (WANT_READ) or less than room is free; room is a whole record's plaintext, so each read
 * takes a record whole and the session never keeps decrypted bytes that no socket event
 * would announce. Returns 1 when it stopped for lack of room (more may wait), 0 when the
 * stream had nothing more (or ended: c->eof), < 0 an error. */
static int conn_fill(conn *c, size_t room)
{
    ibuf *in = &c->in;
    while (in->cap - in->len >= room) {
        long r = stream_recv(c->fd, c->tls, in->p + in->len, in->cap - in->len);
        if (r == 0) {
            c->eof = true;
            return 0;
        }
        if (r == -EAGAIN)
            return 0;
        if (r < 0)
            return (int)r;
        in->len += (size_t)r;
        if (!c->tls)
            return in->len == in->cap;
    }
    return 1;
}

static int tcp_rx_loop(conn *c, rpc_rx_fn fn, void *arg, bool *held_out)
{
    ibuf *in = &c->in;
    const size_t room = c->tls ? RPC_TLS_RECORD_MAX : 1;
    int delivered = 0;
    bool held = false; /* TLS: reading only what the session buffered (see below) */
    for (;;) {
        int more = conn_fill(c, room);
        if (more < 0)
            return more;
        size_t off = 0;
        for (;;) {
            rpc_frame f;
            long n = rpc_frame_parse(in->p + off, in->len - off, c->max_msg, false, &f);
            if (n < 0)
                return (int)n;
            if (n == 0)
                break;
            int r = fn(arg, c, DHPS_RPC_TCP, &f, in->p + off + RPC_FRAME_HDR);
            if (r < 0)
                return r;
            off += (size_t)n;
            delivered++;
        }
        if (off) {
            memmove(in->p, in->p + off, in->len - off);
            in->len -= off;
            c->last_rx_ns = dhps_mono_ns();
        }
        /* a partial frame, or (TLS) a partial record, starts the frame clock */
        bool partial = in->len != 0 || (c->tls && rpc_tls_pending(c->tls));
        c->in_since_ns = !partial ? 0 : c->in_since_ns ? c->in_since_ns : dhps_mono_ns();
        if (c->eof)
            return in->len ? DHPS_E_MALFORMED : DHPS_E_UNREACHABLE;
        if (in->cap - in->len < room && in->len >= RPC_FRAME_HDR) {
            /* a frame larger than the free room: grow for it (its length was checked
             * against max_msg by the parse above) and read on */
            rpc_frame f;
            (void)rpc_frame_parse(in->p, in->len, c->max_msg, false, &f);
            int g = conn_in_grow(c, RPC_FRAME_HDR + (size_t)f.len);
            if (g < 0)
                return g;
            continue;
        }
        if (off == 0)
            break; /* nothing new: a frame is waiting for bytes */
        if (c->tls) {
            /* enough for one turn: the socket's readiness brings us back, but records
             * the session read ahead would wait for it: those are handled now, without
             * reading more from the socket */
            if (!more)
                break;
            if (delivered > 256 && !held) {
                rpc_tls_hold(c->tls, true);
                held = *held_out = true;
            }
            continue;
        }
        if (delivered > 256)
            break; /* enough for one turn: the socket's readiness brings us back */
        /* read on only when the recv filled the buffer (more may wait in the socket).
         * A recv that left room took everything the socket had: bytes arriving since
         * keep the fd readable, and the level-triggered epoll brings us back. (No
         * poll() here: on a virtual machine each syscall is a large share of a small
         * call's cost.) */
        if (!more)
            break;
    }
    return delivered;
}

static int tcp_rx(conn *c, rpc_rx_fn fn, void *arg)
{
    bool held = false;
    int r = tcp_rx_loop(c, fn, arg, &held);
    if (held)
        rpc_tls_hold(c->tls, false);
    return r;
}

const rpc_ops rpc_tcp_ops = {
    .name = "tcp",
    .reserve = tcp_reserve,
    .commit = tcp_commit,
    .flush = tcp_flush,
    .rx = tcp_rx,
};

/* ---- shared memory ops ------------------------------------------------------------ */

int shm_attach(conn *c, int shmfd, size_t bytes, uint64_t cookie, bool create)
{
    void *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, shmfd, 0);
    if (base == MAP_FAILED)
        return -errno;
    shm_region_hdr *h = base;
    uint64_t ring = (bytes - SHM_HDR_BYTES) / 2;
    if (create) {
        memset(h, 0, sizeof *h);
        h->cookie = cookie;
        h->ring_bytes = ring;
        atomic_store_explicit((_Atomic uint64_t *)&h->magic, SHM_MAGIC, memory_order_release);
    } else if (atomic_load_explicit((_Atomic uint64_t *)&h->magic, memory_order_acquire) !=
                   SHM_MAGIC ||
               h->cookie != cookie || h->ring_bytes != ring) {
        munmap(base, bytes);
        return DHPS_E_MALFORMED;
    }
    c->shm_base = base;
    c->shm_len = bytes;
    uint8_t *c2s = (uint8_t *)base + SHM_HDR_BYTES, *s2c = c2s + ring;
    shm_ring *tx = &c->tx, *rx = &c->rx;
    tx->size = rx->size = ring;
    if (c->is_server) {
        rx->ctl = &h->c2s, rx->data = c2s;
        tx->ctl = &h->s2c, tx->data = s2c;
    } else {
        tx->ctl = &h->c2s, tx->data = c2s;
        rx->ctl = &h->s2c, rx->data = s2c;
    }
    tx->pos = tx->published = atomic_load_explicit(&tx->ctl->tail, memory_order_acquire);
    rx->pos = atomic_load_explicit(&rx->ctl->head, memory_order_acquire);
    return 0;
}

static uint8_t *shm_reserve(conn *c, size_t payload)
{
    shm_ring *r = &c->tx;
    uint64_t n8 = align8(RPC_FRAME_HDR + payload);
    uint64_t off = r->pos & (r->size - 1);
    uint64_t to_end = r->size - off;
    uint64_t extra = to_end < n8 ? to_end : 0;
    uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    if (head > r->pos || r->pos - head > r->size)
        return NULL; /* a peer scribbled on the ring: treat as full; rx detects it */
    if (r->pos + extra + n8 - head > r->size)
        return NULL;
    if (extra) {
        if (to_end >= RPC_FRAME_HDR) {
            rpc_frame pad = {.type = RPC_F_PAD, .len = (uint32_t)(to_end - RPC_FRAME_HDR)};
            rpc_frame_encode(&pad, r->data + off);
        }
        r->pos += extra;
        off = 0;
    }
    return r->data + off + RPC_FRAME_HDR;
}

static void shm_commit(conn *c, const rpc_frame *f)
{
    shm_ring *r = &c->tx;
    rpc_frame_encode(f, r->data + (r->pos & (r->size - 1)));
    r->pos += align8(RPC_FRAME_HDR + f->len);
    c->shm_dirty = true;
}

static int shm_flush(conn *c)
{
    shm_ring *r = &c->tx;
    c->shm_dirty = false;
    if (r->pos == r->published)
        return 0;
    r->published = r->pos;
    c->flushes++;
    atomic_store_explicit(&r->ctl->tail, r->pos, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&r->ctl->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&r->ctl->sleeping, 0, memory_order_seq_cst)) {
        /* the consumer sleeps in epoll on the TCP socket: ring its doorbell there */
        rpc_frame db = {.type = RPC_F_DOORBELL};
        uint8_t *p = tcp_reserve(c, 0);
        if (!p)
            return -ENOMEM;
        tcp_commit(c, &db);
        c->doorbells++;
        return tcp_flush(c);
    }
    return 0;
}

bool shm_rx_pending(conn *c)
{
    return atomic_load_explicit(&c->rx.ctl->tail, memory_order_acquire) != c->rx.pos;
}

static int shm_rx(conn *c, rpc_rx_fn fn, void *arg)
{
    shm_ring *r = &c->rx;
    uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    if (tail < r->pos || tail - r->pos > r->size)
        return DHPS_E_MALFORMED;
    int delivered = 0, rc = 0;
    uint64_t start = r->pos;
    while (r->pos < tail) {
        uint64_t off = r->pos & (r->size - 1), to_end = r->size - off;
        if (to_end < RPC_FRAME_HDR) {
            r->pos += to_end;
            continue;
        }
        uint64_t avail = tail - r->pos < to_end ? tail - r->pos : to_end;
        rpc_frame f;
        long n = rpc_frame_parse(r->data + off, avail, c->max_msg, true, &f);
        if (n <= 0) {
            rc = DHPS_E_MALFORMED;
            break;
        }
        if (f.type == RPC_F_PAD) {
            if ((uint64_t)n != to_end) {
                rc = DHPS_E_MALFORMED;
                break;
            }
            r->pos += to_end;
            continue;
        }
        if (f.type == RPC_F_DOORBELL) {
            rc = DHPS_E_MALFORMED;
            break;
        }
        int x = fn(arg, c, DHPS_RPC_SHM, &f, r->data + off + RPC_FRAME_HDR);
        if (x < 0) {
            rc = x;
            break;
        }
        if (x == 1)
            break; /* not consumed: back-pressure */
        r->pos += align8((size_t)n);
        delivered++;
        if (r->pos - start >= r->size / 2)
            break; /* bound one turn's work; also frees ring space early */
    }
    atomic_store_explicit(&r->ctl->head, r->pos, memory_order_release);
    return rc ? rc : delivered;
}

bool shm_prepare_sleep(conn *c)
{
    atomic_store_explicit(&c->rx.ctl->sleeping, 1, memory_order_seq_cst);
    if (shm_rx_pending(c)) {
        atomic_store_explicit(&c->rx.ctl->sleeping, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

void shm_end_sleep(conn *c)
{
    atomic_store_explicit(&c->rx.ctl->sleeping, 0, memory_order_relaxed);
}

const rpc_ops rpc_shm_ops = {
    .name = "shm",
    .reserve = shm_reserve,
    .commit = shm_commit,
    .flush = shm_flush,
    .rx = shm_rx,
};

const rpc_ops *const rpc_transports[DHPS_RPC_NTRANSPORTS] = {
    [DHPS_RPC_TCP] = &rpc_tcp_ops,
    [DHPS_RPC_SHM] = &rpc_shm_ops,
    [DHPS_RPC_VERBS] = &rpc_verbs_ops,
};
