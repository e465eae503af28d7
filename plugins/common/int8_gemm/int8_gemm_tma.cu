// int8 GEMM on Hopper from CUTLASS's warp-specialized TMA kernels, with the
// dequantization of int8_gemm.h as an epilogue visitor tree:
//
//   D[m, n] = ((acc * row_scale[m]) * col_scale[n]) * alpha + bias[n]
//
// in fp32, in that order (this file is compiled with --fmad=false so no
// multiply and add fuse), rounded once to fp16/bf16: the same numbers as the
// library's own kernels. One producer warp feeds the shared-memory ring with
// TMA; the consumer warpgroups run wgmma, and the epilogue of one tile
// overlaps the MMAs of the next (ping-pong) or is shared by both consumer
// warpgroups (cooperative), which is what the hand-written wgmma kernel
// lacks. Built only as sm_90a, and only where CUTLASS's headers were found.
#include <cuda_runtime.h>

#include <stdio.h>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>

#include <qtool/plugin.h>

#include "cutlass_run.h"
#include "int8_gemm_tma.h"

namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

template <class TileShape, class ClusterShape, class KernelSchedule, class EpilogueSchedule, class ElementD>
struct TmaGemm {
    using RowScale = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>; // [M]
    using ColScale = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>; // [N]
    using Bias = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;     // [N]
    using Alpha = fusion::Sm90ScalarBroadcast<float>;
    using Mul = fusion::Sm90Compute<cutlass::multiplies, float, float, cutlass::FloatRoundStyle::round_to_nearest>;
    using AddOut = fusion::Sm90Compute<cutlass::plus, ElementD, float, cutlass::FloatRoundStyle::round_to_nearest>;
    using AccRow = fusion::Sm90EVT<Mul, fusion::Sm90AccFetch, RowScale>;
    using AccRowCol = fusion::Sm90EVT<Mul, AccRow, ColScale>;
    using Scaled = fusion::Sm90EVT<Mul, AccRowCol, Alpha>;
    using Epilogue = fusion::Sm90EVT<AddOut, Scaled, Bias>;

    using LayoutD = cutlass::layout::RowMajor;
    static constexpr int kAlignD = 16 / sizeof(ElementD);

    using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
        cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, LayoutD, kAlignD, ElementD, LayoutD,
        kAlignD, EpilogueSchedule, Epilogue>::CollectiveOp;

    using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, 16, int8_t,
        cutlass::layout::ColumnMajor, 16, int32_t, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
            sizeof(typename CollectiveEpilogue::SharedStorage))>,
        KernelSchedule>::CollectiveOp;

    using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                        CollectiveEpilogue, cutlass::gemm::PersistentScheduler>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

    static int run(const qt_i8gemm_tma_problem &p, char *msg, size_t len)
    {
        using StrideA = typename Kernel::StrideA;
        using StrideB = typename Kernel::StrideB;
        using StrideD = typename Kernel::StrideD;
        StrideA sa{};
        get<0>(sa) = p.lda;
        StrideB sb{};
        get<0>(sb) = p.ldb;
        StrideD sd{};
        get<0>(sd) = p.ldd;

        typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                      {(int)p.M, (int)p.N, (int)p.K, 1},
                                      {p.A, sa, p.B, sb},
                                      {{}, nullptr, sd, static_cast<ElementD *>(p.D), sd}};
        args.hw_info.device_id = p.device;
        args.hw_info.sm_count = p.sms;
        args.epilogue.thread = {
            {
                {
                    {{}, {p.row_scale, 1.0f, {}}, {}}, // acc * row_scale[m]
                    {p.col_scale, 1.0f, {}},           // * col_scale[n]
                    {},
                },
                {{p.alpha}}, // * alpha
                {},
            },
            {p.bias, 0.0f, {}}, // + bias[n]
            {},
        };

        return qt_cutlass_run<Gemm>(args, "int8 TMA GEMM", p.M, p.N, p.K, p.stream, msg, len);
    }
};

using Pingpong128x128 = Shape<_128, _128, _128>;
using Cooperative256x128 = Shape<_256, _128, _128>;
using Cluster2x1 = Shape<_2, _1, _1>; // two row tiles share (multicast) one B tile
// Two column tiles share one A tile: for the 256-row tiles A is the larger
// operand, and at 8192 x 896 x 4864 this cluster runs 7% faster than 2x1
// (0.0558 vs 0.0599 ms on an H100, calls back to back).
using Cluster1x2 = Shape<_1, _2, _1>;

template <class ElementD> int dispatch(int tile, const qt_i8gemm_tma_problem &p, char *msg, size_t len)
{
    switch (tile) {
    case QT_I8GEMM_TMA_PINGPONG_128x128:
        return TmaGemm<Pingpong128x128, Cluster2x1, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                       cutlass::epilogue::TmaWarpSpecialized, ElementD>::run(p, msg, len);
    case QT_I8GEMM_TMA_COOPERATIVE_256x128:
        return TmaGemm<Cooperative256x128, Cluster1x2, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                       cutlass::epilogue::TmaWarpSpecializedCooperative, ElementD>::run(p, msg, len);
    default: snprintf(msg, len, "int8 TMA GEMM: unknown tile %d", tile); return QTOOL_ERR_INVALID_ARGUMENT;
    }
}

} // namespace

int qt_i8gemm_tma_run(int tile, const qt_i8gemm_tma_problem *p, char *msg, size_t len)
{
    return p->d_is_bf16 ? dispatch<cutlass::bfloat16_t>(tile, *p, msg, len)
                        : dispatch<cutlass::half_t>(tile, *p, msg, len);
}
