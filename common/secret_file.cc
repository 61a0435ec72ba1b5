// ReadSecretFile: see secret_file.h.
#include "common/secret_file.h"

#include <fstream>
#include <sstream>

namespace pdpool {

StatusOr<std::string> ReadSecretFile(const std::string& path, std::string_view flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidArgument(std::string(flag) + ": cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  const char* ws = " \t\r\n";
  const size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) {
    return Status::InvalidArgument(std::string(flag) + ": " + path + " is empty");
  }
  return s.substr(begin, s.find_last_not_of(ws) - begin + 1);
}

}  // namespace pdpool
