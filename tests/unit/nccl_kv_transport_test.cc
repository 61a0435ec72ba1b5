// The nccl KV transport's protocol against a fake communicator that moves bytes between host
// buffers (tests/fakes/fake_kv_transports.h): blocks land byte for byte in the reserved blocks,
// in order; one communicator per peer, reused and shared by concurrent transfers; a peer that
// dies mid-transfer gets the reservation aborted (freed); a bad token or a wrong block count is
// refused before anything moves, and the channel survives a refusal.
#include "agent/transport/nccl_kv_transport.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <thread>

#include "agent/transport/socket_io.h"
#include "agent/transport/tcp_kv_transport.h"
#include "tests/fakes/fake_kv_transports.h"

namespace pdpool::agent {
namespace {

using std::chrono::milliseconds;

constexpr int64_t kBlockBytes = 4096;
constexpr int32_t kBlockSize = 16;
constexpr const char* kToken = "s3cret";

NcclKvOptions Options(const std::string& token = kToken) {
  NcclKvOptions o;
  o.token = token;
  o.io_timeout = milliseconds(2000);
  o.transfer_timeout = milliseconds(3000);
  o.setup_timeout = milliseconds(3000);
  return o;
}

// A decode worker: its KV region in host memory, its sink, and the receiver on a free port.
struct Decode {
  explicit Decode(KvCommunicatorFactory* factory, bool gpu_kv = true)
      : sink(gpu_kv ? &kv.region : nullptr),
        nccl(Options(), factory, &sink),
        tcp(TcpOptions(), &sink) {
    tcp.AddProtocol(kNcclKvMagic, [this](int fd) { nccl.ServeConnection(fd); });
    EXPECT_TRUE(tcp.Start("127.0.0.1", 0).ok());
  }
  static TcpKvOptions TcpOptions() {
    TcpKvOptions o;
    o.token = kToken;
    return o;
  }
  KvDestination To(uint64_t reservation) const {
    KvDestination d;
    d.transport = "nccl";
    d.address = "127.0.0.1:" + std::to_string(tcp.port());
    d.reservation_id = reservation;
    return d;
  }

  HostKvRegion kv{"GPU-decode", 512, kBlockBytes, kBlockSize};
  RecordingDeviceSink sink;
  NcclKvReceiver nccl;
  TcpKvReceiver tcp;
};

struct Prefill {
  explicit Prefill(uint32_t seed) { kv.Randomize(seed); }
  HostKvRegion kv{"GPU-prefill", 512, kBlockBytes, kBlockSize};
};

void ExpectMoved(const Prefill& from, const std::vector<int32_t>& src, const Decode& to,
                 const std::vector<int32_t>& dst) {
  ASSERT_EQ(src.size(), dst.size());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_TRUE(from.kv.Block(src[i]) == to.kv.Block(dst[i]))
        << "block " << i << ": source " << src[i] << " → destination " << dst[i];
  }
}

TEST(NcclKvTransportTest, BlocksLandInTheReservedBlocksInOrder) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(1);
  decode.sink.AddReservation(7, 37, {5, 2, 9});
  NcclKvSender sender(Options(), &factory);

  auto stats = sender.Send(decode.To(7), prefill.kv.region, {1, 0, 3}, 37);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->bytes, 3 * kBlockBytes);
  EXPECT_TRUE(decode.sink.committed(7));
  EXPECT_EQ(decode.sink.bytes(7), 3 * kBlockBytes);
  ExpectMoved(prefill, {1, 0, 3}, decode, {5, 2, 9});
  // Blocks outside the reservation are untouched.
  EXPECT_EQ(decode.kv.Block(4), std::string(kBlockBytes, '\0'));
  EXPECT_EQ(factory.joins(), 2);  // one communicator, both ranks
  EXPECT_EQ(sender.communicators_created(), 1);
}

TEST(NcclKvTransportTest, ManyBlocksAndTheCommunicatorIsReused) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(2);
  NcclKvSender sender(Options(), &factory);
  std::vector<int32_t> dst(512);
  std::iota(dst.begin(), dst.end(), 0);
  std::shuffle(dst.begin(), dst.end(), std::mt19937(3));
  std::vector<int32_t> src(dst.rbegin(), dst.rend());

  // 300 blocks (4800 tokens), then 100 more on the same channel.
  const std::vector<int32_t> dst1(dst.begin(), dst.begin() + 300);
  const std::vector<int32_t> src1(src.begin(), src.begin() + 300);
  decode.sink.AddReservation(1, 300 * kBlockSize - 3, dst1);
  auto first = sender.Send(decode.To(1), prefill.kv.region, src1, 300 * kBlockSize - 3);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->bytes, 300 * kBlockBytes);
  ExpectMoved(prefill, src1, decode, dst1);

  const std::vector<int32_t> dst2(dst.begin() + 300, dst.begin() + 400);
  const std::vector<int32_t> src2(src.begin() + 300, src.begin() + 400);
  decode.sink.AddReservation(2, 100 * kBlockSize, dst2);
  auto second = sender.Send(decode.To(2), prefill.kv.region, src2, 100 * kBlockSize);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  ExpectMoved(prefill, src2, decode, dst2);
  EXPECT_TRUE(decode.sink.committed(1));
  EXPECT_TRUE(decode.sink.committed(2));
  EXPECT_EQ(sender.communicators_created(), 1);
  EXPECT_EQ(decode.nccl.communicators_joined(), 1);
  EXPECT_EQ(factory.messages_delivered(), 400);
}

TEST(NcclKvTransportTest, ConcurrentTransfersShareOneCommunicatorPerPeer) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(4);
  // Two prefill workers, each with two threads pushing five transfers of two blocks.
  NcclKvSender a(Options(), &factory), b(Options(), &factory);
  struct Job {
    NcclKvSender* sender;
    uint64_t reservation;
    std::vector<int32_t> src, dst;
  };
  std::vector<Job> jobs;
  for (int i = 0; i < 20; ++i) {
    Job j{i % 2 == 0 ? &a : &b,
          static_cast<uint64_t>(100 + i),
          {2 * i, 2 * i + 1},
          {511 - 2 * i, 511 - 2 * i - 1}};
    decode.sink.AddReservation(j.reservation, 2 * kBlockSize, j.dst);
    jobs.push_back(j);
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < jobs.size(); i += 4) {
        auto s = jobs[i].sender->Send(decode.To(jobs[i].reservation), prefill.kv.region,
                                      jobs[i].src, 2 * kBlockSize);
        if (!s.ok()) {
          ++failures;
          ADD_FAILURE() << s.status().ToString();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  for (const Job& j : jobs) {
    EXPECT_TRUE(decode.sink.committed(j.reservation)) << j.reservation;
    ExpectMoved(prefill, j.src, decode, j.dst);
  }
  EXPECT_EQ(a.communicators_created(), 1);
  EXPECT_EQ(b.communicators_created(), 1);
  EXPECT_EQ(decode.nccl.communicators_joined(), 2);
}

TEST(NcclKvTransportTest, LinkDiesMidTransferReservationAbortedThenANewCommunicator) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(5);
  NcclKvOptions quick = Options();
  quick.transfer_timeout = milliseconds(400);
  NcclKvSender sender(quick, &factory);
  decode.sink.AddReservation(7, 3 * kBlockSize, {5, 6, 7});
  factory.CutLinkAfter(1);  // the first block arrives, then nothing

  auto broken = sender.Send(decode.To(7), prefill.kv.region, {0, 1, 2}, 3 * kBlockSize);
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("nccl send"), std::string::npos)
      << broken.status().ToString();
  // The sender aborted and closed its channel: the decode side freed the reservation.
  ASSERT_TRUE(decode.sink.WaitSettled(7, milliseconds(3000)));
  EXPECT_TRUE(decode.sink.aborted(7));
  EXPECT_FALSE(decode.sink.reserved(7));
  EXPECT_FALSE(decode.sink.committed(7));

  // The link is back: the next transfer sets up a fresh communicator.
  factory.CutLinkAfter(-1);
  decode.sink.AddReservation(8, 3 * kBlockSize, {5, 6, 7});
  auto ok = sender.Send(decode.To(8), prefill.kv.region, {0, 1, 2}, 3 * kBlockSize);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  ExpectMoved(prefill, {0, 1, 2}, decode, {5, 6, 7});
  EXPECT_EQ(sender.communicators_created(), 2);
}

TEST(NcclKvTransportTest, SenderProcessDiesAfterBeginReservationFreed) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(6);
  decode.sink.AddReservation(9, 3 * kBlockSize, {1, 2, 3});
  // A prefill worker speaking the protocol by hand, which dies after its first block.
  auto fd = net::Connect(decode.To(9).address, milliseconds(1000));
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  const std::string id = *factory.NewUniqueId();
  std::string hello(kNcclKvMagic, 4);
  net::Put<uint16_t>(hello, 1);
  net::Put<uint16_t>(hello, static_cast<uint16_t>(std::string(kToken).size()));
  hello += kToken;
  net::Put<uint16_t>(hello, static_cast<uint16_t>(id.size()));
  hello += id;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  ASSERT_TRUE(net::WriteAll(*fd, hello.data(), hello.size(), milliseconds(1000), deadline).ok());
  Status verdict;
  ASSERT_TRUE(net::ReadStatusReply(*fd, milliseconds(1000), deadline, &verdict).ok());
  ASSERT_TRUE(verdict.ok()) << verdict.ToString();
  auto comm = factory.Join(id, 2, 0, 0, deadline);
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  ASSERT_TRUE(net::ReadStatusReply(*fd, milliseconds(1000), deadline, &verdict).ok());
  ASSERT_TRUE(verdict.ok()) << verdict.ToString();
  std::string begin;
  net::Put<uint8_t>(begin, 1);
  net::Put<uint64_t>(begin, 9);
  net::Put<uint32_t>(begin, 3 * kBlockSize);
  net::Put<uint32_t>(begin, 3);
  net::Put<uint64_t>(begin, kBlockBytes);
  ASSERT_TRUE(net::WriteAll(*fd, begin.data(), begin.size(), milliseconds(1000), deadline).ok());
  ASSERT_TRUE(net::ReadStatusReply(*fd, milliseconds(1000), deadline, &verdict).ok());
  ASSERT_TRUE(verdict.ok()) << verdict.ToString();
  const DeviceSpan first{prefill.kv.region.base, kBlockBytes};
  ASSERT_TRUE((*comm)->Post({&first, 1}, {}, deadline).ok());
  // The process dies: its connection closes, its communicator is gone.
  ::close(*fd);
  comm->reset();

  ASSERT_TRUE(decode.sink.WaitSettled(9, milliseconds(3000)));
  EXPECT_TRUE(decode.sink.aborted(9));
  EXPECT_FALSE(decode.sink.reserved(9));
  EXPECT_NE(decode.sink.abort_reason(9).find("closed"), std::string::npos)
      << decode.sink.abort_reason(9);
}

TEST(NcclKvTransportTest, BadTokenIsRefusedBeforeAnyCommunicator) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(7);
  decode.sink.AddReservation(7, kBlockSize, {3});
  NcclKvSender sender(Options("not-the-token"), &factory);
  auto r = sender.Send(decode.To(7), prefill.kv.region, {0}, kBlockSize);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad pool token"), std::string::npos)
      << r.status().ToString();
  EXPECT_EQ(factory.joins(), 0);
  EXPECT_EQ(decode.sink.begins(), 0);
  EXPECT_TRUE(decode.sink.reserved(7));
  EXPECT_EQ(decode.kv.Block(3), std::string(kBlockBytes, '\0'));
}

TEST(NcclKvTransportTest, WrongBlockCountIsRefusedAndTheChannelStaysUsable) {
  FakeKvCommunicatorFactory factory;
  Decode decode(&factory);
  Prefill prefill(8);
  decode.sink.AddReservation(7, 37, {5, 2, 9});
  NcclKvSender sender(Options(), &factory);
  // The sender has 20 tokens in 2 blocks; the reservation was made for 37 in 3.
  auto wrong = sender.Send(decode.To(7), prefill.kv.region, {0, 1}, 20);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("holds 37 tokens in 3 blocks"), std::string::npos)
      << wrong.status().ToString();
  EXPECT_FALSE(decode.sink.committed(7));
  EXPECT_EQ(factory.messages_delivered(), 0);
  // An unknown reservation is refused too.
  auto unknown = sender.Send(decode.To(404), prefill.kv.region, {0}, 5);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown"), std::string::npos);
  // Nothing was posted: the same communicator carries the right transfer.
  auto right = sender.Send(decode.To(7), prefill.kv.region, {0, 1, 2}, 37);
  ASSERT_TRUE(right.ok()) << right.status().ToString();
  ExpectMoved(prefill, {0, 1, 2}, decode, {5, 2, 9});
  EXPECT_EQ(sender.communicators_created(), 1);
  // A block count that does not fit the tokens never leaves the sender.
  auto inconsistent = sender.Send(decode.To(7), prefill.kv.region, {0, 1}, 37);
  EXPECT_EQ(inconsistent.status().code(), StatusCode::kInvalidArgument);
}

TEST(NcclKvTransportTest, ReceiverWithHostMemoryKvOrOtherBlockSizeRefuses) {
  FakeKvCommunicatorFactory factory;
  Prefill prefill(9);
  {
    Decode host(&factory, /*gpu_kv=*/false);
    NcclKvSender sender(Options(), &factory);
    auto r = sender.Send(host.To(1), prefill.kv.region, {0}, 4);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("host memory"), std::string::npos) << r.status().ToString();
  }
  Decode decode(&factory);
  decode.sink.AddReservation(1, 4, {0});
  HostKvRegion other("GPU-prefill", 4, kBlockBytes / 2, kBlockSize);
  NcclKvSender sender(Options(), &factory);
  auto r = sender.Send(decode.To(1), other.region, {0}, 4);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("2048 bytes"), std::string::npos) << r.status().ToString();
  EXPECT_TRUE(decode.sink.reserved(1));
}

}  // namespace
}  // namespace pdpool::agent
