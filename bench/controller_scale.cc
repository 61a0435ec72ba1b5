// controller_scale: the controller targets of TARGETS.md ("Controller") measured against a real
// API server. The bench creates N InferencePools at once, then starts pdpool-controller itself
// (so it knows the pid) and measures, from the controller's start:
//   - time until every pool is reconciled (status.observedGeneration == metadata.generation,
//     Ready/Progressing/Degraded conditions present, both worker ReplicaSets, the router
//     Deployment and Service exist), timestamped from the bench's own watches;
//   - p50/p99 reconcile time from the controller's histogram (interpolated within buckets as
//     Prometheus' histogram_quantile does) and the reconcile count;
//   - VmRSS/VmHWM of the controller after convergence; idle CPU over a window after it;
//   - spec-change latency: patch spec.prefill.replicas of K pools one after another and time,
//     per pool, the patch response → the watch event showing the ReplicaSet's new spec.replicas;
//   - where the CPU went (controller, API server, etcd, controller-manager, this bench, the rest
//     of the machine) while converging.
// Prints one table (metric | measured | target | ratio | result) and writes it as JSON with
// --json. Benchmarks report and do not gate: exit 0 when the measurement ran (targets missed or
// not), 1 when it could not run (no API server, no CRD, the controller died), 130 on SIGINT.
// bench/controller_scale.sh runs it on a dedicated local cluster; see bench/README.md.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/json.h"
#include "common/kube/http_kube_client.h"
#include "common/kube/informer.h"
#include "common/kube/kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/log.h"
#include "common/signals.h"
#include "controller/pool_reconciler.h"

namespace pdpool::bench {
namespace {

using Steady = std::chrono::steady_clock;
using SteadyTime = Steady::time_point;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double Seconds(Steady::duration d) { return std::chrono::duration<double>(d).count(); }

// ---------------------------------------------------------------------------------------------
// Interruption (SIGINT/SIGTERM): every wait below checks it, then the bench cleans up.
// ---------------------------------------------------------------------------------------------

std::atomic<bool> g_interrupted{false};
std::mutex g_wake_mu;
std::condition_variable g_wake_cv;

void Wake() {
  std::lock_guard lock(g_wake_mu);
  g_wake_cv.notify_all();
}

// Sleeps up to `d`; false when interrupted.
bool SleepFor(Steady::duration d) {
  std::unique_lock lock(g_wake_mu);
  g_wake_cv.wait_for(lock, d, [] { return g_interrupted.load(); });
  return !g_interrupted.load();
}
bool SleepSeconds(double s) {
  return SleepFor(std::chrono::duration_cast<Steady::duration>(std::chrono::duration<double>(s)));
}

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

struct Flags {
  std::string kubeconfig;
  std::string ns;  // empty: pdpool-bench-<random>
  int pools = 500;
  int prefill_replicas = 0;
  int decode_replicas = 0;
  int worker_replicas = -1;  // >= 0 sets both
  int router_replicas = 0;
  std::string topology_policy = "None";
  std::string topology_key = "nvidia.com/gpu.clique";
  int create_concurrency = 8;
  std::string controller_binary;
  int controller_workers = 0;  // 0: controller default
  double controller_qps = 0;   // 0: controller default
  int controller_burst = 0;    // 0: controller default
  bool leader_elect = true;
  std::vector<std::string> controller_args;
  std::string controller_log;
  double timeout_s = 180;
  bool wait_ready = false;
  double ready_timeout_s = 600;
  double settle_s = 5;
  double idle_s = 30;
  double quiet_timeout_s = 180;  // 0: skip the second idle window
  int spec_changes = 100;
  double spec_change_rate = 5;
  double spec_change_timeout_s = 30;
  std::string cluster_dir;
  std::vector<std::string> track_pids;
  std::string json_path;
  std::string scenario;
  bool keep_namespace = false;
};

// ---------------------------------------------------------------------------------------------
// /proc readers
// ---------------------------------------------------------------------------------------------

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// utime + stime of a process (all its threads, not its children), seconds; nullopt when gone.
std::optional<double> ProcessCpuSeconds(pid_t pid) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream in(stat.substr(close + 2));
  std::vector<std::string> fields;
  for (std::string f; in >> f;) fields.push_back(f);
  // Fields after "(comm)" start at field 3 (state); utime is field 14, stime 15.
  if (fields.size() < 13) return std::nullopt;
  static const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  return (std::stod(fields[11]) + std::stod(fields[12])) / hz;
}

struct Memory {
  double rss_mb = kNaN;  // MB = 10^6 bytes
  double hwm_mb = kNaN;
};

Memory ProcessMemory(pid_t pid) {
  Memory m;
  std::istringstream in(ReadFile("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    auto kb = [&line] { return std::stod(line.substr(line.find(':') + 1)) * 1024.0 / 1e6; };
    if (line.rfind("VmRSS:", 0) == 0) m.rss_mb = kb();
    if (line.rfind("VmHWM:", 0) == 0) m.hwm_mb = kb();
  }
  return m;
}

// Non-idle CPU time of the whole machine (all cores), seconds.
double MachineBusySeconds() {
  std::istringstream in(ReadFile("/proc/stat"));
  std::string cpu;
  in >> cpu;
  std::vector<double> v;
  for (double x; v.size() < 8 && in >> x;) v.push_back(x);
  if (v.size() < 5) return kNaN;
  double total = 0;
  for (double x : v) total += x;
  static const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  return (total - v[3] - v[4]) / hz;  // minus idle and iowait
}

std::string LoadAverage() {
  std::istringstream in(ReadFile("/proc/loadavg"));
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string CpuModel() {
  std::istringstream in(ReadFile("/proc/cpuinfo"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      std::string v = line.substr(line.find(':') + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "unknown";
}

std::string UtcNow() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// CPU seconds of named processes and of the machine at one instant.
struct CpuSample {
  SteadyTime at;
  std::map<std::string, double> process;
  double machine = kNaN;
};

struct TrackedProcess {
  std::string name;
  pid_t pid;
};

CpuSample SampleCpu(const std::vector<TrackedProcess>& procs) {
  CpuSample s;
  s.at = Steady::now();
  for (const auto& p : procs)
    if (auto c = ProcessCpuSeconds(p.pid)) s.process[p.name] = *c;
  s.machine = MachineBusySeconds();
  return s;
}

// Per-process CPU over [a, b] as % of one core; "machine" is all cores busy; "other" is the
// machine minus the tracked processes (other people's work on a shared machine, kernel).
std::vector<std::pair<std::string, double>> CpuPercent(const CpuSample& a, const CpuSample& b) {
  std::vector<std::pair<std::string, double>> out;
  double wall = Seconds(b.at - a.at);
  if (wall <= 0) return out;
  double tracked = 0;
  for (const auto& [name, end] : b.process) {
    auto it = a.process.find(name);
    if (it == a.process.end()) continue;
    out.emplace_back(name, 100.0 * (end - it->second) / wall);
    tracked += end - it->second;
  }
  out.emplace_back("machine", 100.0 * (b.machine - a.machine) / wall);
  out.emplace_back("other", 100.0 * (b.machine - a.machine - tracked) / wall);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The controller process
// ---------------------------------------------------------------------------------------------

class ChildProcess {
 public:
  ~ChildProcess() { Stop(std::chrono::seconds(10)); }

  // stdout and stderr go to log_path. The child gets SIGKILL if this thread dies.
  bool Start(const std::string& binary, const std::vector<std::string>& args,
             const std::string& log_path) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      std::cerr << "controller_scale: cannot open " << log_path << ": " << strerror(errno) << "\n";
      return false;
    }
    std::vector<std::string> argv_s = {binary};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
      close(fd);
      return false;
    }
    if (pid == 0) {
      // Never outlive the bench, even when it is killed with SIGKILL.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      sigset_t all;
      sigemptyset(&all);
      sigprocmask(SIG_SETMASK, &all, nullptr);  // the bench blocks SIGTERM/SIGINT
      dup2(fd, 1);
      dup2(fd, 2);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(fd);
    pid_ = pid;
    return true;
  }

  pid_t pid() const { return pid_; }

  bool Running() {
    if (pid_ <= 0 || reaped_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      status_ = status;
      return false;
    }
    return true;
  }

  // SIGTERM, then SIGKILL after `grace`. Returns the exit code (negative: killed by signal).
  int Stop(Steady::duration grace) {
    if (pid_ <= 0) return 0;
    if (!reaped_) {
      kill(pid_, SIGTERM);
      auto deadline = Steady::now() + grace;
      while (Running() && Steady::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (Running()) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status_, 0);
        reaped_ = true;
        killed_ = true;
      }
    }
    return ExitCode();
  }

  int ExitCode() const {
    if (WIFEXITED(status_)) return WEXITSTATUS(status_);
    if (WIFSIGNALED(status_)) return -WTERMSIG(status_);
    return -1;
  }
  bool killed() const { return killed_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  bool killed_ = false;
  int status_ = 0;
};

int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// Plain HTTP/1.0 GET on loopback (the controller's admin server); body or nullopt.
std::optional<std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return std::nullopt;
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return std::nullopt;
  }
  std::string resp;
  char buf[16384];
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  if (resp.rfind("HTTP/1.", 0) != 0 || resp.find(" 200 ") == std::string::npos) return std::nullopt;
  size_t body = resp.find("\r\n\r\n");
  if (body == std::string::npos) return std::nullopt;
  return resp.substr(body + 4);
}

// ---------------------------------------------------------------------------------------------
// Controller metrics
// ---------------------------------------------------------------------------------------------

// One scrape in the Prometheus text format, as (name, labels, value) samples.
struct Sample {
  std::string name;
  std::string labels;  // `{a="b",...}` or ""
  double value;
};
using Buckets = std::vector<std::pair<double, double>>;  // (le, cumulative count), +Inf last

// Value of label `name` in a `{a="b",c="d"}` block; "" when absent.
std::string LabelValue(const std::string& labels, const std::string& name) {
  std::string key = "," + name + "=\"";
  std::string padded = labels.empty() ? "" : "," + labels.substr(1);
  size_t at = padded.find(key);
  if (at == std::string::npos) return "";
  at += key.size();
  return padded.substr(at, padded.find('"', at) - at);
}

std::vector<Sample> ParseSamples(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    size_t brace = line.find('{');
    size_t close = brace == std::string::npos ? std::string::npos : line.find('}', brace);
    size_t value_at = line.find(' ', close == std::string::npos ? 0 : close);
    if (value_at == std::string::npos) continue;
    Sample smp;
    smp.name = line.substr(0, std::min(brace, line.find(' ')));
    if (close != std::string::npos) smp.labels = line.substr(brace, close - brace + 1);
    try {
      smp.value = std::stod(line.substr(value_at + 1));
    } catch (...) {
      continue;
    }
    out.push_back(std::move(smp));
  }
  return out;
}

// The histogram `name` summed over the series whose labels pass `keep`.
Buckets SumHistogram(const std::vector<Sample>& samples, const std::string& name,
                     const std::function<bool(const std::string&)>& keep = nullptr) {
  std::map<double, double> by_le;
  const std::string bucket = name + "_bucket";
  for (const auto& smp : samples) {
    if (smp.name != bucket || (keep && !keep(smp.labels))) continue;
    std::string le = LabelValue(smp.labels, "le");
    double bound =
        le == "+Inf" ? std::numeric_limits<double>::infinity() : std::strtod(le.c_str(), nullptr);
    by_le[bound] += smp.value;
  }
  return Buckets(by_le.begin(), by_le.end());
}

double SumValues(const std::vector<Sample>& samples, const std::string& name,
                 const std::function<bool(const std::string&)>& keep = nullptr) {
  double sum = 0;
  for (const auto& smp : samples)
    if (smp.name == name && (!keep || keep(smp.labels))) sum += smp.value;
  return sum;
}

// after − before, bucket by bucket (both from SumHistogram of the same series).
Buckets Delta(const Buckets& after, const Buckets& before) {
  Buckets out = after;
  for (auto& [le, count] : out)
    for (const auto& [ble, bcount] : before)
      if (ble == le) count -= bcount;
  return out;
}

struct ControllerMetricsScrape {
  bool ok = false;
  Buckets buckets;
  double sum = 0;
  double count = 0;
  std::map<std::string, double> reconciles;  // result → count

  double Reconciles() const {
    double n = 0;
    for (const auto& [r, c] : reconciles) n += c;
    return n;
  }
};

ControllerMetricsScrape ParseMetrics(const std::string& text) {
  ControllerMetricsScrape m;
  auto samples = ParseSamples(text);
  m.buckets = SumHistogram(samples, "pdpool_controller_reconcile_seconds");
  m.ok = !m.buckets.empty();
  m.sum = SumValues(samples, "pdpool_controller_reconcile_seconds_sum");
  m.count = SumValues(samples, "pdpool_controller_reconcile_seconds_count");
  for (const auto& smp : samples)
    if (smp.name == "pdpool_controller_reconcile_total")
      m.reconciles[LabelValue(smp.labels, "result")] += smp.value;
  return m;
}

// Prometheus' histogram_quantile: find the bucket holding rank q·count, interpolate linearly
// inside it (lower bound 0 for the first bucket); in the +Inf bucket, answer the highest finite
// bound. NaN without observations.
double HistogramQuantile(double q, const std::vector<std::pair<double, double>>& buckets) {
  if (buckets.size() < 2 || !std::isinf(buckets.back().first)) return kNaN;
  double total = buckets.back().second;
  if (total <= 0) return kNaN;
  double rank = q * total;
  size_t b = 0;
  while (b < buckets.size() && buckets[b].second < rank) b++;
  if (b == buckets.size() - 1) return buckets[buckets.size() - 2].first;
  if (b == 0 && buckets[0].first <= 0) return buckets[0].first;
  double start = b == 0 ? 0 : buckets[b - 1].first;
  double end = buckets[b].first;
  double below = b == 0 ? 0 : buckets[b - 1].second;
  double in_bucket = buckets[b].second - below;
  if (in_bucket <= 0) return end;
  return start + (end - start) * (rank - below) / in_bucket;
}

ControllerMetricsScrape ScrapeController(int port) {
  for (int attempt = 0; attempt < 5; attempt++) {
    if (auto body = HttpGet(port, "/metrics")) {
      auto m = ParseMetrics(*body);
      if (m.ok) return m;
    }
    if (!SleepFor(std::chrono::milliseconds(200))) break;
  }
  return {};
}

// The control plane's own view of the load, to tell where the time goes: the API server's
// request counters and latencies (through `kubectl get --raw /metrics`, which handles the
// authentication) and etcd's disk latencies (plain HTTP on loopback).
struct ControlPlaneScrape {
  bool api_ok = false;
  bool etcd_ok = false;
  std::map<std::string, double> writes;  // "resource[/subresource] VERB" → requests
  Buckets write_latency;                 // apiserver_request_duration_seconds of writes
  double write_latency_sum = 0;
  Buckets wal_fsync;       // etcd_disk_wal_fsync_duration_seconds
  Buckets backend_commit;  // etcd_disk_backend_commit_duration_seconds

  double Writes() const {
    double n = 0;
    for (const auto& [k, v] : writes) n += v;
    return n;
  }
};

bool IsWriteVerb(const std::string& labels) {
  std::string verb = LabelValue(labels, "verb");
  return verb == "POST" || verb == "PUT" || verb == "PATCH" || verb == "DELETE" || verb == "APPLY";
}

std::optional<std::string> RunCommand(const std::string& cmd) {
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return std::nullopt;
  std::string out;
  char buf[65536];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  return pclose(pipe) == 0 ? std::optional<std::string>(out) : std::nullopt;
}

ControlPlaneScrape ScrapeControlPlane(const std::string& kubeconfig, int etcd_port) {
  ControlPlaneScrape c;
  std::string cmd = "kubectl";
  if (!kubeconfig.empty()) cmd += " --kubeconfig '" + kubeconfig + "'";
  cmd += " get --raw /metrics 2>/dev/null";
  if (auto text = RunCommand(cmd)) {
    auto samples = ParseSamples(*text);
    for (const auto& smp : samples) {
      if (smp.name != "apiserver_request_total" || !IsWriteVerb(smp.labels)) continue;
      std::string key = LabelValue(smp.labels, "resource");
      if (std::string sub = LabelValue(smp.labels, "subresource"); !sub.empty()) key += "/" + sub;
      c.writes[key + " " + LabelValue(smp.labels, "verb")] += smp.value;
    }
    c.write_latency = SumHistogram(samples, "apiserver_request_duration_seconds", IsWriteVerb);
    c.write_latency_sum = SumValues(samples, "apiserver_request_duration_seconds_sum", IsWriteVerb);
    c.api_ok = !c.write_latency.empty();
  }
  if (etcd_port > 0) {
    if (auto text = HttpGet(etcd_port, "/metrics")) {
      auto samples = ParseSamples(*text);
      c.wal_fsync = SumHistogram(samples, "etcd_disk_wal_fsync_duration_seconds");
      c.backend_commit = SumHistogram(samples, "etcd_disk_backend_commit_duration_seconds");
      c.etcd_ok = !c.wal_fsync.empty();
    }
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Watching the pools and their children
// ---------------------------------------------------------------------------------------------

bool HasControllerRef(const Json& object, const std::string& uid) {
  for (const auto& ref : JsonGet<Json>(object, "/metadata/ownerReferences", Json::array()))
    if (ref.is_object() && ref.value("controller", false) && ref.value("uid", "") == uid)
      return true;
  return false;
}

std::string PoolKeyOfChild(const Json& object) {
  auto v = controller::PoolIndexValues(object);
  return v.empty() ? "" : v.front();
}

// Keeps the bench's own caches (informers) of the pools, their ReplicaSets, Deployments and
// Services, and timestamps, from the watch events, when each pool first reaches the states the
// benchmark waits for. Thread-safe: informer handlers run on the informers' threads.
class PoolTracker {
 public:
  PoolTracker(kube::KubeClient* client, const std::string& ns) {
    kube::InformerOptions scoped;
    scoped.ns = ns;
    kube::InformerOptions children = scoped;
    children.label_selector = controller::kPoolLabel;
    pools_ = std::make_unique<kube::Informer>(client, kube::kInferencePools, scoped);
    rs_ = std::make_unique<kube::Informer>(client, kube::kReplicaSets, children);
    deps_ = std::make_unique<kube::Informer>(client, kube::kDeployments, children);
    svcs_ = std::make_unique<kube::Informer>(client, kube::kServices, children);
    for (auto* inf : {rs_.get(), deps_.get(), svcs_.get()})
      inf->AddIndex(controller::kPoolIndex, controller::PoolIndexValues);

    pools_->AddHandler(kube::InformerHandler{
        [this](const kube::ObjectPtr& o) { Check(kube::ObjectKey(*o)); },
        [this](const kube::ObjectPtr&, const kube::ObjectPtr& o) { Check(kube::ObjectKey(*o)); },
        nullptr});
    auto child = kube::InformerHandler{
        [this](const kube::ObjectPtr& o) { Check(PoolKeyOfChild(*o)); },
        [this](const kube::ObjectPtr&, const kube::ObjectPtr& o) { Check(PoolKeyOfChild(*o)); },
        nullptr};
    deps_->AddHandler(child);
    svcs_->AddHandler(child);
    rs_->AddHandler(kube::InformerHandler{
        [this](const kube::ObjectPtr& o) { OnReplicaSet(*o); },
        [this](const kube::ObjectPtr&, const kube::ObjectPtr& o) { OnReplicaSet(*o); }, nullptr});
  }

  ~PoolTracker() { Stop(); }

  void Start() {
    for (auto* inf : {pools_.get(), rs_.get(), deps_.get(), svcs_.get()})
      threads_.emplace_back([this, inf] { inf->Run(&cancel_); });
  }

  void Stop() {
    cancel_.Cancel();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  bool WaitForSync(Steady::duration timeout) {
    for (auto* inf : {pools_.get(), rs_.get(), deps_.get(), svcs_.get()})
      if (!inf->WaitForSync(timeout, &cancel_)) return false;
    return true;
  }

  size_t PoolCount() const { return pools_->Size(); }

  // Called by the waiting thread; counts and times are of the first time each pool got there.
  struct Progress {
    size_t reconciled = 0;
    size_t ready = 0;
    std::optional<SteadyTime> first_reconciled, all_reconciled, all_ready;
  };
  Progress GetProgress(size_t want) const {
    std::lock_guard lock(mu_);
    Progress p;
    p.reconciled = reconciled_at_.size();
    p.ready = ready_at_.size();
    std::optional<SteadyTime> max_r, max_ready;
    for (const auto& [k, t] : reconciled_at_) {
      if (!p.first_reconciled || t < *p.first_reconciled) p.first_reconciled = t;
      if (!max_r || t > *max_r) max_r = t;
    }
    for (const auto& [k, t] : ready_at_)
      if (!max_ready || t > *max_ready) max_ready = t;
    if (p.reconciled >= want) p.all_reconciled = max_r;
    if (p.ready >= want) p.all_ready = max_ready;
    return p;
  }

  // Registers, before the patch is sent, that `pool` should get a prefill ReplicaSet with
  // spec.replicas == replicas.
  void Expect(const std::string& pool, int replicas) {
    std::lock_guard lock(mu_);
    expectations_[pool] = Expectation{replicas, std::nullopt};
  }
  std::optional<SteadyTime> Seen(const std::string& pool) const {
    std::lock_guard lock(mu_);
    auto it = expectations_.find(pool);
    return it == expectations_.end() ? std::nullopt : it->second.seen;
  }

  // Reads the controller's Events in the namespace: reason → count.
  static std::map<std::string, int> CountEvents(kube::KubeClient* client, const std::string& ns) {
    std::map<std::string, int> out;
    auto list = client->List(kube::kEvents, ns);
    if (!list.ok()) return out;
    for (const auto& e : (*list)["items"])
      if (JsonGet<std::string>(e, "/source/component", "") == "pdpool-controller")
        out[e.value("reason", "")] += e.value("count", 1);
    return out;
  }

 private:
  struct Expectation {
    int replicas;
    std::optional<SteadyTime> seen;
  };

  void OnReplicaSet(const Json& rs) {
    const std::string key = PoolKeyOfChild(rs);
    if (key.empty()) return;
    if (JsonGet<std::string>(rs, "/metadata/labels/pdpool.dev~1role", "") == "prefill") {
      const int replicas = JsonGet<int>(rs, "/spec/replicas", -1);
      auto now = Steady::now();
      std::lock_guard lock(mu_);
      auto it = expectations_.find(key);
      if (it != expectations_.end() && !it->second.seen && replicas == it->second.replicas)
        it->second.seen = now;
    }
    Check(key);
  }

  // Re-evaluates one pool after any event about it or its children.
  void Check(const std::string& key) {
    if (key.empty()) return;
    auto now = Steady::now();
    kube::ObjectPtr pool = pools_->Get(key);
    if (!pool) return;
    bool reconciled = Reconciled(*pool, key);
    bool ready = reconciled && Ready(*pool);
    std::lock_guard lock(mu_);
    if (reconciled) reconciled_at_.try_emplace(key, now);
    if (ready) ready_at_.try_emplace(key, now);
  }

  bool Reconciled(const Json& pool, const std::string& key) const {
    const int64_t generation = JsonGet<int64_t>(pool, "/metadata/generation", -1);
    if (JsonGet<int64_t>(pool, "/status/observedGeneration", -2) != generation) return false;
    std::set<std::string> types;
    for (const auto& c : JsonGet<Json>(pool, "/status/conditions", Json::array()))
      if (c.is_object()) types.insert(c.value("type", ""));
    for (const char* t : {"Ready", "Progressing", "Degraded"})
      if (!types.count(t)) return false;
    const std::string uid = JsonGet<std::string>(pool, "/metadata/uid", "");
    std::set<std::string> roles;
    for (const auto& rs : rs_->ByIndex(controller::kPoolIndex, key))
      if (HasControllerRef(*rs, uid))
        roles.insert(JsonGet<std::string>(*rs, "/metadata/labels/pdpool.dev~1role", ""));
    if (!roles.count("prefill") || !roles.count("decode")) return false;
    auto owned = [&](const kube::Informer& inf) {
      for (const auto& o : inf.ByIndex(controller::kPoolIndex, key))
        if (HasControllerRef(*o, uid)) return true;
      return false;
    };
    return owned(*deps_) && owned(*svcs_);
  }

  // Ready=True with every role at its desired count (the worker scenario).
  static bool Ready(const Json& pool) {
    bool ready = false;
    for (const auto& c : JsonGet<Json>(pool, "/status/conditions", Json::array()))
      if (c.is_object() && c.value("type", "") == "Ready") ready = c.value("status", "") == "True";
    if (!ready) return false;
    for (const char* role : {"/status/prefill", "/status/decode"}) {
      Json r = JsonGet<Json>(pool, role, Json::object());
      if (JsonGet<int>(r, "/readyReplicas", -1) < JsonGet<int>(r, "/desiredReplicas", 0))
        return false;
    }
    return true;
  }

  std::unique_ptr<kube::Informer> pools_, rs_, deps_, svcs_;
  kube::CancelToken cancel_;
  std::vector<std::thread> threads_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, SteadyTime> reconciled_at_;
  std::unordered_map<std::string, SteadyTime> ready_at_;
  std::unordered_map<std::string, Expectation> expectations_;
};

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Row {
  std::string metric;
  std::string unit;
  double measured = kNaN;
  double target = kNaN;  // NaN: no target (informational)
  bool lower_is_better = true;
  std::string note;  // shown instead of a number when measured is NaN, or appended

  bool HasTarget() const { return !std::isnan(target); }
  // measured / target for every row: <= 1 meets a "≤" target, >= 1 meets a "≥" target.
  double Ratio() const { return HasTarget() && !std::isnan(measured) ? measured / target : kNaN; }
  std::string Result() const {
    if (!HasTarget()) return "info";
    if (std::isnan(measured)) return "FAIL";
    return (lower_is_better ? measured <= target : measured >= target) ? "pass" : "FAIL";
  }
};

std::string Fmt(double v, int precision) {
  if (std::isnan(v)) return "-";
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(precision);
  s << v;
  return s.str();
}

int PrecisionFor(double v) {
  double a = std::fabs(v);
  if (a >= 100) return 0;
  if (a >= 10) return 1;
  if (a >= 1) return 2;
  return 3;
}

struct Report {
  std::vector<std::string> header;
  std::vector<Row> rows;
  std::vector<std::string> notes;
  Json config = Json::object();
  Json machine = Json::object();
  std::string scenario;
  std::string date;
  bool complete = true;

  void Print() const {
    std::cout << "\n";
    for (const auto& h : header) std::cout << h << "\n";
    std::vector<std::array<std::string, 5>> cells;
    std::vector<std::string> footnotes;  // notes too long for the table
    cells.push_back({"metric", "measured", "target", "ratio", "result"});
    for (const auto& r : rows) {
      std::string measured = std::isnan(r.measured) ? (r.note.empty() ? "-" : r.note)
                                                    : Fmt(r.measured, PrecisionFor(r.measured)) +
                                                          (r.unit.empty() ? "" : " " + r.unit);
      if (!std::isnan(r.measured) && !r.note.empty()) {
        if (measured.size() + r.note.size() <= 70) {
          measured += " (" + r.note + ")";
        } else {
          footnotes.push_back(r.note);
          measured += " [" + std::to_string(footnotes.size()) + "]";
        }
      }
      std::string target = r.HasTarget() ? std::string(r.lower_is_better ? "<= " : ">= ") +
                                               Fmt(r.target, PrecisionFor(r.target)) +
                                               (r.unit.empty() ? "" : " " + r.unit)
                                         : "-";
      cells.push_back({r.metric, measured, target, Fmt(r.Ratio(), 2), r.Result()});
    }
    std::array<size_t, 5> width{};
    for (const auto& c : cells)
      for (size_t i = 0; i < 5; i++) width[i] = std::max(width[i], c[i].size());
    auto line = [&](const std::array<std::string, 5>& c) {
      std::cout << "| ";
      for (size_t i = 0; i < 5; i++) {
        std::cout << c[i] << std::string(width[i] - c[i].size(), ' ') << (i < 4 ? " | " : " |\n");
      }
    };
    line(cells[0]);
    std::cout << "|";
    for (size_t i = 0; i < 5; i++) std::cout << std::string(width[i] + 2, '-') << "|";
    std::cout << "\n";
    for (size_t i = 1; i < cells.size(); i++) line(cells[i]);
    for (size_t i = 0; i < footnotes.size(); i++)
      std::cout << "[" << i + 1 << "] " << footnotes[i] << "\n";
    std::cout << "ratio = measured/target: <= 1.00 meets a '<=' target (lower is better).\n";
    for (const auto& n : notes) std::cout << "note: " << n << "\n";
    std::cout.flush();
  }

  Json ToJson() const {
    auto num = [](double v) { return std::isnan(v) || std::isinf(v) ? Json(nullptr) : Json(v); };
    Json j = {{"benchmark", "controller_scale"},
              {"scenario", scenario},
              {"date", date},
              {"complete", complete},
              {"machine", machine},
              {"config", config},
              {"ratio", "measured/target; <= 1 meets a '<=' target"},
              {"metrics", Json::array()},
              {"notes", notes}};
    for (const auto& r : rows) {
      Json m = {{"metric", r.metric},      {"unit", r.unit},          {"measured", num(r.measured)},
                {"target", num(r.target)}, {"ratio", num(r.Ratio())}, {"result", r.Result()}};
      if (r.HasTarget()) m["target_op"] = r.lower_is_better ? "<=" : ">=";
      if (!r.note.empty()) m["note"] = r.note;
      j["metrics"].push_back(m);
    }
    return j;
  }
};

int TotalEvents(const std::map<std::string, int>& by_reason) {
  int n = 0;
  for (const auto& [reason, count] : by_reason) n += count;
  return n;
}

double NearestRank(std::vector<double> v, double q) {
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

// Parses the controller's log: timestamps (ms since epoch) of the first lines with the given
// messages, and counts of warnings/errors by message.
struct ControllerLog {
  std::map<std::string, double> first_ts_ms;
  std::map<std::string, int> problems;  // msg of level=warn|error lines → count
  std::map<std::string, int> errors;    // their error= values, digits folded to N → count
};

// The error="..." of a log line with every digit run replaced by N, so that the same failure
// of different pools counts as one.
std::string FoldedError(const std::string& line) {
  size_t at = line.find(" error=\"");
  if (at == std::string::npos) return "";
  at += 8;
  std::string out;
  for (size_t i = at; i < line.size() && line[i] != '"'; i++) {
    if (line[i] == '\\' && i + 1 < line.size()) {
      out += line[++i];
    } else if (std::isdigit(static_cast<unsigned char>(line[i]))) {
      while (i + 1 < line.size() && std::isdigit(static_cast<unsigned char>(line[i + 1]))) i++;
      out += 'N';
    } else {
      out += line[i];
    }
  }
  return out.size() > 240 ? out.substr(0, 240) + "..." : out;
}

double ParseLogTs(const std::string& line) {
  if (line.rfind("ts=", 0) != 0 || line.size() < 27) return kNaN;
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(line.c_str() + 3, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon,
                  &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
    return kNaN;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<double>(timegm(&tm)) * 1000.0 + ms;
}

std::string LogMsg(const std::string& line) {
  size_t at = line.find(" msg=\"");
  if (at == std::string::npos) return "";
  at += 6;
  return line.substr(at, line.find('"', at) - at);
}

ControllerLog ReadControllerLog(const std::string& path) {
  ControllerLog out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    std::string msg = LogMsg(line);
    if (msg.empty()) continue;
    if (!out.first_ts_ms.count(msg)) out.first_ts_ms[msg] = ParseLogTs(line);
    if (line.find(" level=warn ") != std::string::npos ||
        line.find(" level=error ") != std::string::npos) {
      out.problems[msg]++;
      if (std::string e = FoldedError(line); !e.empty()) out.errors[e]++;
    }
  }
  return out;
}

double WallMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

Json PoolObject(const Flags& f, const std::string& ns, const std::string& name, int seed) {
  auto role = [](int replicas) {
    return Json{{"replicas", replicas}, {"minReplicas", 0}, {"gpusPerReplica", 1}};
  };
  return {
      {"apiVersion", kube::kInferencePools.ApiVersion()},
      {"kind", "InferencePool"},
      {"metadata",
       {{"name", name}, {"namespace", ns}, {"labels", {{"pdpool.dev/bench", "controller-scale"}}}}},
      {"spec",
       {{"model",
         {{"name", "test-tiny"},
          {"preset", "test-tiny"},
          {"source", {{"dummy", {{"seed", seed}}}}}}},
        {"backend", "sim"},
        {"prefill", role(f.prefill_replicas)},
        {"decode", role(f.decode_replicas)},
        {"router", {{"replicas", f.router_replicas}}},
        {"topology", {{"key", f.topology_key}, {"policy", f.topology_policy}}}}}};
}

std::string PoolName(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "pool-%04d", i);
  return buf;
}

std::string SelfDir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : exe.parent_path().string();
}

class Bench {
 public:
  explicit Bench(Flags f) : f_(std::move(f)) {}

  // 0: measured (targets met or not); 1: could not run; 130: interrupted.
  int Run();

 private:
  int Fail(const std::string& why) {
    std::cerr << "controller_scale: error: " << why << "\n";
    return 1;
  }
  bool CreatePools();
  void Cleanup();
  void AddCpuRows(const std::string& phase, const CpuSample& a, const CpuSample& b);
  void AddControlPlaneRows(const ControlPlaneScrape& a, const ControlPlaneScrape& b,
                           double apiserver_cpu_s);
  int EtcdPort() const;

  Flags f_;
  std::unique_ptr<kube::KubeClient> client_;
  std::unique_ptr<PoolTracker> tracker_;
  ChildProcess controller_;
  std::vector<TrackedProcess> tracked_;
  Report report_;
  bool namespace_created_ = false;
  double create_seconds_ = kNaN;
};

bool Bench::CreatePools() {
  std::atomic<int> next{0};
  std::atomic<int> failed{0};
  std::mutex err_mu;
  std::string first_error;
  auto start = Steady::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(1, f_.create_concurrency); t++) {
    threads.emplace_back([&] {
      for (int i; (i = next++) < f_.pools && !g_interrupted;) {
        Json pool = PoolObject(f_, f_.ns, PoolName(i), i + 1);
        StatusOr<Json> created = Status::Unavailable("not tried");
        for (int attempt = 0; attempt < 5; attempt++) {
          created = client_->Create(kube::kInferencePools, f_.ns, pool);
          if (created.ok() || created.status().code() != StatusCode::kUnavailable) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(200 * (attempt + 1)));
        }
        if (!created.ok()) {
          failed++;
          std::lock_guard lock(err_mu);
          if (first_error.empty()) first_error = created.status().ToString();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  create_seconds_ = Seconds(Steady::now() - start);
  if (failed > 0) {
    std::cerr << "controller_scale: error: " << failed << " of " << f_.pools
              << " pools could not be created; first error: " << first_error << "\n";
    return false;
  }
  return !g_interrupted;
}

void Bench::AddCpuRows(const std::string& phase, const CpuSample& a, const CpuSample& b) {
  std::ostringstream s;
  s << phase << " CPU (% of one core over " << Fmt(Seconds(b.at - a.at), 1) << " s):";
  Json j = Json::object();
  for (const auto& [name, pct] : CpuPercent(a, b)) {
    s << " " << name << "=" << Fmt(pct, 1);
    j[name] = pct;
  }
  report_.notes.push_back(s.str());
  report_.config["cpu_percent_" + phase] = j;
}

int Bench::EtcdPort() const {
  if (f_.cluster_dir.empty()) return -1;
  std::istringstream in(ReadFile(f_.cluster_dir + "/cluster.env"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind("ETCD_PORT=", 0) == 0) return std::atoi(line.c_str() + 10);
  return -1;
}

void Bench::AddControlPlaneRows(const ControlPlaneScrape& a, const ControlPlaneScrape& b,
                                double apiserver_cpu_s) {
  if (a.api_ok && b.api_ok) {
    std::vector<std::pair<double, std::string>> by_kind;
    for (const auto& [k, v] : b.writes) {
      auto it = a.writes.find(k);
      double d = v - (it == a.writes.end() ? 0 : it->second);
      if (d > 0) by_kind.emplace_back(d, k);
    }
    std::sort(by_kind.rbegin(), by_kind.rend());
    std::string top;
    for (size_t i = 0; i < by_kind.size() && i < 8; i++)
      top += (top.empty() ? "" : ", ") + by_kind[i].second + " " + Fmt(by_kind[i].first, 0);
    const double writes = b.Writes() - a.Writes();
    report_.rows.push_back(
        {"API writes while converging (all clients)", "", writes, kNaN, true, top});
    Buckets lat = Delta(b.write_latency, a.write_latency);
    if (!lat.empty() && lat.back().second > 0) {
      report_.rows.push_back(
          {"  API server write latency, mean", "ms",
           1000 * (b.write_latency_sum - a.write_latency_sum) / lat.back().second});
      report_.rows.push_back(
          {"  API server write latency, p99", "ms", 1000 * HistogramQuantile(0.99, lat)});
    }
    if (writes > 0 && !std::isnan(apiserver_cpu_s))
      report_.rows.push_back({"  kube-apiserver CPU per write (all its CPU / writes)", "ms",
                              1000 * apiserver_cpu_s / writes});
  } else {
    report_.notes.push_back("API server metrics not read (kubectl get --raw /metrics failed)");
  }
  if (a.etcd_ok && b.etcd_ok) {
    report_.rows.push_back({"  etcd WAL fsync p99 while converging", "ms",
                            1000 * HistogramQuantile(0.99, Delta(b.wal_fsync, a.wal_fsync))});
    report_.rows.push_back(
        {"  etcd backend commit p99 while converging", "ms",
         1000 * HistogramQuantile(0.99, Delta(b.backend_commit, a.backend_commit))});
  }
}

void Bench::Cleanup() {
  if (controller_.pid() > 0) controller_.Stop(std::chrono::seconds(10));
  if (tracker_) tracker_->Stop();
  if (namespace_created_ && !f_.keep_namespace && client_) {
    kube::DeleteOptions bg;
    bg.propagation_policy = "Background";
    Status s = client_->Delete(kube::kNamespaces, "", f_.ns, bg);
    if (!s.ok() && !s.IsNotFound())
      std::cerr << "controller_scale: warning: deleting namespace " << f_.ns << ": " << s.ToString()
                << "\n";
  }
}

int Bench::Run() {
  if (f_.worker_replicas >= 0) f_.prefill_replicas = f_.decode_replicas = f_.worker_replicas;
  if (f_.pools < 1) return Fail("--pools must be >= 1");
  if (f_.ns.empty()) {
    std::mt19937 rng(std::random_device{}());
    f_.ns = "pdpool-bench-" + std::to_string(100000 + rng() % 900000);
  }
  if (f_.controller_binary.empty()) f_.controller_binary = SelfDir() + "/pdpool-controller";
  if (access(f_.controller_binary.c_str(), X_OK) != 0)
    return Fail("controller binary " + f_.controller_binary +
                " is not executable (--controller-binary)");
  if (f_.controller_log.empty()) f_.controller_log = "/tmp/controller_scale-" + f_.ns + ".log";
  if (f_.scenario.empty()) {
    f_.scenario = std::to_string(f_.pools) + " pools, " + std::to_string(f_.prefill_replicas) +
                  " prefill + " + std::to_string(f_.decode_replicas) + " decode workers each";
  }
  const int spec_changes = std::min(f_.spec_changes, f_.pools);

  // Machine and configuration.
  report_.scenario = f_.scenario;
  report_.date = UtcNow();
  utsname un{};
  uname(&un);
  const long nproc = sysconf(_SC_NPROCESSORS_ONLN);
  const std::string load_start = LoadAverage();
  report_.machine = {{"nproc", nproc},
                     {"cpu_model", CpuModel()},
                     {"kernel", un.release},
                     {"loadavg_start", load_start}};
  report_.header.push_back("controller_scale: pdpool-controller against a real API server — " +
                           f_.scenario);
  report_.header.push_back("date " + report_.date + "; machine: nproc=" + std::to_string(nproc) +
                           ", CPU " + CpuModel() + "; loadavg at start " + load_start);

  // Client: high QPS, the bench must not be the bottleneck.
  auto config = kube::LoadKubeConfig(f_.kubeconfig);
  if (!config.ok()) return Fail("kubeconfig: " + config.status().ToString());
  kube::HttpKubeClientOptions co;
  co.qps = 5000;
  co.burst = 5000;
  co.user_agent = "pdpool-controller-scale-bench";
  auto client = kube::NewHttpKubeClient(*config, co);
  if (!client.ok()) return Fail("client: " + client.status().ToString());
  client_ = std::move(client).value();

  // Preconditions: API server reachable, CRD served.
  {
    auto crds = client_->List(kube::kInferencePools, "", kube::ListOptions{.limit = 1});
    if (!crds.ok())
      return Fail(
          "cannot list inferencepools (API server down or CRD not installed; apply "
          "crds/inferencepools.pdpool.dev.yaml): " +
          crds.status().ToString());
  }
  Json ns_obj = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", f_.ns}}}};
  if (auto created = client_->Create(kube::kNamespaces, "", ns_obj); !created.ok()) {
    if (!created.status().IsAlreadyExists())
      return Fail("create namespace: " + created.status().ToString());
    auto existing = client_->List(kube::kInferencePools, f_.ns, kube::ListOptions{.limit = 1});
    if (!existing.ok() || !(*existing)["items"].empty())
      return Fail("namespace " + f_.ns + " already holds InferencePools; pick another --namespace");
  } else {
    namespace_created_ = true;
  }

  // Processes whose CPU is accounted.
  tracked_.push_back({"bench", getpid()});
  if (!f_.cluster_dir.empty()) {
    for (const char* c : {"kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler"}) {
      std::string pid = ReadFile(f_.cluster_dir + "/pids/" + c + ".pid");
      if (!pid.empty()) tracked_.push_back({c, static_cast<pid_t>(std::stol(pid))});
    }
  }
  for (const auto& spec : f_.track_pids) {
    size_t eq = spec.find('=');
    if (eq == std::string::npos) return Fail("--track-pid wants NAME=PID, got " + spec);
    tracked_.push_back({spec.substr(0, eq), static_cast<pid_t>(std::stol(spec.substr(eq + 1)))});
  }

  tracker_ = std::make_unique<PoolTracker>(client_.get(), f_.ns);
  tracker_->Start();
  if (!tracker_->WaitForSync(std::chrono::seconds(60))) {
    Cleanup();
    return g_interrupted ? 130 : Fail("the bench's own watches did not sync within 60 s");
  }

  // 1. Create the pools, all at once, before the controller runs.
  std::cerr << "controller_scale: creating " << f_.pools << " pools in namespace " << f_.ns << "\n";
  if (!CreatePools()) {
    Cleanup();
    return g_interrupted ? 130 : 1;
  }
  while (tracker_->PoolCount() < static_cast<size_t>(f_.pools)) {
    if (!SleepFor(std::chrono::milliseconds(20))) {
      Cleanup();
      return 130;
    }
  }
  std::cerr << "controller_scale: created " << f_.pools << " pools in " << Fmt(create_seconds_, 2)
            << " s; starting the controller (log " << f_.controller_log << ")\n";

  // 2. Start the controller.
  const int metrics_port = FreeLoopbackPort();
  if (metrics_port <= 0) return Fail("no free loopback port for the controller's metrics");
  std::vector<std::string> args = {
      "--namespace",
      f_.ns,
      "--leader-elect=" + std::string(f_.leader_elect ? "true" : "false"),
      "--leader-election-namespace",
      f_.ns,
      "--leader-election-id",
      "pdpool-bench",
      "--metrics-bind-address",
      "127.0.0.1",
      "--metrics-port",
      std::to_string(metrics_port)};
  if (!f_.kubeconfig.empty()) args.insert(args.begin(), {"--kubeconfig", f_.kubeconfig});
  if (f_.controller_workers > 0)
    args.insert(args.end(), {"--workers", std::to_string(f_.controller_workers)});
  if (f_.controller_qps > 0) args.insert(args.end(), {"--kube-api-qps", Fmt(f_.controller_qps, 1)});
  if (f_.controller_burst > 0)
    args.insert(args.end(), {"--kube-api-burst", std::to_string(f_.controller_burst)});
  args.insert(args.end(), f_.controller_args.begin(), f_.controller_args.end());
  std::string cmdline = f_.controller_binary;
  for (const auto& a : args) cmdline += " " + a;
  report_.config = {{"pools", f_.pools},
                    {"prefill_replicas", f_.prefill_replicas},
                    {"decode_replicas", f_.decode_replicas},
                    {"router_replicas", f_.router_replicas},
                    {"topology_policy", f_.topology_policy},
                    {"namespace", f_.ns},
                    {"controller_command", cmdline},
                    {"create_seconds", create_seconds_}};
  report_.header.push_back("controller: " + cmdline);

  const ControlPlaneScrape cp_start = ScrapeControlPlane(f_.kubeconfig, EtcdPort());
  CpuSample cpu_start = SampleCpu(tracked_);
  const double start_wall_ms = WallMs();
  const SteadyTime start = Steady::now();
  if (!controller_.Start(f_.controller_binary, args, f_.controller_log)) {
    Cleanup();
    return Fail("cannot start " + f_.controller_binary);
  }
  tracked_.push_back({"controller", controller_.pid()});
  cpu_start.process["controller"] = 0;

  // 3. Wait until every pool is reconciled.
  const size_t want = static_cast<size_t>(f_.pools);
  PoolTracker::Progress progress;
  bool converged = false;
  auto last_log = Steady::now();
  while (true) {
    progress = tracker_->GetProgress(want);
    if (progress.all_reconciled) {
      converged = true;
      break;
    }
    if (!controller_.Running()) {
      int code = controller_.ExitCode();
      Cleanup();
      return Fail("the controller exited (code " + std::to_string(code) +
                  ") before every pool was reconciled; log: " + f_.controller_log);
    }
    if (Seconds(Steady::now() - start) > f_.timeout_s) break;
    if (Steady::now() - last_log > std::chrono::seconds(5)) {
      std::cerr << "controller_scale: " << progress.reconciled << "/" << want
                << " pools reconciled after " << Fmt(Seconds(Steady::now() - start), 1) << " s\n";
      last_log = Steady::now();
    }
    if (!SleepFor(std::chrono::milliseconds(20))) {
      Cleanup();
      return 130;
    }
  }
  const CpuSample cpu_converged = SampleCpu(tracked_);
  const ControllerMetricsScrape at_convergence = ScrapeController(metrics_port);
  const Memory mem_converged = ProcessMemory(controller_.pid());
  const ControlPlaneScrape cp_converged = ScrapeControlPlane(f_.kubeconfig, EtcdPort());
  const double converge_s = converged ? Seconds(*progress.all_reconciled - start) : kNaN;
  std::cerr << "controller_scale: "
            << (converged ? "all pools reconciled after " + Fmt(converge_s, 2) + " s"
                          : "timed out: " + std::to_string(progress.reconciled) + "/" +
                                std::to_string(want) + " pools reconciled")
            << "\n";

  report_.rows.push_back({"pools created by the bench (" + std::to_string(f_.pools) +
                              ", before the controller starts)",
                          "s", create_seconds_});
  Row conv{"all " + std::to_string(f_.pools) + " pools reconciled, from controller start", "s",
           converge_s, 10.0};
  if (!converged)
    conv.note = "not within " + Fmt(f_.timeout_s, 0) +
                " s: " + std::to_string(progress.reconciled) + "/" + std::to_string(want);
  report_.rows.push_back(conv);
  const ControllerLog early_log = ReadControllerLog(f_.controller_log);
  if (auto it = early_log.first_ts_ms.find("caches synced");
      it != early_log.first_ts_ms.end() && !std::isnan(it->second))
    report_.rows.push_back(
        {"  controller start -> caches synced", "s", (it->second - start_wall_ms) / 1000.0});
  if (progress.first_reconciled)
    report_.rows.push_back({"  controller start -> first pool reconciled", "s",
                            Seconds(*progress.first_reconciled - start)});
  if (converged && progress.first_reconciled &&
      *progress.all_reconciled > *progress.first_reconciled)
    report_.rows.push_back({"  reconcile throughput, first -> last pool", "pools/s",
                            static_cast<double>(want - 1) /
                                Seconds(*progress.all_reconciled - *progress.first_reconciled)});

  if (at_convergence.ok) {
    report_.rows.push_back({"reconcile p50 (controller histogram)", "ms",
                            1000 * HistogramQuantile(0.5, at_convergence.buckets)});
    report_.rows.push_back({"reconcile p99 (controller histogram)", "ms",
                            1000 * HistogramQuantile(0.99, at_convergence.buckets), 50.0});
    report_.rows.push_back(
        {"reconcile mean (histogram sum/count)", "ms",
         at_convergence.count > 0 ? 1000 * at_convergence.sum / at_convergence.count : kNaN});
    std::string by_result;
    for (const auto& [r, c] : at_convergence.reconciles)
      if (c > 0) by_result += (by_result.empty() ? "" : ", ") + r + " " + Fmt(c, 0);
    report_.rows.push_back(
        {"reconciles until converged", "", at_convergence.Reconciles(), kNaN, true, by_result});
  } else {
    report_.rows.push_back(
        {"reconcile p99 (controller histogram)", "ms", kNaN, 50.0, true, "metrics scrape failed"});
    report_.complete = false;
  }
  const int events_at_convergence = TotalEvents(PoolTracker::CountEvents(client_.get(), f_.ns));
  report_.rows.push_back({"Events written by the controller until converged", "",
                          static_cast<double>(events_at_convergence), kNaN, true,
                          "of the " + std::to_string(4 * f_.pools) + " its creations record"});
  report_.rows.push_back({"controller VmRSS after convergence", "MB", mem_converged.rss_mb, 64.0});
  report_.rows.push_back({"controller VmHWM (peak RSS)", "MB", mem_converged.hwm_mb, 64.0});
  AddCpuRows("converging", cpu_start, cpu_converged);
  {
    double wall = Seconds(cpu_converged.at - cpu_start.at);
    auto it = cpu_converged.process.find("controller");
    if (it != cpu_converged.process.end() && wall > 0)
      report_.rows.push_back(
          {"controller CPU while converging", "% of a core", 100.0 * it->second / wall});
    auto api = cpu_converged.process.find("kube-apiserver");
    auto api0 = cpu_start.process.find("kube-apiserver");
    if (api != cpu_converged.process.end() && api0 != cpu_start.process.end() && wall > 0)
      report_.rows.push_back({"kube-apiserver CPU while converging", "% of a core",
                              100.0 * (api->second - api0->second) / wall});
    if (!std::isnan(cpu_converged.machine) && wall > 0)
      report_.rows.push_back({"machine CPU while converging",
                              "% of " + std::to_string(nproc) + " cores",
                              100.0 * (cpu_converged.machine - cpu_start.machine) / wall /
                                  static_cast<double>(nproc)});
    double api_cpu = api != cpu_converged.process.end() && api0 != cpu_start.process.end()
                         ? api->second - api0->second
                         : kNaN;
    AddControlPlaneRows(cp_start, cp_converged, api_cpu);
  }

  // 3b. Worker scenario: until every pool is Ready with all its workers.
  if (f_.wait_ready && converged) {
    while (true) {
      progress = tracker_->GetProgress(want);
      if (progress.all_ready || !controller_.Running() ||
          Seconds(Steady::now() - start) > f_.ready_timeout_s)
        break;
      if (Steady::now() - last_log > std::chrono::seconds(5)) {
        std::cerr << "controller_scale: " << progress.ready << "/" << want << " pools Ready after "
                  << Fmt(Seconds(Steady::now() - start), 1) << " s\n";
        last_log = Steady::now();
      }
      if (!SleepFor(std::chrono::milliseconds(50))) {
        Cleanup();
        return 130;
      }
    }
    Row ready{"all pools Ready (workers running), from controller start", "s",
              progress.all_ready ? Seconds(*progress.all_ready - start) : kNaN};
    if (!progress.all_ready)
      ready.note = "not within " + Fmt(f_.ready_timeout_s, 0) +
                   " s: " + std::to_string(progress.ready) + "/" + std::to_string(want);
    report_.rows.push_back(ready);
    if (progress.all_ready) {
      const CpuSample cpu_ready = SampleCpu(tracked_);
      AddCpuRows("until_ready", cpu_start, cpu_ready);
      report_.rows.push_back(
          {"controller VmRSS when all Ready", "MB", ProcessMemory(controller_.pid()).rss_mb, 64.0});
    }
  }

  // 4. Idle CPU.
  if (converged && controller_.Running()) {
    std::cerr << "controller_scale: settling " << Fmt(f_.settle_s, 0)
              << " s, then measuring idle CPU over " << Fmt(f_.idle_s, 0) << " s\n";
    if (!SleepSeconds(f_.settle_s)) {
      Cleanup();
      return 130;
    }
    const int events_before = TotalEvents(PoolTracker::CountEvents(client_.get(), f_.ns));
    const ControllerMetricsScrape idle_before = ScrapeController(metrics_port);
    const CpuSample a = SampleCpu(tracked_);
    if (!SleepSeconds(f_.idle_s)) {
      Cleanup();
      return 130;
    }
    const CpuSample b = SampleCpu(tracked_);
    const ControllerMetricsScrape idle_after = ScrapeController(metrics_port);
    const int events_after = TotalEvents(PoolTracker::CountEvents(client_.get(), f_.ns));
    double pct = kNaN;
    for (const auto& [name, p] : CpuPercent(a, b))
      if (name == "controller") pct = p;
    Row idle{"controller idle CPU (" + Fmt(f_.idle_s, 0) + " s window from " + Fmt(f_.settle_s, 0) +
                 " s after convergence)",
             "% of a core", pct, 0.5};
    if (idle_before.ok && idle_after.ok)
      idle.note = Fmt(idle_after.Reconciles() - idle_before.Reconciles(), 0) + " reconciles, " +
                  std::to_string(events_after - events_before) + " Events written in the window";
    report_.rows.push_back(idle);
    AddCpuRows("idle", a, b);
    report_.rows.push_back({"controller VmRSS after idle window", "MB",
                            ProcessMemory(controller_.pid()).rss_mb, 64.0});
  } else {
    report_.rows.push_back(
        {"controller idle CPU", "% of a core", kNaN, 0.5, true, "not measured (no convergence)"});
    report_.complete = false;
  }

  // 4b. Idle CPU once the system has caught up: right after convergence the controller still
  // writes its queued Events and reconciles on the children's status updates that
  // kube-controller-manager makes at its own pace. Quiet: no reconcile and no new Event over
  // two 5 s checks.
  if (converged && controller_.Running() && f_.quiet_timeout_s > 0) {
    std::cerr << "controller_scale: waiting for the controller to go quiet (up to "
              << Fmt(f_.quiet_timeout_s, 0) << " s)\n";
    const SteadyTime wait_start = Steady::now();
    double last_reconciles = -1;
    int last_events = -1, unchanged = 0;
    bool quiet = false;
    while (Seconds(Steady::now() - wait_start) < f_.quiet_timeout_s) {
      const ControllerMetricsScrape m = ScrapeController(metrics_port);
      const int events = TotalEvents(PoolTracker::CountEvents(client_.get(), f_.ns));
      unchanged =
          m.ok && m.Reconciles() == last_reconciles && events == last_events ? unchanged + 1 : 0;
      last_reconciles = m.ok ? m.Reconciles() : -1;
      last_events = events;
      if (unchanged >= 2) {
        quiet = true;
        break;
      }
      if (!SleepFor(std::chrono::seconds(5))) {
        Cleanup();
        return 130;
      }
    }
    const double quiet_after =
        Seconds(Steady::now() - (converged ? *progress.all_reconciled : start));
    if (quiet) {
      const CpuSample a = SampleCpu(tracked_);
      if (!SleepSeconds(f_.idle_s)) {
        Cleanup();
        return 130;
      }
      const CpuSample b = SampleCpu(tracked_);
      const ControllerMetricsScrape after = ScrapeController(metrics_port);
      double pct = kNaN;
      for (const auto& [name, p] : CpuPercent(a, b))
        if (name == "controller") pct = p;
      Row idle{"controller idle CPU once quiet (" + Fmt(f_.idle_s, 0) + " s window)", "% of a core",
               pct, 0.5};
      idle.note = "quiet " + Fmt(quiet_after, 0) + " s after convergence";
      if (after.ok)
        idle.note +=
            ", " + Fmt(after.Reconciles() - last_reconciles, 0) + " reconciles in the window";
      report_.rows.push_back(idle);
      AddCpuRows("idle_quiet", a, b);
    } else {
      report_.rows.push_back(
          {"controller idle CPU once quiet", "% of a core", kNaN, 0.5, true,
           "still reconciling or writing Events " + Fmt(quiet_after, 0) + " s after convergence"});
    }
  }

  // 5. Spec-change latency.
  if (converged && controller_.Running() && spec_changes > 0) {
    std::cerr << "controller_scale: patching spec.prefill.replicas of " << spec_changes
              << " pools, " << Fmt(f_.spec_change_rate, 1) << " per second\n";
    const int target = f_.prefill_replicas + 1;
    const CpuSample a = SampleCpu(tracked_);
    std::vector<std::pair<std::string, SteadyTime>> sent;  // pool key, patch response time
    int patch_errors = 0;
    const auto interval = std::chrono::duration<double>(1.0 / std::max(0.01, f_.spec_change_rate));
    const SteadyTime t0 = Steady::now();
    for (int k = 0; k < spec_changes; k++) {
      auto due = t0 + std::chrono::duration_cast<Steady::duration>(interval * k);
      if (due > Steady::now() && !SleepFor(due - Steady::now())) {
        Cleanup();
        return 130;
      }
      const std::string name =
          PoolName(static_cast<int>(static_cast<int64_t>(k) * f_.pools / spec_changes));
      const std::string key = f_.ns + "/" + name;
      tracker_->Expect(key, target);
      Json patch = {{"spec", {{"prefill", {{"replicas", target}}}}}};
      auto r = client_->Patch(kube::kInferencePools, f_.ns, name, kube::PatchType::kMerge, patch);
      if (!r.ok()) {
        patch_errors++;
        std::cerr << "controller_scale: warning: patch " << key << ": " << r.status().ToString()
                  << "\n";
        continue;
      }
      sent.emplace_back(key, Steady::now());
    }
    auto deadline = Steady::now() + std::chrono::duration_cast<Steady::duration>(
                                        std::chrono::duration<double>(f_.spec_change_timeout_s));
    while (Steady::now() < deadline) {
      bool all = true;
      for (const auto& [key, t] : sent) all = all && tracker_->Seen(key).has_value();
      if (all) break;
      if (!SleepFor(std::chrono::milliseconds(50))) {
        Cleanup();
        return 130;
      }
    }
    const CpuSample b = SampleCpu(tracked_);
    std::vector<double> latencies;
    int missed = 0, early = 0;
    for (const auto& [key, t] : sent) {
      auto seen = tracker_->Seen(key);
      if (!seen) {
        missed++;
        latencies.push_back(std::numeric_limits<double>::infinity());
        continue;
      }
      double ms = 1000 * Seconds(*seen - t);
      if (ms < 0) early++;  // the watch event beat the patch response: counts as 0
      latencies.push_back(std::max(0.0, ms));
    }
    std::string note = std::to_string(sent.size()) + " patches";
    if (missed)
      note += ", " + std::to_string(missed) + " not seen within " +
              Fmt(f_.spec_change_timeout_s, 0) + " s";
    if (patch_errors) note += ", " + std::to_string(patch_errors) + " patch errors";
    if (early) note += ", " + std::to_string(early) + " seen before the patch response";
    double p50 = NearestRank(latencies, 0.5), p99 = NearestRank(latencies, 0.99);
    report_.rows.push_back({"spec change -> ReplicaSet spec.replicas, p50", "ms",
                            std::isinf(p50) ? kNaN : p50, kNaN, true,
                            std::isinf(p50) ? "not seen" : ""});
    report_.rows.push_back({"spec change -> ReplicaSet spec.replicas, p99", "ms",
                            std::isinf(p99) ? kNaN : p99, 1000.0, true,
                            std::isinf(p99) ? "not seen: " + note : note});
    if (!latencies.empty() && !std::isinf(latencies.back()))
      report_.rows.push_back({"spec change latency, max", "ms",
                              *std::max_element(latencies.begin(), latencies.end())});
    AddCpuRows("spec_changes", a, b);
  } else if (spec_changes > 0) {
    report_.rows.push_back(
        {"spec change -> ReplicaSet spec.replicas, p99", "ms", kNaN, 1000.0, true, "not measured"});
    report_.complete = false;
  }

  // 6. What the controller wrote and logged; then stop it.
  const ControllerMetricsScrape final_metrics = ScrapeController(metrics_port);
  if (final_metrics.ok) {
    report_.rows.push_back({"reconciles in total (whole run)", "", final_metrics.Reconciles()});
    report_.rows.push_back(
        {"reconcile p99, whole run", "ms", 1000 * HistogramQuantile(0.99, final_metrics.buckets)});
  }
  std::map<std::string, int> events = PoolTracker::CountEvents(client_.get(), f_.ns);
  {
    int total = 0;
    std::string by_reason;
    for (const auto& [reason, n] : events) {
      total += n;
      by_reason += (by_reason.empty() ? "" : ", ") + reason + " " + std::to_string(n);
    }
    report_.rows.push_back({"Events written by the controller, whole run", "",
                            static_cast<double>(total), kNaN, true, by_reason});
  }
  const bool still_running = controller_.Running();
  const auto stop_start = Steady::now();
  const int code = controller_.Stop(std::chrono::seconds(10));
  report_.rows.push_back({"controller shutdown on SIGTERM", "s",
                          Seconds(Steady::now() - stop_start), kNaN, true,
                          !still_running ? "had exited already, code " + std::to_string(code)
                          : controller_.killed() ? "did not exit in 10 s, killed"
                                                 : "exit code " + std::to_string(code)});
  const ControllerLog log = ReadControllerLog(f_.controller_log);
  for (const auto& [msg, n] : log.problems)
    report_.notes.push_back("controller log: " + std::to_string(n) + "x warn/error \"" + msg +
                            "\"");
  {
    std::vector<std::pair<int, std::string>> errors;
    for (const auto& [e, n] : log.errors) errors.emplace_back(n, e);
    std::sort(errors.rbegin(), errors.rend());
    for (size_t i = 0; i < errors.size() && i < 3; i++)
      report_.notes.push_back("controller log: " + std::to_string(errors[i].first) + "x error=\"" +
                              errors[i].second + "\"");
  }
  report_.notes.push_back(
      "reconcile quantiles are interpolated within the controller's histogram buckets "
      "(le 1, 2.5, 5, 10, 25, 50, 100, 250 ms, ...) as Prometheus' histogram_quantile does; "
      "spec-change quantiles are nearest-rank over the samples");
  report_.notes.push_back("controller log: " + f_.controller_log);
  const std::string load_end = LoadAverage();
  report_.machine["loadavg_end"] = load_end;
  report_.header.push_back("loadavg at end " + load_end +
                           " (other work on this machine skews every number; see 'other' CPU)");

  Cleanup();
  report_.Print();
  if (!f_.json_path.empty()) {
    std::ofstream out(f_.json_path);
    out << report_.ToJson().dump(2) << "\n";
    if (!out) std::cerr << "controller_scale: warning: cannot write " << f_.json_path << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace pdpool::bench

int main(int argc, char** argv) {
  using pdpool::bench::Flags;
  pdpool::BlockTerminationSignals();
  CLI::App app{
      "controller_scale: pdpool-controller scale benchmark against a real API server (see "
      "bench/README.md)"};
  Flags f;
  app.add_option("--kubeconfig", f.kubeconfig,
                 "kubeconfig of the cluster (default: $KUBECONFIG, ~/.kube/config)");
  app.add_option("--namespace", f.ns,
                 "namespace for the pools (default: pdpool-bench-<random>; created)");
  app.add_option("--pools", f.pools, "InferencePools to create")->capture_default_str();
  app.add_option("--prefill-replicas", f.prefill_replicas, "spec.prefill.replicas of each pool")
      ->capture_default_str();
  app.add_option("--decode-replicas", f.decode_replicas, "spec.decode.replicas of each pool")
      ->capture_default_str();
  app.add_option("--worker-replicas", f.worker_replicas,
                 "sets both --prefill-replicas and --decode-replicas");
  app.add_option("--router-replicas", f.router_replicas,
                 "spec.router.replicas of each pool (0: no router pods)")
      ->capture_default_str();
  app.add_option("--topology-policy", f.topology_policy,
                 "spec.topology.policy (None lets scaled-up pools place without nodes)")
      ->capture_default_str()
      ->check(CLI::IsMember({"None", "Preferred", "Required"}));
  app.add_option("--topology-key", f.topology_key, "spec.topology.key")->capture_default_str();
  app.add_option("--create-concurrency", f.create_concurrency, "parallel create requests")
      ->capture_default_str();
  app.add_option("--controller-binary", f.controller_binary,
                 "pdpool-controller to run (default: next to this binary)");
  app.add_option("--controller-workers", f.controller_workers,
                 "--workers of the controller (default: its own)");
  app.add_option("--controller-qps", f.controller_qps,
                 "--kube-api-qps of the controller (default: its own)");
  app.add_option("--controller-burst", f.controller_burst,
                 "--kube-api-burst of the controller (default: its own)");
  app.add_option("--leader-elect", f.leader_elect,
                 "run the controller with leader election (as deployed)")
      ->capture_default_str();
  app.add_option("--controller-arg", f.controller_args, "extra controller argument (repeatable)")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--controller-log", f.controller_log,
                 "controller output (default: /tmp/controller_scale-<namespace>.log)");
  app.add_option("--timeout", f.timeout_s, "seconds to wait for every pool to be reconciled")
      ->capture_default_str();
  app.add_flag("--wait-ready", f.wait_ready,
               "also wait until every pool is Ready with its workers (worker scenario)");
  app.add_option("--ready-timeout", f.ready_timeout_s,
                 "seconds from controller start to wait for Ready")
      ->capture_default_str();
  app.add_option("--settle", f.settle_s, "seconds between convergence and the idle window")
      ->capture_default_str();
  app.add_option("--idle-seconds", f.idle_s, "idle CPU window, seconds")->capture_default_str();
  app.add_option(
         "--quiet-timeout", f.quiet_timeout_s,
         "seconds to wait for the controller to go quiet for the second idle window (0: skip it)")
      ->capture_default_str();
  app.add_option("--spec-changes", f.spec_changes,
                 "pools whose spec.prefill.replicas is patched (0: skip)")
      ->capture_default_str();
  app.add_option("--spec-change-rate", f.spec_change_rate,
                 "patches per second, sent one after another")
      ->capture_default_str();
  app.add_option("--spec-change-timeout", f.spec_change_timeout_s,
                 "seconds to wait after the last patch")
      ->capture_default_str();
  app.add_option("--cluster-dir", f.cluster_dir,
                 "deploy/local/cluster.sh state dir: account the CPU of its components");
  app.add_option("--track-pid", f.track_pids,
                 "NAME=PID of another process whose CPU to account (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--scenario", f.scenario, "scenario name for the report");
  app.add_option("--json", f.json_path, "also write the table as JSON to this path");
  app.add_flag("--keep-namespace", f.keep_namespace, "leave the namespace and its pools in place");
  CLI11_PARSE(app, argc, argv);

  pdpool::SetLogLevel(pdpool::LogLevel::kWarn);
  pdpool::OnTerminationSignal([] {
    pdpool::bench::g_interrupted = true;
    pdpool::bench::Wake();
  });
  pdpool::bench::Bench bench(std::move(f));
  int rc = bench.Run();
  if (rc == 130) std::cerr << "controller_scale: interrupted; controller stopped\n";
  return rc;
}
