#include "learner/coordinator/jsonl_dataset.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

using json = nlohmann::json;

std::string FieldNames(const json& object) {
  std::vector<std::string> names;
  for (auto it = object.begin(); it != object.end(); ++it) names.push_back(it.key());
  return names.empty() ? "none" : absl::StrJoin(names, ", ");
}

// Whole numbers print without a fraction ("42", not "42.0"), as datasets mean them.
std::string NumberText(const json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  const double d = v.get<double>();
  if (d == static_cast<double>(static_cast<int64_t>(d)) && d > -1e15 && d < 1e15) {
    return std::to_string(static_cast<int64_t>(d));
  }
  return v.dump();
}

// `name` as a key of `object`, else as a dotted path into nested objects
// ("reward_model.ground_truth", as verl's parquet files nest it); nullptr when absent.
const json* Lookup(const json& object, const std::string& name) {
  if (auto it = object.find(name); it != object.end()) return &*it;
  const json* node = &object;
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    if (!node->is_object()) return nullptr;
    auto it = node->find(name.substr(start, dot - start));
    if (it == node->end()) return nullptr;
    node = &*it;
    start = dot + 1;
  }
  return node == &object ? nullptr : node;
}

// A prompt given as chat messages ([{"role": "user", "content": ...}], as DAPO-Math-17k
// stores it): the last user message's content; "" when there is none.
std::string LastUserContent(const json& messages) {
  std::string content;
  for (const json& m : messages) {
    if (m.is_object() && m.value("role", "") == "user" && m.contains("content") &&
        m["content"].is_string()) {
      content = m["content"].get<std::string>();
    }
  }
  return content;
}

}  // namespace

absl::StatusOr<std::vector<JsonlProblem>> ReadJsonlProblems(const std::string& path,
                                                            const JsonlFields& fields) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<JsonlProblem> out;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const std::string where = absl::StrCat(path, ":", number);
    json object;
    try {
      object = json::parse(line);
    } catch (const json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", e.what()));
    }
    if (!object.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected a JSON object, got ", object.type_name()));
    }
    JsonlProblem p;
    p.line = number;
    const json* prompt = Lookup(object, fields.prompt);
    if (prompt == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": no field '", fields.prompt,
                       "' (task.prompt_field); the line has: ", FieldNames(object)));
    }
    if (prompt->is_string()) {
      p.problem = prompt->get<std::string>();
    } else if (prompt->is_array()) {
      p.problem = LastUserContent(*prompt);
    }
    if (p.problem.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field '", fields.prompt,
          "' must be a non-empty string (or a list of chat messages with a user turn), got ",
          prompt->dump().substr(0, 80)));
    }
    const json* answer = Lookup(object, fields.answer);
    if (answer == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": no field '", fields.answer,
                       "' (task.answer_field); the line has: ", FieldNames(object)));
    }
    if (answer->is_string()) {
      p.reference = answer->get<std::string>();
    } else if (answer->is_number()) {
      p.reference = NumberText(*answer);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": field '", fields.answer,
                                                     "' must be a string or a number, got ",
                                                     answer->type_name()));
    }
    if (absl::StripAsciiWhitespace(p.reference).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": field '", fields.answer, "' is empty"));
    }
    out.push_back(std::move(p));
  }
  if (in.bad()) return absl::InternalError(absl::StrCat("error reading ", path));
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no problems (the file is empty)"));
  }
  return out;
}

}  // namespace pmdrl
