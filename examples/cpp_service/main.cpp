// uniattn_cpp_service: load an exported UniAttn artifact and generate from a prompt file with
// the C API of libuniattn_runtime.so; print the token ids (and optionally the logits) as JSON.
//
//   uniattn_cpp_service ARTIFACT PROMPTS --onnxruntime LIB [options]
//
// PROMPTS is a text file with one prompt per line: token ids as decimal integers separated
// by spaces or commas; blank lines and lines starting with '#' are skipped. The prompts form
// one batch (padded on the side the artifact's cache mode uses); a line "---" starts another
// request, and the requests run one after the other on one runtime, as a service would. Options:
//   --max-new-tokens N (16)   --eos ID (none)   --pad ID (0)
//   --temperature T           sample instead of greedy decoding; with --top-k K, --top-p P, --seed S
//   --device cpu|cuda (cpu)   --device-id N (0)   --threads N (ONNX Runtime's choice)
//   --custom-ops auto|require|off (auto)   --custom-op-library PATH
//   --cuda-graphs on|off (on) static-cache artifacts on CUDA: replay decode steps as CUDA graphs
//   --logits                  also print each step's logits of the last position
// Output (stdout): {"runtime", "uses_custom_ops", "cache_capacity" (0: dynamic caches),
// "cuda_graphs", "steps", "tokens": [[...] per prompt], "lengths": [...],
// "logits": [[[...] per step] per prompt]}; with several requests, "steps", "tokens",
// "lengths" and "logits" move into "requests": [{...} per request]. When CUDA graphs were
// requested but ONNX Runtime cannot capture the graph, one warning line on stderr says why.
// Exit code 0, 2 for bad input (usage, prompt file, artifact, request), 1 when the runtime
// fails otherwise.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "uniattn/runtime.h"

namespace {

struct UsageError {
  std::string message;
};

struct Arguments {
  std::string artifact, prompts_file, onnxruntime, custom_op_library;
  uniattn_runtime_options options{};
  uniattn_generate_request request{};
  bool logits = false;
};

int64_t parse_integer(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0') throw UsageError{flag + " needs an integer, got '" + text + "'"};
  return value;
}

double parse_number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw UsageError{flag + " needs a number, got '" + text + "'"};
  return value;
}

Arguments parse_arguments(int argc, char** argv) {
  Arguments args;
  uniattn_runtime_options_init(&args.options);
  uniattn_generate_request_init(&args.request);
  args.request.max_new_tokens = 16;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{flag + " needs a value"};
      return argv[++i];
    };
    if (flag == "--onnxruntime") args.onnxruntime = value();
    else if (flag == "--max-new-tokens") args.request.max_new_tokens = parse_integer(flag, value());
    else if (flag == "--eos") args.request.eos_token_id = parse_integer(flag, value());
    else if (flag == "--pad") args.request.pad_token_id = parse_integer(flag, value());
    else if (flag == "--temperature") args.request.do_sample = 1, args.request.temperature = parse_number(flag, value());
    else if (flag == "--top-k") args.request.top_k = parse_integer(flag, value());
    else if (flag == "--top-p") args.request.top_p = parse_number(flag, value());
    else if (flag == "--seed") args.request.seed = static_cast<uint64_t>(parse_integer(flag, value()));
    else if (flag == "--device-id") args.options.device_id = static_cast<int32_t>(parse_integer(flag, value()));
    else if (flag == "--threads") args.options.intra_op_threads = static_cast<int32_t>(parse_integer(flag, value()));
    else if (flag == "--custom-op-library") args.custom_op_library = value();
    else if (flag == "--logits") args.logits = true;
    else if (flag == "--cuda-graphs") {
      const std::string mode = value();
      if (mode != "on" && mode != "off") throw UsageError{"--cuda-graphs is on or off, got '" + mode + "'"};
      args.options.cuda_graphs = mode == "on" ? 1 : 0;
    }
    else if (flag == "--device") {
      const std::string device = value();
      if (device != "cpu" && device != "cuda") throw UsageError{"--device is cpu or cuda, got '" + device + "'"};
      args.options.device = device == "cuda" ? UNIATTN_DEVICE_CUDA : UNIATTN_DEVICE_CPU;
    } else if (flag == "--custom-ops") {
      const std::string mode = value();
      if (mode == "auto") args.options.custom_ops = UNIATTN_CUSTOM_OPS_AUTO;
      else if (mode == "require") args.options.custom_ops = UNIATTN_CUSTOM_OPS_REQUIRE;
      else if (mode == "off") args.options.custom_ops = UNIATTN_CUSTOM_OPS_OFF;
      else throw UsageError{"--custom-ops is auto, require or off, got '" + mode + "'"};
    } else if (flag.rfind("--", 0) == 0) {
      throw UsageError{"unknown option " + flag};
    } else {
      positional.push_back(flag);
    }
  }
  if (positional.size() != 2) throw UsageError{"usage: uniattn_cpp_service ARTIFACT PROMPTS --onnxruntime LIB [options]"};
  if (args.onnxruntime.empty()) {
    throw UsageError{"--onnxruntime is required (the path `uniattn-export runtime-paths onnxruntime` prints)"};
  }
  if ((args.request.top_k != 0 || args.request.top_p != 1.0) && !args.request.do_sample) {
    throw UsageError{"--top-k and --top-p apply to sampling: add --temperature"};
  }
  args.artifact = positional[0];
  args.prompts_file = positional[1];
  args.request.return_logits = args.logits ? 1 : 0;
  return args;
}

struct Batch {
  std::vector<int64_t> ids, lengths;  // the prompts' ids concatenated, and their lengths
};

// One prompt per line, "---" between requests.
std::vector<Batch> read_prompts(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw UsageError{"cannot read the prompt file " + path};
  std::vector<Batch> batches(1);
  std::string line;
  for (int number = 1; std::getline(file, line); ++number) {
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    if (line.compare(first, 3, "---") == 0) {
      if (batches.back().lengths.empty()) throw UsageError{path + ":" + std::to_string(number) + ": a request without prompts"};
      batches.emplace_back();
      continue;
    }
    std::vector<int64_t>& ids = batches.back().ids;
    for (char& c : line) c = c == ',' ? ' ' : c;
    std::istringstream tokens(line);
    std::string token;
    int64_t count = 0;
    while (tokens >> token) {
      ids.push_back(parse_integer(path + ":" + std::to_string(number), token));
      ++count;
    }
    batches.back().lengths.push_back(count);
  }
  if (batches.back().lengths.empty()) throw UsageError{path + " has no prompts (one line of token ids per prompt)"};
  return batches;
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// "steps", "tokens", "lengths" (and "logits") of one generation.
void print_generation(const uniattn_runtime* runtime, const uniattn_generation* generation, bool with_logits) {
  const int64_t batch = uniattn_generation_batch_size(generation);
  const int64_t steps = uniattn_generation_num_steps(generation);
  const int64_t vocab = uniattn_runtime_vocab_size(runtime);
  const int64_t* tokens = uniattn_generation_tokens(generation);
  const int64_t* lengths = uniattn_generation_lengths(generation);
  std::printf("\"steps\": %lld,\n \"tokens\": [", static_cast<long long>(steps));
  for (int64_t b = 0; b < batch; ++b) {
    std::printf("%s[", b ? ", " : "");
    for (int64_t t = 0; t < steps; ++t) std::printf("%s%lld", t ? ", " : "", static_cast<long long>(tokens[b * steps + t]));
    std::printf("]");
  }
  std::printf("],\n \"lengths\": [");
  for (int64_t b = 0; b < batch; ++b) std::printf("%s%lld", b ? ", " : "", static_cast<long long>(lengths[b]));
  std::printf("]");
  if (with_logits) {
    // %.9g round-trips a float32 exactly.
    const float* logits = uniattn_generation_logits(generation);
    std::printf(",\n \"logits\": [");
    for (int64_t b = 0; b < batch; ++b) {
      std::printf("%s[", b ? ",\n  " : "");
      for (int64_t t = 0; t < steps; ++t) {
        std::printf("%s[", t ? ", " : "");
        const float* row = logits + (b * steps + t) * vocab;
        for (int64_t v = 0; v < vocab; ++v) std::printf("%s%.9g", v ? ", " : "", row[v]);
        std::printf("]");
      }
      std::printf("]");
    }
    std::printf("]");
  }
}

void print_json(const uniattn_runtime* runtime, const std::vector<uniattn_generation*>& generations, bool with_logits) {
  std::printf("{\"runtime\": %s, \"uses_custom_ops\": %s, \"cache_capacity\": %lld, \"cuda_graphs\": %s,\n ",
              json_string(uniattn_runtime_description(runtime)).c_str(),
              uniattn_runtime_uses_custom_ops(runtime) ? "true" : "false",
              static_cast<long long>(uniattn_runtime_cache_capacity(runtime)),
              uniattn_runtime_uses_cuda_graphs(runtime) ? "true" : "false");
  if (generations.size() == 1) {
    print_generation(runtime, generations[0], with_logits);
  } else {
    std::printf("\"requests\": [");
    for (size_t i = 0; i < generations.size(); ++i) {
      std::printf("%s{", i ? ",\n  " : "");
      print_generation(runtime, generations[i], with_logits);
      std::printf("}");
    }
    std::printf("]");
  }
  std::printf("}\n");
}

int fail(const char* what, uniattn_status status) {
  std::fprintf(stderr, "uniattn_cpp_service: error: %s (%s): %s\n", what, uniattn_status_name(status),
               uniattn_last_error());
  const bool bad_input = status == UNIATTN_INVALID_ARGUMENT || status == UNIATTN_ARTIFACT_ERROR;
  return bad_input ? 2 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  std::vector<Batch> batches;
  try {
    args = parse_arguments(argc, argv);
    batches = read_prompts(args.prompts_file);
  } catch (const UsageError& error) {
    std::fprintf(stderr, "uniattn_cpp_service: error: %s\n", error.message.c_str());
    return 2;
  }
  args.options.artifact_dir = args.artifact.c_str();
  args.options.onnxruntime_library = args.onnxruntime.c_str();
  if (!args.custom_op_library.empty()) args.options.custom_op_library = args.custom_op_library.c_str();

  uniattn_runtime* runtime = nullptr;
  uniattn_status status = uniattn_runtime_create(&args.options, &runtime);
  if (status != UNIATTN_OK) return fail("loading the artifact", status);
  if (*uniattn_runtime_cuda_graph_warning(runtime) != '\0') {
    std::fprintf(stderr, "uniattn_cpp_service: warning: %s\n", uniattn_runtime_cuda_graph_warning(runtime));
  }

  std::vector<uniattn_generation*> generations;
  int code = 0;
  for (Batch& batch : batches) {
    args.request.prompt_ids = batch.ids.data();
    args.request.prompt_lengths = batch.lengths.data();
    args.request.batch_size = static_cast<int64_t>(batch.lengths.size());
    uniattn_generation* generation = nullptr;
    status = uniattn_generate(runtime, &args.request, &generation);
    if (status != UNIATTN_OK) {
      code = fail("generating", status);
      break;
    }
    generations.push_back(generation);
  }
  if (code == 0) print_json(runtime, generations, args.logits);
  for (uniattn_generation* generation : generations) uniattn_generation_destroy(generation);
  uniattn_runtime_destroy(runtime);
  return code;
}
