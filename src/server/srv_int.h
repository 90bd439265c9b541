/* Private declarations shared by the server's files. */
#ifndef DHPS_SRV_INT_H
#define DHPS_SRV_INT_H

#include "dhps/server.h"

dhps_server_config *srv_config_dup(const dhps_server_config *c);

#endif
