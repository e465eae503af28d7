// Launches a CUTLASS 3 GEMM (a GemmUniversalAdapter) for the plugins'
// Hopper kernels, with the checks each of them wants: the arguments must be
// implementable, no workspace is provided (none of these kernels needs
// one), and a failed launch becomes a QTOOL_ERR_* code with `msg` naming
// `what` and the problem. Include after CUTLASS's headers.
#ifndef QTOOL_CUTLASS_RUN_H
#define QTOOL_CUTLASS_RUN_H

#include <cuda_runtime.h>

#include <stdio.h>

#include <qtool/plugin.h>

template <class Gemm>
int qt_cutlass_run(const typename Gemm::Arguments &args, const char *what, long long M, long long N, long long K,
                   void *stream, char *msg, size_t len)
{
    Gemm gemm;
    cutlass::Status s = gemm.can_implement(args);
    if (s != cutlass::Status::kSuccess) {
        snprintf(msg, len, "%s cannot run M=%lld N=%lld K=%lld: %s", what, M, N, K, cutlassGetStatusString(s));
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (Gemm::get_workspace_size(args) != 0) {
        snprintf(msg, len, "%s wants a workspace (%zu bytes), which is not provided", what,
                 (size_t)Gemm::get_workspace_size(args));
        return QTOOL_ERR_INTERNAL;
    }
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    s = gemm.initialize(args, nullptr, st);
    if (s == cutlass::Status::kSuccess) s = gemm.run(st);
    if (s != cutlass::Status::kSuccess) {
        cudaError_t e = cudaGetLastError();
        snprintf(msg, len, "%s launch: %s (%s)", what, cutlassGetStatusString(s), cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
    }
    return 0;
}

#endif
