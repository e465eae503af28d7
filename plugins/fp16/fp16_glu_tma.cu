// The gate|up GEMM of a GLU MLP with the GLU in its epilogue, on Hopper
// (CUTLASS's warp-specialized TMA kernels, sm_90a):
//
//   y[m, j] = silu(g) * u,  g = half(acc[m, 2j] + b[2j]),  u = half(acc[m, 2j+1] + b[2j+1])
//
// W holds the gate and up rows interleaved (row 2j gate j, row 2j+1 up j),
// so a thread's accumulators hold both halves of an output side by side
// (wgmma gives each thread pairs of adjacent columns). The epilogue writes
// y straight from registers and the [M, 2I] product never reaches memory,
// which saves writing it and reading it back in a separate GLU kernel. g and
// u are rounded to the activation type first, as the separate GEMM output
// would be, so the result is the unfused one up to summation order and
// the fast SiLU below. SiLU (SwiGLU, the decoders') is the only one built;
// fp16_cuda.c runs the others through cuBLASLt and a GLU kernel.
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
#include "fp16_glu_tma.h"

namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// SiLU in float32 with the hardware exponential and division (within 2
// float32 ulp of x / (1 + expf(-x)); the exact forms made the epilogue, and
// so the kernel, a third slower).
__device__ __forceinline__ float silu(float x) { return __fdividef(x, 1.0f + __expf(-x)); }

// Epilogue visitor node: takes the (bias-added) accumulators of one
// epilogue subtile (EpiM x EpiN), pairs columns 2j and 2j+1 into act(gate)
// * up, stages the EpiM x EpiN/2 results in shared memory and writes them
// out with 16-byte stores once the subtile is complete (the reduce hook,
// after a barrier of the epilogue threads). Two staging buffers alternate,
// so the next subtile's results never overwrite one still being written
// out. The kernel itself has no D (ElementD void): this node is the only
// writer.
template <class Element, int EpiM, int EpiN> struct Sm90GluStore {
    using ElementAux = Element; // sizes the epilogue of a kernel without D
    static constexpr int kHalfN = EpiN / 2;
    static constexpr int kVec = 16 / sizeof(Element); // outputs per 16-byte store
    static_assert(kHalfN % kVec == 0, "a staged row is whole 16-byte pieces");

    struct SharedStorage {
        alignas(16) Element staging[2][EpiM * kHalfN];
    };
    struct Arguments {
        Element *ptr = nullptr;
        int64_t ld = 0;
    };
    using Params = Arguments;

    template <class ProblemShape>
    static constexpr Params to_underlying_arguments(ProblemShape const &, Arguments const &args, void *)
    {
        return args;
    }
    template <class ProblemShape> static bool can_implement(ProblemShape const &, Arguments const &args)
    {
        return args.ptr != nullptr;
    }
    template <class ProblemShape> static size_t get_workspace_size(ProblemShape const &, Arguments const &)
    {
        return 0;
    }
    template <class ProblemShape>
    static cutlass::Status initialize_workspace(ProblemShape const &, Arguments const &, void *, cudaStream_t,
                                                cutlass::CudaHostAdapter * = nullptr)
    {
        return cutlass::Status::kSuccess;
    }

    CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
    CUTLASS_DEVICE bool is_C_load_needed() const { return false; }

    CUTLASS_HOST_DEVICE Sm90GluStore() {}
    CUTLASS_HOST_DEVICE Sm90GluStore(Params const &params, SharedStorage const &shared)
        : params(params), staging(const_cast<Element *>(&shared.staging[0][0]))
    {
    }

    Params const params;
    Element *staging = nullptr;

    template <class... Args>
    CUTLASS_DEVICE auto get_producer_load_callbacks(fusion::detail::ProducerLoadArgs<Args...> const &)
    {
        return fusion::detail::EmptyProducerLoadCallbacks{};
    }

    template <class CTensor, class ThrResidue>
    struct ConsumerStoreCallbacks : fusion::detail::EmptyConsumerStoreCallbacks {
        CUTLASS_DEVICE ConsumerStoreCallbacks(CTensor tCc, ThrResidue residue, int64_t M, int64_t N2, int tm0,
                                              int tn0, int64_t cm0, int64_t cn0, int thread_idx, int n_threads,
                                              Params const &params, Element *staging)
            : tCc(tCc), residue(residue), M(M), N2(N2), tm0(tm0), tn0(tn0), cm0(cm0), cn0(cn0),
              thread_idx(thread_idx), n_threads(n_threads), params(params), staging(staging)
        {
        }

        CTensor tCc; // (CPY,CPY_M,CPY_N,EPI_M,EPI_N): coordinates relative to this thread's first element
        ThrResidue residue;
        int64_t M, N2;       // the problem
        int tm0, tn0;        // this thread's first element, relative to the CTA tile (tn0 even)
        int64_t cm0, cn0;    // the CTA tile's origin
        int thread_idx, n_threads;
        Params params;
        Element *staging;

        CUTLASS_DEVICE int buffer(int epi_m, int epi_n) const
        {
            return (epi_n * 8 + epi_m) & 1; // alternates along the subtile loop (epi_m fastest, fewer than 8 of them)
        }

        template <typename ElementAccumulator, typename ElementInput, int FragmentSize>
        CUTLASS_DEVICE auto visit(cutlass::Array<ElementAccumulator, FragmentSize> const &, int epi_v, int epi_m,
                                  int epi_n, cutlass::Array<ElementInput, FragmentSize> const &frg_input)
        {
            static_assert(FragmentSize % 2 == 0, "the GLU epilogue pairs adjacent accumulators");
            Tensor tCc_mn = tCc(_, _, _, epi_m, epi_n);
            Element *st = staging + buffer(epi_m, epi_n) * (EpiM * kHalfN);
            // Every pair first, without branches (independent chains the
            // scheduler can interleave), then the stores that are in bounds.
            Element out[FragmentSize / 2];
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < FragmentSize; i += 2) {
                const float g = float(Element(frg_input[i])), u = float(Element(frg_input[i + 1]));
                out[i / 2] = Element(silu(g) * u);
            }
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < FragmentSize; i += 2) {
                auto c0 = tCc_mn(epi_v * FragmentSize + i);
                auto c1 = tCc_mn(epi_v * FragmentSize + i + 1);
                const int r = tm0 + int(get<0>(c0)) - epi_m * EpiM, n = tn0 + int(get<1>(c0)) - epi_n * EpiN;
                // Pairs are (even, even + 1) of one row in wgmma's layout; a
                // layout where they are not leaves its outputs unwritten
                // (the tests would see it).
                const bool paired = get<0>(c1) == get<0>(c0) && get<1>(c1) == get<1>(c0) + 1;
                if (paired && elem_less(c1, residue)) st[r * kHalfN + (n >> 1)] = out[i / 2];
            }
            return frg_input;
        }

        template <class STensor, class SyncFn, class VTensor>
        CUTLASS_DEVICE void reduce(STensor &&, SyncFn const &sync_fn, int epi_m, int epi_n, bool, VTensor)
        {
            sync_fn(); // every result of this subtile is staged
            const Element *st = staging + buffer(epi_m, epi_n) * (EpiM * kHalfN);
            const int64_t m_base = cm0 + epi_m * EpiM, j_base = (cn0 + epi_n * EpiN) / 2, J = N2 / 2;
            constexpr int kPieces = EpiM * (kHalfN / kVec);
            for (int p = thread_idx; p < kPieces; p += n_threads) {
                const int r = p / (kHalfN / kVec), c = (p % (kHalfN / kVec)) * kVec;
                const int64_t m = m_base + r, j = j_base + c;
                if (m >= M || j >= J) continue;
                Element *dst = params.ptr + m * params.ld + j;
                if (j + kVec <= J && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
                    *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(st + r * kHalfN + c);
                } else {
                    for (int e = 0; e < kVec && j + e < J; e++) dst[e] = st[r * kHalfN + c + e];
                }
            }
        }
    };

    template <bool ReferenceSrc, class... Args>
    CUTLASS_DEVICE auto get_consumer_store_callbacks(fusion::detail::ConsumerStoreArgs<Args...> const &args)
    {
        static_assert(decltype(size<0>(args.epi_tile))::value == EpiM &&
                          decltype(size<1>(args.epi_tile))::value == EpiN,
                      "the staging buffer is sized for another epilogue tile");
        auto [M, N, K, L] = args.problem_shape_mnkl;
        auto [mc, nc, kc, lc] = args.tile_coord_mnkl;
        const int64_t cm0 = int64_t(mc) * size<0>(args.tile_shape_mnk), cn0 = int64_t(nc) * size<1>(args.tile_shape_mnk);
        // residue_tCcD is (M, N) minus the thread's first coordinate.
        const int tm0 = int(int64_t(M) - int64_t(get<0>(args.residue_tCcD)) - cm0);
        const int tn0 = int(int64_t(N) - int64_t(get<1>(args.residue_tCcD)) - cn0);
        return ConsumerStoreCallbacks<decltype(args.tCcD), decltype(args.residue_tCcD)>(
            args.tCcD, args.residue_tCcD, M, N, tm0, tn0, cm0, cn0, args.thread_idx, int(size(args.tiled_mma)), params,
            staging);
    }
};

template <class TileShape, class ClusterShape, class KernelSchedule, class EpilogueSchedule, class Element, int EpiM,
          int EpiN = 32>
struct GluGemm {
    using Bias = fusion::Sm90RowBroadcast<0, TileShape, Element, float, Stride<_0, _1, int64_t>>; // [2I]
    using AddBias = fusion::Sm90Compute<cutlass::plus, float, float, cutlass::FloatRoundStyle::round_to_nearest>;
    using Biased = fusion::Sm90EVT<AddBias, fusion::Sm90AccFetch, Bias>;
    using Epilogue = fusion::Sm90EVT<Sm90GluStore<Element, EpiM, EpiN>, Biased>;

    using Layout = cutlass::layout::RowMajor;
    static constexpr int kAlign = 16 / sizeof(Element);

    using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
        Shape<Int<EpiM>, Int<EpiN>>, float, float, void, Layout, kAlign, void, Layout, kAlign,
        EpilogueSchedule, Epilogue>::CollectiveOp;

    using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor, kAlign, Element,
        cutlass::layout::ColumnMajor, kAlign, float, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
            sizeof(typename CollectiveEpilogue::SharedStorage))>,
        KernelSchedule>::CollectiveOp;

    using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                        CollectiveEpilogue, cutlass::gemm::PersistentScheduler>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

    static int run(const fp16_glu_problem &p, char *msg, size_t len)
    {
        typename Kernel::StrideA sa{};
        get<0>(sa) = p.ldx;
        typename Kernel::StrideB sb{};
        get<0>(sb) = p.K;
        typename Kernel::StrideD sd{};
        typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                      {(int)p.M, (int)p.N2, (int)p.K, 1},
                                      {static_cast<const Element *>(p.x), sa, static_cast<const Element *>(p.w), sb},
                                      {{}, nullptr, sd, nullptr, sd}};
        args.hw_info.device_id = p.device;
        args.hw_info.sm_count = p.sms;
        args.epilogue.thread = {
            {
                {},                                                  // acc
                {static_cast<const Element *>(p.bias), Element(0), {}}, // + bias[n] (0 without)
                {},
            },
            {static_cast<Element *>(p.y), p.ldy}, // GLU store
        };
        return qt_cutlass_run<Gemm>(args, "GLU GEMM", p.M, p.N2, p.K, p.stream, msg, len);
    }
};

// Ping-pong: one consumer warpgroup's epilogue runs under the other's
// MMAs, which hides most of the GLU's arithmetic. Measured on an H100 at
// M = 8192, 2I = 9728, K = 896 (calls back to back): 128x192 tiles with
// clusters of 2x1 and 64x64 epilogue subtiles 0.238 ms (64x32 subtiles
// 0.244; clusters 1x1 0.247, 1x2 0.263); 128x128 0.247 (clusters 1x2
// 0.252, 2x2 0.270; K tiles of 128 0.250); cooperative 256x192 0.268-0.271,
// 256x128 0.265-0.273, 128x256 0.273; cuBLAS's plain GEMM without the GLU
// 0.210-0.214.
template <class Element> int run_pingpong(const fp16_glu_problem &p, char *msg, size_t len)
{
    return GluGemm<Shape<_128, _192, _64>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                   cutlass::epilogue::TmaWarpSpecialized, Element, 64, 64>::run(p, msg, len);
}

} // namespace

extern "C" int fp16_glu_tma_run(const fp16_glu_problem *p, char *msg, size_t len)
{
    if (p->epilogue != QTOOL_EPILOGUE_SILU_GLU) {
        snprintf(msg, len, "GLU GEMM: epilogue %d not built (SiLU only)", p->epilogue);
        return QTOOL_ERR_UNSUPPORTED;
    }
    return p->is_bf16 ? run_pingpong<cutlass::bfloat16_t>(*p, msg, len) : run_pingpong<cutlass::half_t>(*p, msg, len);
}
