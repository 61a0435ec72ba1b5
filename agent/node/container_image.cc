// Image → local binary mapping: see container_image.h.
#include "agent/node/container_image.h"

namespace pdpool::agent {
namespace {

struct LocalImage {
  const char* repository_suffix;
  const char* binary;
};
constexpr LocalImage kLocalImages[] = {
    {"pdpool/agent", "pdpool-agent"},
    {"pdpool/controller", "pdpool-controller"},
};

}  // namespace

std::string ImageRepository(std::string_view image) {
  std::string_view repo = image.substr(0, image.find('@'));
  size_t colon = repo.rfind(':');
  size_t slash = repo.rfind('/');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    repo = repo.substr(0, colon);
  }
  return std::string(repo);
}

std::optional<std::string> ImageBinary(std::string_view image) {
  const std::string repo = ImageRepository(image);
  for (const LocalImage& local : kLocalImages) {
    const std::string suffix = local.repository_suffix;
    if (repo == suffix || repo.ends_with("/" + suffix)) return std::string(local.binary);
  }
  return std::nullopt;
}

std::string ImageUnavailableMessage(std::string_view image) {
  return "image \"" + std::string(image) +
         "\" is not present on this node and pdpool's node agent pulls nothing: it runs only "
         "images whose repository ends in pdpool/agent or pdpool/controller, from its "
         "--binary-dir";
}

StatusOr<ResolvedCommand> ResolveContainerCommand(std::string_view image,
                                                  const std::vector<std::string>& command,
                                                  const std::vector<std::string>& args,
                                                  const std::string& binary_dir) {
  std::optional<std::string> binary = ImageBinary(image);
  if (!binary) return Status::NotFound(ImageUnavailableMessage(image));
  ResolvedCommand out;
  out.argv = command;
  if (out.argv.empty()) out.argv.push_back(*binary);
  const std::string& first = out.argv.front();
  const std::string base = first.substr(first.rfind('/') + 1);
  if (base != *binary) {
    return Status::InvalidArgument("exec: \"" + first + "\": not found in image \"" +
                                   std::string(image) + "\" (it has " + *binary + ")");
  }
  out.argv.front() = *binary;
  out.argv.insert(out.argv.end(), args.begin(), args.end());
  out.path = binary_dir.empty() ? *binary : binary_dir + "/" + *binary;
  return out;
}

}  // namespace pdpool::agent
