// Host-side planning of the portable forward (plan.hpp).
#include "kernels/portable/fwd/plan.hpp"

#include <algorithm>
#include <cstdlib>

#include "flashgdn/flashgdn.h"
#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::portable {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Chunks of a sequence of the average length (at least one).
int64_t average_chunks(const Problem& pr) {
  const int64_t chunks_total = (pr.B * pr.T + kChunk - 1) / kChunk;
  return std::max<int64_t>(1, (chunks_total + pr.N - 1) / pr.N);
}

// Chunks of the longest sequence and of all sequences: from cu_seqlens_host when given, else equal
// lengths (T_total / N each: the best case for the sequential recurrence).
struct Lengths {
  int64_t longest, total;
};
Lengths lengths(const Problem& pr) {
  if (!pr.seq_chunks.empty()) {
    Lengths l{0, 0};
    for (int64_t c : pr.seq_chunks) {
      l.longest = std::max(l.longest, c);
      l.total += c;
    }
    return l;
  }
  const int64_t per_seq = average_chunks(pr);
  return {per_seq, per_seq * pr.N};
}

// Sequential recurrence, one CTA per SM, longest sequence first: the longest sequence's CTAs in whole
// waves, or all the work spread over the SMs, whichever is longer.
// NOTE: H100, 8/32 28672+4096: BV = 32 2.05 ms vs BV = 64 2.35 ms (cd5b8bc), which the equal-length
// estimate got backwards; the lengths come from cu_seqlens_host.
double sequential_cost(const Problem& pr, int bv, int sms) {
  const Lengths l = lengths(pr);
  const int64_t per_seq_ctas = pr.Hv * (pr.V / bv);
  const double long_waves = static_cast<double>((per_seq_ctas + sms - 1) / sms);
  const double spread = static_cast<double>(l.total) * per_seq_ctas / sms;
  return std::max(static_cast<double>(l.longest) * long_waves, spread) * chunk_time(bv);
}

}  // namespace

int choose_bv(const Problem& pr, int num_sms) {
  // Narrow slices buy parallelism when sequences x heads cannot fill the GPU; wide slices do less
  // redundant Q/K/W traffic and fewer products per column when they can.
  // NOTE: measured on H100 at 036f30d: fractional waves for N = 1 picked BV = 32 on 16/48 1x8192
  // (192 CTAs, two full waves) and lost 19%: one sequence's CTAs count in whole waves.
  num_sms = std::max(1, num_sms);
  int best = 16;
  double best_cost = 1e300;
  for (int bv : {64, 32, 16}) {
    if (bv > pr.V) continue;
    const double cost = sequential_cost(pr, bv, num_sms);
    if (cost < best_cost - 1e-9) {
      best_cost = cost;
      best = bv;
    }
  }
  return best;
}

CpPlan cp_plan(const Problem& pr, int num_sms, bool head) {
  CpPlan p;
  if (pr.N == 0 || pr.cp_mode == FLASHGDN_CP_OFF) return p;
  num_sms = std::max(0, num_sms);
  const int64_t per_seq = average_chunks(pr);
  const int64_t units = pr.Hv * (head ? 1 : std::max<int64_t>(1, pr.V / kCpBv));  // final-pass CTAs per segment
  const int64_t units1 = pr.Hv * (head ? 2 : (pr.V + pr.K) / kCpBv);               // transition-pass CTAs
  // Segments per sequence (of the average length): the final pass should fit one wave.
  const int64_t segs = std::max<int64_t>(2, num_sms / (pr.N * units));
  int seg_chunks = static_cast<int>(std::max<int64_t>(1, (per_seq + segs - 1) / segs));
  // FLASHGDN_CP_SEG_CHUNKS=n: segments of n chunks (A/B of the segment length; the workspace query reads it too).
  if (const char* e = std::getenv("FLASHGDN_CP_SEG_CHUNKS"); e != nullptr && std::atoi(e) > 0) seg_chunks = std::atoi(e);
  if (pr.cp_mode == FLASHGDN_CP_AUTO) {
    // Cost model (whole waves; one CTA per SM): sequential recurrence vs transition pass + scan + final pass.
    // NOTE: calibrated on H100 (2/8 1x8192, 16-chunk segments): the transition pass (no output work) took
    // 0.75 x a chunk per chunk, the final pass 1 x, each plus about one chunk of pipeline fill; the scan
    // ~4 us a segment. Without cu_seqlens_host the sequential side assumes equal lengths, its best case,
    // so CP is taken only where it wins even then.
    const int sms = std::max(1, num_sms);
    auto waves = [&](int64_t ctas) { return static_cast<double>((ctas + sms - 1) / sms); };
    const double seq = sequential_cost(pr, choose_bv(pr, sms), sms);
    int64_t segments = 0, transitions = 0, longest_chain = 0;
    // Chunk-steps of the head-form passes per head, one more per segment for the pipeline's fill: the transition
    // pass covers every segment but a sequence's last, the final pass every segment; and the longest segment.
    int64_t work1 = 0, work3 = 0, longest_seg = 0;
    auto add = [&](int64_t count, int64_t chunks) {
      const int64_t ns = segments_of(chunks, seg_chunks);
      segments += count * ns;
      transitions += count * (ns - 1);
      longest_chain = std::max(longest_chain, ns - 1);
      const int64_t last = chunks - (ns - 1) * seg_chunks;  // the last segment's chunks (0 for an empty sequence)
      work1 += count * (ns - 1) * (seg_chunks + 1);
      work3 += count * ((ns - 1) * (seg_chunks + 1) + last + 1);
      longest_seg = std::max<int64_t>(longest_seg, ns > 1 ? seg_chunks : last);
    };
    if (!pr.seq_chunks.empty()) {
      for (int64_t c : pr.seq_chunks) add(1, c);
    } else {
      add(pr.N, per_seq);
    }
    if (transitions == 0) return p;
    if (head) {
      // Head-form passes (H100, 59d39f1, ncu kernel durations on 2/8 1x32768, 8/32 1x32768, 16/16 28672+4096): the
      // transition pass ~1.6 us a chunk, the final pass ~2.9, per CTA (one per SM); the scan re-reads each M once per
      // 8-column tile (~0.5 us per transition and head at ~2 TB/s), at least ~3.5 us a step of the longest chain.
      // The transition is costed in full (M included): the gate-driven warm-up that usually shortens it depends on
      // the data. The sequential side: the head form's kernel (~2.7 us a chunk) where the plan has 64-column slices,
      // else the portable recurrence plus its full prepare (~0.04 us more per chunk and head than the A-only one).
      // NOTE: each pass costs its chunk-steps spread over the SMs, at least its longest segment (the block scheduler
      // packs segments of unequal lengths): whole waves of full-length segments overcosted unequal sequences (H100,
      // 066e912, 16/48 28672+4096: CP with these 128-chunk segments 1.049 ms vs 1.454 without; costed 1.19x the
      // sequential side by whole waves, 0.88x spread). Of the 40 table rows only that one changes its choice.
      const double pass1 = std::max(static_cast<double>(seg_chunks + 1), static_cast<double>(work1) * units1 / sms) * 1.6;
      const double pass3 = std::max(static_cast<double>(longest_seg + 1), static_cast<double>(work3) * units / sms) * 2.9;
      const double scan = std::max(0.5 * static_cast<double>(transitions) * pr.Hv * (pr.V / 128.0),
                                   3.5 * static_cast<double>(longest_chain));
      const Lengths l = lengths(pr);
      const int bv = choose_bv(pr, sms);
      const double head_seq = std::max(static_cast<double>(l.longest) * waves(pr.Hv),
                                       static_cast<double>(l.total) * pr.Hv / sms) * 2.7;
      const double port_seq = seq + 0.04 * static_cast<double>(l.total) * pr.Hv;
      // NOTE: below 0.95x (not 0.9x): with the warm-up the transition is usually far cheaper than costed (H100,
      // 7bfa73e, bench gates: 16/64 1x8192 0.442 vs 0.525 ms, 16/48 1x8192 0.387 vs 0.485; costed 324 vs 346 us).
      if (pass1 + pass3 + scan > 0.95 * (bv == 64 ? head_seq : port_seq)) return p;
    } else {
      const double pass1 = waves(transitions * units1) * (seg_chunks + 1) * 0.75 * chunk_time(kCpBv);
      const double pass3 = waves(segments * units) * (seg_chunks + 1) * chunk_time(kCpBv);
      const double scan = 4.0 * longest_chain;
      if (pass1 + pass3 + scan > 0.9 * seq) return p;
    }
  }
  p.on = true;
  p.seg_chunks = seg_chunks;
  // Sum over sequences of max(1, ceil(c_n / L)) <= N + sum c_n / L <= N + max_chunks / L: any lengths.
  p.g_max = pr.N + (pr.max_chunks() + p.seg_chunks - 1) / p.seg_chunks;
  return p;
}

Layout layout(const Problem& pr, int num_sms, bool head_cp) {
  const size_t chunks = static_cast<size_t>(pr.max_chunks()), hv = static_cast<size_t>(pr.Hv);
  Layout l{};
  l.cp = cp_plan(pr, num_sms, head_cp);
  size_t at = 0;
  auto region = [&](size_t bytes) {
    const size_t o = at;
    at += align_up(bytes);
    return o;
  };
  l.offsets = region((pr.N + 1) * sizeof(int64_t));
  l.order = region(pr.N * sizeof(int32_t));
  l.info = region(chunks * sizeof(FwdArgs::ChunkInfo));
  l.ready = region(chunks * hv * sizeof(int32_t));
  l.prepared = region(sizeof(int32_t));
  l.aux = region(chunks * hv * 3 * kChunk * sizeof(float));
  l.w = region(chunks * hv * w_image_elems(static_cast<int>(pr.K)) * 2);
  l.u = region(chunks * hv * u_image_elems(static_cast<int>(pr.V), kMinBv) * 2);
  l.pm = region(chunks * hv * pm_image_elems() * 2);
  if (l.cp.on) {
    const size_t g = static_cast<size_t>(l.cp.g_max), kk = static_cast<size_t>(pr.K);
    l.seg_offsets = region((pr.N + 1) * sizeof(int64_t));
    l.seg = region(g * sizeof(FwdArgs::SegInfo));
    l.cp_end = region(g * hv * kk * (pr.V + pr.K) * sizeof(float));
    l.cp_h0 = region(g * hv * kk * pr.V * sizeof(float));
    if (head_cp) {
      l.cdecay = region(chunks * hv * sizeof(float));
      l.cp_warm = region(g * hv * sizeof(int32_t));
    }
  }
  l.total = at;
  return l;
}

BwdLayout bwd_layout(const Problem& pr_in, int num_sms) {
  Problem pr = pr_in;
  pr.cp_mode = FLASHGDN_CP_OFF;
  BwdLayout l{};
  l.fwd = layout(pr, num_sms);
  const size_t chunks = static_cast<size_t>(pr.max_chunks()), hv = static_cast<size_t>(pr.Hv);
  const size_t kk = static_cast<size_t>(pr.K), vv = static_cast<size_t>(pr.V);
  size_t at = l.fwd.total;
  auto region = [&](size_t bytes) {
    const size_t o = at;
    at += align_up(bytes);
    return o;
  };
  l.h_states = region(chunks * hv * kk * vv * 2);
  l.dstates = region(chunks * hv * kk * vv * 2);
  l.ab = region(chunks * hv * pm_image_elems() * 2);
  l.at = region(chunks * hv * pm_image_elems() * 2);  // bf16 whatever the input dtype
  // Hqk = Hv without l2norm: stage 3 writes dq, dk directly (no per-value-head buffers).
  const size_t qk_bytes = pr.group == 1 && !pr.l2norm ? 0 : static_cast<size_t>(pr.B * pr.T) * hv * kk * 2;
  l.dqh = region(qk_bytes);
  l.dkh = region(qk_bytes);
  l.total = at;
  return l;
}

}  // namespace flashgdn::portable
