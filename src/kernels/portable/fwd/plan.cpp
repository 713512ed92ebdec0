// Host-side planning of the portable forward (plan.hpp).
#include "kernels/portable/fwd/plan.hpp"

#include <algorithm>

#include "flashgdn/flashgdn.h"
#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::portable {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

}  // namespace

int choose_bv(const Problem& pr, int num_sms) {
  // Narrow slices buy parallelism when sequences x heads cannot fill the GPU; wide slices do less
  // redundant Q/K/W traffic and fewer products per column when they can.
  num_sms = std::max(1, num_sms);
  int best = 16;
  double best_cost = 1e300;
  for (int bv : {64, 32, 16}) {
    if (bv > pr.V) continue;
    const int64_t ctas = pr.N * pr.Hv * (pr.V / bv);
    // NOTE: measured on H100 at 036f30d: fractional waves for N = 1 picked BV = 32 on 16/48 1x8192
    // (192 CTAs, two full waves) and lost 19%.
    const double waves = pr.N == 1 ? static_cast<double>((ctas + num_sms - 1) / num_sms)
                                   : std::max(1.0, static_cast<double>(ctas) / num_sms);
    const double cost = waves * chunk_time(bv);
    if (cost < best_cost - 1e-9) {
      best_cost = cost;
      best = bv;
    }
  }
  return best;
}

CpPlan cp_plan(const Problem& pr, int num_sms) {
  CpPlan p;
  if (pr.N == 0 || pr.cp_mode == FLASHGDN_CP_OFF) return p;
  num_sms = std::max(0, num_sms);
  const int64_t chunks_total = (pr.B * pr.T + kChunk - 1) / kChunk;
  const int64_t per_seq = std::max<int64_t>(1, (chunks_total + pr.N - 1) / pr.N);  // lengths are on the device
  const int64_t units = pr.N * pr.Hv * std::max<int64_t>(1, pr.V / kCpBv);
  // Segments per sequence: the final pass (units CTAs per segment) should fit one wave.
  const int64_t segs = std::max<int64_t>(2, num_sms / units);
  const int seg_chunks = static_cast<int>(std::max<int64_t>(1, (per_seq + segs - 1) / segs));
  if (pr.cp_mode == FLASHGDN_CP_AUTO) {
    // Cost model (whole waves; one CTA per SM): sequential recurrence vs transition pass + scan + final pass.
    const int sms = std::max(1, num_sms);
    auto waves = [&](int64_t ctas) { return static_cast<double>((ctas + sms - 1) / sms); };
    const int bv = choose_bv(pr, sms);
    const double seq = waves(pr.N * pr.Hv * (pr.V / bv)) * per_seq * chunk_time(bv);
    const int64_t nseg = (per_seq + seg_chunks - 1) / seg_chunks;
    // NOTE: calibrated on H100 (2/8 1x8192, 16-chunk segments): the transition pass (no output work) took
    // 0.75 x a chunk per chunk, the final pass 1 x, each plus about one chunk of pipeline fill; the scan
    // ~3 us a segment. Lengths are unknown on the host: the sequential side assumes equal lengths, its
    // best case, so CP is taken only where it wins even then.
    const double pass1 =
        waves((nseg - 1) * pr.N * pr.Hv * ((pr.V + pr.K) / kCpBv)) * (seg_chunks + 1) * 0.75 * chunk_time(kCpBv);
    const double pass3 = waves(nseg * units) * (seg_chunks + 1) * chunk_time(kCpBv);
    const double scan = 3.0 * (nseg - 1);
    if (nseg < 2 || pass1 + pass3 + scan > 0.9 * seq) return p;
  }
  p.on = true;
  p.seg_chunks = seg_chunks;
  // Sum over sequences of max(1, ceil(c_n / L)) <= N + sum c_n / L <= N + max_chunks / L.
  p.g_max = pr.N + (pr.max_chunks() + p.seg_chunks - 1) / p.seg_chunks;
  return p;
}

Layout layout(const Problem& pr, int num_sms) {
  const size_t chunks = static_cast<size_t>(pr.max_chunks()), hv = static_cast<size_t>(pr.Hv);
  Layout l{};
  l.cp = cp_plan(pr, num_sms);
  size_t at = 0;
  auto region = [&](size_t bytes) {
    const size_t o = at;
    at += align_up(bytes);
    return o;
  };
  l.offsets = region((pr.N + 1) * sizeof(int64_t));
  l.order = region(pr.N * sizeof(int32_t));
  l.info = region(chunks * sizeof(FwdArgs::ChunkInfo));
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
  }
  l.total = at;
  return l;
}

}  // namespace flashgdn::portable
