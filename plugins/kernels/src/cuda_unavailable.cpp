// Compiled instead of plugins/kernels/cuda/*.cu when the build found no CUDA compiler (or
// no CUDA sources): the CUDA entry points exist, so every backend links the same ABI, and
// they refuse with UA_UNSUPPORTED and a message saying how to get them.
#include "common.h"

namespace {
constexpr const char* kNotBuilt =
    "%s: this library was built without CUDA kernels (no nvcc at build time); rebuild with the CUDA "
    "toolkit on PATH (or CUDACXX set) to get them";
}

extern "C" {

int ua_has_cuda(void) { return 0; }

size_t ua_producer_cuda_workspace_size(const ua_attention_desc*, int) { return 0; }

size_t ua_consumer_cuda_workspace_size(const ua_attention_desc*, int) { return 0; }

ua_status ua_producer_cuda(const ua_attention_desc*, const ua_producer_io*, void*, void*) {
  return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_producer_cuda");
}

ua_status ua_consumer_cuda(const ua_attention_desc*, const ua_consumer_io*, void*, void*) {
  return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_consumer_cuda");
}

ua_status ua_gated_silu_cuda(ua_dtype, int64_t, int64_t, const void*, void*, void*) {
  return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_gated_silu_cuda");
}

ua_status ua_split_rotary_cuda(const ua_split_rotary_desc*, const ua_split_rotary_io*, void*) {
  return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_split_rotary_cuda");
}

ua_status ua_linear_cuda(const ua_linear_desc*, const void*, const void*, void*, void*, void*) {
  return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_linear_cuda");
}

ua_status ua_cuda_copy(int, void*, const void*, size_t) { return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_cuda_copy"); }

ua_status ua_cuda_zero(int, void*, size_t) { return uniattn::fail(UA_UNSUPPORTED, kNotBuilt, "ua_cuda_zero"); }

}  // extern "C"
