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

// The bound port, or kUnavailable naming host:port.
StatusOr<int> BindHttpServer(httplib::Server& server, const std::string& host, int port,
                             const std::string& what);

}  // namespace pdpool
