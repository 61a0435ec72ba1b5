// FakeKubeClient implementation: one mutex over every store; watches wait on one condition
// variable that every write, bookmark, close and cancel notifies.
#include "tests/fakes/fake_kube_client.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <optional>
#include <set>
#include <utility>

namespace pdpool::kube {
namespace {

// Set while a call hook runs on this thread, so calls the hook makes skip the hook.
thread_local bool t_in_hook = false;

std::string TypeKey(const ResourceType& type) { return type.resource + "." + type.group; }

// "pods", "leases.coordination.k8s.io": how the API server names a resource in messages.
std::string ResourceName(const ResourceType& type) {
  return type.group.empty() ? type.resource : type.resource + "." + type.group;
}

std::string ObjectKey(const ResourceType& type, std::string_view ns, std::string_view name) {
  if (!type.namespaced) return std::string(name);
  return std::string(ns) + "/" + std::string(name);
}

// Built-in groups: the core group, groups without a dot ("apps") and *.k8s.io. Custom resources
// must use a dotted group outside k8s.io.
bool IsBuiltIn(const ResourceType& type) {
  const std::string& g = type.group;
  if (g.empty() || g.find('.') == std::string::npos) return true;
  const std::string suffix = ".k8s.io";
  return g.size() >= suffix.size() &&
         g.compare(g.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string Str(const Json& doc, const char* pointer) {
  return JsonGet<std::string>(doc, pointer, "");
}

Status NotFoundError(const ResourceType& type, std::string_view name) {
  return Status::NotFound(ResourceName(type) + " \"" + std::string(name) + "\" not found");
}

Status ConflictError(const ResourceType& type, std::string_view name) {
  return Status::Conflict("Operation cannot be fulfilled on " + ResourceName(type) + " \"" +
                          std::string(name) +
                          "\": the object has been modified; please apply your changes to the "
                          "latest version and try again");
}

// The object without metadata and status: what a generation bump is judged on.
Json SpecPart(const Json& obj) {
  Json copy = obj;
  if (copy.is_object()) {
    copy.erase("metadata");
    copy.erase("status");
    copy.erase("apiVersion");
    copy.erase("kind");
  }
  return copy;
}

// ---- Selectors -------------------------------------------------------------------------------

struct LabelRequirement {
  enum class Op { kEq, kNotEq, kExists, kNotExists, kIn, kNotIn };
  std::string key;
  Op op;
  std::vector<std::string> values;
};

bool IsSelectorChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '/';
}

class SelectorParser {
 public:
  explicit SelectorParser(std::string_view s) : s_(s) {}

  StatusOr<std::vector<LabelRequirement>> Parse() {
    std::vector<LabelRequirement> reqs;
    SkipSpace();
    if (AtEnd()) return reqs;
    while (true) {
      auto req = ParseRequirement();
      if (!req.ok()) return req.status();
      reqs.push_back(std::move(*req));
      SkipSpace();
      if (AtEnd()) break;
      if (s_[pos_] != ',') return Error("expected ','");
      ++pos_;
      SkipSpace();
    }
    return reqs;
  }

 private:
  bool AtEnd() const { return pos_ >= s_.size(); }
  void SkipSpace() {
    while (!AtEnd() && (s_[pos_] == ' ' || s_[pos_] == '\t')) ++pos_;
  }
  std::string Word() {
    size_t start = pos_;
    while (!AtEnd() && IsSelectorChar(s_[pos_])) ++pos_;
    return std::string(s_.substr(start, pos_ - start));
  }
  bool Consume(std::string_view tok) {
    if (s_.substr(pos_, tok.size()) != tok) return false;
    pos_ += tok.size();
    return true;
  }
  Status Error(const std::string& what) const {
    return Status::InvalidArgument("invalid label selector \"" + std::string(s_) + "\": " + what +
                                   " at position " + std::to_string(pos_));
  }

  StatusOr<LabelRequirement> ParseRequirement() {
    LabelRequirement req;
    if (Consume("!")) {
      SkipSpace();
      req.key = Word();
      if (req.key.empty()) return Error("expected a key after '!'");
      req.op = LabelRequirement::Op::kNotExists;
      return req;
    }
    req.key = Word();
    if (req.key.empty()) return Error("expected a key");
    SkipSpace();
    if (AtEnd() || s_[pos_] == ',') {
      req.op = LabelRequirement::Op::kExists;
      return req;
    }
    if (Consume("!=")) {
      req.op = LabelRequirement::Op::kNotEq;
    } else if (Consume("==") || Consume("=")) {
      req.op = LabelRequirement::Op::kEq;
    } else {
      std::string op = Word();
      if (op == "in") {
        req.op = LabelRequirement::Op::kIn;
      } else if (op == "notin") {
        req.op = LabelRequirement::Op::kNotIn;
      } else {
        return Error("unknown operator \"" + op + "\"");
      }
      SkipSpace();
      if (!Consume("(")) return Error("expected '('");
      while (true) {
        SkipSpace();
        req.values.push_back(Word());
        SkipSpace();
        if (Consume(")")) break;
        if (!Consume(",")) return Error("expected ',' or ')'");
      }
      return req;
    }
    SkipSpace();
    req.values.push_back(Word());
    return req;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

bool MatchesLabels(const std::vector<LabelRequirement>& reqs, const Json& obj) {
  const Json* labels = nullptr;
  auto md = obj.find("metadata");
  if (md != obj.end() && md->is_object()) {
    auto l = md->find("labels");
    if (l != md->end() && l->is_object()) labels = &*l;
  }
  for (const auto& r : reqs) {
    std::optional<std::string> value;
    if (labels != nullptr) {
      auto it = labels->find(r.key);
      if (it != labels->end() && it->is_string()) value = it->get<std::string>();
    }
    auto in_values = [&] {
      return value && std::find(r.values.begin(), r.values.end(), *value) != r.values.end();
    };
    bool ok = true;
    switch (r.op) {
      case LabelRequirement::Op::kEq:
        ok = value && *value == r.values[0];
        break;
      case LabelRequirement::Op::kNotEq:
        ok = !value || *value != r.values[0];
        break;
      case LabelRequirement::Op::kExists:
        ok = value.has_value();
        break;
      case LabelRequirement::Op::kNotExists:
        ok = !value.has_value();
        break;
      case LabelRequirement::Op::kIn:
        ok = in_values();
        break;
      case LabelRequirement::Op::kNotIn:
        ok = !in_values();
        break;
    }
    if (!ok) return false;
  }
  return true;
}

struct FieldRequirement {
  std::string pointer;  // "/spec/nodeName"
  bool equal;
  std::string value;
};

// The field selectors the API server supports for each type (a subset for pods).
bool FieldSupported(const ResourceType& type, const std::string& field) {
  if (field == "metadata.name" || field == "metadata.namespace") return true;
  if (type.group.empty() && type.resource == "pods") {
    return field == "spec.nodeName" || field == "status.phase" || field == "spec.schedulerName" ||
           field == "spec.serviceAccountName" || field == "spec.restartPolicy" ||
           field == "status.podIP" || field == "status.nominatedNodeName";
  }
  return false;
}

StatusOr<std::vector<FieldRequirement>> ParseFieldSelector(const ResourceType& type,
                                                           std::string_view s) {
  std::vector<FieldRequirement> reqs;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string_view::npos) end = s.size();
    std::string term(s.substr(start, end - start));
    start = end + 1;
    term.erase(0, term.find_first_not_of(" \t"));
    term.erase(term.find_last_not_of(" \t") + 1);
    if (term.empty()) {
      if (end == s.size()) break;
      continue;
    }
    FieldRequirement req;
    size_t op;
    std::string field;
    if ((op = term.find("!=")) != std::string::npos) {
      req.equal = false;
      field = term.substr(0, op);
      req.value = term.substr(op + 2);
    } else if ((op = term.find("==")) != std::string::npos) {
      req.equal = true;
      field = term.substr(0, op);
      req.value = term.substr(op + 2);
    } else if ((op = term.find('=')) != std::string::npos) {
      req.equal = true;
      field = term.substr(0, op);
      req.value = term.substr(op + 1);
    } else {
      return Status::InvalidArgument("invalid field selector \"" + std::string(s) +
                                     "\": expected field=value, field==value or field!=value");
    }
    field.erase(field.find_last_not_of(" \t") + 1);
    req.value.erase(0, req.value.find_first_not_of(" \t"));
    if (!FieldSupported(type, field)) {
      return Status::InvalidArgument("field label not supported: " + field + " (for " +
                                     ResourceName(type) + ")");
    }
    req.pointer = "/" + field;
    std::replace(req.pointer.begin(), req.pointer.end(), '.', '/');
    reqs.push_back(std::move(req));
    if (end == s.size()) break;
  }
  return reqs;
}

bool MatchesFields(const std::vector<FieldRequirement>& reqs, const Json& obj) {
  for (const auto& r : reqs) {
    std::string value;
    try {
      const Json& v = obj.at(Json::json_pointer(r.pointer));
      if (v.is_string()) {
        value = v.get<std::string>();
      } else if (!v.is_null()) {
        value = v.dump();
      }
    } catch (...) {
      // A missing field compares as "", so spec.nodeName= selects unscheduled pods.
    }
    if ((value == r.value) != r.equal) return false;
  }
  return true;
}

struct Filter {
  bool by_namespace = false;
  std::string ns;
  std::vector<LabelRequirement> labels;
  std::vector<FieldRequirement> fields;

  bool Matches(const Json& obj) const {
    if (by_namespace && Str(obj, "/metadata/namespace") != ns) return false;
    return MatchesLabels(labels, obj) && MatchesFields(fields, obj);
  }
};

StatusOr<Filter> MakeFilter(const ResourceType& type, std::string_view ns,
                            const std::string& label_selector, const std::string& field_selector) {
  Filter f;
  f.by_namespace = type.namespaced && !ns.empty();
  f.ns = std::string(ns);
  auto labels = SelectorParser(label_selector).Parse();
  if (!labels.ok()) return labels.status();
  f.labels = std::move(*labels);
  auto fields = ParseFieldSelector(type, field_selector);
  if (!fields.ok()) return fields.status();
  f.fields = std::move(*fields);
  return f;
}

bool ParseResourceVersion(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

}  // namespace

FakeKubeClient::FakeKubeClient(Clock* clock)
    : clock_(clock != nullptr ? clock : &RealClock::Instance()) {}

FakeKubeClient::~FakeKubeClient() {
  std::unique_lock lock(mu_);
  destroying_ = true;
  ++close_epoch_;
  cv_.notify_all();
  cv_.wait(lock, [this] { return active_watches_ == 0; });
}

Status FakeKubeClient::Intercept(const FakeCall& call) {
  std::function<Status(const FakeCall&)> hook;
  {
    std::lock_guard lock(mu_);
    ++calls_[{call.method, TypeKey(*call.type)}];
    if (!t_in_hook) hook = hook_;
  }
  if (hook) {
    t_in_hook = true;
    Status s = hook(call);
    t_in_hook = false;
    if (!s.ok()) return s;
  }
  std::lock_guard lock(mu_);
  const std::string type_key = TypeKey(*call.type);
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    if ((it->method == "*" || it->method == call.method) &&
        (it->type_key.empty() || it->type_key == type_key)) {
      Status s = std::move(it->status);
      faults_.erase(it);
      return s;
    }
  }
  return Status::Ok();
}

FakeKubeClient::TypeStore& FakeKubeClient::StoreLocked(const ResourceType& type) {
  return stores_[TypeKey(type)];
}

const FakeKubeClient::TypeStore* FakeKubeClient::FindStoreLocked(const ResourceType& type) const {
  auto it = stores_.find(TypeKey(type));
  return it == stores_.end() ? nullptr : &it->second;
}

std::string FakeKubeClient::NewUidLocked() {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "00000000-0000-4000-8000-%012llx",
                static_cast<unsigned long long>(++uid_counter_));
  return buf;
}

std::string FakeKubeClient::GenerateNameLocked(const TypeStore& store, const std::string& ns,
                                               const std::string& prefix) {
  // The server's alphabet (no vowels, no confusable characters); deterministic here so test
  // output is reproducible.
  static constexpr char kAlphabet[] = "bcdfghjklmnpqrstvwxz2456789";
  constexpr uint64_t kN = sizeof(kAlphabet) - 1;
  while (true) {
    uint64_t x = ++name_counter_ * 0x9E3779B97F4A7C15ull;
    std::string name = prefix;
    for (int i = 0; i < 5; ++i) {
      name += kAlphabet[(x >> 20) % kN];
      x = x * 6364136223846793005ull + 1442695040888963407ull;
    }
    std::string key = ns.empty() ? name : ns + "/" + name;
    if (store.objects.count(key) == 0) return name;
  }
}

void FakeKubeClient::RecordLocked(TypeStore& store, std::string event_type, const Json& object,
                                  Json old) {
  store.history.push_back(Event{rv_, std::move(event_type), object, std::move(old)});
  // Logical window: only the newest history_limit_ events count as retained.
  if (history_limit_ > 0) {
    auto first = std::upper_bound(store.history.begin(), store.history.end(), store.history_start,
                                  [](int64_t rv, const Event& e) { return rv < e.rv; });
    size_t retained = static_cast<size_t>(store.history.end() - first);
    if (retained > history_limit_) {
      store.history_start = (first + static_cast<long>(retained - history_limit_ - 1))->rv;
    }
  }
  // Physically drop what is outside the window, but never what an open watch has yet to read.
  int64_t threshold = std::max(store.history_start, compacted_rv_);
  int64_t min_cursor =
      watch_cursors_.empty() ? std::numeric_limits<int64_t>::max() : *watch_cursors_.begin();
  while (!store.history.empty() && store.history.front().rv <= threshold &&
         store.history.front().rv <= min_cursor) {
    store.history.pop_front();
  }
  cv_.notify_all();
}

StatusOr<Json> FakeKubeClient::CreateLocked(const ResourceType& type, std::string ns, Json object,
                                            bool keep_status) {
  if (!object.is_object()) return Status::InvalidArgument("object must be a JSON object");
  if (object.contains("kind") && object["kind"] != type.kind) {
    return Status::InvalidArgument("kind " + object["kind"].dump() + " does not match " +
                                   type.kind);
  }
  Json& md = object["metadata"];
  if (md.is_null()) md = Json::object();
  if (!md.is_object()) return Status::InvalidArgument("metadata must be a JSON object");
  if (type.namespaced) {
    std::string obj_ns = Str(object, "/metadata/namespace");
    if (ns.empty())
      return Status::InvalidArgument("namespace is required for " + ResourceName(type));
    if (!obj_ns.empty() && obj_ns != ns) {
      return Status::InvalidArgument(
          "the namespace of the provided object does not match the namespace sent on the request");
    }
    md["namespace"] = ns;
  } else {
    ns.clear();
    md.erase("namespace");
  }
  TypeStore& store = StoreLocked(type);
  std::string name = Str(object, "/metadata/name");
  if (name.empty()) {
    std::string prefix = Str(object, "/metadata/generateName");
    if (prefix.empty()) {
      return Status::InvalidArgument("metadata.name or metadata.generateName is required");
    }
    name = GenerateNameLocked(store, ns, prefix);
    md["name"] = name;
  }
  const std::string key = ObjectKey(type, ns, name);
  if (store.objects.count(key) != 0) {
    return Status::AlreadyExists(ResourceName(type) + " \"" + name + "\" already exists");
  }
  object["apiVersion"] = type.ApiVersion();
  object["kind"] = type.kind;
  md["uid"] = NewUidLocked();
  md["creationTimestamp"] = FormatRfc3339(clock_->WallNow());
  md["generation"] = 1;
  md["resourceVersion"] = std::to_string(++rv_);
  if (!keep_status) object.erase("status");
  store.objects[key] = object;
  RecordLocked(store, "ADDED", object, nullptr);
  return object;
}

StatusOr<Json> FakeKubeClient::CommitUpdateLocked(const ResourceType& type, const std::string& key,
                                                  Json updated) {
  TypeStore& store = StoreLocked(type);
  const Json old = store.objects.at(key);
  updated["apiVersion"] = type.ApiVersion();
  updated["kind"] = type.kind;
  Json& md = updated["metadata"];
  if (!md.is_object()) md = Json::object();
  // Fields the client cannot change.
  const Json& old_md = old.at("metadata");  // every stored object has metadata
  for (const char* f :
       {"name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"}) {
    auto it = old_md.find(f);
    if (it != old_md.end()) {
      md[f] = *it;
    } else {
      md.erase(f);
    }
  }
  if (updated == old) return old;  // nothing changed: no new version, no event
  if (SpecPart(updated) != SpecPart(old)) {
    md["generation"] = JsonGet<int64_t>(old, "/metadata/generation", 0) + 1;
  }
  md["resourceVersion"] = std::to_string(++rv_);
  store.objects[key] = updated;
  RecordLocked(store, "MODIFIED", updated, old);
  return updated;
}

StatusOr<Json> FakeKubeClient::Get(const ResourceType& type, std::string_view ns,
                                   std::string_view name) {
  FakeCall call{"Get", &type, std::string(ns), std::string(name), nullptr};
  if (Status s = Intercept(call); !s.ok()) return s;
  std::lock_guard lock(mu_);
  const TypeStore* store = FindStoreLocked(type);
  if (store == nullptr) return NotFoundError(type, name);
  auto it = store->objects.find(ObjectKey(type, ns, name));
  if (it == store->objects.end()) return NotFoundError(type, name);
  return it->second;
}

StatusOr<Json> FakeKubeClient::List(const ResourceType& type, std::string_view ns,
                                    const ListOptions& options) {
  FakeCall call{"List", &type, std::string(ns), "", nullptr};
  if (Status s = Intercept(call); !s.ok()) return s;
  auto filter = MakeFilter(type, ns, options.label_selector, options.field_selector);
  if (!filter.ok()) return filter.status();
  std::lock_guard lock(mu_);
  Json result = {{"apiVersion", type.ApiVersion()},
                 {"kind", type.kind + "List"},
                 {"metadata", {{"resourceVersion", std::to_string(rv_)}}},
                 {"items", Json::array()}};
  const TypeStore* store = FindStoreLocked(type);
  if (store == nullptr) return result;
  const bool strip_type = IsBuiltIn(type);
  Json& items = result["items"];
  auto it = options.continue_token.empty() ? store->objects.begin()
                                           : store->objects.upper_bound(options.continue_token);
  for (; it != store->objects.end(); ++it) {
    if (!filter->Matches(it->second)) continue;
    if (options.limit > 0 && static_cast<int64_t>(items.size()) >= options.limit) {
      // More remain: the token is the last key returned.
      auto prev = std::prev(it);
      result["metadata"]["continue"] = prev->first;
      break;
    }
    Json item = it->second;
    if (strip_type) {
      item.erase("apiVersion");
      item.erase("kind");
    }
    items.push_back(std::move(item));
  }
  return result;
}

StatusOr<Json> FakeKubeClient::Create(const ResourceType& type, std::string_view ns,
                                      const Json& object) {
  FakeCall call{"Create", &type, std::string(ns), Str(object, "/metadata/name"), &object};
  if (Status s = Intercept(call); !s.ok()) return s;
  if (!Str(object, "/metadata/resourceVersion").empty()) {
    return Status::InvalidArgument("resourceVersion should not be set on objects to be created");
  }
  std::lock_guard lock(mu_);
  return CreateLocked(type, std::string(ns), object, /*keep_status=*/false);
}

StatusOr<Json> FakeKubeClient::Update(const ResourceType& type, const Json& object) {
  const std::string ns = type.namespaced ? Str(object, "/metadata/namespace") : "";
  const std::string name = Str(object, "/metadata/name");
  FakeCall call{"Update", &type, ns, name, &object};
  if (Status s = Intercept(call); !s.ok()) return s;
  if (!object.is_object()) return Status::InvalidArgument("object must be a JSON object");
  if (name.empty()) return Status::InvalidArgument("metadata.name is required");
  if (type.namespaced && ns.empty())
    return Status::InvalidArgument("metadata.namespace is required");
  if (object.contains("kind") && object["kind"] != type.kind) {
    return Status::InvalidArgument("kind " + object["kind"].dump() + " does not match " +
                                   type.kind);
  }
  std::lock_guard lock(mu_);
  TypeStore& store = StoreLocked(type);
  const std::string key = ObjectKey(type, ns, name);
  auto it = store.objects.find(key);
  if (it == store.objects.end()) return NotFoundError(type, name);
  const std::string rv = Str(object, "/metadata/resourceVersion");
  if (!rv.empty() && rv != Str(it->second, "/metadata/resourceVersion")) {
    return ConflictError(type, name);
  }
  const std::string uid = Str(object, "/metadata/uid");
  if (!uid.empty() && uid != Str(it->second, "/metadata/uid")) return ConflictError(type, name);
  Json updated = object;
  // The main resource cannot change status.
  if (it->second.contains("status")) {
    updated["status"] = it->second["status"];
  } else {
    updated.erase("status");
  }
  return CommitUpdateLocked(type, key, std::move(updated));
}

StatusOr<Json> FakeKubeClient::UpdateStatus(const ResourceType& type, const Json& object) {
  const std::string ns = type.namespaced ? Str(object, "/metadata/namespace") : "";
  const std::string name = Str(object, "/metadata/name");
  FakeCall call{"UpdateStatus", &type, ns, name, &object};
  if (Status s = Intercept(call); !s.ok()) return s;
  if (!object.is_object()) return Status::InvalidArgument("object must be a JSON object");
  if (name.empty()) return Status::InvalidArgument("metadata.name is required");
  if (type.namespaced && ns.empty())
    return Status::InvalidArgument("metadata.namespace is required");
  std::lock_guard lock(mu_);
  TypeStore& store = StoreLocked(type);
  const std::string key = ObjectKey(type, ns, name);
  auto it = store.objects.find(key);
  if (it == store.objects.end()) return NotFoundError(type, name);
  const std::string rv = Str(object, "/metadata/resourceVersion");
  if (!rv.empty() && rv != Str(it->second, "/metadata/resourceVersion")) {
    return ConflictError(type, name);
  }
  const std::string uid = Str(object, "/metadata/uid");
  if (!uid.empty() && uid != Str(it->second, "/metadata/uid")) return ConflictError(type, name);
  // The status subresource changes nothing but status.
  Json updated = it->second;
  if (object.contains("status")) {
    updated["status"] = object["status"];
  } else {
    updated.erase("status");
  }
  return CommitUpdateLocked(type, key, std::move(updated));
}

StatusOr<Json> FakeKubeClient::Patch(const ResourceType& type, std::string_view ns,
                                     std::string_view name, PatchType patch_type, const Json& patch,
                                     const PatchOptions& options) {
  FakeCall call{"Patch", &type, std::string(ns), std::string(name), &patch};
  if (Status s = Intercept(call); !s.ok()) return s;
  if (!options.subresource.empty() && options.subresource != "status") {
    return Status::InvalidArgument("unsupported subresource \"" + options.subresource + "\"");
  }
  if (name.empty()) return Status::InvalidArgument("name is required");
  if (type.namespaced && ns.empty()) return Status::InvalidArgument("namespace is required");
  std::lock_guard lock(mu_);
  TypeStore& store = StoreLocked(type);
  const std::string key = ObjectKey(type, ns, name);
  auto it = store.objects.find(key);
  if (it == store.objects.end()) {
    // Server-side apply creates what does not exist yet.
    if (patch_type == PatchType::kApply && options.subresource.empty()) {
      if (!patch.is_object()) return Status::InvalidArgument("apply patch must be a JSON object");
      Json obj = patch;
      obj["metadata"]["name"] = std::string(name);
      obj["metadata"].erase("resourceVersion");
      return CreateLocked(type, std::string(ns), std::move(obj), /*keep_status=*/false);
    }
    return NotFoundError(type, name);
  }
  const Json& old = it->second;
  Json patched = old;
  switch (patch_type) {
    case PatchType::kMerge:
    case PatchType::kStrategic:  // approximated: lists are replaced, not merged by key
    case PatchType::kApply:      // approximated: no field ownership
      if (!patch.is_object()) return Status::InvalidArgument("merge patch must be a JSON object");
      patched.merge_patch(patch);
      break;
    case PatchType::kJson:
      if (!patch.is_array()) return Status::InvalidArgument("JSON patch must be a JSON array");
      try {
        patched = old.patch(patch);
      } catch (const Json::exception& e) {
        // The server answers 422 for a patch that does not apply, a failed "test" included.
        return Status::InvalidArgument(std::string("JSON patch does not apply: ") + e.what());
      }
      break;
  }
  if (!patched.is_object()) return Status::InvalidArgument("patched object is not a JSON object");
  // A resourceVersion or uid in the patch is a precondition.
  const std::string rv = Str(patched, "/metadata/resourceVersion");
  if (!rv.empty() && rv != Str(old, "/metadata/resourceVersion")) return ConflictError(type, name);
  const std::string uid = Str(patched, "/metadata/uid");
  if (!uid.empty() && uid != Str(old, "/metadata/uid")) return ConflictError(type, name);
  Json updated;
  if (options.subresource == "status") {
    updated = old;
    if (patched.contains("status")) {
      updated["status"] = patched["status"];
    } else {
      updated.erase("status");
    }
  } else {
    updated = std::move(patched);
    if (old.contains("status")) {
      updated["status"] = old["status"];
    } else {
      updated.erase("status");
    }
  }
  return CommitUpdateLocked(type, key, std::move(updated));
}

Status FakeKubeClient::Delete(const ResourceType& type, std::string_view ns, std::string_view name,
                              const DeleteOptions& options) {
  FakeCall call{"Delete", &type, std::string(ns), std::string(name), nullptr};
  if (Status s = Intercept(call); !s.ok()) return s;
  std::lock_guard lock(mu_);
  TypeStore& store = StoreLocked(type);
  auto it = store.objects.find(ObjectKey(type, ns, name));
  if (it == store.objects.end()) return NotFoundError(type, name);
  if (!options.precondition_uid.empty() &&
      options.precondition_uid != Str(it->second, "/metadata/uid")) {
    return ConflictError(type, name);
  }
  Json obj = std::move(it->second);
  store.objects.erase(it);
  obj["metadata"]["resourceVersion"] = std::to_string(++rv_);
  RecordLocked(store, "DELETED", obj, nullptr);
  return Status::Ok();
}

Status FakeKubeClient::Watch(const ResourceType& type, std::string_view ns,
                             const WatchOptions& options,
                             const std::function<bool(const WatchEvent&)>& on_event,
                             CancelToken* cancel) {
  FakeCall call{"Watch", &type, std::string(ns), "", nullptr};
  if (Status s = Intercept(call); !s.ok()) return s;
  auto filter = MakeFilter(type, ns, options.label_selector, options.field_selector);
  if (!filter.ok()) return filter.status();
  int64_t start_rv = 0;
  const bool from_now = options.resource_version.empty() || options.resource_version == "0";
  if (!from_now && !ParseResourceVersion(options.resource_version, &start_rv)) {
    return Status::InvalidArgument("invalid resourceVersion \"" + options.resource_version + "\"");
  }

  // Registered outside mu_: the token runs callbacks under its own lock, and this one takes mu_.
  int registration = 0;
  if (cancel != nullptr) {
    registration = cancel->Register([this] {
      std::lock_guard lock(mu_);
      cv_.notify_all();
    });
  }

  Status result;
  std::unique_lock lock(mu_);
  ++active_watches_;
  cv_.notify_all();
  const uint64_t my_close_epoch = close_epoch_;
  uint64_t my_bookmark_epoch = bookmark_epoch_;
  std::vector<WatchEvent> pending;
  int64_t cursor = 0;
  bool open = true;
  {
    TypeStore& store = StoreLocked(type);
    if (destroying_) {
      open = false;
    } else if (from_now) {
      // "Start at most recent" with the current state as synthetic ADDED events.
      for (const auto& [key, obj] : store.objects) {
        if (filter->Matches(obj)) pending.push_back(WatchEvent{"ADDED", obj});
      }
      cursor = rv_;
    } else {
      int64_t oldest = std::max(store.history_start, compacted_rv_);
      if (start_rv < oldest) {
        result = Status::Gone("too old resource version: " + std::to_string(start_rv) + " (" +
                              std::to_string(oldest) + ")");
        open = false;
      }
      cursor = start_rv;
    }
  }
  auto cursor_it = watch_cursors_.insert(cursor);
  while (open) {
    if (cancel != nullptr && cancel->cancelled()) {
      result = Status::Cancelled("watch cancelled");
      break;
    }
    TypeStore& store = StoreLocked(type);
    for (const Event& e : store.history) {
      if (e.rv <= cursor) continue;
      const bool now_matches = filter->Matches(e.object);
      if (e.type == "MODIFIED") {
        const bool before = !e.old.is_null() && filter->Matches(e.old);
        if (now_matches && before) {
          pending.push_back(WatchEvent{"MODIFIED", e.object});
        } else if (now_matches) {
          pending.push_back(WatchEvent{"ADDED", e.object});
        } else if (before) {
          pending.push_back(WatchEvent{"DELETED", e.object});
        }
      } else if (now_matches) {
        pending.push_back(WatchEvent{e.type, e.object});
      }
    }
    // Every event up to rv_ is in the history (writes happen under mu_), so this watch is now
    // caught up to rv_ whatever type those writes were for.
    cursor = std::max(cursor, rv_);
    watch_cursors_.erase(cursor_it);
    cursor_it = watch_cursors_.insert(cursor);
    if (bookmark_epoch_ != my_bookmark_epoch) {
      my_bookmark_epoch = bookmark_epoch_;
      if (options.allow_bookmarks) {
        pending.push_back(
            WatchEvent{"BOOKMARK", Json{{"apiVersion", type.ApiVersion()},
                                        {"kind", type.kind},
                                        {"metadata", {{"resourceVersion", std::to_string(rv_)}}}}});
      }
    }
    if (!pending.empty()) {
      std::vector<WatchEvent> batch;
      batch.swap(pending);
      lock.unlock();
      bool stop = false;
      for (const WatchEvent& ev : batch) {
        if (cancel != nullptr && cancel->cancelled()) {
          result = Status::Cancelled("watch cancelled");
          stop = true;
          break;
        }
        if (!on_event(ev)) {
          stop = true;
          break;
        }
      }
      lock.lock();
      if (stop) break;
      continue;
    }
    if (close_epoch_ != my_close_epoch || destroying_) break;  // server ended the stream: Ok
    cv_.wait(lock);
  }
  watch_cursors_.erase(cursor_it);
  --active_watches_;
  cv_.notify_all();
  lock.unlock();
  if (cancel != nullptr) cancel->Unregister(registration);
  return result;
}

StatusOr<Json> FakeKubeClient::Upsert(const ResourceType& type, Json object) {
  if (!object.is_object()) return Status::InvalidArgument("object must be a JSON object");
  std::string ns = type.namespaced ? Str(object, "/metadata/namespace") : "";
  const std::string name = Str(object, "/metadata/name");
  if (name.empty()) return Status::InvalidArgument("metadata.name is required");
  if (object["metadata"].is_object()) object["metadata"].erase("resourceVersion");
  std::lock_guard lock(mu_);
  TypeStore& store = StoreLocked(type);
  const std::string key = ObjectKey(type, ns, name);
  if (store.objects.count(key) == 0) {
    return CreateLocked(type, std::move(ns), std::move(object), /*keep_status=*/true);
  }
  return CommitUpdateLocked(type, key, std::move(object));
}

void FakeKubeClient::FailNext(std::string_view method, Status status, const ResourceType* type) {
  std::lock_guard lock(mu_);
  faults_.push_back(
      Fault{std::string(method), type != nullptr ? TypeKey(*type) : "", std::move(status)});
}

void FakeKubeClient::SetCallHook(std::function<Status(const FakeCall&)> hook) {
  std::lock_guard lock(mu_);
  hook_ = std::move(hook);
}

int FakeKubeClient::CallCount(std::string_view method, const ResourceType& type) const {
  std::lock_guard lock(mu_);
  auto it = calls_.find({std::string(method), TypeKey(type)});
  return it == calls_.end() ? 0 : it->second;
}

int FakeKubeClient::CallCount(std::string_view method) const {
  std::lock_guard lock(mu_);
  int n = 0;
  for (const auto& [k, count] : calls_) {
    if (k.first == method) n += count;
  }
  return n;
}

int FakeKubeClient::WriteCount(const ResourceType& type) const {
  int n = 0;
  for (const char* m : {"Create", "Update", "UpdateStatus", "Patch", "Delete"}) {
    n += CallCount(m, type);
  }
  return n;
}

void FakeKubeClient::ResetCallCounts() {
  std::lock_guard lock(mu_);
  calls_.clear();
}

int64_t FakeKubeClient::CurrentResourceVersion() const {
  std::lock_guard lock(mu_);
  return rv_;
}

size_t FakeKubeClient::ObjectCount(const ResourceType& type, std::string_view ns) const {
  std::lock_guard lock(mu_);
  const TypeStore* store = FindStoreLocked(type);
  if (store == nullptr) return 0;
  if (ns.empty() || !type.namespaced) return store->objects.size();
  size_t n = 0;
  for (const auto& [key, obj] : store->objects) {
    if (Str(obj, "/metadata/namespace") == ns) ++n;
  }
  return n;
}

void FakeKubeClient::CompactHistory() {
  std::lock_guard lock(mu_);
  compacted_rv_ = rv_;
  int64_t min_cursor =
      watch_cursors_.empty() ? std::numeric_limits<int64_t>::max() : *watch_cursors_.begin();
  for (auto& [key, store] : stores_) {
    while (!store.history.empty() && store.history.front().rv <= min_cursor) {
      store.history.pop_front();
    }
  }
}

void FakeKubeClient::SetHistoryLimit(size_t max_events) {
  std::lock_guard lock(mu_);
  history_limit_ = max_events;
}

void FakeKubeClient::SendBookmark() {
  std::lock_guard lock(mu_);
  ++bookmark_epoch_;
  cv_.notify_all();
}

void FakeKubeClient::CloseWatches() {
  std::lock_guard lock(mu_);
  ++close_epoch_;
  cv_.notify_all();
}

int FakeKubeClient::ActiveWatches() const {
  std::lock_guard lock(mu_);
  return active_watches_;
}

bool FakeKubeClient::WaitForWatches(int n, Duration timeout) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return active_watches_ >= n; });
}

}  // namespace pdpool::kube
