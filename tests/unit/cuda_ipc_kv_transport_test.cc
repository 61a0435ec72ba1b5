// The cuda-ipc KV transport's protocol against a fake KvIpc over host memory: blocks land in the
// reserved blocks and are committed; contiguous runs are copied at once; a peer on another GPU
// is refused naming both GPUs; a copy failure, a sender that disappears after begin, or a block
// list other than the reservation's abort the reservation; a bad token touches nothing.
#include "agent/transport/cuda_ipc_kv_transport.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "agent/transport/socket_io.h"
#include "agent/transport/tcp_kv_transport.h"
#include "tests/fakes/fake_kv_transports.h"

namespace pdpool::agent {
namespace {

using std::chrono::milliseconds;

constexpr int64_t kBlockBytes = 1024;
constexpr int32_t kBlockSize = 16;
constexpr const char* kToken = "s3cret";

CudaIpcKvOptions Options(const std::string& token = kToken) {
  CudaIpcKvOptions o;
  o.token = token;
  o.io_timeout = milliseconds(2000);
  o.transfer_timeout = milliseconds(3000);
  return o;
}

struct Decode {
  explicit Decode(KvIpc* ipc)
      : sink(&kv.region), receiver(Options(), &sink), tcp(TcpOptions(), &sink) {
    tcp.AddProtocol(kCudaIpcKvMagic, [this](int fd) { receiver.ServeConnection(fd); });
    EXPECT_TRUE(tcp.Start("127.0.0.1", 0).ok());
    handle = *ipc->Export(kv.region);
  }
  static TcpKvOptions TcpOptions() {
    TcpKvOptions o;
    o.token = kToken;
    return o;
  }
  KvDestination To(uint64_t reservation, std::vector<int32_t> blocks) const {
    KvDestination d;
    d.transport = "cuda-ipc";
    d.address = "127.0.0.1:" + std::to_string(tcp.port());
    d.reservation_id = reservation;
    d.blocks = std::move(blocks);
    d.peer.device_uuid = kv.region.device_uuid;
    d.peer.block_bytes = kBlockBytes;
    d.peer.num_blocks = kv.region.num_blocks;
    d.peer.cuda_ipc = true;
    d.peer.ipc_handle = handle;
    return d;
  }

  HostKvRegion kv{"GPU-shared", 64, kBlockBytes, kBlockSize};
  RecordingDeviceSink sink;
  CudaIpcKvReceiver receiver;
  TcpKvReceiver tcp;
  std::string handle;
};

HostKvRegion Source(uint32_t seed, const std::string& gpu = "GPU-shared") {
  HostKvRegion kv(gpu, 64, kBlockBytes, kBlockSize);
  kv.Randomize(seed);
  return kv;
}

TEST(CudaIpcKvTransportTest, CopiesIntoTheReservedBlocksAndCommits) {
  FakeKvIpc ipc;
  Decode decode(&ipc);
  HostKvRegion source = Source(1);
  decode.sink.AddReservation(7, 50, {10, 11, 12, 3});
  CudaIpcKvSender sender(Options(), &ipc);

  auto stats = sender.Send(decode.To(7, {10, 11, 12, 3}), source.region, {4, 5, 6, 9}, 50);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->bytes, 4 * kBlockBytes);
  EXPECT_TRUE(decode.sink.committed(7));
  EXPECT_EQ(decode.sink.bytes(7), 4 * kBlockBytes);
  EXPECT_EQ(decode.kv.Block(10), source.Block(4));
  EXPECT_EQ(decode.kv.Block(11), source.Block(5));
  EXPECT_EQ(decode.kv.Block(12), source.Block(6));
  EXPECT_EQ(decode.kv.Block(3), source.Block(9));
  EXPECT_EQ(ipc.copies(), 2);  // 4,5,6 → 10,11,12 in one copy; 9 → 3
  EXPECT_EQ(ipc.opens(), 1);

  // The handle stays open for the next transfer.
  decode.sink.AddReservation(8, 1, {20});
  ASSERT_TRUE(sender.Send(decode.To(8, {20}), source.region, {0}, 1).ok());
  EXPECT_EQ(ipc.opens(), 1);
  EXPECT_EQ(decode.kv.Block(20), source.Block(0));
}

TEST(CudaIpcKvTransportTest, BlockCopiesMergeRunsConsecutiveOnBothSides) {
  HostKvRegion source = Source(2);
  const auto copies = BlockCopies(source.region, {1, 2, 3, 7, 8}, {5, 6, 9, 10, 11});
  ASSERT_EQ(copies.size(), 3u);
  EXPECT_EQ(copies[0].bytes, 2 * kBlockBytes);
  EXPECT_EQ(copies[0].dest_offset, 5 * kBlockBytes);
  EXPECT_EQ(copies[1].source, source.region.base + 3 * kBlockBytes);
  EXPECT_EQ(copies[1].dest_offset, 9 * kBlockBytes);
  EXPECT_EQ(copies[2].bytes, 2 * kBlockBytes);  // 7,8 → 10,11
}

TEST(CudaIpcKvTransportTest, PeerOnAnotherGpuIsRefusedNamingBothGpus) {
  FakeKvIpc ipc;
  Decode decode(&ipc);
  HostKvRegion source = Source(3, "GPU-other");
  decode.sink.AddReservation(7, 16, {1});
  CudaIpcKvSender sender(Options(), &ipc);
  auto r = sender.Send(decode.To(7, {1}), source.region, {0}, 16);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("GPU-shared"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("GPU-other"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(decode.sink.begins(), 0);
  EXPECT_EQ(ipc.copies(), 0);
}

TEST(CudaIpcKvTransportTest, CopyFailureAbortsTheReservation) {
  FakeKvIpc ipc;
  Decode decode(&ipc);
  HostKvRegion source = Source(4);
  decode.sink.AddReservation(7, 16, {1});
  CudaIpcKvSender sender(Options(), &ipc);
  ipc.FailCopies(true);
  auto r = sender.Send(decode.To(7, {1}), source.region, {0}, 16);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("fake cudaMemcpyAsync failed"), std::string::npos)
      << r.status().ToString();
  EXPECT_TRUE(decode.sink.aborted(7));
  EXPECT_FALSE(decode.sink.reserved(7));
}

TEST(CudaIpcKvTransportTest, OtherBlocksThanTheReservationsAreRefused) {
  FakeKvIpc ipc;
  Decode decode(&ipc);
  HostKvRegion source = Source(5);
  decode.sink.AddReservation(7, 32, {1, 2});
  CudaIpcKvSender sender(Options(), &ipc);
  auto r = sender.Send(decode.To(7, {1, 3}), source.region, {0, 1}, 32);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("other blocks"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(ipc.copies(), 0);
  EXPECT_EQ(decode.kv.Block(3), std::string(kBlockBytes, '\0'));
}

TEST(CudaIpcKvTransportTest, SenderGoneAfterBeginFreesTheReservation) {
  FakeKvIpc ipc;
  Decode decode(&ipc);
  decode.sink.AddReservation(9, 16, {4});
  auto fd = net::Connect(decode.To(9, {4}).address, milliseconds(1000));
  ASSERT_TRUE(fd.ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  std::string msg(kCudaIpcKvMagic, 4);
  net::Put<uint16_t>(msg, 1);
  net::Put<uint16_t>(msg, static_cast<uint16_t>(std::string(kToken).size()));
  msg += kToken;
  net::Put<uint8_t>(msg, 1);
  net::Put<uint64_t>(msg, 9);
  net::Put<uint32_t>(msg, 16);
  net::Put<uint32_t>(msg, 1);
  net::Put<uint64_t>(msg, kBlockBytes);
  net::Put<uint32_t>(msg, 4);
  ASSERT_TRUE(net::WriteAll(*fd, msg.data(), msg.size(), milliseconds(1000), deadline).ok());
  Status verdict;
  ASSERT_TRUE(net::ReadStatusReply(*fd, milliseconds(1000), deadline, &verdict).ok());
  ASSERT_TRUE(verdict.ok()) << verdict.ToString();  // hello
  ASSERT_TRUE(net::ReadStatusReply(*fd, milliseconds(1000), deadline, &verdict).ok());
  ASSERT_TRUE(verdict.ok()) << verdict.ToString();  // begin
  ::close(*fd);                                     // the prefill process died before its commit
  ASSERT_TRUE(decode.sink.WaitSettled(9, milliseconds(3000)));
  EXPECT_TRUE(decode.sink.aborted(9));
  EXPECT_FALSE(decode.sink.reserved(9));
}

TEST(CudaIpcKvTransportTest, BadTokenTouchesNothing) {
  FakeKvIpc ipc;
  Decode decode(&ipc);
  HostKvRegion source = Source(6);
  decode.sink.AddReservation(7, 16, {1});
  CudaIpcKvSender sender(Options("wrong"), &ipc);
  auto r = sender.Send(decode.To(7, {1}), source.region, {0}, 16);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad pool token"), std::string::npos)
      << r.status().ToString();
  EXPECT_EQ(decode.sink.begins(), 0);
  EXPECT_EQ(ipc.copies(), 0);
  EXPECT_TRUE(decode.sink.reserved(7));
}

}  // namespace
}  // namespace pdpool::agent
