#include "manifest.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "error.h"
#include "sha256.h"

namespace uniattn::runtime {

namespace {

constexpr const char* kManifestFile = "uniattn_manifest.json";
constexpr const char* kFormat = "uniattn-export/artifact";
constexpr int kFormatVersion = 1;
constexpr const char* kConfigFile = "config.json";
constexpr const char* kLayerMapFile = "uniattn_layer_map.json";
constexpr const char* kModelFile = "model.onnx";
constexpr const char* kReexport = "Re-export the model with `uniattn-export model`";
constexpr const char* kEdited = "Re-export the model; never edit an artifact in place";

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

// The structural check's fix (uniattn_export/export/structure.py), for the cache facts the
// manifest states about the graph.
constexpr const char* kGraphMismatch =
    "Re-export the model with `uniattn-export model`; the graph does not match its manifest";

// A JSON scalar as Python's repr() writes it, so that both loaders say the same words.
std::string python_repr(const nlohmann::json& value) {
  if (value.is_null()) return "None";
  if (value.is_boolean()) return value.get<bool>() ? "True" : "False";
  if (value.is_string()) return "'" + value.get<std::string>() + "'";
  return value.dump();
}

// The op contract version of each cache mode (uniattn_export/export/op_schema.json; the
// tampered-artifact tests hold the two loaders' words equal).
constexpr std::pair<const char*, int64_t> kCacheModes[] = {{"dynamic", 1}, {"static", 2}};

// The manifest's cache {mode, capacity, op_version} agree with each other (the rules of
// structure.py's _cache_contract); artifacts written before cache modes existed are dynamic.
void read_cache_mode(const nlohmann::json& manifest, Manifest& result) {
  const nlohmann::json cache =
      manifest.contains("cache") ? manifest.at("cache")
                                 : nlohmann::json{{"mode", "dynamic"}, {"capacity", nullptr}, {"op_version", 1}};
  if (!cache.is_object()) fail("the manifest records cache " + cache.dump() + ", expected an object", kGraphMismatch);
  const nlohmann::json mode = cache.value("mode", nlohmann::json());
  const auto* contract = std::find_if(std::begin(kCacheModes), std::end(kCacheModes),
                                      [&](const auto& entry) { return mode == entry.first; });
  if (contract == std::end(kCacheModes)) {
    fail("the manifest records cache mode " + python_repr(mode) + ", not one of ('dynamic', 'static')", kGraphMismatch);
  }
  const std::string name = contract->first;
  const nlohmann::json version = cache.value("op_version", nlohmann::json());
  if (version != contract->second) {
    fail("the manifest records op version " + python_repr(version) + " for " + name + " caches, which are version " +
             std::to_string(contract->second),
         kGraphMismatch);
  }
  const nlohmann::json capacity = cache.value("capacity", nlohmann::json());
  result.static_cache = name == "static";
  if (result.static_cache && !(capacity.is_number_integer() && capacity.get<int64_t>() > 0)) {
    fail("the manifest records static caches of capacity " + python_repr(capacity), kGraphMismatch);
  }
  if (!result.static_cache && !capacity.is_null()) {
    fail("the manifest records a capacity (" + capacity.dump() + ") for dynamic caches", kGraphMismatch);
  }
  result.capacity = result.static_cache ? capacity.get<int64_t>() : 0;
}

// A tensor shape as structure.py prints the graph's: fixed sizes, None for named ones.
std::string shape_repr(const nlohmann::json& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + (shape[i].is_number_integer() ? shape[i].dump() : std::string("None"));
  }
  return text + "]";
}

// Cache inputs in graph order; their key/value pattern must be the one the layer map implies,
// and their shapes (past and present) those of the cache mode: (batch, Hkv, capacity, D) for
// static caches, a growing length for dynamic ones.
std::vector<CacheTensor> cache_tensors(const nlohmann::json& manifest, const Manifest& result) {
  std::map<std::string, const nlohmann::json*> outputs;
  for (const auto& spec : manifest.at("outputs")) outputs[spec.at("name").get<std::string>()] = &spec;
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
      const std::string present = "present." + std::to_string(index) + "." + kind;
      const int64_t heads = layer.at("kv_num_heads").get<int64_t>(), head_dim = layer.at("head_dim").get<int64_t>();
      auto present_spec = outputs.find(present);
      if (present_spec == outputs.end()) fail("the graph outputs lack " + present + ", the pair of input " + past);
      for (const auto& [tensor, spec] : {std::pair{past, found->second}, std::pair{present, present_spec->second}}) {
        const auto& shape = spec->at("shape");
        const nlohmann::json length = result.static_cache ? nlohmann::json(result.capacity) : nlohmann::json();
        const bool length_ok = result.static_cache ? shape.size() == 4 && shape[2] == length
                                                   : shape.size() == 4 && !shape[2].is_number_integer();
        if (!length_ok || shape[1] != heads || shape[3] != head_dim) {
          fail(tensor + " has shape " + shape_repr(shape) + ", expected (batch, " + std::to_string(heads) + ", " +
                   (result.static_cache ? std::to_string(result.capacity) : std::string("past")) + ", " +
                   std::to_string(head_dim) + ") for " + (result.static_cache ? "static" : "dynamic") + " caches",
               kGraphMismatch);
        }
      }
      caches.push_back({past, present, heads, head_dim});
    }
  }
  return caches;
}

nlohmann::json read_json(const std::filesystem::path& path, const std::string& what) {
  std::ifstream stream(path);
  if (!stream) fail(path.parent_path().string() + " has no " + path.filename().string() + " (" + what + ")");
  try {
    nlohmann::json data = nlohmann::json::parse(stream);
    if (!data.is_object()) fail(path.string() + " holds JSON that is not an object (" + what + ")");
    return data;
  } catch (const nlohmann::json::parse_error& exc) {
    fail(path.string() + " is not valid JSON (" + exc.what() + ")");
  }
}

// Every listed file is there, with the size and sha256 the export recorded.
void check_files(const std::filesystem::path& folder, const std::filesystem::path& path, const nlohmann::json& files) {
  namespace fs = std::filesystem;
  if (!files.is_object() || !files.contains(kModelFile)) {
    fail(path.string() + ": field files is " + files.dump() + ", expected an object listing model.onnx", kEdited);
  }
  for (const auto& [name, entry] : files.items()) {
    const fs::path file = folder / name;
    if (!fs::is_regular_file(file)) fail(file.string() + " is missing (the manifest lists it)");
    if (!entry.is_object() || !entry.value("bytes", nlohmann::json()).is_number_unsigned() ||
        !entry.value("sha256", nlohmann::json()).is_string()) {
      fail(path.string() + ": the entry of " + name + " in files is " + entry.dump() + ", expected sha256 and bytes",
           kEdited);
    }
    const uintmax_t bytes = entry.at("bytes").get<uintmax_t>();
    if (fs::file_size(file) != bytes) {
      fail(file.string() + " has " + std::to_string(fs::file_size(file)) + " bytes, the manifest says " +
               std::to_string(bytes),
           kEdited);
    }
    if (sha256_of_file(file) != entry.at("sha256").get<std::string>()) {
      fail(file.string() + " was modified after export (sha256 differs from the manifest)", kEdited);
    }
  }
}

// The layer map (producer -> consumers) as a comparable value: keys and lists as written.
nlohmann::json layer_map_of(const nlohmann::json& map_entry) {
  if (!map_entry.is_object() || !map_entry.contains("layer_map")) return nullptr;
  return map_entry.at("layer_map");
}

// The three copies of the layer map (manifest, uniattn_layer_map.json, config.json) agree.
void check_layer_map(const std::filesystem::path& folder, const nlohmann::json& manifest_map,
                     const nlohmann::json& config, const nlohmann::json& layer_map_file) {
  const nlohmann::json expected = layer_map_of(manifest_map);
  if (expected.is_null()) fail((folder / kManifestFile).string() + " has no layer_map", kEdited);
  const std::pair<const char*, nlohmann::json> copies[] = {
      {kLayerMapFile, layer_map_of(layer_map_file)},
      {kConfigFile, layer_map_of(config.value("uniattn", nlohmann::json()))},
  };
  for (const auto& [name, copy] : copies) {
    if (copy != expected) {
      fail("the layer map in " + (folder / name).string() + " differs from the manifest's",
           "Re-export the model; the folder mixes files of different exports");
    }
  }
}

// Facts stated twice (manifest, config.json, its own I/O list) agree; returns the model's
// positions (config.json's max_position_embeddings).
int64_t cross_check(const std::filesystem::path& folder, const nlohmann::json& manifest, const nlohmann::json& config) {
  const auto& geometry = manifest.at("geometry");
  const std::pair<const char*, const char*> pairs[] = {
      {"num_layers", "num_hidden_layers"}, {"hidden_size", "hidden_size"}, {"vocab_size", "vocab_size"}};
  for (const auto& [key, config_key] : pairs) {
    const nlohmann::json stated = config.value(config_key, nlohmann::json());
    if (stated != geometry.at(key)) {
      fail("the manifest of " + folder.string() + " says " + key + "=" + geometry.at(key).dump() +
               " but config.json has " + config_key + "=" + stated.dump(),
           kEdited);
    }
  }
  if (geometry.at("num_layers") != manifest.at("layers").size()) {
    fail("the manifest of " + folder.string() + " says num_layers=" + geometry.at("num_layers").dump() + " but lists " +
             std::to_string(manifest.at("layers").size()) + " layers",
         kEdited);
  }
  const std::string dtype = manifest.at("dtype").get<std::string>();
  for (const char* list : {"inputs", "outputs"}) {
    for (const auto& spec : manifest.at(list)) {
      const std::string name = spec.at("name").get<std::string>();
      const bool cache = name.rfind("past_key_values.", 0) == 0 || name.rfind("present.", 0) == 0;
      if (cache && spec.at("dtype").get<std::string>() != dtype) {
        fail("the manifest of " + folder.string() + " says dtype " + dtype + " but its caches are " +
                 spec.at("dtype").get<std::string>(),
             kEdited);
      }
      if (name == "logits" && spec.at("shape").back() != geometry.at("vocab_size")) {
        fail("the manifest of " + folder.string() + " says vocab_size=" + geometry.at("vocab_size").dump() +
                 " but the logits have " + spec.at("shape").back().dump(),
             kEdited);
      }
    }
  }
  const nlohmann::json positions = config.value("max_position_embeddings", nlohmann::json());
  if (!positions.is_number_integer() || positions.get<int64_t>() < 1) {
    fail((folder / kConfigFile).string() + " has max_position_embeddings=" + positions.dump() +
             ", expected a positive integer",
         kEdited);
  }
  return positions.get<int64_t>();
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
    if (!manifest.is_object() || manifest.value("format", "") != kFormat) {
      fail(path.string() + " is not a uniattn-export manifest");
    }
    const auto& version = manifest.at("format_version");
    if (!version.is_number_integer() || version.get<int64_t>() < 1) {
      fail(path.string() + ": field format_version is " + version.dump() + ", expected a positive integer", kEdited);
    }
    if (version.get<int64_t>() > kFormatVersion) {
      fail(folder.string() + " was written by a newer uniattn-export (manifest format " + version.dump() + ")",
           "Upgrade uniattn-export");
    }
    check_files(folder, path, manifest.at("files"));
    const nlohmann::json config = read_json(folder / kConfigFile, "the model config");
    check_layer_map(folder, manifest.at("layer_map"), config, read_json(folder / kLayerMapFile, "the layer map"));
    Manifest result;
    result.folder = folder;
    result.model_file = folder / manifest.at("onnx").at("file").get<std::string>();
    result.dtype = manifest.at("dtype").get<std::string>();
    result.cache_type = cache_type_of(result.dtype);
    result.vocab_size = manifest.at("geometry").at("vocab_size").get<int64_t>();
    result.num_layers = manifest.at("geometry").at("num_layers").get<int64_t>();
    result.max_positions = cross_check(folder, manifest, config);
    result.num_consumers = 0;
    for (const auto& layer : manifest.at("layers")) result.num_consumers += layer.at("role") == "consumer";
    result.input_names = names_of(manifest.at("inputs"));
    result.output_names = names_of(manifest.at("outputs"));
    read_cache_mode(manifest, result);
    result.caches = cache_tensors(manifest, result);
    const std::vector<std::string> leading = {"input_ids", "attention_mask", "position_ids"};
    if (result.input_names.size() != leading.size() + result.caches.size() ||
        !std::equal(leading.begin(), leading.end(), result.input_names.begin())) {
      fail("the graph inputs are not input_ids, attention_mask, position_ids and the caches");
    }
    // Static artifacts add next_tokens (the argmax of the logits) after the logits.
    std::vector<std::string> leading_outputs = {"logits"};
    if (result.static_cache) leading_outputs.push_back("next_tokens");
    const size_t first_cache = leading_outputs.size();
    if (result.output_names.size() != first_cache + result.caches.size() ||
        !std::equal(leading_outputs.begin(), leading_outputs.end(), result.output_names.begin())) {
      fail(result.static_cache ? "the graph outputs are not logits, next_tokens and the present caches"
                               : "the graph outputs are not logits and the present caches");
    }
    for (size_t i = 0; i < result.caches.size(); ++i) {
      if (result.output_names[first_cache + i] != result.caches[i].present) {
        fail("graph output " + result.output_names[first_cache + i] + " does not pair with input " +
             result.caches[i].past);
      }
    }
    return result;
  } catch (const nlohmann::json::exception& exc) {
    fail(path.string() + " lacks a field this runtime reads (" + exc.what() + ")");
  }
}

}  // namespace uniattn::runtime
