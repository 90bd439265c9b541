/* libFuzzer: dhps_server_config_parse over arbitrary bytes. Accepted configs must be
 * internally consistent; rejected ones must say why. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dhps_server_config *c = NULL;
    char err[256];
    int rc = dhps_server_config_parse(data, size, &c, err, sizeof err);
    if (rc == 0) {
        if (!c || !c->node_id || !c->secret_file || c->ntables < 1 ||
            c->ntables > DHPS_SERVER_MAX_TABLES ||
            (!c->cluster_map && (c->nshards < 1 || !c->owned)) ||
            c->workers < 1 || c->workers > 64)
            abort();
        for (uint32_t i = 0; i < c->ntables; i++)
            if (c->tables[i].dim < 1 || c->tables[i].dim > DHPS_SERVER_MAX_DIM ||
                strlen(c->tables[i].name) == 0 ||
                strlen(c->tables[i].name) >= DHPS_TABLE_NAME_MAX)
                abort();
        uint32_t owned = 0;
        for (uint32_t i = 0; c->owned && i < c->nshards; i++)
            owned += c->owned[i];
        if (!c->cluster_map && owned == 0)
            abort();
        dhps_server_config_free(c);
    } else if (rc == DHPS_E_CONFIG) {
        if (c || strncmp(err, "config ", 7))
            abort();
    } else if (rc != -12 /* -ENOMEM */) {
        abort();
    }
    return 0;
}
