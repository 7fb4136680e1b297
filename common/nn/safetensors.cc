#include "common/nn/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pmdrl {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code copies raw bytes");

using json = nlohmann::json;

// Headers of real checkpoints are at most a few MB; refuse absurd lengths before
// allocating (as the reference implementation does, with 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble},
    {"I64", at::kLong},  {"I32", at::kInt},   {"I16", at::kShort},     {"I8", at::kChar},
    {"U8", at::kByte},   {"BOOL", at::kBool},
};

const char* NameOf(at::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d.name;
  }
  return nullptr;
}

bool TypeOf(const std::string& name, at::ScalarType* t) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      *t = d.type;
      return true;
    }
  }
  return false;
}

}  // namespace

absl::Status SaveSafetensors(const NamedTensors& tensors, const std::string& path) {
  try {
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    std::vector<at::Tensor> data;
    data.reserve(tensors.size());
    std::unordered_set<std::string> names;
    uint64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
      if (name == "__metadata__" || !names.insert(name).second) {
        return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": tensor name \"",
                                                       name, "\" is reserved or repeated"));
      }
      const char* dtype = NameOf(tensor.scalar_type());
      if (dtype == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": tensor ", name,
                                                       " has unsupported dtype ",
                                                       c10::toString(tensor.scalar_type())));
      }
      at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
      const uint64_t bytes = cpu.numel() * cpu.element_size();
      header[name] = {{"dtype", dtype},
                      {"shape", cpu.sizes().vec()},
                      {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
      data.push_back(std::move(cpu));
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) return absl::InternalError(absl::StrCat("safetensors: cannot write ", tmp));
      uint64_t n = text.size();
      out.write(reinterpret_cast<const char*>(&n), 8);
      out.write(text.data(), text.size());
      for (const at::Tensor& t : data) {
        out.write(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
      }
      if (!out.flush()) return absl::InternalError(absl::StrCat("safetensors: cannot write ", tmp));
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("safetensors: cannot rename ", tmp, " to ", path, ": ", ec.message()));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("safetensors ", path, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("safetensors ", path, ": ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> LoadSafetensors(const std::string& path) {
  auto bad = [&path](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": ", what));
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("safetensors: cannot open ", path));
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("safetensors: cannot stat ", path));
  if (file_size < 8) return bad("file is shorter than the 8-byte header length");
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  if (!in) return bad("cannot read the header length");
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8) {
    return bad(absl::StrCat("header length ", header_len, " exceeds the file (", file_size,
                            " bytes) or the 100 MB limit"));
  }
  std::string text(header_len, '\0');
  in.read(text.data(), header_len);
  if (!in) return bad("cannot read the header");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;

  struct Entry {
    std::string name;
    at::ScalarType type;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  try {
    json header = json::parse(text);
    if (!header.is_object()) return bad("header is not a JSON object");
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      const std::string& name = it.key();
      const json& v = it.value();
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
          !v.contains("data_offsets")) {
        return bad(absl::StrCat("tensor ", name, ": needs dtype, shape and data_offsets"));
      }
      Entry e{name, at::kFloat, {}, 0, 0};
      if (!v["dtype"].is_string() || !TypeOf(v["dtype"].get<std::string>(), &e.type)) {
        return bad(absl::StrCat("tensor ", name, ": unsupported dtype ", v["dtype"].dump()));
      }
      const json& shape = v["shape"];
      if (!shape.is_array()) return bad(absl::StrCat("tensor ", name, ": shape is not a list"));
      uint64_t numel = 1;
      for (const json& d : shape) {
        if (!d.is_number_unsigned()) {
          return bad(absl::StrCat("tensor ", name, ": bad dimension ", d.dump()));
        }
        const uint64_t dim = d.get<uint64_t>();
        if (dim > 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / dim) {
          return bad(absl::StrCat("tensor ", name, ": shape is too large"));
        }
        numel *= dim;
        e.shape.push_back(static_cast<int64_t>(dim));
      }
      const json& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
          !off[1].is_number_unsigned()) {
        return bad(absl::StrCat("tensor ", name, ": data_offsets must be [begin, end]"));
      }
      e.begin = off[0].get<uint64_t>();
      e.end = off[1].get<uint64_t>();
      if (e.begin > e.end || e.end > data_size) {
        return bad(absl::StrCat("tensor ", name, ": data_offsets [", e.begin, ", ", e.end,
                                ") outside the ", data_size, "-byte data section"));
      }
      const uint64_t bytes = numel * c10::elementSize(e.type);
      if (e.end - e.begin != bytes) {
        return bad(absl::StrCat("tensor ", name, ": data_offsets span ", e.end - e.begin,
                                " bytes, shape and dtype need ", bytes));
      }
      entries.push_back(std::move(e));
    }
  } catch (const std::exception& e) {
    return bad(absl::StrCat("header is not valid JSON: ", e.what()));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].begin < entries[i - 1].end) {
      return bad(
          absl::StrCat("tensor ", entries[i].name, " overlaps tensor ", entries[i - 1].name));
    }
  }

  NamedTensors out;
  out.reserve(entries.size());
  try {
    for (const Entry& e : entries) {
      at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.type));
      const uint64_t bytes = e.end - e.begin;
      if (bytes > 0) {
        in.seekg(static_cast<std::streamoff>(data_start + e.begin));
        in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(bytes));
        if (!in) return bad(absl::StrCat("tensor ", e.name, ": cannot read its data"));
      }
      out.emplace_back(e.name, std::move(t));
    }
  } catch (const c10::Error& e) {
    return bad(e.what_without_backtrace());
  }
  return out;
}

}  // namespace pmdrl
