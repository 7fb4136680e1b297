#include "cli/logits.h"

#include <torch/torch.h>

#include <iostream>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/nn/model.h"
#include "common/nn/model_dir.h"
#include "common/nn/safetensors.h"

namespace pmdrl {
namespace {

constexpr char kUsage[] =
    "usage: pmdrl logits --model DIR --ids 1,2,3[;4,5] --out FILE.safetensors\n"
    "                    [--dtype float32|bfloat16|float16] [--device cpu|cuda]\n"
    "One forward pass of the model directory over the token id rows (';' separates rows;\n"
    "shorter rows are right-padded and attend only to their own tokens, at positions\n"
    "0..len-1). Writes \"logits\" (float32 [rows, longest, vocab]) and \"lengths\" (int64\n"
    "[rows]) to FILE. Defaults: float32 on cpu.\n";

int Fail(int code, const std::string& what) {
  std::cerr << "pmdrl logits: " << what << "\n";
  return code;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<int64_t>>> ParseIdRows(const std::string& text) {
  std::vector<std::vector<int64_t>> rows;
  for (absl::string_view row : absl::StrSplit(text, ';')) {
    std::vector<int64_t> ids;
    for (absl::string_view item : absl::StrSplit(row, ',')) {
      item = absl::StripAsciiWhitespace(item);
      int64_t id = 0;
      if (!absl::SimpleAtoi(item, &id) || id < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--ids: '", item, "' is not a non-negative integer (in row ", rows.size(), ")"));
      }
      ids.push_back(id);
    }
    rows.push_back(std::move(ids));
  }
  return rows;
}

int RunLogits(int argc, char** argv) {
  std::map<std::string, std::string> flags = {{"dtype", "float32"}, {"device", "cpu"}};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (arg.rfind("--", 0) != 0) return Fail(2, absl::StrCat("unexpected argument '", arg, "'"));
    arg = arg.substr(2);
    std::string value;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return Fail(2, absl::StrCat("--", arg, " needs a value"));
    }
    if (arg != "model" && arg != "ids" && arg != "out" && arg != "dtype" && arg != "device") {
      return Fail(2, absl::StrCat("unknown option --", arg, "\n\n", kUsage));
    }
    flags[arg] = value;
  }
  for (const char* required : {"model", "ids", "out"}) {
    if (!flags.count(required)) {
      return Fail(2, absl::StrCat("--", required, " is required\n\n", kUsage));
    }
  }
  absl::StatusOr<std::vector<std::vector<int64_t>>> rows = ParseIdRows(flags["ids"]);
  if (!rows.ok()) return Fail(2, std::string(rows.status().message()));
  absl::StatusOr<at::ScalarType> dtype = DtypeFromName(flags["dtype"]);
  if (!dtype.ok()) return Fail(2, absl::StrCat("--dtype: ", dtype.status().message()));
  const std::string& device_name = flags["device"];
  if (device_name != "cpu" && device_name != "cuda") {
    return Fail(2, absl::StrCat("--device: '", device_name, "' is not cpu or cuda"));
  }
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    return Fail(3, "--device cuda: no CUDA device (or this LibTorch was built without CUDA)");
  }
  const at::Device device = device_name == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);

  absl::StatusOr<CausalLM> model = LoadModelDir(flags["model"], LoadOptions{*dtype, device});
  if (!model.ok()) return Fail(1, std::string(model.status().message()));
  const int64_t vocab = (*model)->config().vocab_size;
  const int64_t b = static_cast<int64_t>(rows->size());
  int64_t t = 0;
  for (const auto& r : *rows) t = std::max<int64_t>(t, static_cast<int64_t>(r.size()));
  try {
    at::Tensor ids = torch::zeros({b, t}, torch::kLong);
    at::Tensor valid = torch::zeros({b, t}, torch::kBool);
    at::Tensor lengths = torch::zeros({b}, torch::kLong);
    for (int64_t i = 0; i < b; ++i) {
      const auto& r = (*rows)[i];
      lengths[i] = static_cast<int64_t>(r.size());
      for (size_t j = 0; j < r.size(); ++j) {
        if (r[j] >= vocab) {
          return Fail(2,
                      absl::StrCat("--ids: id ", r[j], " is outside the vocabulary (", vocab, ")"));
        }
        ids[i][j] = r[j];
        valid[i][j] = true;
      }
    }
    // Right padding: every row's tokens sit at positions 0..len-1.
    at::Tensor positions = torch::arange(t, torch::kLong).unsqueeze(0).expand({b, t}).contiguous();
    torch::NoGradGuard no_grad;
    (*model)->eval();
    at::Tensor logits = (*model)->forward(ids.to(device), positions.to(device), valid.to(device));
    absl::Status s = SaveSafetensors(
        {{"logits", logits.to(at::kCPU, at::kFloat).contiguous()}, {"lengths", lengths}},
        flags["out"]);
    if (!s.ok()) return Fail(1, std::string(s.message()));
  } catch (const c10::Error& e) {
    return Fail(1, e.what_without_backtrace());
  }
  return 0;
}

}  // namespace pmdrl
