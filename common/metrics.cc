#include "common/metrics.h"

#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "prometheus/check_names.h"
#include "prometheus/text_serializer.h"
#include "spdlog/spdlog.h"

namespace pmdrl {
namespace {

std::string SerializeRegistry(const prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

// Histogram buckets must be strictly increasing (prometheus-cpp 1.0 only asserts
// it); NaN bounds make no sense. Fixes them up and says so.
std::vector<double> CleanBuckets(std::string_view name, std::vector<double> buckets) {
  std::vector<double> clean;
  clean.reserve(buckets.size());
  for (double b : buckets) {
    if (!std::isnan(b)) clean.push_back(b);
  }
  std::sort(clean.begin(), clean.end());
  clean.erase(std::unique(clean.begin(), clean.end()), clean.end());
  if (clean != buckets) {
    spdlog::error(
        "metric {}: histogram buckets must be strictly increasing and not NaN; "
        "using them sorted and de-duplicated",
        name);
  }
  return clean;
}

std::string LabelsToString(const MetricsRegistry::Labels& labels) {
  std::string out = "{";
  for (const auto& [key, value] : labels) {
    if (out.size() > 1) out += ',';
    absl::StrAppend(&out, key, "=\"", value, "\"");
  }
  out += '}';
  return out;
}

}  // namespace

MetricsRegistry::MetricsRegistry(std::string component)
    : component_(std::move(component)),
      prefix_(absl::StrCat("pmdrl_", component_, "_")),
      registry_(std::make_shared<prometheus::Registry>()) {}

MetricsRegistry::~MetricsRegistry() = default;

bool MetricsRegistry::CheckName(std::string_view name, bool counter) const {
  const std::string full(name);
  if (!prometheus::CheckMetricName(full)) {
    spdlog::error("metric name '{}' is not a valid Prometheus name; it will not be exported", name);
    return false;
  }
  // Convention violations are logged, not fatal: the metric is still worth having.
  if (!absl::StartsWith(full, prefix_) || name.size() == prefix_.size()) {
    spdlog::error("metric name '{}' should start with '{}' (pmdrl_<component>_<what>_<unit>)", name,
                  prefix_);
  }
  if (counter && !absl::EndsWith(full, "_total")) {
    spdlog::error("counter name '{}' should end in '_total'", name);
  }
  return true;
}

template <typename T, typename... Args>
T& MetricsRegistry::Get(Families<T>& families, std::string_view name, std::string_view help,
                        const Labels& labels, Args&&... args) {
  absl::MutexLock lock(&mu_);
  prometheus::Family<T>* family = nullptr;
  auto it = families.by_name.find(name);
  if (it != families.by_name.end()) {
    family = it->second;
  } else {
    if (CheckName(name, std::is_same_v<T, prometheus::Counter>)) {
      try {
        auto build = [&] {
          if constexpr (std::is_same_v<T, prometheus::Counter>) {
            return prometheus::BuildCounter();
          } else if constexpr (std::is_same_v<T, prometheus::Gauge>) {
            return prometheus::BuildGauge();
          } else {
            return prometheus::BuildHistogram();
          }
        };
        family = &build().Name(std::string(name)).Help(std::string(help)).Register(*registry_);
      } catch (const std::exception& e) {
        // E.g. the name is taken by a metric of another type.
        spdlog::error("metric '{}' cannot be registered ({}); it will not be exported", name,
                      e.what());
      }
    }
    // A null family is remembered too, so a bad name is reported once, not per call.
    families.by_name.emplace(std::string(name), family);
  }
  if (family != nullptr) {
    try {
      return family->Add(labels, std::forward<Args>(args)...);
    } catch (const std::exception& e) {
      spdlog::error("metric '{}' labels {} rejected ({}); it will not be exported", name,
                    LabelsToString(labels), e.what());
    }
  }
  auto key = std::make_pair(std::string(name), labels);
  auto [slot, inserted] = families.detached.try_emplace(std::move(key));
  if (inserted) slot->second = std::make_unique<T>(std::forward<Args>(args)...);
  return *slot->second;
}

prometheus::Counter& MetricsRegistry::Counter(std::string_view name, std::string_view help,
                                              const Labels& labels) {
  return Get(counters_, name, help, labels);
}

prometheus::Gauge& MetricsRegistry::Gauge(std::string_view name, std::string_view help,
                                          const Labels& labels) {
  return Get(gauges_, name, help, labels);
}

prometheus::Histogram& MetricsRegistry::Histogram(std::string_view name, std::string_view help,
                                                  std::vector<double> buckets,
                                                  const Labels& labels) {
  prometheus::Histogram::BucketBoundaries clean = CleanBuckets(name, std::move(buckets));
  return Get(histograms_, name, help, labels, clean);
}

std::string MetricsRegistry::Serialize() const { return SerializeRegistry(*registry_); }

void MetricsRegistry::WriteRunSnapshot(const std::string& run_dir, std::string name) const {
  for (char& c : name) {
    if (c == '/' || c == '\\') c = '_';
  }
  if (name.empty() || name[0] == '.') name = "process" + name;
  const std::filesystem::path dir = std::filesystem::path(run_dir) / "metrics";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (absl::Status s = WriteSnapshot((dir / (name + ".prom")).string()); !s.ok()) {
    spdlog::warn("metrics snapshot: {}", std::string(s.message()));
  }
}

absl::Status MetricsRegistry::WriteSnapshot(const std::string& path) const {
  static std::atomic<uint64_t> counter{0};
  // Unique per writer so concurrent snapshots to one path cannot interleave bytes.
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid(), ".", counter++);
  const std::string text = Serialize();
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot write metrics snapshot ", tmp, ": ", std::strerror(errno)));
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int write_errno = errno;
  if (std::fclose(f) != 0 || !written) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write metrics snapshot ", tmp, ": ",
                                            std::strerror(written ? errno : write_errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename metrics snapshot ", tmp, " to ", path,
                                            ": ", std::strerror(rename_errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const MetricsRegistry& registry, std::string host, int port,
    std::function<absl::Status()> health) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metrics server port %d out of range [0, 65535]", port));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer);
  server->server_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->server_;
  // Scrapes are rare and cheap: two workers, not httplib's default of one per core.
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // An idle keep-alive scraper holds a worker until this expires; keep shutdown short.
  http.set_keep_alive_timeout(2);
  // httplib's default sets SO_REUSEPORT, which would let two processes share a port
  // silently. SO_REUSEADDR alone still allows a quick restart.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });

  std::shared_ptr<prometheus::Registry> metrics = registry.registry();
  http.Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(SerializeRegistry(*metrics), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/healthz",
           [health = std::move(health)](const httplib::Request&, httplib::Response& res) {
             const absl::Status status = health ? health() : absl::OkStatus();
             if (status.ok()) {
               res.set_content("ok", "text/plain");
             } else {
               res.status = 503;
               res.set_content(status.ToString(), "text/plain");
             }
           });

  int bound = -1;
  if (port == 0) {
    bound = http.bind_to_any_port(host);
  } else if (http.bind_to_port(host, port)) {
    bound = port;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrFormat(
        "metrics server cannot bind %s:%d (address in use or not local?)", host, port));
  }
  server->port_ = bound;
  MetricsServer* self = server.get();
  server->thread_ = std::thread([self] {
    self->server_->listen_after_bind();
    self->listen_returned_ = true;
  });
  spdlog::info("metrics on http://{}:{}/metrics", host, bound);
  return server;
}

MetricsServer::~MetricsServer() {
  if (!thread_.joinable()) return;
  // httplib's stop() does nothing until the listen loop has marked itself running;
  // stopping before that would leave the thread listening forever.
  while (!listen_returned_ && !server_->is_running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  server_->stop();
  thread_.join();
}

}  // namespace pmdrl
