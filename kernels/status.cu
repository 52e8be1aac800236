// Status messages for the Rust layer, from the CUDA runtime linked into this library.
//
// NOTE: not yet run on a GPU; compiled only.

#include <stdio.h>

#include "sigsoftmax.h"

extern "C" const char *sigsoftmax_error_string(cudaError_t status) {
    // cudaGetErrorName and cudaGetErrorString return static strings; the joined message is kept
    // per thread so concurrent callers do not overwrite each other's text.
    static thread_local char message[256];
    snprintf(message, sizeof(message), "%s: %s", cudaGetErrorName(status),
             cudaGetErrorString(status));
    return message;
}
