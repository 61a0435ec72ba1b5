// Informer implementation: list+watch loop, cache, indices.
#include "common/kube/informer.h"

#include <random>
#include <thread>

#include "common/log.h"

namespace pdpool::kube {

std::string ObjectKey(const Json& object) {
  std::string ns = JsonGet<std::string>(object, "/metadata/namespace", "");
  std::string name = JsonGet<std::string>(object, "/metadata/name", "");
  return ns.empty() ? name : ns + "/" + name;
}

Informer::Informer(KubeClient* client, ResourceType type, InformerOptions options)
    : client_(client), type_(std::move(type)), options_(std::move(options)) {}

ObjectPtr Informer::Freeze(Json object) const {
  if (options_.strip_managed_fields && object.is_object()) {
    auto meta = object.find("metadata");
    if (meta != object.end() && meta->is_object()) meta->erase("managedFields");
  }
  return std::make_shared<const Json>(std::move(object));
}

void Informer::AddHandler(InformerHandler handler) { handlers_.push_back(std::move(handler)); }

void Informer::AddIndex(const std::string& name, IndexFunc fn) {
  std::lock_guard lock(mu_);
  index_funcs_[name] = std::move(fn);
  indices_[name];
}

bool Informer::WaitForSync(Duration timeout, CancelToken* cancel) const {
  std::unique_lock lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!synced_.load()) {
    if (cancel && cancel->cancelled()) return false;
    if (synced_cv_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() +
                                                           std::chrono::milliseconds(100))) ==
            std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline)
      return synced_.load();
  }
  return true;
}

ObjectPtr Informer::Get(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = items_.find(key);
  return it == items_.end() ? nullptr : it->second;
}

std::vector<ObjectPtr> Informer::List() const {
  std::lock_guard lock(mu_);
  std::vector<ObjectPtr> out;
  out.reserve(items_.size());
  for (const auto& [key, obj] : items_) out.push_back(obj);
  return out;
}

std::vector<ObjectPtr> Informer::ByIndex(const std::string& index, const std::string& value) const {
  std::lock_guard lock(mu_);
  std::vector<ObjectPtr> out;
  auto idx = indices_.find(index);
  if (idx == indices_.end()) return out;
  auto vals = idx->second.find(value);
  if (vals == idx->second.end()) return out;
  for (const auto& [key, unused] : vals->second) {
    auto it = items_.find(key);
    if (it != items_.end()) out.push_back(it->second);
  }
  return out;
}

size_t Informer::Size() const {
  std::lock_guard lock(mu_);
  return items_.size();
}

void Informer::EraseLocked(const std::string& key) {
  auto it = items_.find(key);
  if (it == items_.end()) return;
  for (auto& [name, fn] : index_funcs_) {
    for (const auto& v : fn(*it->second)) {
      auto& bucket = indices_[name][v];
      bucket.erase(key);
      if (bucket.empty()) indices_[name].erase(v);
    }
  }
  items_.erase(it);
}

void Informer::StoreLocked(const std::string& key, ObjectPtr obj) {
  EraseLocked(key);
  for (auto& [name, fn] : index_funcs_) {
    for (const auto& v : fn(*obj)) indices_[name][v][key] = true;
  }
  items_[key] = std::move(obj);
}

StatusOr<std::string> Informer::ListAndReplace() {
  ListOptions lo;
  lo.label_selector = options_.label_selector;
  lo.field_selector = options_.field_selector;
  auto list = client_->List(type_, options_.ns, lo);
  if (!list.ok()) return list.status();
  std::string rv = JsonGet<std::string>(*list, "/metadata/resourceVersion", "");
  std::vector<std::pair<ObjectPtr, ObjectPtr>> updates;  // (old, new); old null → add
  std::vector<ObjectPtr> deletes;
  {
    std::lock_guard lock(mu_);
    std::unordered_map<std::string, ObjectPtr> fresh;
    for (auto& item : (*list)["items"]) {
      auto obj = Freeze(std::move(item));
      fresh[ObjectKey(*obj)] = obj;
    }
    std::vector<std::string> gone;
    for (const auto& [key, old] : items_) {
      if (!fresh.count(key)) gone.push_back(key);
    }
    for (const auto& key : gone) {
      deletes.push_back(items_[key]);
      EraseLocked(key);
    }
    for (auto& [key, obj] : fresh) {
      auto it = items_.find(key);
      ObjectPtr old = it == items_.end() ? nullptr : it->second;
      if (old && JsonGet<std::string>(*old, "/metadata/resourceVersion", "") ==
                     JsonGet<std::string>(*obj, "/metadata/resourceVersion", "")) {
        continue;
      }
      StoreLocked(key, obj);
      updates.emplace_back(old, obj);
    }
    resource_version_ = rv;
    list_count_++;
    synced_ = true;
  }
  synced_cv_.notify_all();
  for (const auto& obj : deletes)
    for (auto& h : handlers_)
      if (h.on_delete) h.on_delete(obj);
  for (const auto& [old, obj] : updates)
    for (auto& h : handlers_) {
      if (old && h.on_update) h.on_update(old, obj);
      if (!old && h.on_add) h.on_add(obj);
    }
  return rv;
}

void Informer::Apply(const WatchEvent& event) {
  std::string rv = JsonGet<std::string>(event.object, "/metadata/resourceVersion", "");
  if (event.type == "BOOKMARK") {
    std::lock_guard lock(mu_);
    if (!rv.empty()) resource_version_ = rv;
    return;
  }
  auto obj = Freeze(event.object);
  std::string key = ObjectKey(*obj);
  ObjectPtr old;
  {
    std::lock_guard lock(mu_);
    auto it = items_.find(key);
    if (it != items_.end()) old = it->second;
    if (event.type == "DELETED") {
      EraseLocked(key);
    } else {
      StoreLocked(key, obj);
    }
    if (!rv.empty()) resource_version_ = rv;
  }
  for (auto& h : handlers_) {
    if (event.type == "DELETED") {
      if (h.on_delete) h.on_delete(old ? old : obj);
    } else if (old) {
      if (h.on_update) h.on_update(old, obj);
    } else if (h.on_add) {
      h.on_add(obj);
    }
  }
}

void Informer::Run(CancelToken* cancel) {
  std::mt19937 rng(std::random_device{}());
  Duration backoff = options_.initial_backoff;
  bool need_list = true;
  auto sleep_backoff = [&] {
    // Jittered sleep that a cancel cuts short.
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    auto wait = std::chrono::duration_cast<Duration>(backoff * jitter(rng));
    std::mutex m;
    std::condition_variable cv;
    int id = cancel->Register([&] {
      std::lock_guard l(m);
      cv.notify_all();
    });
    {
      std::unique_lock l(m);
      cv.wait_for(l, wait, [&] { return cancel->cancelled(); });
    }
    cancel->Unregister(id);
    backoff = std::min(options_.max_backoff, backoff * 2);
  };
  while (!cancel->cancelled()) {
    if (need_list) {
      auto listed = ListAndReplace();
      if (!listed.ok()) {
        LogWarn("informer list failed",
                {{"resource", type_.resource}, {"error", listed.status().ToString()}});
        sleep_backoff();
        continue;
      }
      need_list = false;
      backoff = options_.initial_backoff;
    }
    WatchOptions wo;
    wo.label_selector = options_.label_selector;
    wo.field_selector = options_.field_selector;
    {
      std::lock_guard lock(mu_);
      wo.resource_version = resource_version_;
    }
    // Spread watch restarts so many informers don't reconnect in lockstep.
    std::uniform_int_distribution<int> spread(options_.watch_timeout_seconds / 2 + 1,
                                              options_.watch_timeout_seconds);
    wo.timeout_seconds = spread(rng);
    Status s = client_->Watch(
        type_, options_.ns, wo,
        [this](const WatchEvent& ev) {
          Apply(ev);
          return true;
        },
        cancel);
    if (cancel->cancelled()) break;
    if (s.IsGone()) {
      LogInfo("informer watch expired, relisting", {{"resource", type_.resource}});
      need_list = true;
      continue;
    }
    if (!s.ok()) {
      LogWarn("informer watch failed", {{"resource", type_.resource}, {"error", s.ToString()}});
      sleep_backoff();
      continue;
    }
    backoff = options_.initial_backoff;
  }
}

}  // namespace pdpool::kube
