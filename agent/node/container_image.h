// Container images on a simulated node. No container engine runs here, so an image stands for
// binaries built next to the node agent: an image whose repository path ends in `pdpool/agent`
// (ghcr.io/pdpool/agent:0.1.0, pdpool/agent:test) has `pdpool-agent`, one ending in
// `pdpool/controller` has `pdpool-controller`, each as its entrypoint, found in the agent's
// --binary-dir. Every other image is unavailable: its container waits with reason
// ErrImageNeverPull (what a kubelet says of an image it may not pull and does not have).
// Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pdpool::agent {

inline constexpr char kImageNeverPullReason[] = "ErrImageNeverPull";

// The repository of an image reference: without its tag and digest
// ("ghcr.io/pdpool/agent:0.1.0" → "ghcr.io/pdpool/agent"; "localhost:5000/x" keeps the port).
std::string ImageRepository(std::string_view image);

// The binary an image holds (which is also its entrypoint); nullopt: not available here.
std::optional<std::string> ImageBinary(std::string_view image);

// The message of a container whose image is not available.
std::string ImageUnavailableMessage(std::string_view image);

// What to exec for a container of `image` with (already expanded) command and args: the
// binary's path in `binary_dir` and argv. An empty command runs the image's entrypoint;
// command[0] may be the binary's name or any path ending in it (/usr/local/bin/pdpool-agent).
// Anything else is InvalidArgument naming the command and what the image has.
struct ResolvedCommand {
  std::string path;
  std::vector<std::string> argv;
};
StatusOr<ResolvedCommand> ResolveContainerCommand(std::string_view image,
                                                  const std::vector<std::string>& command,
                                                  const std::vector<std::string>& args,
                                                  const std::string& binary_dir);

}  // namespace pdpool::agent
