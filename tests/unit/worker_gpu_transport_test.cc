// The GPU KV transports wired through a pair of in-process workers, with the fakes of
// tests/fakes/fake_kv_transports.h standing in for CUDA IPC and NCCL and a cpu backend whose
// "device" KV region is a host buffer: the decode worker's reservation advertises what it can
// receive; the prefill worker picks by its pool setting (auto: cuda-ipc on one GPU, nccl on
// another GPU of the node), pushes the blocks into the reserved ones and reports the bytes; the
// decode worker counts them and decodes the reservation; an explicit nccl on one GPU fails with
// a 500 naming the GPU before any compute.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstring>
#include <memory>
#include <set>
#include <string>

#include "agent/engine/backend_factory.h"
#include "agent/engine/engine.h"
#include "agent/worker/worker_protocol.h"
#include "agent/worker/worker_server.h"
#include "common/clock.h"
#include "common/json.h"
#include "tests/fakes/fake_kv_transports.h"

namespace pdpool::agent {
namespace {

constexpr const char* kToken = "pool-token";
constexpr int64_t kBlockBytes = 512;

// The cpu backend, plus a host buffer it presents as its KV region in "GPU memory". Every
// block of the buffer holds one repeated byte, (block + 1) for a prefill worker, 0 otherwise,
// so a copied block tells where it came from.
class DeviceKvBackend final : public Backend {
 public:
  DeviceKvBackend(std::unique_ptr<Backend> inner, const std::string& uuid, bool fill)
      : inner_(std::move(inner)),
        kv_(uuid, inner_->kv_layout().num_blocks, kBlockBytes, inner_->kv_layout().block_size) {
    for (int32_t b = 0; fill && b < kv_.region.num_blocks; ++b) {
      std::memset(kv_.bytes.data() + b * kBlockBytes, (b + 1) & 0xFF, kBlockBytes);
    }
  }
  std::string_view name() const override { return inner_->name(); }
  const ModelConfig& model() const override { return inner_->model(); }
  const KvLayout& kv_layout() const override { return inner_->kv_layout(); }
  StatusOr<StepResult> Step(const StepBatch& batch) override { return inner_->Step(batch); }
  Status ExportKvBlock(int32_t block, int32_t tokens, std::string* out) override {
    return inner_->ExportKvBlock(block, tokens, out);
  }
  Status ImportKvBlock(int32_t block, int32_t tokens, std::string_view data) override {
    return inner_->ImportKvBlock(block, tokens, data);
  }
  const DeviceKvRegion* device_kv() const override { return &kv_.region; }
  const HostKvRegion& kv() const { return kv_; }

 private:
  std::unique_ptr<Backend> inner_;
  HostKvRegion kv_;
};

struct Worker {
  Worker(WorkerRole role, const std::string& kv_transport, const std::string& uuid,
         std::shared_ptr<KvIpc> ipc, std::shared_ptr<KvCommunicatorFactory> nccl)
      : server(Options(role, kv_transport, std::move(ipc), std::move(nccl)),
               &RealClock::Instance()) {
    EXPECT_TRUE(server.Start().ok());
    BackendOptions b;
    b.backend = "cpu";
    b.model = "test-tiny";
    b.weights = "dummy:1";
    b.num_kv_blocks = 64;
    auto inner = NewBackend(b);
    EXPECT_TRUE(inner.ok()) << inner.status().ToString();
    auto backend =
        std::make_unique<DeviceKvBackend>(std::move(*inner), uuid, role == WorkerRole::kPrefill);
    device = backend.get();
    SchedulerConfig config;
    config.block_size = b.block_size;
    config.max_model_len = 512;
    server.SetEngine(std::make_unique<Engine>(std::move(backend), config, &RealClock::Instance()));
    client = std::make_unique<httplib::Client>("127.0.0.1", server.port());
    client->set_bearer_token_auth(kToken);
  }
  static WorkerServerOptions Options(WorkerRole role, const std::string& kv_transport,
                                     std::shared_ptr<KvIpc> ipc,
                                     std::shared_ptr<KvCommunicatorFactory> nccl) {
    WorkerServerOptions o;
    o.role = role;
    o.served_model_name = "tiny";
    o.host = "127.0.0.1";
    o.port = 0;
    o.auth_token = kToken;
    o.http_threads = 8;
    o.kv_transport = kv_transport;
    o.node_name = "node-a";
    o.cuda_ipc = std::move(ipc);
    o.nccl = std::move(nccl);
    return o;
  }
  Json Post(const char* path, const Json& body, int* status) {
    auto res = client->Post(path, body.dump(), "application/json");
    *status = res ? res->status : -1;
    return res ? Json::parse(res->body, nullptr, false) : Json();
  }
  std::string Metrics() {
    auto res = client->Get("/metrics");
    return res ? res->body : "";
  }

  WorkerServer server;
  DeviceKvBackend* device = nullptr;
  std::unique_ptr<httplib::Client> client;
};

double Value(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

struct Pair {
  Pair(const std::string& kv_transport, const std::string& prefill_gpu,
       const std::string& decode_gpu)
      : prefill(WorkerRole::kPrefill, kv_transport, prefill_gpu, ipc, nccl),
        decode(WorkerRole::kDecode, kv_transport, decode_gpu, ipc, nccl) {}
  std::shared_ptr<FakeKvIpc> ipc = std::make_shared<FakeKvIpc>();
  std::shared_ptr<FakeKvCommunicatorFactory> nccl = std::make_shared<FakeKvCommunicatorFactory>();
  Worker prefill;
  Worker decode;

  // Reserve on decode, prefill with the reservation as the router passes it.
  Json Handoff(int tokens, int* status, Json* reservation) {
    int code = 0;
    *reservation = decode.Post(protocol::kReservePath, {{"prompt_tokens", tokens}}, &code);
    EXPECT_EQ(code, 200) << reservation->dump();
    Json prompt = Json::array();
    for (int i = 0; i < tokens; ++i) prompt.push_back(1 + i % 50);
    Json dest = {{"kv_address", (*reservation)["kv_address"]},
                 {"reservation_id", (*reservation)["reservation_id"]},
                 {"blocks", (*reservation)["blocks"]},
                 {"transports", (*reservation)["transports"]}};
    return prefill.Post(
        protocol::kPrefillPath,
        {{"prompt_token_ids", prompt}, {"sampling", {{"temperature", 0.0}}}, {"destination", dest}},
        status);
  }

  // The decode blocks of `reservation` each hold a whole, distinct prefill block.
  void ExpectBlocksFromPrefill(const Json& reservation) {
    std::set<int> sources;
    for (const Json& b : reservation["blocks"]) {
      const std::string block = decode.device->kv().Block(b.get<int32_t>());
      const char first = block[0];
      EXPECT_NE(first, 0) << "decode block " << b << " was not written";
      EXPECT_EQ(block, std::string(block.size(), first)) << "decode block " << b << " is torn";
      sources.insert(static_cast<unsigned char>(first));
    }
    EXPECT_EQ(sources.size(), reservation["blocks"].size());
  }
};

TEST(WorkerGpuTransportTest, ReservationAdvertisesTheGpuTransports) {
  Pair pair("auto", "GPU-a", "GPU-b");
  int code = 0;
  Json r = pair.decode.Post(protocol::kReservePath, {{"prompt_tokens", 20}}, &code);
  ASSERT_EQ(code, 200) << r.dump();
  EXPECT_TRUE(r["transports"].contains("tcp"));
  EXPECT_EQ(r["transports"]["cuda-ipc"]["device_uuid"], "GPU-b");
  EXPECT_EQ(r["transports"]["cuda-ipc"]["block_bytes"], kBlockBytes);
  EXPECT_FALSE(r["transports"]["cuda-ipc"]["ipc_handle"].get<std::string>().empty());
  EXPECT_EQ(r["transports"]["nccl"]["node"], "node-a");
  EXPECT_EQ(pair.ipc->exports(), 2);  // each worker exported its region once, at load
}

TEST(WorkerGpuTransportTest, AutoOnOneGpuUsesCudaIpcAndTheDecodeWorkerDecodes) {
  Pair pair("auto", "GPU-same", "GPU-same");
  int code = 0;
  Json reservation;
  Json reply = pair.Handoff(37, &code, &reservation);
  ASSERT_EQ(code, 200) << reply.dump();
  EXPECT_EQ(reply["kv_transport"], "cuda-ipc");
  EXPECT_EQ(reply["kv_bytes"], 3 * kBlockBytes);
  pair.ExpectBlocksFromPrefill(reservation);
  EXPECT_EQ(Value(pair.decode.Metrics(),
                  "pdpool_worker_kv_transfer_bytes_total{direction=\"receive\",role=\"decode\"}"),
            3 * kBlockBytes);
  EXPECT_EQ(Value(pair.prefill.Metrics(),
                  "pdpool_worker_kv_transfer_bytes_total{direction=\"send\",role=\"prefill\"}"),
            3 * kBlockBytes);

  // The reservation is filled: the decode worker streams the rest.
  auto res = pair.decode.client->Post(protocol::kDecodePath,
                                      Json{{"reservation_id", reservation["reservation_id"]},
                                           {"first_token", reply["first_token"]},
                                           {"max_tokens", 3},
                                           {"ignore_eos", true},
                                           {"sampling", {{"temperature", 0.0}}}}
                                          .dump(),
                                      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_NE(res->body.find("\"finish_reason\":\"length\""), std::string::npos) << res->body;
}

TEST(WorkerGpuTransportTest, AutoOnAnotherGpuOfTheNodeUsesNccl) {
  Pair pair("auto", "GPU-a", "GPU-b");
  int code = 0;
  Json reservation;
  Json reply = pair.Handoff(40, &code, &reservation);
  ASSERT_EQ(code, 200) << reply.dump();
  EXPECT_EQ(reply["kv_transport"], "nccl");
  EXPECT_EQ(reply["kv_bytes"], 3 * kBlockBytes);
  pair.ExpectBlocksFromPrefill(reservation);
  EXPECT_EQ(pair.nccl->joins(), 2);
  EXPECT_EQ(pair.ipc->copies(), 0);
}

TEST(WorkerGpuTransportTest, ExplicitNcclOnOneGpuFailsNamingTheGpuBeforeAnyCompute) {
  Pair pair("nccl", "GPU-same", "GPU-same");
  int code = 0;
  Json reservation;
  Json reply = pair.Handoff(20, &code, &reservation);
  EXPECT_EQ(code, 500);
  const std::string error = reply.value("error", "");
  EXPECT_NE(error.find("cannot share one GPU"), std::string::npos) << error;
  EXPECT_NE(error.find("GPU-same"), std::string::npos) << error;
  EXPECT_EQ(Value(pair.prefill.Metrics(), "pdpool_worker_prefill_tokens_total{role=\"prefill\"}"),
            0);
  EXPECT_EQ(pair.nccl->joins(), 0);
}

TEST(WorkerGpuTransportTest, ExplicitTcpStillMovesHostBytes) {
  Pair pair("tcp", "GPU-a", "GPU-a");
  int code = 0;
  Json reservation;
  Json reply = pair.Handoff(20, &code, &reservation);
  ASSERT_EQ(code, 200) << reply.dump();
  EXPECT_EQ(reply["kv_transport"], "tcp");
  EXPECT_EQ(pair.ipc->copies(), 0);
  EXPECT_EQ(pair.nccl->joins(), 0);
}

}  // namespace
}  // namespace pdpool::agent
