// The tcp KV transport against a recording sink: blocks arrive intact and in order; a bad token
// is refused before anything is touched; a sender that dies, stalls or corrupts a frame makes the
// receiver abort the reservation (so the decode worker frees its blocks).
#include "agent/transport/tcp_kv_transport.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <map>
#include <mutex>

#include "agent/transport/crc32c.h"

namespace pdpool::agent {
namespace {

class RecordingSink : public KvSink {
 public:
  Status Begin(uint64_t reservation, int32_t num_tokens, int32_t num_blocks) override {
    std::lock_guard lock(mu_);
    ++begins;
    if (reservation == 404) return Status::NotFound("reservation 404 is unknown");
    tokens = num_tokens;
    blocks_expected = num_blocks;
    return Status::Ok();
  }
  Status WriteBlock(uint64_t, int32_t index, int32_t t, std::string_view payload) override {
    std::lock_guard lock(mu_);
    blocks[index] = std::string(payload);
    block_tokens[index] = t;
    return Status::Ok();
  }
  Status Commit(uint64_t) override {
    std::lock_guard lock(mu_);
    committed = true;
    cv_.notify_all();
    return Status::Ok();
  }
  void Abort(uint64_t, const Status& why) override {
    std::lock_guard lock(mu_);
    aborted = true;
    abort_reason = why.ToString();
    cv_.notify_all();
  }
  bool WaitDone(std::chrono::seconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return committed || aborted; });
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int begins = 0;
  int32_t tokens = 0;
  int32_t blocks_expected = 0;
  std::map<int32_t, std::string> blocks;
  std::map<int32_t, int32_t> block_tokens;
  bool committed = false;
  bool aborted = false;
  std::string abort_reason;
};

TcpKvOptions Options() {
  TcpKvOptions o;
  o.token = "s3cret";
  o.io_timeout = std::chrono::milliseconds(300);
  o.transfer_timeout = std::chrono::seconds(5);
  return o;
}

KvDestination To(int port, uint64_t reservation = 7) {
  KvDestination d;
  d.address = "127.0.0.1:" + std::to_string(port);
  d.reservation_id = reservation;
  return d;
}

KvBlockReader Blocks() {
  return [](int32_t index, int32_t tokens, std::string* out) {
    *out = std::string(static_cast<size_t>(tokens) * 8, static_cast<char>('a' + index));
    return Status::Ok();
  };
}

TEST(TcpKvTransportTest, StreamsEveryBlockAndCommits) {
  RecordingSink sink;
  TcpKvReceiver receiver(Options(), &sink);
  ASSERT_TRUE(receiver.Start("127.0.0.1", 0).ok());
  TcpKvSender sender(Options());
  auto stats = sender.Send(To(receiver.port()), 37, 16, Blocks());
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->bytes, 37 * 8);
  std::lock_guard lock(sink.mu_);
  EXPECT_TRUE(sink.committed);
  EXPECT_EQ(sink.tokens, 37);
  ASSERT_EQ(sink.blocks.size(), 3u);
  EXPECT_EQ(sink.blocks[2], std::string(5 * 8, 'c'));
  EXPECT_EQ(sink.block_tokens[0], 16);
  EXPECT_EQ(sink.block_tokens[2], 5);
}

TEST(TcpKvTransportTest, ConnectionsArePooledAndStaleOnesReplaced) {
  RecordingSink sink;
  auto receiver = std::make_unique<TcpKvReceiver>(Options(), &sink);
  ASSERT_TRUE(receiver->Start("127.0.0.1", 0).ok());
  const int port = receiver->port();
  TcpKvSender sender(Options());
  for (int i = 0; i < 3; ++i) {
    auto stats = sender.Send(To(port), 20, 16, Blocks());
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  }
  EXPECT_EQ(sender.connections_opened(), 1);
  // The receiver restarts: the pooled connection is dead; the next transfer still goes through.
  receiver->Stop();
  receiver = std::make_unique<TcpKvReceiver>(Options(), &sink);
  ASSERT_TRUE(receiver->Start("127.0.0.1", port).ok());
  auto stats = sender.Send(To(port), 20, 16, Blocks());
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(sender.connections_opened(), 2);
}

TEST(TcpKvTransportTest, WrongTokenIsRefusedBeforeTheSinkIsTouched) {
  RecordingSink sink;
  TcpKvReceiver receiver(Options(), &sink);
  ASSERT_TRUE(receiver.Start("127.0.0.1", 0).ok());
  TcpKvOptions bad = Options();
  bad.token = "guess";
  TcpKvSender sender(bad);
  auto stats = sender.Send(To(receiver.port()), 4, 16, Blocks());
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find("bad pool token"), std::string::npos);
  std::lock_guard lock(sink.mu_);
  EXPECT_EQ(sink.begins, 0);
}

TEST(TcpKvTransportTest, UnknownReservationIsReportedToTheSender) {
  RecordingSink sink;
  TcpKvReceiver receiver(Options(), &sink);
  ASSERT_TRUE(receiver.Start("127.0.0.1", 0).ok());
  TcpKvSender sender(Options());
  auto stats = sender.Send(To(receiver.port(), 404), 40, 16, Blocks());
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find("reservation 404"), std::string::npos);
}

TEST(TcpKvTransportTest, UnreachableReceiverFailsFast) {
  TcpKvSender sender(Options());
  auto stats = sender.Send(To(1), 4, 16, Blocks());  // nothing listens on port 1
  EXPECT_FALSE(stats.ok());
}

// A raw client: sends a valid hello and then misbehaves.
int ConnectRaw(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return -1;
  return fd;
}

template <typename T>
void Put(std::string& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

std::string Hello(uint32_t tokens, uint32_t blocks) {
  std::string h = "PDKV";
  Put<uint16_t>(h, 1);
  Put<uint16_t>(h, 6);
  h += "s3cret";
  Put<uint64_t>(h, 7);
  Put<uint32_t>(h, tokens);
  Put<uint32_t>(h, blocks);
  return h;
}

std::string Frame(uint32_t index, const std::string& payload, uint32_t crc) {
  std::string f;
  Put<uint32_t>(f, index);
  Put<uint32_t>(f, 16);
  Put<uint32_t>(f, static_cast<uint32_t>(payload.size()));
  Put<uint32_t>(f, crc);
  return f + payload;
}

TEST(TcpKvTransportTest, SenderDyingMidTransferAbortsTheReservation) {
  RecordingSink sink;
  TcpKvReceiver receiver(Options(), &sink);
  ASSERT_TRUE(receiver.Start("127.0.0.1", 0).ok());
  int fd = ConnectRaw(receiver.port());
  ASSERT_GE(fd, 0);
  std::string data = Hello(32, 2) + Frame(0, std::string(128, 'x'), Crc32c(std::string(128, 'x')));
  data += Frame(1, std::string(128, 'y'), Crc32c(std::string(128, 'y'))).substr(0, 40);
  ASSERT_EQ(::send(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  ::close(fd);  // dies halfway through block 1
  ASSERT_TRUE(sink.WaitDone(std::chrono::seconds(5)));
  std::lock_guard lock(sink.mu_);
  EXPECT_TRUE(sink.aborted);
  EXPECT_FALSE(sink.committed);
  EXPECT_NE(sink.abort_reason.find("closed"), std::string::npos);
}

TEST(TcpKvTransportTest, StalledSenderTimesOut) {
  RecordingSink sink;
  TcpKvReceiver receiver(Options(), &sink);
  ASSERT_TRUE(receiver.Start("127.0.0.1", 0).ok());
  int fd = ConnectRaw(receiver.port());
  ASSERT_GE(fd, 0);
  std::string data = Hello(32, 2);
  ASSERT_EQ(::send(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  ASSERT_TRUE(sink.WaitDone(std::chrono::seconds(5)));  // io_timeout is 300 ms
  ::close(fd);
  std::lock_guard lock(sink.mu_);
  EXPECT_TRUE(sink.aborted);
  EXPECT_NE(sink.abort_reason.find("timed out"), std::string::npos);
}

TEST(TcpKvTransportTest, CorruptedBlockFailsTheChecksum) {
  RecordingSink sink;
  TcpKvReceiver receiver(Options(), &sink);
  ASSERT_TRUE(receiver.Start("127.0.0.1", 0).ok());
  int fd = ConnectRaw(receiver.port());
  ASSERT_GE(fd, 0);
  std::string data = Hello(16, 1) + Frame(0, std::string(128, 'x'), Crc32c("something else"));
  ASSERT_EQ(::send(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  ASSERT_TRUE(sink.WaitDone(std::chrono::seconds(5)));
  ::close(fd);
  std::lock_guard lock(sink.mu_);
  EXPECT_TRUE(sink.aborted);
  EXPECT_NE(sink.abort_reason.find("checksum"), std::string::npos);
}

TEST(Crc32cTest, KnownVector) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);  // the CRC-32C check value
}

}  // namespace
}  // namespace pdpool::agent
