// GPU control channel admission: see gpu_channel.h.
#include "agent/transport/gpu_channel.h"

#include <string>

#include "agent/transport/socket_io.h"
#include "common/log.h"

namespace pdpool::agent {

const DeviceKvRegion* AdmitGpuChannel(int fd, std::string_view token,
                                      std::string_view expected_token, KvSink* sink,
                                      std::string_view transport, std::chrono::milliseconds idle) {
  if (!net::ConstantTimeEquals(token, expected_token)) {
    LogWarn(std::string(transport) + " KV channel refused: bad token");
    (void)net::SendStatusReply(fd, Status::Unauthorized("bad pool token"), idle);
    return nullptr;
  }
  const DeviceKvRegion* region = sink->DeviceRegion();
  if (region == nullptr) {
    (void)net::SendStatusReply(
        fd,
        Status::Unavailable("this worker's KV cache is in host memory: it takes no " +
                            std::string(transport) + " transfers (use tcp)"),
        idle);
    return nullptr;
  }
  if (!net::SendStatusReply(fd, Status::Ok(), idle).ok()) return nullptr;
  return region;
}

}  // namespace pdpool::agent
