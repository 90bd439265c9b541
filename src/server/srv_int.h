/* Private declarations shared by the server's files. */
#ifndef DHPS_SRV_INT_H
#define DHPS_SRV_INT_H

#include <stddef.h>

#include "dhps/server.h"

dhps_server_config *srv_config_dup(const dhps_server_config *c);

/* printf into err[errlen] (truncated, NUL-terminated); nothing when err is NULL or errlen
 * 0. The one error-message formatter of server.c and admin.c (defined in admin.c). */
void srv_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
