// The worker's --labels-file: the kubelet's downward-API labels format (key="value" lines,
// Go-quoted values), errors that name the line, and the watcher that follows one label through
// atomic replacements of the file (what the kubelet does) without firing for the value the
// worker started with.
#include "agent/worker/labels_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

namespace pdpool::agent {
namespace {

namespace fs = std::filesystem;

TEST(LabelsFileTest, ParsesTheKubeletFormat) {
  // As the kubelet writes it: keys sorted, one per line, no newline after the last.
  auto labels = ParseLabelsFile(
      "app.kubernetes.io/name=\"pdpool-worker\"\n"
      "pdpool.dev/pool=\"llama-70b\"\n"
      "pdpool.dev/role=\"decode\"\n"
      "pod-template-hash=\"7d9f8c\"");
  ASSERT_TRUE(labels.ok()) << labels.status().ToString();
  EXPECT_EQ(labels->size(), 4u);
  EXPECT_EQ(labels->at("pdpool.dev/role"), "decode");
  EXPECT_EQ(labels->at("pdpool.dev/pool"), "llama-70b");
  EXPECT_EQ(labels->at("app.kubernetes.io/name"), "pdpool-worker");
}

TEST(LabelsFileTest, EmptyFileAndEmptyLinesAndEmptyValues) {
  auto empty = ParseLabelsFile("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto labels = ParseLabelsFile("\na=\"\"\r\n\nb=\"x=y\"\n");
  ASSERT_TRUE(labels.ok()) << labels.status().ToString();
  EXPECT_EQ(labels->at("a"), "");
  EXPECT_EQ(labels->at("b"), "x=y");  // the key ends at the first '='
}

TEST(LabelsFileTest, UndoesGoQuoting) {
  // Annotations (same format) can hold anything; Go's %q escapes it.
  auto labels = ParseLabelsFile(R"(quote="say \"hi\"")"
                                "\n"
                                R"(slash="a\\b")"
                                "\n"
                                R"(controls="l1\nl2\tt\r\a\b\f\v")"
                                "\n"
                                R"(hex="\x41\x7f")"
                                "\n"
                                R"(octal="\101\000")"
                                "\n"
                                R"(unicode="caf\u00e9 \U0001F600 日本")");
  ASSERT_TRUE(labels.ok()) << labels.status().ToString();
  EXPECT_EQ(labels->at("quote"), "say \"hi\"");
  EXPECT_EQ(labels->at("slash"), "a\\b");
  EXPECT_EQ(labels->at("controls"), "l1\nl2\tt\r\a\b\f\v");
  EXPECT_EQ(labels->at("hex"), "A\x7f");
  EXPECT_EQ(labels->at("octal"), std::string("A\0", 2));
  EXPECT_EQ(labels->at("unicode"), "caf\xC3\xA9 \xF0\x9F\x98\x80 日本");
}

TEST(LabelsFileTest, BadLinesAreErrorsNamingTheLine) {
  struct Case {
    std::string text;
    std::string want;  // in the message
  };
  const std::vector<Case> cases = {
      {"a=\"1\"\nno-equals-sign", "line 2: no '='"},
      {"=\"x\"", "line 1: empty key"},
      {"a=unquoted", "line 1: the value is not a double-quoted string"},
      {"a=\"open", "line 1: the value is not a double-quoted string"},
      {"a=\"", "line 1: the value is not a double-quoted string"},
      {"a=\"x\" ", "line 1: the value is not a double-quoted string"},
      {"a=\"in\"side\"", "line 1: unescaped '\"'"},
      {R"(a="\q")", "unknown escape '\\q'"},
      {R"(a="\x4")", "escape '\\x' is cut short"},
      {R"(a="\xZZ")", "escape '\\x' has a bad digit"},
      {R"(a="\uD800")", "not a Unicode code point"},
      {R"(a="\U00110000")", "not a Unicode code point"},
      {R"(a="\400")", "octal escape above"},
      {"ok=\"1\"\n\nb=\"x\\\"", "line 3:"},
  };
  for (const Case& c : cases) {
    auto r = ParseLabelsFile(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.want), std::string::npos)
        << c.text << " → " << r.status().message();
  }
}

class LabelsFileWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pdpool-labels-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "labels").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Replaces the file in one step, as the kubelet's symlink swap does.
  void Write(const std::string& text) {
    const std::string tmp = path_ + ".tmp";
    std::ofstream(tmp) << text;
    fs::rename(tmp, path_);
  }

  fs::path dir_;
  std::string path_;
};

TEST_F(LabelsFileWatcherTest, ReportsEachChangeOfTheLabelOnce) {
  std::vector<std::string> seen;
  LabelsFileWatcher w(path_, "pdpool.dev/role", std::chrono::seconds(1), [&](const std::string& v) {
    seen.push_back(v);
    return true;
  });
  w.PollOnce();  // no file yet: nothing
  EXPECT_TRUE(seen.empty());

  Write("pdpool.dev/pool=\"p\"\npdpool.dev/role=\"decode\"");
  w.PollOnce();
  w.PollOnce();
  EXPECT_EQ(seen, std::vector<std::string>({"decode"}));

  Write("pdpool.dev/pool=\"p\"\npdpool.dev/role=\"prefill\"");
  w.PollOnce();
  Write("pdpool.dev/pool=\"other\"\npdpool.dev/role=\"prefill\"");  // another label only
  w.PollOnce();
  EXPECT_EQ(seen, std::vector<std::string>({"decode", "prefill"}));

  Write("pdpool.dev/pool=\"p\"\npdpool.dev/role=\"bad");  // malformed: keep the value
  w.PollOnce();
  Write("pdpool.dev/pool=\"p\"");  // label gone: keep the value
  w.PollOnce();
  fs::remove(path_);
  w.PollOnce();
  EXPECT_EQ(seen, std::vector<std::string>({"decode", "prefill"}));

  Write("pdpool.dev/role=\"decode\"");
  w.PollOnce();
  EXPECT_EQ(seen, std::vector<std::string>({"decode", "prefill", "decode"}));
}

TEST_F(LabelsFileWatcherTest, StartingValueDoesNotFireAndRefusalsAreRetried) {
  std::vector<std::string> seen;
  bool accept = false;
  LabelsFileWatcher w(path_, "pdpool.dev/role", std::chrono::seconds(1), [&](const std::string& v) {
    seen.push_back(v);
    return accept;
  });
  Write("pdpool.dev/role=\"prefill\"");
  w.Start(std::string("prefill"));
  w.Stop();  // the first poll would come after a second; PollOnce drives it from here
  w.PollOnce();
  EXPECT_TRUE(seen.empty());

  Write("pdpool.dev/role=\"decode\"");
  w.PollOnce();  // refused for now
  w.PollOnce();  // asked again
  accept = true;
  w.PollOnce();  // taken
  w.PollOnce();  // nothing new
  EXPECT_EQ(seen, std::vector<std::string>({"decode", "decode", "decode"}));
}

TEST_F(LabelsFileWatcherTest, ThreadPicksUpAnAtomicReplacement) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> seen;
  Write("pdpool.dev/role=\"decode\"");
  LabelsFileWatcher w(path_, "pdpool.dev/role", std::chrono::milliseconds(10),
                      [&](const std::string& v) {
                        std::lock_guard lock(mu);
                        seen.push_back(v);
                        cv.notify_all();
                        return true;
                      });
  w.Start(std::string("decode"));
  Write("pdpool.dev/role=\"prefill\"");
  {
    std::unique_lock lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return !seen.empty(); }));
  }
  w.Stop();
  EXPECT_EQ(seen, std::vector<std::string>({"prefill"}));
}

TEST(ReadLabelsFileTest, ErrorsNameThePath) {
  auto missing = ReadLabelsFile("/nonexistent/pdpool/labels");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/pdpool/labels"), std::string::npos);
}

}  // namespace
}  // namespace pdpool::agent
