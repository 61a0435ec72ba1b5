// KV transport selection: see kv_transport_select.h.
#include "agent/transport/kv_transport_select.h"

namespace pdpool::agent {
namespace {

std::string Gpu(const std::string& uuid) { return uuid.empty() ? "(no GPU)" : uuid; }

std::string Where(const KvEndpoint& e) {
  std::string out = "NVLink domain " + (e.nvlink_domain.empty() ? "(unknown)" : e.nvlink_domain);
  out += ", node " + (e.node.empty() ? "(unknown)" : e.node);
  return out;
}

// Why `self` cannot push into `peer` over cuda-ipc; empty when it can.
std::string CudaIpcBlocker(const KvEndpoint& self, const KvEndpoint& peer) {
  if (!self.cuda_ipc) return "this worker has no cuda-ipc (built without CUDA)";
  if (peer.device_uuid.empty()) return "the decode worker's KV cache is in host memory";
  if (!peer.cuda_ipc || peer.ipc_handle.empty()) {
    return "the decode worker offers no cuda-ipc handle for its KV cache";
  }
  if (peer.device_uuid != self.device_uuid) {
    return "cuda-ipc needs both workers on one GPU: this worker's KV cache is on " +
           Gpu(self.device_uuid) + ", the decode worker's on " + Gpu(peer.device_uuid);
  }
  if (peer.block_bytes != self.block_bytes) {
    return "KV blocks differ: " + std::to_string(self.block_bytes) + " bytes here, " +
           std::to_string(peer.block_bytes) + " on the decode worker";
  }
  return "";
}

// Why `self` cannot push into `peer` over nccl; empty when it can. `require_link`: auto's
// stricter rule, one node or one known NVLink domain.
std::string NcclBlocker(const KvEndpoint& self, const KvEndpoint& peer, bool require_link) {
  if (!self.nccl) return "this worker has no nccl (built without CUDA)";
  if (peer.device_uuid.empty()) return "the decode worker's KV cache is in host memory";
  if (!peer.nccl) return "the decode worker offers no nccl";
  if (peer.device_uuid == self.device_uuid) {
    return "both workers' KV caches are on " + Gpu(self.device_uuid) +
           ": two NCCL ranks cannot share one GPU (cuda-ipc or auto can)";
  }
  if (peer.block_bytes != self.block_bytes) {
    return "KV blocks differ: " + std::to_string(self.block_bytes) + " bytes here, " +
           std::to_string(peer.block_bytes) + " on the decode worker";
  }
  const bool same_node = !self.node.empty() && self.node == peer.node;
  const bool domains_known = !self.nvlink_domain.empty() && !peer.nvlink_domain.empty();
  const bool same_domain = domains_known && self.nvlink_domain == peer.nvlink_domain;
  if (same_node || same_domain) return "";
  if (domains_known) {
    return "nccl needs one NVLink domain: this worker (" + Gpu(self.device_uuid) + ") is in " +
           Where(self) + ", the decode worker (" + Gpu(peer.device_uuid) + ") in " + Where(peer);
  }
  if (require_link) return "the workers' NVLink domains are not known and their nodes differ";
  return "";
}

}  // namespace

StatusOr<std::string> SelectKvTransport(std::string_view setting, const KvEndpoint& self,
                                        const KvEndpoint& peer) {
  if (setting != kKvTransportTcp && setting != kKvTransportCudaIpc && setting != kKvTransportNccl &&
      setting != kKvTransportAuto) {
    return Status::InvalidArgument("KV transport \"" + std::string(setting) +
                                   "\" is not one of auto, tcp, cuda-ipc, nccl");
  }
  // Host-memory KV (cpu, sim): the bytes go over tcp; sim models the configured link's time.
  if (setting == kKvTransportTcp || self.device_uuid.empty()) return std::string(kKvTransportTcp);
  if (setting == kKvTransportCudaIpc) {
    const std::string why = CudaIpcBlocker(self, peer);
    if (why.empty()) return std::string(kKvTransportCudaIpc);
    return Status::Internal("the pool's KV transport is cuda-ipc, but " + why);
  }
  if (setting == kKvTransportNccl) {
    const std::string why = NcclBlocker(self, peer, /*require_link=*/false);
    if (why.empty()) return std::string(kKvTransportNccl);
    return Status::Internal("the pool's KV transport is nccl, but " + why);
  }
  if (CudaIpcBlocker(self, peer).empty()) return std::string(kKvTransportCudaIpc);
  if (NcclBlocker(self, peer, /*require_link=*/true).empty()) return std::string(kKvTransportNccl);
  return std::string(kKvTransportTcp);
}

Json KvTransportsJson(const KvEndpoint& e) {
  Json out = {{kKvTransportTcp, Json::object()}};
  if (e.cuda_ipc && !e.ipc_handle.empty()) {
    out[kKvTransportCudaIpc] = {{"ipc_handle", e.ipc_handle},
                                {"device_uuid", e.device_uuid},
                                {"block_bytes", e.block_bytes},
                                {"num_blocks", e.num_blocks}};
  }
  if (e.nccl) {
    out[kKvTransportNccl] = {{"device_uuid", e.device_uuid},
                             {"node", e.node},
                             {"nvlink_domain", e.nvlink_domain},
                             {"block_bytes", e.block_bytes},
                             {"num_blocks", e.num_blocks}};
  }
  return out;
}

KvEndpoint ParseKvTransports(const Json* transports) {
  KvEndpoint e;
  if (transports == nullptr || !transports->is_object()) return e;
  auto common = [&e](const Json& t) {
    e.device_uuid = JsonGet<std::string>(t, "/device_uuid", e.device_uuid);
    e.block_bytes = JsonGet<int64_t>(t, "/block_bytes", e.block_bytes);
    e.num_blocks = JsonGet<int32_t>(t, "/num_blocks", e.num_blocks);
  };
  if (const Json* ipc = JsonChild(*transports, kKvTransportCudaIpc);
      ipc != nullptr && ipc->is_object()) {
    common(*ipc);
    e.ipc_handle = JsonGet<std::string>(*ipc, "/ipc_handle", "");
    e.cuda_ipc = !e.ipc_handle.empty();
  }
  if (const Json* nccl = JsonChild(*transports, kKvTransportNccl);
      nccl != nullptr && nccl->is_object()) {
    common(*nccl);
    e.node = JsonGet<std::string>(*nccl, "/node", "");
    e.nvlink_domain = JsonGet<std::string>(*nccl, "/nvlink_domain", "");
    e.nccl = true;
  }
  return e;
}

}  // namespace pdpool::agent
