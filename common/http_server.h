// BindHttpServer: binds a cpp-httplib server the way every pdpool endpoint needs it: port 0
// picks a free port, SO_REUSEADDR, TCP_NODELAY, and a listen backlog of SOMAXCONN instead of
// httplib's 5 (with 5, a burst of new connections — a router opening its pool to a worker, a
// load balancer's health checks — loses SYNs and waits out 1 s retransmits). Call before
// listen_after_bind(). Thread-compatible.
#pragma once

#include <string>

#include "common/status.h"

namespace httplib {
class Server;
}

namespace pdpool {

// The default listen address of pdpool's servers: $PDPOOL_LISTEN_HOST when set, else 0.0.0.0.
// On a cluster each pod has its own network namespace and 0.0.0.0 is right; the local rack's
// node agent runs pods as processes sharing the host's, so it sets PDPOOL_LISTEN_HOST to the
// pod's own loopback address (as a network namespace would confine it).
std::string DefaultListenHost();

// The bound port, or kUnavailable naming host:port.
StatusOr<int> BindHttpServer(httplib::Server& server, const std::string& host, int port,
                             const std::string& what);

}  // namespace pdpool
