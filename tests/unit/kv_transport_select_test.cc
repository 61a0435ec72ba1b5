// Which KV transport a prefill worker uses for a pair: auto picks cuda-ipc on one GPU, nccl on
// another GPU of the node or NVLink domain, tcp otherwise; a host-memory KV cache always uses
// tcp; an explicit cuda-ipc or nccl the pair cannot do is an error naming both GPUs or domains.
// Also the reservation reply's "transports" object, both ways.
#include "agent/transport/kv_transport_select.h"

#include <gtest/gtest.h>

namespace pdpool::agent {
namespace {

KvEndpoint Gpu(const std::string& uuid, const std::string& node, const std::string& domain) {
  KvEndpoint e;
  e.device_uuid = uuid;
  e.node = node;
  e.nvlink_domain = domain;
  e.block_bytes = 2 << 20;
  e.num_blocks = 1000;
  e.cuda_ipc = true;
  e.ipc_handle = std::string(128, 'a');
  e.nccl = true;
  return e;
}

KvEndpoint Host(const std::string& node = "n1") {
  KvEndpoint e;
  e.node = node;
  return e;
}

std::string Pick(std::string_view setting, const KvEndpoint& self, const KvEndpoint& peer) {
  auto r = SelectKvTransport(setting, self, peer);
  return r.ok() ? *r : "error: " + r.status().message();
}

TEST(KvTransportSelect, AutoPicksTheFastestLinkThePairHas) {
  const KvEndpoint self = Gpu("GPU-a", "n1", "clique-1");
  EXPECT_EQ(Pick("auto", self, Gpu("GPU-a", "n1", "clique-1")), "cuda-ipc");
  EXPECT_EQ(Pick("auto", self, Gpu("GPU-b", "n1", "clique-1")), "nccl");
  EXPECT_EQ(Pick("auto", self, Gpu("GPU-b", "n1", "")), "nccl");          // same node
  EXPECT_EQ(Pick("auto", self, Gpu("GPU-c", "n2", "clique-1")), "nccl");  // same NVL72 rack
  EXPECT_EQ(Pick("auto", self, Gpu("GPU-c", "n2", "clique-2")), "tcp");   // other rack
  EXPECT_EQ(Pick("auto", Gpu("GPU-a", "n1", ""), Gpu("GPU-c", "n2", "")), "tcp");  // unknown
  EXPECT_EQ(Pick("auto", self, Host()), "tcp");  // decode KV in host memory
}

TEST(KvTransportSelect, AutoWithoutTheGpuTransportsInThisBuildIsTcp) {
  KvEndpoint self = Gpu("GPU-a", "n1", "clique-1");
  self.cuda_ipc = false;
  self.nccl = false;
  EXPECT_EQ(Pick("auto", self, Gpu("GPU-a", "n1", "clique-1")), "tcp");
  // Only nccl offered by the decode worker (its handle could not be exported): nccl needs
  // another GPU, so tcp.
  KvEndpoint peer = Gpu("GPU-a", "n1", "clique-1");
  peer.cuda_ipc = false;
  peer.ipc_handle.clear();
  EXPECT_EQ(Pick("auto", Gpu("GPU-a", "n1", "clique-1"), peer), "tcp");
}

TEST(KvTransportSelect, HostMemoryKvAlwaysUsesTcp) {
  // cpu and sim backends: the sim backend models the configured link's time itself.
  for (const char* setting : {"auto", "tcp", "cuda-ipc", "nccl"}) {
    EXPECT_EQ(Pick(setting, Host(), Gpu("GPU-a", "n1", "c")), "tcp") << setting;
    EXPECT_EQ(Pick(setting, Host(), Host()), "tcp") << setting;
  }
}

TEST(KvTransportSelect, ExplicitTcpIsTcp) {
  EXPECT_EQ(Pick("tcp", Gpu("GPU-a", "n1", "c"), Gpu("GPU-a", "n1", "c")), "tcp");
}

TEST(KvTransportSelect, ExplicitCudaIpcOnAnotherGpuNamesBothGpus) {
  const KvEndpoint self = Gpu("GPU-a", "n1", "c");
  EXPECT_EQ(Pick("cuda-ipc", self, Gpu("GPU-a", "n1", "c")), "cuda-ipc");
  auto r = SelectKvTransport("cuda-ipc", self, Gpu("GPU-b", "n1", "c"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("GPU-a"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("GPU-b"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("cuda-ipc"), std::string::npos);
  EXPECT_NE(Pick("cuda-ipc", self, Host()).find("host memory"), std::string::npos);
}

TEST(KvTransportSelect, ExplicitNcclOnOneGpuOrAcrossDomainsIsAnError) {
  const KvEndpoint self = Gpu("GPU-a", "n1", "clique-1");
  EXPECT_EQ(Pick("nccl", self, Gpu("GPU-b", "n2", "clique-1")), "nccl");
  // Unknown domains: the pool said nccl, NCCL finds its path.
  EXPECT_EQ(Pick("nccl", Gpu("GPU-a", "n1", ""), Gpu("GPU-b", "n2", "")), "nccl");

  auto same_gpu = SelectKvTransport("nccl", self, Gpu("GPU-a", "n1", "clique-1"));
  ASSERT_FALSE(same_gpu.ok());
  EXPECT_NE(same_gpu.status().message().find("cannot share one GPU"), std::string::npos)
      << same_gpu.status().message();
  EXPECT_NE(same_gpu.status().message().find("GPU-a"), std::string::npos);

  auto other_domain = SelectKvTransport("nccl", self, Gpu("GPU-c", "n9", "clique-2"));
  ASSERT_FALSE(other_domain.ok());
  const std::string m = other_domain.status().message();
  EXPECT_NE(m.find("clique-1"), std::string::npos) << m;
  EXPECT_NE(m.find("clique-2"), std::string::npos) << m;
  EXPECT_NE(m.find("GPU-c"), std::string::npos) << m;
}

TEST(KvTransportSelect, DifferentBlockGeometryIsNeverCopiedDeviceToDevice) {
  KvEndpoint peer = Gpu("GPU-a", "n1", "c");
  peer.block_bytes /= 2;
  EXPECT_EQ(Pick("auto", Gpu("GPU-a", "n1", "c"), peer), "tcp");
  EXPECT_NE(Pick("cuda-ipc", Gpu("GPU-a", "n1", "c"), peer).find("blocks differ"),
            std::string::npos);
}

TEST(KvTransportSelect, UnknownSettingIsABadRequest) {
  auto r = SelectKvTransport("rdma", Gpu("GPU-a", "n1", "c"), Host());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("rdma"), std::string::npos);
}

TEST(KvTransportsJson, RoundTripsAndDefaultsToTcpOnly) {
  const KvEndpoint gpu = Gpu("GPU-a", "n1", "clique-1");
  const Json j = KvTransportsJson(gpu);
  EXPECT_TRUE(j.contains("tcp"));
  EXPECT_EQ(j["cuda-ipc"]["ipc_handle"], gpu.ipc_handle);
  EXPECT_EQ(j["nccl"]["nvlink_domain"], "clique-1");
  const KvEndpoint back = ParseKvTransports(&j);
  EXPECT_EQ(back.device_uuid, "GPU-a");
  EXPECT_EQ(back.node, "n1");
  EXPECT_EQ(back.nvlink_domain, "clique-1");
  EXPECT_EQ(back.block_bytes, gpu.block_bytes);
  EXPECT_EQ(back.num_blocks, gpu.num_blocks);
  EXPECT_TRUE(back.cuda_ipc);
  EXPECT_EQ(back.ipc_handle, gpu.ipc_handle);
  EXPECT_TRUE(back.nccl);

  // A host-memory worker offers tcp only.
  EXPECT_EQ(KvTransportsJson(Host()), (Json{{"tcp", Json::object()}}));
  for (const Json& offer : {Json(), Json::object(), Json("tcp"), Json{{"tcp", Json::object()}}}) {
    const KvEndpoint e = ParseKvTransports(&offer);
    EXPECT_TRUE(e.device_uuid.empty());
    EXPECT_FALSE(e.cuda_ipc);
    EXPECT_FALSE(e.nccl);
  }
  EXPECT_FALSE(ParseKvTransports(nullptr).nccl);
}

}  // namespace
}  // namespace pdpool::agent
