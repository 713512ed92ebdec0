// The portable forward's host-side planning (plan.hpp) and the segment bookkeeping the CP kernels use
// (segment_info, segments_of in params.hpp), run on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/plan.hpp"

namespace {

using flashgdn::Problem;
namespace fp = flashgdn::portable;

constexpr int kH100Sms = 132;

// A packed varlen problem (B = 1) with `lens` sequences, or `n` equal ones when lens is a single value.
Problem problem(int64_t hqk, int64_t hv, std::vector<int64_t> lens, int32_t cp = FLASHGDN_CP_AUTO, int64_t d = 128) {
  Problem pr;
  pr.B = 1;
  pr.T = 0;
  for (int64_t l : lens) pr.T += l;
  pr.Hqk = hqk;
  pr.Hv = hv;
  pr.group = hv / hqk;
  pr.K = pr.V = d;
  pr.N = static_cast<int64_t>(lens.size());
  pr.varlen = true;
  pr.cp_mode = cp;
  return pr;
}

// The same with the lengths known on the host (cu_seqlens_host).
Problem with_lengths(Problem pr, const std::vector<int64_t>& lens) {
  for (int64_t l : lens) pr.seq_chunks.push_back((l + 63) / 64);
  return pr;
}

// The slices measured best on H100 (perf-notes, 53c2923..f8bfafc).
TEST(Plan, BvChoicesOnH100) {
  EXPECT_EQ(fp::choose_bv(problem(2, 8, {32768}), kH100Sms), 16);
  EXPECT_EQ(fp::choose_bv(problem(4, 16, {8192}), kH100Sms), 16);
  EXPECT_EQ(fp::choose_bv(problem(16, 16, {32768}), kH100Sms), 16);
  EXPECT_EQ(fp::choose_bv(problem(16, 64, {8192}), kH100Sms), 64);
  EXPECT_EQ(fp::choose_bv(problem(16, 48, {8192}), kH100Sms), 64);  // fractional waves picked 32: -19%
  EXPECT_EQ(fp::choose_bv(problem(16, 16, {8192, 8192, 8192, 8192}), kH100Sms), 64);
  EXPECT_EQ(fp::choose_bv(problem(8, 32, std::vector<int64_t>(8, 1024)), kH100Sms), 64);
  EXPECT_EQ(fp::choose_bv(problem(8, 24, {28672, 4096}), kH100Sms), 32);
  EXPECT_EQ(fp::choose_bv(problem(8, 24, {8192}), kH100Sms), 32);
  EXPECT_EQ(fp::choose_bv(problem(8, 24, {8192}, FLASHGDN_CP_AUTO, 64), kH100Sms), 16);  // V = 64: 16 or 32
  const int bv = fp::choose_bv(problem(1, 1, {10}), 0);  // no SM count: still a valid slice
  EXPECT_TRUE(bv == 16 || bv == 32 || bv == 64) << bv;
}

TEST(Plan, CpFollowsModeAndCostModel) {
  EXPECT_FALSE(fp::cp_plan(problem(2, 8, {32768}, FLASHGDN_CP_OFF), kH100Sms).on);
  EXPECT_TRUE(fp::cp_plan(problem(16, 64, {8192}, FLASHGDN_CP_ON), kH100Sms).on);
  // auto: CP where H100 measured it faster (2/8 1x32768 1.18 -> 0.82 ms, 2/8 1x8192), not where it
  // measured slower (4/16 1x8192 0.37 -> 0.43 ms, 4/16 1x32768, 16/64) at f84dc47.
  EXPECT_TRUE(fp::cp_plan(problem(2, 8, {32768}), kH100Sms).on);
  EXPECT_TRUE(fp::cp_plan(problem(2, 8, {8192}), kH100Sms).on);
  EXPECT_FALSE(fp::cp_plan(problem(4, 16, {8192}), kH100Sms).on);
  EXPECT_FALSE(fp::cp_plan(problem(4, 16, {32768}), kH100Sms).on);
  EXPECT_FALSE(fp::cp_plan(problem(16, 64, {8192}), kH100Sms).on);
  EXPECT_FALSE(fp::cp_plan(problem(16, 64, std::vector<int64_t>(8, 1024)), kH100Sms).on);
}

// With the lengths known, the plan follows them (H100, cd5b8bc: 8/32 and 16/32 28672+4096 BV = 32 2.05 ms
// vs BV = 64 2.35 ms; 2/8 28672+4096 CP 0.78 ms vs 1.00 ms sequential).
TEST(Plan, HostLengthsSteerBvAndCp) {
  const std::vector<int64_t> lens = {28672, 4096};
  EXPECT_EQ(fp::choose_bv(problem(8, 32, lens), kH100Sms), 64);  // equal lengths assumed
  EXPECT_EQ(fp::choose_bv(with_lengths(problem(8, 32, lens), lens), kH100Sms), 32);
  EXPECT_EQ(fp::choose_bv(with_lengths(problem(16, 32, lens), lens), kH100Sms), 32);
  EXPECT_EQ(fp::choose_bv(with_lengths(problem(16, 16, lens), lens), kH100Sms), 16);
  EXPECT_EQ(fp::choose_bv(with_lengths(problem(16, 16, {8192, 8192, 8192, 8192}), {8192, 8192, 8192, 8192}),
                          kH100Sms), 64);
  EXPECT_FALSE(fp::cp_plan(problem(2, 8, lens), kH100Sms).on);
  EXPECT_TRUE(fp::cp_plan(with_lengths(problem(2, 8, lens), lens), kH100Sms).on);
  EXPECT_FALSE(fp::cp_plan(with_lengths(problem(4, 16, lens), lens), kH100Sms).on);  // measured slower
  const std::vector<int64_t> four(4, 8192);
  EXPECT_FALSE(fp::cp_plan(with_lengths(problem(2, 8, four), four), kH100Sms).on);  // measured slower
}

TEST(Plan, CpSegmentsFillOneWave) {
  const fp::CpPlan p = fp::cp_plan(problem(2, 8, {32768}, FLASHGDN_CP_ON), kH100Sms);
  ASSERT_TRUE(p.on);
  // 8 heads x 2 slices = 16 CTAs per segment: 8 segments of 64 chunks, 128 CTAs in the final pass.
  EXPECT_EQ(p.seg_chunks, 64);
  EXPECT_GE(p.g_max, 8);
  // Tiny problems still get at least two segments per sequence.
  const fp::CpPlan q = fp::cp_plan(problem(1, 2, {100}, FLASHGDN_CP_ON), kH100Sms);
  EXPECT_EQ(q.seg_chunks, 1);
  // The head form's passes (one final-pass CTA per segment and head): 16 segments of 32 chunks, 128 CTAs.
  const fp::CpPlan h = fp::cp_plan(problem(2, 8, {32768}, FLASHGDN_CP_ON), kH100Sms, true);
  ASSERT_TRUE(h.on);
  EXPECT_EQ(h.seg_chunks, 32);
  EXPECT_GE(h.g_max, 16);
  // The workspace follows the plan: more segments, larger cp_end / cp_h0.
  EXPECT_GT(fp::layout(problem(2, 8, {32768}, FLASHGDN_CP_ON), kH100Sms, true).total,
            fp::layout(problem(2, 8, {32768}, FLASHGDN_CP_ON), kH100Sms).total);
}

// The head form's passes (cost model calibrated on H100 at 59d39f1): CP where the head passes measured faster than
// the sequential paths (8/32 1x32768 1.11 vs 1.74 ms, 16/16 28672+4096 0.65 vs 1.12 ms with --cp), not where the head
// form's sequential kernel fills the GPU.
TEST(Plan, HeadCpCostModel) {
  auto on = [](int64_t hqk, int64_t hv, std::vector<int64_t> lens) {
    return fp::cp_plan(with_lengths(problem(hqk, hv, lens), lens), kH100Sms, true).on;
  };
  EXPECT_TRUE(on(2, 8, {32768}));
  EXPECT_TRUE(on(8, 32, {32768}));
  EXPECT_TRUE(on(16, 16, {28672, 4096}));
  EXPECT_TRUE(on(4, 16, {8192}));
  EXPECT_TRUE(on(16, 64, {8192}));  // 7bfa73e: 0.442 vs 0.525 ms
  EXPECT_TRUE(on(16, 48, {8192}));  // 0.387 vs 0.485
  EXPECT_FALSE(on(2, 8, std::vector<int64_t>(8, 1024)));  // 0.124 vs 0.093
  EXPECT_FALSE(on(16, 64, {8192, 8192, 8192, 8192}));
  EXPECT_FALSE(on(16, 32, std::vector<int64_t>(8, 1024)));
  // Unequal lengths: the passes' work spread over the SMs (066e912: 16/48 CP 1.049 vs 1.454 ms with the bench's gates;
  // 16/64 CP 1.168 vs 1.546 there, but costed 1.18x the sequential side with the full transition, g = 0's case).
  EXPECT_TRUE(on(16, 48, {28672, 4096}));
  EXPECT_FALSE(on(16, 64, {28672, 4096}));
  // The warm-up's bounds and choices have workspace regions of their own with head-form CP only.
  const Problem pr = problem(2, 8, {32768});
  const fp::Layout h = fp::layout(pr, kH100Sms, true), p = fp::layout(pr, kH100Sms);
  EXPECT_NE(h.cdecay, 0u);
  EXPECT_NE(h.cp_warm, 0u);
  EXPECT_EQ(p.cdecay, 0u);
  EXPECT_EQ(p.cp_warm, 0u);
  EXPECT_GE(h.total, h.cp_warm + static_cast<size_t>(h.cp.g_max) * 8 * sizeof(int32_t));
}

// The gate-driven warm-up's window (params.hpp): trailing chunks until the bounds sum to <= -20, else 0 (M needed).
TEST(Plan, WarmupWindow) {
  const std::vector<float> decaying(10, -3.f);
  EXPECT_EQ(fp::warmup_chunks(decaying.data(), 1, 10), 7);  // -21 after 7 chunks
  EXPECT_EQ(fp::warmup_chunks(decaying.data(), 1, 6), 0);   // -18: not enough, the full transition
  const std::vector<float> flat(40, 0.f);                    // g = 0 (and contractive keys): never
  EXPECT_EQ(fp::warmup_chunks(flat.data(), 1, 40), 0);
  const std::vector<float> exact = {-1.f, -10.f, -10.f};     // <= is enough: the last two chunks
  EXPECT_EQ(fp::warmup_chunks(exact.data(), 1, 3), 2);
  // Expanding tokens (beta ||k||² > 2) raise a chunk's bound: the window grows past them.
  const std::vector<float> expand = {-30.f, 5.f, -19.f};
  EXPECT_EQ(fp::warmup_chunks(expand.data(), 1, 3), 3);
  // The walk starts at the segment's end, over a strided array (chunk-major, heads inside).
  const std::vector<float> strided = {-30.f, 0.f, -1.f, 0.f, -1.f, 0.f};
  EXPECT_EQ(fp::warmup_chunks(strided.data(), 2, 3), 3);
  const std::vector<float> nan = {-30.f, std::nanf(""), -1.f};  // a NaN bound never passes: the full transition
  EXPECT_EQ(fp::warmup_chunks(nan.data(), 1, 3), 0);
}

// Host copy of the kernels' bookkeeping: offsets as chunk_offsets_kernel computes them.
struct Offsets {
  std::vector<int64_t> chunks, segs;
};
Offsets offsets(const std::vector<int64_t>& lens, int seg_chunks) {
  Offsets o;
  o.chunks.assign(1, 0);
  o.segs.assign(1, 0);
  for (int64_t l : lens) {
    const int64_t c = (l + fp::kChunk - 1) / fp::kChunk;
    o.chunks.push_back(o.chunks.back() + c);
    o.segs.push_back(o.segs.back() + fp::segments_of(c, seg_chunks));
  }
  return o;
}

// For random length mixes (empty and one-token sequences included): g_max bounds the segment count, and
// the segment table covers every chunk of every sequence exactly once, in order, with one last segment
// per sequence; entries past the count say so.
TEST(Plan, SegmentTableCoversEveryChunkOnce) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> nseq(1, 9), kind(0, 5), len(2, 5000);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int64_t> lens(nseq(rng));
    for (int64_t& l : lens) {
      const int k = kind(rng);
      l = k == 0 ? 0 : k == 1 ? 1 : k == 2 ? 64 : len(rng);
    }
    Problem pr = problem(1, 1 + trial % 8, lens, FLASHGDN_CP_ON);
    if (pr.T == 0) continue;
    const fp::CpPlan p = fp::cp_plan(pr, trial % 2 ? kH100Sms : 16);
    ASSERT_TRUE(p.on);
    const Offsets o = offsets(lens, p.seg_chunks);
    const int64_t N = static_cast<int64_t>(lens.size());
    ASSERT_LE(o.segs[N], p.g_max) << "trial " << trial;
    std::vector<int64_t> next(N, 0);  // next expected chunk of each sequence
    std::vector<int> lasts(N, 0);
    for (int64_t g = 0; g < p.g_max; ++g) {
      const auto si = fp::segment_info(g, o.segs.data(), o.chunks.data(), N, p.seg_chunks);
      if (g >= o.segs[N]) {
        EXPECT_EQ(si.nch, -1);
        continue;
      }
      ASSERT_GE(si.nch, 0);
      ASSERT_LT(si.n, N);
      EXPECT_EQ(si.c0, next[si.n]) << "trial " << trial << " g " << g;
      EXPECT_LE(si.nch, p.seg_chunks);
      next[si.n] += si.nch;
      lasts[si.n] += si.last;
      if (si.last) EXPECT_EQ(next[si.n], o.chunks[si.n + 1] - o.chunks[si.n]);
    }
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_EQ(next[n], o.chunks[n + 1] - o.chunks[n]) << "sequence " << n;
      EXPECT_EQ(lasts[n], 1) << "sequence " << n;
    }
  }
}

TEST(Plan, LayoutRegionsAreAlignedAndDisjoint) {
  for (int32_t cp : {FLASHGDN_CP_OFF, FLASHGDN_CP_ON})
  for (bool head : {false, true}) {
    const Problem pr = problem(2, 6, {300, 0, 65}, cp);
    const fp::Layout l = fp::layout(pr, kH100Sms, head);
    std::vector<size_t> starts = {l.offsets, l.order, l.info, l.ready, l.prepared, l.aux, l.w, l.u, l.pm};
    if (l.cp.on) starts.insert(starts.end(), {l.seg_offsets, l.seg, l.cp_end, l.cp_h0});
    if (l.cp.on && head) starts.insert(starts.end(), {l.cdecay, l.cp_warm});
    for (size_t i = 0; i < starts.size(); ++i) {
      EXPECT_EQ(starts[i] % 256, 0u);
      if (i + 1 < starts.size()) EXPECT_LT(starts[i], starts[i + 1]);
    }
    EXPECT_LE(starts.back(), l.total);
    EXPECT_EQ(l.cp.on, cp == FLASHGDN_CP_ON);
  }
}

}  // namespace

namespace {

// The backward's workspace: the forward's (CP off, whatever the problem asked) then its own regions,
// 256-byte aligned, in order, each as large as documented (docs/design.md §4.2).
TEST(Plan, BackwardWorkspaceRegions) {
  const Problem pr = problem(2, 6, {200, 63, 65, 1}, FLASHGDN_CP_ON);
  const fp::BwdLayout l = fp::bwd_layout(pr, kH100Sms);
  Problem off = pr;
  off.cp_mode = FLASHGDN_CP_OFF;
  EXPECT_FALSE(l.fwd.cp.on);
  EXPECT_EQ(l.fwd.total, fp::layout(off, kH100Sms).total);
  const size_t chunks = static_cast<size_t>(pr.max_chunks()), hv = 6, kv = 128 * 128, tokens = 329;
  const size_t want[6] = {chunks * hv * kv * 2, chunks * hv * kv * 2, chunks * hv * 64 * 72 * 2,
                          chunks * hv * 64 * 72 * 2, tokens * hv * 128 * 2, tokens * hv * 128 * 2};
  const size_t at[7] = {l.h_states, l.dstates, l.ab, l.at, l.dqh, l.dkh, l.total};
  EXPECT_GE(l.h_states, l.fwd.total);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(at[i] % 256, 0u) << i;
    EXPECT_GE(at[i + 1] - at[i], want[i]) << i;
    EXPECT_LT(at[i + 1] - at[i], want[i] + 256) << i;
  }
}

}  // namespace

namespace {

// Hqk = Hv without l2norm: stage 3 writes dq, dk directly, so the layout has no dq̂ / dk̂ buffers.
TEST(Plan, BackwardWorkspaceGroupOneHasNoQkBuffers) {
  Problem pr = problem(4, 4, {300});
  fp::BwdLayout l = fp::bwd_layout(pr, kH100Sms);
  EXPECT_EQ(l.dkh, l.dqh);
  EXPECT_EQ(l.total, l.dkh);
  pr.l2norm = true;
  l = fp::bwd_layout(pr, kH100Sms);
  EXPECT_GE(l.total - l.dkh, static_cast<size_t>(300 * 4 * 128 * 2));
}

}  // namespace
