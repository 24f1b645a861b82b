// SHA-256 (FIPS 180-4) of a file, as lowercase hex: the artifact manifest lists one per file
// and the runtime refuses a folder whose files differ from what was exported.
#pragma once

#include <filesystem>
#include <string>

namespace uniattn::runtime {

// Throws Error(UNIATTN_ARTIFACT_ERROR, ...) when the file cannot be read.
std::string sha256_of_file(const std::filesystem::path& file);

}  // namespace uniattn::runtime
