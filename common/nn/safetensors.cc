#include "common/nn/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
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

at::ScalarType WriteType(const at::Tensor& t, const SafetensorsWriteOptions& options) {
  if (options.float_dtype.has_value() && at::isFloatingType(t.scalar_type())) {
    return *options.float_dtype;
  }
  return t.scalar_type();
}

}  // namespace

absl::Status SaveSafetensors(const NamedTensors& tensors, const std::string& path) {
  return SaveSafetensors(tensors, path, SafetensorsWriteOptions{});
}

uint64_t SafetensorsBytes(const at::Tensor& tensor, at::ScalarType dtype) {
  return static_cast<uint64_t>(tensor.numel()) * c10::elementSize(dtype);
}

absl::Status SaveSafetensors(const NamedTensors& tensors, const std::string& path,
                             const SafetensorsWriteOptions& options) {
  const std::string tmp = path + ".tmp";
  try {
    json header = json::object();
    json metadata = json::object();
    for (const auto& [k, v] : options.metadata) metadata[k] = v;
    metadata["format"] = "pt";
    header["__metadata__"] = metadata;
    std::unordered_set<std::string> names;
    uint64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
      if (name == "__metadata__" || !names.insert(name).second) {
        return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": tensor name \"",
                                                       name, "\" is reserved or repeated"));
      }
      const at::ScalarType type = WriteType(tensor, options);
      const char* dtype = NameOf(type);
      if (dtype == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": tensor ", name,
                                                       " has unsupported dtype ",
                                                       c10::toString(type)));
      }
      const uint64_t bytes = SafetensorsBytes(tensor, type);
      header[name] = {{"dtype", dtype},
                      {"shape", tensor.sizes().vec()},
                      {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) {
        return absl::InternalError(
            absl::StrCat("safetensors: cannot write ", tmp, ": ", std::strerror(errno)));
      }
      uint64_t n = text.size();
      out.write(reinterpret_cast<const char*>(&n), 8);
      out.write(text.data(), text.size());
      // One tensor at a time: a converted or device-to-host copy lives only while written.
      for (const auto& [name, tensor] : tensors) {
        at::Tensor cpu = tensor.detach().to(at::kCPU, WriteType(tensor, options)).contiguous();
        out.write(static_cast<const char*>(cpu.data_ptr()),
                  static_cast<std::streamsize>(cpu.numel() * cpu.element_size()));
      }
      if (!out.flush()) {
        const int err = errno;  // the failed write's (a full disk: ENOSPC)
        out.close();
        std::filesystem::remove(tmp);
        return absl::InternalError(
            absl::StrCat("safetensors: cannot write ", tmp, ": ", std::strerror(err)));
      }
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

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    data_start_ = other.data_start_;
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  auto bad = [&path](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": ", what));
  };
  SafetensorsFile file;
  file.path_ = path;
  file.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd_ < 0) {
    return absl::NotFoundError(
        absl::StrCat("safetensors: cannot open ", path, ": ", std::strerror(errno)));
  }
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("safetensors: cannot stat ", path));
  if (file_size < 8) return bad("file is shorter than the 8-byte header length");
  uint64_t header_len = 0;
  if (::pread(file.fd_, &header_len, 8, 0) != 8) return bad("cannot read the header length");
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8) {
    return bad(absl::StrCat("header length ", header_len, " exceeds the file (", file_size,
                            " bytes) or the 100 MB limit"));
  }
  std::string text(header_len, '\0');
  if (header_len > 0 &&
      ::pread(file.fd_, text.data(), header_len, 8) != static_cast<ssize_t>(header_len)) {
    return bad("cannot read the header");
  }
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - file.data_start_;

  std::vector<Entry>& entries = file.entries_;
  try {
    json header = json::parse(text);
    if (!header.is_object()) return bad("header is not a JSON object");
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (it.value().is_object()) {
          for (auto m = it.value().begin(); m != it.value().end(); ++m) {
            if (m.value().is_string()) file.metadata_[m.key()] = m.value().get<std::string>();
          }
        }
        continue;
      }
      const std::string& name = it.key();
      const json& v = it.value();
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
          !v.contains("data_offsets")) {
        return bad(absl::StrCat("tensor ", name, ": needs dtype, shape and data_offsets"));
      }
      Entry e{name, at::kFloat, {}, 0, 0};
      if (!v["dtype"].is_string() || !TypeOf(v["dtype"].get<std::string>(), &e.dtype)) {
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
        // A dimension past int64 would become a negative one in `shape` (with another
        // dimension 0 the byte count still checks out): fuzz/safetensors_fuzz.
        if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
            (dim > 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / dim)) {
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
      const uint64_t bytes = numel * c10::elementSize(e.dtype);
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
  return file;
}

absl::Status SafetensorsFile::ReadBytes(const Entry& e, void* out) const {
  uint64_t done = 0;
  const uint64_t bytes = e.end - e.begin;
  char* p = static_cast<char*>(out);
  while (done < bytes) {
    // pread moves at most ~2 GB per call on Linux; loop for larger tensors and short reads.
    const ssize_t n = ::pread(fd_, p + done, std::min<uint64_t>(bytes - done, 1ull << 30),
                              static_cast<off_t>(data_start_ + e.begin + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(absl::StrCat(
          "safetensors ", path_, ": tensor ", e.name,
          ": cannot read its data: ", n < 0 ? std::strerror(errno) : "unexpected end"));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> SafetensorsFile::Read(const Entry& e) const {
  try {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    if (absl::Status s = ReadBytes(e, t.data_ptr()); !s.ok()) return s;
    return t;
  } catch (const c10::Error& err) {
    return absl::InternalError(absl::StrCat("safetensors ", path_, ": tensor ", e.name, ": ",
                                            err.what_without_backtrace()));
  }
}

absl::Status SafetensorsFile::ReadInto(const Entry& e, at::Tensor& dest) const {
  if (dest.sizes() != at::IntArrayRef(e.shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors ", path_, ": tensor ", e.name, " has shape ",
        c10::str(at::IntArrayRef(e.shape)), ", the destination ", c10::str(dest.sizes())));
  }
  if (at::isFloatingType(e.dtype) != at::isFloatingType(dest.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors ", path_, ": tensor ", e.name, " is ", c10::toString(e.dtype),
                     ", the destination ", c10::toString(dest.scalar_type())));
  }
  try {
    if (dest.device().is_cpu() && dest.scalar_type() == e.dtype && dest.is_contiguous()) {
      return ReadBytes(e, dest.data_ptr());  // no temporary at all
    }
    absl::StatusOr<at::Tensor> t = Read(e);
    if (!t.ok()) return t.status();
    dest.copy_(*t);
  } catch (const c10::Error& err) {
    return absl::InternalError(absl::StrCat("safetensors ", path_, ": tensor ", e.name, ": ",
                                            err.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> LoadSafetensors(const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  NamedTensors out;
  out.reserve(file->entries().size());
  for (const SafetensorsFile::Entry& e : file->entries()) {
    absl::StatusOr<at::Tensor> t = file->Read(e);
    if (!t.ok()) return t.status();
    out.emplace_back(e.name, *std::move(t));
  }
  return out;
}

}  // namespace pmdrl
