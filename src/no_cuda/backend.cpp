// The CUDA backend of a build without it (MIXTRAIN_CUDA=OFF): asking for a cuda tensor says so.
#include <string>

#include "backend/backend.h"

namespace mixtrain {

Backend* cuda_backend(std::string* why) {
  if (why)
    *why =
        "cuda: this build of mixtrain has no CUDA backend (configure with -DMIXTRAIN_CUDA=ON on a "
        "machine with the CUDA toolkit)";
  return nullptr;
}

int cuda_select_device(int, std::string* why) {
  cuda_backend(why);
  return -1;
}

int cuda_capability(std::string*) { return 0; }

void cuda_synchronize() {}

}  // namespace mixtrain
