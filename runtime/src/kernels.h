// The project's kernel library (libuniattn_kernels.so, plugins/kernels), loaded at run time
// beside the custom-op library built from the same kernels. The runtime asks it two things:
// which op contract it implements (ua_abi_version: static-cache artifacts need version 2),
// and, on CUDA, to copy between host and the device buffers that decode steps are bound to
// (ua_cuda_copy / ua_cuda_zero). The copies go through this library rather than OrtApi::
// CopyTensors because the latter copies only between devices of execution-provider libraries
// registered with the OrtEnv (RegisterExecutionProviderLibrary), not of the CUDA EP appended
// to session options, and rather than a libcudart of our own because the wheel ships this
// library already linked to the CUDA runtime its kernels use on ORT's buffers.
#pragma once

#include <filesystem>
#include <string>

#include "uniattn/kernels.h"

namespace uniattn::runtime {

struct KernelLibrary {
  std::string path;
  int abi_version = 0;
  bool has_cuda = false;
  decltype(&ua_cuda_copy) cuda_copy = nullptr;
  decltype(&ua_cuda_zero) cuda_zero = nullptr;
  decltype(&ua_last_error) last_error = nullptr;
};

// dlopen `path` once per process (it stays loaded); nullptr when it is missing or exports no
// ua_abi_version (`why` then says which).
const KernelLibrary* load_kernels(const std::filesystem::path& path, std::string* why);

}  // namespace uniattn::runtime
