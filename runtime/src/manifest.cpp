#include "manifest.h"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "error.h"

namespace uniattn::runtime {

namespace {

constexpr const char* kManifestFile = "uniattn_manifest.json";
constexpr const char* kFormat = "uniattn-export/artifact";
constexpr int kFormatVersion = 1;
constexpr const char* kReexport = "Re-export the model with `uniattn-export model`";

[[noreturn]] void fail(const std::string& problem, const std::string& fix = kReexport) {
  throw Error(UNIATTN_ARTIFACT_ERROR, problem + ". " + fix);
}

ONNXTensorElementDataType cache_type_of(const std::string& dtype) {
  static const std::map<std::string, ONNXTensorElementDataType> types = {
      {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},
      {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
      {"bfloat16", ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16},
  };
  auto found = types.find(dtype);
  if (found == types.end()) fail("the artifact has dtype '" + dtype + "', not one of float32, float16, bfloat16");
  return found->second;
}

std::vector<std::string> names_of(const nlohmann::json& specs) {
  std::vector<std::string> names;
  for (const auto& spec : specs) names.push_back(spec.at("name").get<std::string>());
  return names;
}

// Cache inputs in graph order; their key/value pattern must be the one the layer map implies.
std::vector<CacheTensor> cache_tensors(const nlohmann::json& manifest) {
  std::map<std::string, const nlohmann::json*> inputs;
  for (const auto& spec : manifest.at("inputs")) inputs[spec.at("name").get<std::string>()] = &spec;
  std::vector<CacheTensor> caches;
  for (const auto& layer : manifest.at("layers")) {
    const int64_t index = layer.at("index").get<int64_t>();
    const bool key_cache = layer.at("key_cache").get<bool>();
    const std::string role = layer.at("role").get<std::string>();
    if (key_cache == (role == "consumer")) {
      fail("layer " + std::to_string(index) + " is a " + role + (key_cache ? " with" : " without") +
           " a key cache in the manifest (consumers keep no K, every other layer does)");
    }
    for (const char* kind : {"key", "value"}) {
      const std::string past = "past_key_values." + std::to_string(index) + "." + kind;
      const bool expected = std::string(kind) == "value" || key_cache;
      auto found = inputs.find(past);
      if ((found != inputs.end()) != expected) {
        fail(std::string("the graph inputs ") + (expected ? "lack " : "include ") + past +
             ", which the layer map of layer " + std::to_string(index) + " (" + role + ") contradicts");
      }
      if (!expected) continue;
      const auto& shape = found->second->at("shape");
      if (shape.size() != 4 || !shape[1].is_number_integer() || !shape[3].is_number_integer()) {
        fail(past + " has shape " + shape.dump() + ", expected (batch, kv_heads, past, head_dim)");
      }
      caches.push_back({past, "present." + std::to_string(index) + "." + kind, shape[1].get<int64_t>(),
                        shape[3].get<int64_t>()});
    }
  }
  return caches;
}

}  // namespace

Manifest read_manifest(const std::filesystem::path& folder) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(folder)) {
    fail("artifact folder " + folder.string() + " does not exist", "Pass the -o folder of `uniattn-export model`");
  }
  const fs::path path = folder / kManifestFile;
  std::ifstream stream(path);
  if (!stream) fail(folder.string() + " has no " + kManifestFile + " (the export manifest)");
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(stream);
  } catch (const nlohmann::json::exception& exc) {
    fail(path.string() + " is not valid JSON (" + exc.what() + ")");
  }
  try {
    if (manifest.value("format", "") != kFormat) fail(path.string() + " is not a uniattn-export manifest");
    if (manifest.value("format_version", 0) > kFormatVersion) {
      fail(folder.string() + " was written by a newer uniattn-export (manifest format " +
               std::to_string(manifest.value("format_version", 0)) + ")",
           "Upgrade uniattn-export");
    }
    for (const auto& [name, entry] : manifest.at("files").items()) {
      const fs::path file = folder / name;
      if (!fs::is_regular_file(file)) fail(file.string() + " is missing (the manifest lists it)");
      if (fs::file_size(file) != entry.at("bytes").get<uintmax_t>()) {
        fail(file.string() + " has " + std::to_string(fs::file_size(file)) + " bytes, the manifest says " +
                 std::to_string(entry.at("bytes").get<uintmax_t>()),
             "Re-export the model; never edit an artifact in place");
      }
    }
    Manifest result;
    result.folder = folder;
    result.model_file = folder / manifest.at("onnx").at("file").get<std::string>();
    result.dtype = manifest.at("dtype").get<std::string>();
    result.cache_type = cache_type_of(result.dtype);
    result.vocab_size = manifest.at("geometry").at("vocab_size").get<int64_t>();
    result.num_layers = manifest.at("geometry").at("num_layers").get<int64_t>();
    result.num_consumers = 0;
    for (const auto& layer : manifest.at("layers")) result.num_consumers += layer.at("role") == "consumer";
    result.input_names = names_of(manifest.at("inputs"));
    result.output_names = names_of(manifest.at("outputs"));
    result.caches = cache_tensors(manifest);
    const std::vector<std::string> leading = {"input_ids", "attention_mask", "position_ids"};
    if (result.input_names.size() != leading.size() + result.caches.size() ||
        !std::equal(leading.begin(), leading.end(), result.input_names.begin())) {
      fail("the graph inputs are not input_ids, attention_mask, position_ids and the caches");
    }
    if (result.output_names.size() != 1 + result.caches.size() || result.output_names[0] != "logits") {
      fail("the graph outputs are not logits and the present caches");
    }
    for (size_t i = 0; i < result.caches.size(); ++i) {
      if (result.output_names[1 + i] != result.caches[i].present) {
        fail("graph output " + result.output_names[1 + i] + " does not pair with input " + result.caches[i].past);
      }
    }
    return result;
  } catch (const nlohmann::json::exception& exc) {
    fail(path.string() + " lacks a field this runtime reads (" + exc.what() + ")");
  }
}

}  // namespace uniattn::runtime
