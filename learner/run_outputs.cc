#include "learner/run_outputs.h"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace pmdrl {

namespace fs = std::filesystem;

void SampleLog::Open(const std::string& path, bool append) {
  out_.open(path, append ? std::ios::app : std::ios::trunc);
}

void SampleLog::Write(int64_t update, uint64_t version, const v1::Group& g) {
  if (!out_) return;
  nlohmann::json j;
  j["update"] = update;
  j["version"] = version;
  j["policy_version"] = g.policy_version();
  j["prompt"] = g.prompt_text();
  j["reference"] = g.reference();
  nlohmann::json completions = nlohmann::json::array();
  for (const v1::Completion& c : g.completions()) {
    completions.push_back({{"text", c.text()},
                           {"tokens", std::vector<int32_t>(c.tokens().begin(), c.tokens().end())},
                           {"reward", c.reward()},
                           {"stopped", c.stopped()},
                           {"outcome", v1::Outcome_Name(c.outcome())}});
  }
  j["completions"] = std::move(completions);
  // Model text may hold invalid UTF-8 (a character split by the length limit).
  out_ << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  out_.flush();
}

absl::Status MetricsCsv::Open(const std::string& path, bool append) {
  bool exists = fs::exists(path);
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!out_) return absl::InternalError(absl::StrCat("cannot write ", path));
  if (!append || !exists) {
    out_ << "update,version,elapsed_seconds,mean_reward,eval_accuracy,loss,grad_norm,"
            "mixed_groups_fraction,trained_tokens_per_second,sampled_tokens_per_second,"
            "staleness_mean,logprob_mismatch,groups_accepted,groups_dropped_stale,"
            "mean_abs_delta,entropy,eval_avg_at_k,eval_pass_at_k,importance_weight_mean,"
            "peak_memory_bytes,oversize_sequences\n";
  }
  out_.flush();
  return absl::OkStatus();
}

void MetricsCsv::Row(int64_t update, uint64_t version, double elapsed, const UpdateStats* s,
                     const EvalResult* eval, const Coordinator::Counts& c, double sampled_tps) {
  auto cell = [](double v) { return v >= 0 ? absl::StrFormat("%.4f", v) : std::string(); };
  const std::string e = eval != nullptr ? cell(eval->greedy_accuracy) : "";
  const std::string avg = eval != nullptr ? cell(eval->avg_at_k) : "";
  const std::string pass = eval != nullptr ? cell(eval->pass_at_k) : "";
  if (s == nullptr) {
    out_ << absl::StrFormat("%d,%d,%.2f,,%s,,,,,,,,%d,%d,,,%s,%s,,,\n", update, version, elapsed, e,
                            c.accepted, c.stale, avg, pass);
  } else {
    out_ << absl::StrFormat(
        "%d,%d,%.2f,%.4f,%s,%.6g,%.6g,%.4f,%.1f,%.1f,%.3f,%.6g,%d,%d,%.6g,%.6g,%s,%s,%.4f,%d,%"
        "d\n",
        update, version, elapsed, s->mean_reward, e, s->loss, s->grad_norm, s->mixed_fraction,
        s->seconds > 0 ? s->trained_tokens / s->seconds : 0.0, sampled_tps, s->staleness_mean,
        s->logprob_mismatch, c.accepted, c.stale, s->mean_abs_delta, s->entropy, avg, pass,
        s->importance_weight_mean, s->peak_memory_bytes, s->oversize_sequences);
  }
  out_.flush();
}

void GroupLog::Open(const std::string& path, bool append) {
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!append) {
    out_ << "actor_id,verifier_id,lease_id,epoch,index,policy_version,issued_at_version,"
            "learner_version,outcome\n";
  }
}

void GroupLog::Write(const v1::Group& g, v1::AckStatus status, uint64_t version) {
  WriteRow(g, v1::AckStatus_Name(status), version);
}

void GroupLog::WriteReleased(const v1::Group& g, std::string_view reason, uint64_t version) {
  WriteRow(g, absl::AsciiStrToUpper(absl::StrCat("released_", std::string(reason))), version);
}

void GroupLog::AttachTo(CoordinatorOptions* options) {
  options->on_group = [this](const v1::Group& g, v1::AckStatus status, uint64_t version) {
    Write(g, status, version);
  };
  options->on_released = [this](const v1::Group& g, std::string_view reason, uint64_t version) {
    WriteReleased(g, reason, version);
  };
}

void GroupLog::WriteRow(const v1::Group& g, std::string_view outcome, uint64_t version) {
  out_ << g.actor_id() << ',' << g.verifier_id() << ',' << g.lease_id() << ',' << g.epoch() << ','
       << g.index() << ',' << g.policy_version() << ',' << g.issued_at_version() << ',' << version
       << ',' << outcome << '\n';
  out_.flush();
}

double Progress::Elapsed() const {
  return elapsed_offset +
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double Progress::FinalAccuracy() const {
  if (evaluations.empty()) return -1;
  size_t n = std::min<size_t>(evaluations.size(), static_cast<size_t>(eval_last));
  return std::accumulate(evaluations.end() - n, evaluations.end(), 0.0) / n;
}

void Progress::Fill(v1::StatusResponse* r) {
  std::lock_guard<std::mutex> lock(mu);
  r->set_update(update);
  r->set_mean_reward(mean_reward);
  r->set_eval_accuracy(eval_accuracy);
  r->set_base_accuracy(base_accuracy);
  r->set_final_accuracy(FinalAccuracy());
  r->set_trained_tokens_per_second(tokens_per_second);
  r->set_elapsed_seconds(Elapsed());
}

void CopyTokenizerFiles(const std::string& model_dir, const std::string& checkpoint) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    const fs::path from = fs::path(model_dir) / name;
    if (!fs::exists(from)) continue;
    std::error_code ec;
    fs::copy_file(from, fs::path(checkpoint) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) spdlog::warn("cannot copy {} into {}: {}", from.string(), checkpoint, ec.message());
  }
}

}  // namespace pmdrl
