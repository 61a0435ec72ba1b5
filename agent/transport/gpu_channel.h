// The opening every GPU transport's control channel shares on the receiving side, after the
// sender's hello: check the pool token, check that this worker's KV cache is in GPU memory,
// and answer ok or the reason (socket_io.h's status reply). Thread-safe (one fd per caller).
#pragma once

#include <chrono>
#include <string_view>

#include "agent/engine/device_kv.h"
#include "agent/transport/kv_transport.h"

namespace pdpool::agent {

// The receiver's KV region when the channel may go on; nullptr when it was refused (the reply
// is sent; the caller closes the connection). `transport` names the protocol in messages.
const DeviceKvRegion* AdmitGpuChannel(int fd, std::string_view token,
                                      std::string_view expected_token, KvSink* sink,
                                      std::string_view transport, std::chrono::milliseconds idle);

}  // namespace pdpool::agent
