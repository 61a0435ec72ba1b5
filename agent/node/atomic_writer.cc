// WriteAtomically: see atomic_writer.h. The layout is the kubelet's
// (pkg/volume/util/atomic_writer.go), so tools that know it find their way around.
#include "agent/node/atomic_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace pdpool::agent {
namespace {

namespace fs = std::filesystem;

constexpr char kDataLink[] = "..data";
constexpr char kDataLinkTmp[] = "..data_tmp";

Status Errno(const std::string& what, const std::string& path, int err) {
  return Status::Internal(what + " " + path + ": " + std::strerror(err));
}

std::string ReadAll(const fs::path& p, bool* ok) {
  std::ifstream in(p, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Whether `data_dir` already holds exactly `files` (same contents and modes).
bool SameContents(const fs::path& data_dir, const std::vector<AtomicFile>& files) {
  std::error_code ec;
  size_t regular = 0;
  for (auto it = fs::recursive_directory_iterator(data_dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) ++regular;
  }
  if (ec || regular != files.size()) return false;
  for (const AtomicFile& f : files) {
    fs::path p = data_dir / f.path;
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
    if ((st.st_mode & 07777) != static_cast<mode_t>(f.mode & 07777)) return false;
    bool ok = false;
    if (ReadAll(p, &ok) != f.content || !ok) return false;
  }
  return true;
}

Status WriteFile(const fs::path& path, const AtomicFile& f) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) return Status::Internal("create " + path.parent_path().string() + ": " + ec.message());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("create", path, errno);
  size_t done = 0;
  while (done < f.content.size()) {
    ssize_t n = ::write(fd, f.content.data() + done, f.content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return Errno("write", path, err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd, static_cast<mode_t>(f.mode & 07777)) != 0) {
    int err = errno;
    ::close(fd);
    return Errno("chmod", path, err);
  }
  if (::close(fd) != 0) return Errno("close", path, errno);
  return Status::Ok();
}

std::string TimestampDirName() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  gmtime_r(&ts.tv_sec, &utc);
  char buf[64];
  std::strftime(buf, sizeof buf, "..%Y_%m_%d_%H_%M_%S.", &utc);
  return buf;
}

std::string FirstElement(const std::string& path) { return path.substr(0, path.find('/')); }

}  // namespace

Status ValidateVolumeItemPath(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("path must not be empty");
  if (path.front() == '/') return Status::InvalidArgument("path \"" + path + "\" must be relative");
  if (path.starts_with("..")) {
    return Status::InvalidArgument("path \"" + path + "\" must not start with \"..\"");
  }
  std::stringstream ss(path);
  std::string element;
  while (std::getline(ss, element, '/')) {
    if (element == "..") {
      return Status::InvalidArgument("path \"" + path + "\" must not contain \"..\"");
    }
  }
  return Status::Ok();
}

StatusOr<bool> WriteAtomically(const std::string& dir, const std::vector<AtomicFile>& files) {
  for (const AtomicFile& f : files) {
    if (Status s = ValidateVolumeItemPath(f.path); !s.ok()) return s;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Internal("create " + dir + ": " + ec.message());
  const fs::path root(dir);
  const fs::path data_link = root / kDataLink;

  std::string old_target;
  {
    char buf[4096];
    ssize_t n = ::readlink(data_link.c_str(), buf, sizeof buf - 1);
    if (n > 0) old_target.assign(buf, static_cast<size_t>(n));
  }
  std::set<std::string> visible;
  for (const AtomicFile& f : files) visible.insert(FirstElement(f.path));
  bool changed = true;
  if (!old_target.empty() && SameContents(root / old_target, files)) changed = false;

  if (changed) {
    std::string tmpl = (root / TimestampDirName()).string() + "XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) return Errno("create", tmpl, errno);
    const fs::path new_dir(tmpl);
    ::chmod(new_dir.c_str(), 0755);
    for (const AtomicFile& f : files) {
      if (Status s = WriteFile(new_dir / f.path, f); !s.ok()) {
        fs::remove_all(new_dir, ec);
        return s;
      }
    }
    const fs::path tmp_link = root / kDataLinkTmp;
    ::unlink(tmp_link.c_str());
    if (::symlink(new_dir.filename().c_str(), tmp_link.c_str()) != 0) {
      int err = errno;
      fs::remove_all(new_dir, ec);
      return Errno("symlink", tmp_link, err);
    }
    if (::rename(tmp_link.c_str(), data_link.c_str()) != 0) {
      int err = errno;
      ::unlink(tmp_link.c_str());
      fs::remove_all(new_dir, ec);
      return Errno("rename", tmp_link.string() + " to", err);
    }
    if (!old_target.empty() && old_target != new_dir.filename().string()) {
      fs::remove_all(root / old_target, ec);
    }
  }

  // The visible names: one symlink per first path element, through ..data.
  for (const std::string& name : visible) {
    const fs::path link = root / name;
    const std::string want = std::string(kDataLink) + "/" + name;
    char buf[4096];
    ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
    if (n >= 0 && std::string(buf, static_cast<size_t>(n)) == want) continue;
    fs::remove_all(link, ec);
    if (::symlink(want.c_str(), link.c_str()) != 0) return Errno("symlink", link, errno);
    changed = true;
  }
  // Names no longer published (user-visible symlinks), and hidden directories of earlier
  // versions a failed write left behind.
  std::string current;
  {
    char buf[4096];
    ssize_t n = ::readlink(data_link.c_str(), buf, sizeof buf - 1);
    if (n > 0) current.assign(buf, static_cast<size_t>(n));
  }
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == kDataLink || name == current) continue;
    if (name.starts_with("..")) {
      if (!entry.is_symlink()) stale.push_back(entry.path());
    } else if (visible.count(name) == 0 && entry.is_symlink()) {
      stale.push_back(entry.path());
      changed = true;
    }
  }
  for (const fs::path& p : stale) fs::remove_all(p, ec);
  return changed;
}

}  // namespace pdpool::agent
