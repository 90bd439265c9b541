// Every public header compiles as C++17 and links against the C libraries (issue 11):
// include them all, use a few types and functions. Exits 0, or 1 naming the failed check.
#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/log.h"
#include "dhps/proto.h"
#include "dhps/route.h"
#include "dhps/rpc.h"
#include "dhps/server.h"
#include "dhps/store.h"

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(sizeof(dhps_proto_hdr) == 64, "same layout from C++");
static_assert(std::is_standard_layout<dhps_client_params>::value, "plain C struct");
static_assert(std::is_trivially_copyable<dhps_client_result>::value, "plain C struct");

static int failed;
#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            std::fprintf(stderr, "FAILED: %s (line %d)\n", #cond, __LINE__);           \
            failed++;                                                                   \
        }                                                                               \
    } while (0)

int main()
{
    CHECK(std::strcmp(dhps_strerror(DHPS_E_TIMEOUT), dhps_strerror(DHPS_E_AUTH)) != 0);

    dhps_client_params cp;
    dhps_client_params_init(&cp);
    CHECK(cp.max_attempts > 0);
    cp.map_path = "/nonexistent/dhps-map.json";
    dhps_client *c = nullptr;
    CHECK(dhps_client_create(&cp, &c) < 0 && c == nullptr);
    dhps_client_destroy(nullptr);

    dhps_route_params rp;
    dhps_route_params_init(&rp);

    dhps_rpc_client_params rpc;
    dhps_rpc_client_params_init(&rpc);

    dhps_store_params sp;
    dhps_store_params_init(&sp);

    const char cfg[] = R"({"node_id": "n", "tables": [{"name": "a", "dim": 4}],
                           "secret_file": "/s", "shards": {"nshards": 8, "own": [0, 2]}})";
    dhps_server_config *sc = nullptr;
    char err[256] = "";
    CHECK(dhps_server_config_parse(cfg, sizeof cfg - 1, &sc, err, sizeof err) == 0);
    dhps_server_config_free(sc);

    uint32_t s = dhps_proto_shard_of(42, 1024);
    CHECK(s < 1024);
    dhps_client_result r{};
    CHECK(r.unanswered == 0);
    CHECK(DHPS_ACK_QUORUM == 1 && DHPS_FP16 == 1);
    CHECK(dhps_client_router_first_healthy.name != nullptr); // an exported variable
    DHPS_LOG(DHPS_LOG_DEBUG, "cxx", "the logging macro from C++: %d", 1);

    std::printf("test_cxx_headers: %s\n", failed ? "FAILED" : "ok");
    return failed ? 1 : 0;
}
