#include "kernels.h"

#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>

namespace uniattn::runtime {

const KernelLibrary* load_kernels(const std::filesystem::path& path, std::string* why) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<KernelLibrary>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  const std::string key = path.string();
  if (auto found = loaded.find(key); found != loaded.end()) return found->second.get();
  void* handle = dlopen(key.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    *why = "cannot load the kernel library " + key + " (" + dlerror() + ")";
    return nullptr;
  }
  auto abi = reinterpret_cast<decltype(&ua_abi_version)>(dlsym(handle, "ua_abi_version"));
  auto has_cuda = reinterpret_cast<decltype(&ua_has_cuda)>(dlsym(handle, "ua_has_cuda"));
  if (abi == nullptr || has_cuda == nullptr) {
    *why = key + " exports no ua_abi_version: it is not the uniattn kernel library";
    return nullptr;
  }
  auto library = std::make_unique<KernelLibrary>();
  library->path = key;
  library->abi_version = abi();
  library->has_cuda = has_cuda() != 0;
  // Absent from libraries built before the C runtime bound CUDA graphs (ABI 2 without them).
  library->cuda_copy = reinterpret_cast<decltype(&ua_cuda_copy)>(dlsym(handle, "ua_cuda_copy"));
  library->cuda_zero = reinterpret_cast<decltype(&ua_cuda_zero)>(dlsym(handle, "ua_cuda_zero"));
  library->last_error = reinterpret_cast<decltype(&ua_last_error)>(dlsym(handle, "ua_last_error"));
  return loaded.emplace(key, std::move(library)).first->second.get();
}

}  // namespace uniattn::runtime
