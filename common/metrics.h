// Prometheus metrics of one process: a registry that hands out counters, gauges and
// histograms by name, and a small HTTP server exposing them (GET /metrics, /healthz).
//
// Naming (docs/design.md "Observability"): pmdrl_<component>_<what>_<unit>, counters end
// in _total, base units (seconds, bytes), ratios in 0..1.
//
// The HTTP side uses cpp-httplib, not prometheus-cpp's civetweb Exposer, because the
// Exposer fails to start its threads in a process that also loads LibTorch+OpenBLAS.
#ifndef PMDRL_COMMON_METRICS_H_
#define PMDRL_COMMON_METRICS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace pmdrl {

// Owns the metric registry of one process. Metrics it returns live as long as the
// MetricsRegistry (and the prometheus::Registry, which registry() shares). Thread-safe:
// any thread may ask for metrics, update them, or serialise at any time.
//
// Each accessor takes the full metric name. Calling it again with the same name and
// labels returns the same metric, so callers may either keep the reference or look it
// up each time. Bad names never throw or abort (metrics must not take a process down):
//   * a name that does not start with "pmdrl_<component>_", or a counter whose name
//     does not end in "_total", is logged as an error (once per family) and still
//     registered, so the value is not lost;
//   * a name or label that Prometheus cannot represent, or a name already used by a
//     metric of another type, is logged as an error and gets a working but unexported
//     metric owned by this object.
class MetricsRegistry {
 public:
  using Labels = std::map<std::string, std::string>;

  // `component` as in the metric names: "actor", "verifier", "learner", ...
  explicit MetricsRegistry(std::string component);
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;
  ~MetricsRegistry();

  prometheus::Counter& Counter(std::string_view name, std::string_view help,
                               const Labels& labels = {});
  prometheus::Gauge& Gauge(std::string_view name, std::string_view help, const Labels& labels = {});
  // `buckets` are upper bounds; they are sorted and de-duplicated if needed (with an
  // error logged). The buckets of the first call for a name and labels win.
  prometheus::Histogram& Histogram(std::string_view name, std::string_view help,
                                   std::vector<double> buckets, const Labels& labels = {});

  const std::string& component() const { return component_; }

  // All metrics in the Prometheus text exposition format (version 0.0.4).
  std::string Serialize() const;
  // Serialize() into `path`, atomically (written to a temporary file, then renamed),
  // so a reader never sees half a snapshot.
  absl::Status WriteSnapshot(const std::string& path) const;
  // WriteSnapshot into <run_dir>/metrics/<name>.prom (the folder made if needed), the
  // process's last figures for a reader after it is gone. `name` is free text (an actor's
  // name): path separators become '_' and a leading '.' gets a prefix, so it stays inside
  // metrics/. A failure is logged as a warning, not returned: it must not fail a shutdown.
  void WriteRunSnapshot(const std::string& run_dir, std::string name) const;

  // The underlying registry, shared: for collectables registered elsewhere, and for
  // the MetricsServer, which keeps it alive while serving.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  template <typename T>
  struct Families {
    std::map<std::string, prometheus::Family<T>*, std::less<>> by_name;
    // Working but unexported metrics handed out for bad names, by (name, labels).
    std::map<std::pair<std::string, Labels>, std::unique_ptr<T>> detached;
  };

  // Logs naming-convention violations; false if Prometheus would reject the name.
  bool CheckName(std::string_view name, bool counter) const;
  template <typename T, typename... Args>
  T& Get(Families<T>& families, std::string_view name, std::string_view help, const Labels& labels,
         Args&&... args);

  const std::string component_;
  const std::string prefix_;  // "pmdrl_<component>_"
  const std::shared_ptr<prometheus::Registry> registry_;
  absl::Mutex mu_;
  Families<prometheus::Counter> counters_ ABSL_GUARDED_BY(mu_);
  Families<prometheus::Gauge> gauges_ ABSL_GUARDED_BY(mu_);
  Families<prometheus::Histogram> histograms_ ABSL_GUARDED_BY(mu_);
};

// Serves, on a background thread:
//   GET /metrics  the registry in Prometheus text format (text/plain; version=0.0.4)
//   GET /healthz  200 "ok", or 503 with the reason when `health` returns an error
// The server keeps the prometheus::Registry alive; `health` (may be null: always
// healthy) is called on a server thread and must be thread-safe.
class MetricsServer {
 public:
  // Binds host:port before returning (port 0 picks a free port; see Port()). An
  // error names the address that could not be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const MetricsRegistry& registry, std::string host, int port,
      std::function<absl::Status()> health = nullptr);

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  // Stops accepting, waits for requests in progress, and joins the thread.
  ~MetricsServer();

  int Port() const { return port_; }

 private:
  MetricsServer() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> listen_returned_{false};
  int port_ = 0;
};

}  // namespace pmdrl

#endif  // PMDRL_COMMON_METRICS_H_
