// IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain: validated readers for
// u8 image (3-d) and label (1-d) arrays.
#pragma once

#include <cstddef>
#include <string>

#include "mixtrain/tensor.h"

namespace mixtrain {

/// Magic numbers: 0x0000 0x08 (unsigned byte) then the number of dimensions.
inline constexpr uint32_t kIdxImagesMagic = 0x00000803;
inline constexpr uint32_t kIdxLabelsMagic = 0x00000801;

/// Reads a u8 IDX image file (magic 0x00000803) as u8 [N, rows, cols]. Checks the magic,
/// dimensions (1 <= N <= 10^7, 1 <= rows, cols <= 4096, N*rows*cols <= 2 GiB and no more than a
/// gzip stream of this file's real size could hold), and the length (truncated data and trailing
/// bytes are errors). Throws IOError naming the file and the fault.
Tensor read_idx_images(const std::string& path);

/// Reads a u8 IDX label file (magic 0x00000801) as u8 [N], with the same checks.
Tensor read_idx_labels(const std::string& path);

/// The same readers over bytes in memory (gzip or plain; for fuzzing and embedded files); name is
/// used in messages in place of a path.
Tensor read_idx_images_from_memory(const void* data, size_t size,
                                   const std::string& name = "<memory>");
Tensor read_idx_labels_from_memory(const void* data, size_t size,
                                   const std::string& name = "<memory>");

}  // namespace mixtrain
