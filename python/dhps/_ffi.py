"""cffi ABI-mode binding of libdhps.so.0 (the public C API of include/dhps/client.h).

The cdef below copies the declarations the package uses from include/dhps/client.h,
cluster.h, error.h and proto.h. Keep it in step with the headers: tests/test_abi.py
compiles a small C program against the headers and compares every struct size and
field offset declared here, so a header change that breaks the binding fails a test.

Library search order: $DHPS_LIB (a path to libdhps.so.0); the build tree next to the
package (../build/rel/libdhps.so.0, for a source checkout); then the system loader
("libdhps.so.0": an installed .deb, or a prefix on LD_LIBRARY_PATH).

cffi releases the GIL around every call into a library opened with ffi.dlopen (ABI
mode), so a thread blocked in dhps_client_lookup does not stop other Python threads
(tests/test_client.py::test_gil_released checks it).
"""
import os

from cffi import FFI

CDEF = r"""
typedef struct dhps_client dhps_client;
typedef struct dhps_client_router_ops dhps_client_router_ops;

typedef struct dhps_client_params {
    const char *map_path;
    const void *secret;
    size_t secret_len;
    const char *host, *pod, *az;
    int router;
    const dhps_client_router_ops *router_ops;
    void *router_self;
    uint32_t max_node_id;
    uint32_t max_msg;
    uint32_t connect_timeout_ms;
    uint32_t redial_backoff_ms;
    uint64_t default_timeout_us;
    uint32_t reload_interval_ms;
    uint32_t max_attempts;
    bool hedge;
    uint32_t attempt_timeout_us;
    const char *etcd;
    const char *cluster;
    bool allow_nonfinite;
    int tls;
    const char *tls_ca_file;
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_server_name;
    uint32_t spin_us;
} dhps_client_params;

typedef struct dhps_client_result {
    size_t found;
    size_t missing;
    size_t unanswered;
    uint32_t messages;
    uint32_t retries;
    uint32_t hedges;
    uint64_t version;
} dhps_client_result;

void dhps_client_params_init(dhps_client_params *p);
int dhps_client_create(const dhps_client_params *p, dhps_client **out);
void dhps_client_destroy(dhps_client *c);
int dhps_client_secret_load(const char *path, void *buf, size_t cap, size_t *len, char *err, size_t errlen);
int dhps_client_set_default(dhps_client *c, const char *table, const float *vec, uint32_t dim);
int dhps_client_lookup_masks(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                             void *out, uint32_t dim, int dtype, uint64_t *missing_mask,
                             uint64_t *unanswered_mask, uint64_t timeout_us,
                             dhps_client_result *res);
int dhps_client_update(dhps_client *c, const char *table, const uint64_t *keys,
                       const void *values, size_t n, uint32_t dim, int dtype, uint32_t ttl,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res);
int dhps_client_delete(dhps_client *c, const char *table, const uint64_t *keys, size_t n,
                       int ack, uint64_t timeout_us, uint64_t *failed_mask,
                       dhps_client_result *res);
int dhps_client_table_info(dhps_client *c, const char *table, uint32_t *dim, int *dtype,
                           uint64_t timeout_us);
int dhps_client_connect(dhps_client *c);
uint64_t dhps_client_map_version(dhps_client *c);
const char *dhps_strerror(int err);
"""

# Constants copied from the headers (checked by tests/test_abi.py).
DHPS_FP32 = 0
DHPS_FP16 = 1
DHPS_ACK_ALL, DHPS_ACK_QUORUM, DHPS_ACK_ONE = 0, 1, 2
DHPS_CLIENT_TTL_DEFAULT = 0xFFFFFFFF
DHPS_TABLE_NAME_MAX = 48
DHPS_RPC_MAX_SECRET = 256
DHPS_RPC_SPIN_US_MAX = 1000000

ffi = FFI()
ffi.cdef(CDEF)

_lib = None
_lib_path = None


def _candidates():
    env = os.environ.get("DHPS_LIB")
    if env:
        return [env]  # explicit: no fallback, so a wrong path is an error, not a surprise
    here = os.path.dirname(os.path.abspath(__file__))
    out = [os.path.join(here, "libdhps.so.0"),
           os.path.join(here, "..", "..", "build", "rel", "libdhps.so.0")]
    return [p for p in out if os.path.exists(p)] + ["libdhps.so.0"]


def lib():
    """The loaded library (loaded on first use)."""
    global _lib, _lib_path
    if _lib is None:
        errs = []
        for path in _candidates():
            try:
                _lib = ffi.dlopen(path)
                _lib_path = path
                break
            except OSError as e:
                errs.append(f"{path}: {e}")
        if _lib is None:
            raise OSError("dhps: cannot load libdhps.so.0 (set DHPS_LIB to its path): "
                          + "; ".join(errs))
    return _lib


def lib_path():
    lib()
    return _lib_path
