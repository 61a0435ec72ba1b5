// Container probes: see container_probe.h.
#include "agent/node/container_probe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pdpool::agent {
namespace {

Duration Seconds(const Json& probe, const char* pointer, int64_t fallback, int64_t minimum) {
  int64_t v = JsonGet<int64_t>(probe, pointer, fallback);
  return std::chrono::seconds(std::max(v, minimum));
}

// A probe port: a number, or the name of one of the container's ports.
StatusOr<int> ResolvePort(const Json& port, const Json& container, const std::string& field) {
  int value = 0;
  if (port.is_number_integer()) {
    value = port.get<int>();
  } else if (port.is_string()) {
    const std::string name = port.get<std::string>();
    if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos) {
      value = std::stoi(name);
    } else {
      const Json* ports = JsonChild(container, "ports");
      if (ports != nullptr && ports->is_array()) {
        for (const Json& p : *ports) {
          if (JsonGet<std::string>(p, "/name", "") == name) {
            value = JsonGet<int>(p, "/containerPort", 0);
            break;
          }
        }
      }
      if (value == 0) {
        return Status::InvalidArgument(field + ".port: the container has no port named \"" + name +
                                       "\"");
      }
    }
  } else {
    return Status::InvalidArgument(field + ".port: must be a number or a port name");
  }
  if (value < 1 || value > 65535) {
    return Status::InvalidArgument(field + ".port: must be 1-65535, got " + std::to_string(value));
  }
  return value;
}

ProbeOutcome TcpConnect(const std::string& host, int port, Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0) {
    return {false, "resolve " + host + ": " + gai_strerror(rc)};
  }
  ProbeOutcome out{false, "no address"};
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (rc != 0 && err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int ms =
          static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count());
      int n = ::poll(&p, 1, ms);
      if (n == 1) {
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      } else {
        err = ETIMEDOUT;
      }
    }
    ::close(fd);
    if (err == 0) {
      out = {true, "connected"};
      break;
    }
    out = {false, std::string("connect: ") + std::strerror(err)};
  }
  freeaddrinfo(res);
  return out;
}

template <typename ClientT>
ProbeOutcome HttpGet(ClientT& client, const ProbeSpec& spec) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(spec.timeout).count();
  const time_t sec = static_cast<time_t>(ms / 1000);
  const time_t usec = static_cast<time_t>((ms % 1000) * 1000);
  client.set_connection_timeout(sec, usec);
  client.set_read_timeout(sec, usec);
  client.set_write_timeout(sec, usec);
  httplib::Headers headers = {{"User-Agent", "kube-probe/1.20"}};
  for (const auto& [k, v] : spec.headers) headers.emplace(k, v);
  auto res = client.Get(spec.path.c_str(), headers);
  if (!res) return {false, "GET " + spec.path + ": " + httplib::to_string(res.error())};
  const bool ok = res->status >= 200 && res->status < 400;
  return {ok, "HTTP " + std::to_string(res->status)};
}

}  // namespace

StatusOr<ProbeSpec> ParseProbe(const Json& probe, const Json& container,
                               const std::string& pod_ip) {
  ProbeSpec spec;
  spec.host = pod_ip;
  spec.initial_delay = Seconds(probe, "/initialDelaySeconds", 0, 0);
  spec.period = Seconds(probe, "/periodSeconds", 10, 1);
  spec.timeout = Seconds(probe, "/timeoutSeconds", 1, 1);
  spec.success_threshold = std::max(1, JsonGet<int>(probe, "/successThreshold", 1));
  spec.failure_threshold = std::max(1, JsonGet<int>(probe, "/failureThreshold", 3));
  if (const Json* http = JsonChild(probe, "httpGet")) {
    spec.kind = ProbeSpec::Kind::kHttpGet;
    const Json* port = JsonChild(*http, "port");
    if (port == nullptr) return Status::InvalidArgument("httpGet.port: required");
    StatusOr<int> p = ResolvePort(*port, container, "httpGet");
    if (!p.ok()) return p.status();
    spec.port = *p;
    spec.path = JsonGet<std::string>(*http, "/path", "/");
    if (spec.path.empty() || spec.path.front() != '/') spec.path = "/" + spec.path;
    spec.scheme = JsonGet<std::string>(*http, "/scheme", "HTTP");
    if (spec.scheme != "HTTP" && spec.scheme != "HTTPS") {
      return Status::InvalidArgument("httpGet.scheme: must be HTTP or HTTPS, got " + spec.scheme);
    }
    std::string host = JsonGet<std::string>(*http, "/host", "");
    if (!host.empty()) spec.host = host;
    if (const Json* headers = JsonChild(*http, "httpHeaders"); headers && headers->is_array()) {
      for (const Json& h : *headers) {
        spec.headers.emplace_back(JsonGet<std::string>(h, "/name", ""),
                                  JsonGet<std::string>(h, "/value", ""));
      }
    }
  } else if (const Json* tcp = JsonChild(probe, "tcpSocket")) {
    spec.kind = ProbeSpec::Kind::kTcpSocket;
    const Json* port = JsonChild(*tcp, "port");
    if (port == nullptr) return Status::InvalidArgument("tcpSocket.port: required");
    StatusOr<int> p = ResolvePort(*port, container, "tcpSocket");
    if (!p.ok()) return p.status();
    spec.port = *p;
    std::string host = JsonGet<std::string>(*tcp, "/host", "");
    if (!host.empty()) spec.host = host;
  } else if (JsonChild(probe, "exec") != nullptr) {
    spec.unsupported = "exec probes are not supported by pdpool's node agent";
  } else {
    spec.unsupported = "the probe has no httpGet, tcpSocket or exec handler";
  }
  return spec;
}

ProbeTracker::ProbeTracker(ProbeSpec spec, TimePoint container_started, bool initial)
    : spec_(std::move(spec)),
      result_(initial),
      next_due_(container_started + spec_.initial_delay) {}

bool ProbeTracker::Record(bool success, TimePoint now) {
  next_due_ = now + spec_.period;
  const bool before = result_;
  if (success) {
    failures_ = 0;
    if (++successes_ >= spec_.success_threshold) result_ = true;
  } else {
    successes_ = 0;
    if (++failures_ >= spec_.failure_threshold) result_ = false;
  }
  return result_ != before;
}

TimePoint NextProbeDue(const std::optional<ProbeTracker>& startup, bool started,
                       const std::optional<ProbeTracker>& readiness,
                       const std::optional<ProbeTracker>& liveness) {
  if (startup && !started) return startup->next_due();
  TimePoint due = TimePoint::max();
  if (readiness) due = std::min(due, readiness->next_due());
  if (liveness) due = std::min(due, liveness->next_due());
  return due;
}

ProbeOutcome RunProbe(const ProbeSpec& spec) {
  switch (spec.kind) {
    case ProbeSpec::Kind::kUnsupported:
      return {false, spec.unsupported};
    case ProbeSpec::Kind::kTcpSocket:
      return TcpConnect(spec.host, spec.port, spec.timeout);
    case ProbeSpec::Kind::kHttpGet:
      break;
  }
  if (spec.scheme == "HTTPS") {
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
    httplib::SSLClient client(spec.host, spec.port);
    client.enable_server_certificate_verification(false);
    return HttpGet(client, spec);
#else
    return {false, "HTTPS probes need an OpenSSL build of cpp-httplib"};
#endif
  }
  httplib::Client client(spec.host, spec.port);
  return HttpGet(client, spec);
}

}  // namespace pdpool::agent
