// WriteAtomically: publishes a set of files into a volume directory the way the kubelet's
// AtomicWriter does, so a process reading the volume sees either the old set or the new one,
// never a mix or a half-written file: the files go into a fresh hidden directory
// (`..<timestamp>.<random>`), a `..data` symlink is swapped to it with one rename, and each
// visible name is a symlink through `..data` (`labels -> ..data/labels`). Bind-mounting the
// volume directory keeps this working inside a container: the symlinks are relative.
// Thread-compatible: one writer per directory at a time.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace pdpool::agent {

struct AtomicFile {
  std::string path;  // relative to the volume ("labels", "conf/app.yaml"); no "..", no leading '/'
  std::string content;
  int mode = 0644;
};

// Makes `dir` hold exactly `files`. Returns whether anything changed (false: the same contents
// and modes were already published). Errors name the path and the failing step; on error the
// previous set stays published.
StatusOr<bool> WriteAtomically(const std::string& dir, const std::vector<AtomicFile>& files);

// Checks a volume item path as the API server does for secret/configMap/downwardAPI items:
// relative, not empty, no ".." element, not starting with "..".
Status ValidateVolumeItemPath(const std::string& path);

}  // namespace pdpool::agent
