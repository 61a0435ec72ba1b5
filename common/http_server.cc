// BindHttpServer: see http_server.h.
#include "common/http_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdlib>
#include <memory>

namespace pdpool {

std::string DefaultListenHost() {
  const char* host = std::getenv("PDPOOL_LISTEN_HOST");
  return host != nullptr && *host != '\0' ? host : "0.0.0.0";
}

StatusOr<int> BindHttpServer(httplib::Server& server, const std::string& host, int port,
                             const std::string& what) {
  // httplib creates the listening socket inside bind and calls listen(fd, 5) on it; note the fd
  // as it is created, then raise the backlog (Linux applies a repeated listen() to the queue).
  auto listen_fd = std::make_shared<int>(-1);
  server.set_socket_options([listen_fd](socket_t fd) {
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *listen_fd = fd;
  });
  int bound = -1;
  if (port == 0) {
    bound = server.bind_to_any_port(host);
  } else if (server.bind_to_port(host, port)) {
    bound = port;
  }
  if (bound <= 0) {
    return Status::Unavailable(what + ": cannot listen on " + host + ":" + std::to_string(port));
  }
  if (*listen_fd >= 0) ::listen(*listen_fd, SOMAXCONN);
  return bound;
}

}  // namespace pdpool
