// What the runtime needs from an artifact folder, read from uniattn_manifest.json (written by
// uniattn_export/export/artifact.py): the graph file, dtype, vocabulary, I/O names, the cache
// mode and capacity, and the cache layout the layer map implies (consumer layers have a value
// cache only).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "uniattn/ort_abi.h"

namespace uniattn::runtime {

struct CacheTensor {
  std::string past;     // graph input, past_key_values.{i}.key|value
  std::string present;  // graph output, present.{i}.key|value
  int64_t kv_num_heads;
  int64_t head_dim;
};

struct Manifest {
  std::filesystem::path folder;
  std::filesystem::path model_file;
  std::string dtype;  // float32 | float16 | bfloat16
  ONNXTensorElementDataType cache_type;
  int64_t vocab_size;
  int64_t num_layers;
  int64_t max_positions;  // config.json's max_position_embeddings: prompt + new tokens fit in it
  int64_t num_consumers;
  // The manifest's cache {mode, capacity, op_version}: dynamic (op contract v1, caches grow
  // each step; capacity 0) or static (v2, caches of `capacity` slots bound as past and present
  // and written in place; outputs logits, next_tokens and the caches).
  bool static_cache;
  int64_t capacity;
  std::vector<std::string> input_names;   // graph order
  std::vector<std::string> output_names;  // graph order
  std::vector<CacheTensor> caches;        // graph order
};

// Throws Error(UNIATTN_ARTIFACT_ERROR, ...) for a missing, malformed, modified (sha256) or
// unsupported folder; checks what uniattn_export/export/artifact.py load_artifact checks, except
// the graph's structure (which the sha256 of model.onnx pins to what the exporter checked).
Manifest read_manifest(const std::filesystem::path& folder);

}  // namespace uniattn::runtime
