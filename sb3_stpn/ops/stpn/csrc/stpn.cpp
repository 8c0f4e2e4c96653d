// Fused CPU kernel of the STPN recurrence (sb3_stpn/ops/stpn/README.md): the whole time loop forward and its
// hand-derived backward (BPTT), compiled at first use by sb3_stpn/ops/stpn/fused_cpp.py.
//
// Every sample is independent, so the work is split over the batch (ATen's OpenMP parallel_for) and a
// sample runs all its steps with its F hot in cache. G = W + F, its norms, the drive and the F update
// are fused passes that never materialise G.
//
// Two layouts of a sample's F. Inference (rollouts: T=1, no grad) works on the public rows (H, Kp),
// Kp = K + 1 with a plastic bias: one pass per neuron, whose sums over K are horizontal. Training
// (forward with checkpoints, and the backward) works on F transposed to (Kp, H), W, lambda and gamma
// to (K, H): every inner loop then runs over the H neurons, so the per-neuron sums (norm, drive and
// the backward's dot products) are plain vertical accumulators and the row of a presynaptic unit k is
// whole vectors (H = 64), where a row of K = 68 was a few vectors, a tail, loop overhead and a
// horizontal sum per neuron (that overhead was most of the time at B=256 T=32 H=64). The main loops
// run over blocks of kLanes neurons with the rows inner, so a block's sums stay in registers; the sums
// over neurons (dz, Oja's trace) gather in kLanes lanes per row, one horizontal sum per row. The plastic
// bias becomes row K of F, of length H like the others. F is transposed at the call's boundary (one
// pass per sequence, small against T steps); the checkpoints stay transposed, since only the backward
// reads them. A rollout step would pay that boundary pass for one step, hence the row layout there.
//
// Backward recomputes the states of one checkpoint segment (C steps) into a per-thread buffer and
// walks it in reverse.
//
// norm_time="post" (the new F divided by its own norm m = g ||W + F'||) adds one pass over F per step
// to the forward (the division, with the next step's sums) and two to the backward (the update and
// its norm recomputed, then the gradient through the division); the default "pre" runs as before. A
// norm gain g only scales 1/n per neuron.
//
// retention_max (rho) relative to the norm ("pre" with normalize): each decay acts as min(lambda / n, rho), so
// F_{t-1} is multiplied by lambda / n where that is below rho and by rho elsewhere, where neither lambda nor n gets
// a gradient through the decay; elsewhere the caller has clamped lambda. A template parameter (Retain), so that
// without it the loops are as they were, rounding included (the min cost 7-16% there).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <initializer_list>
#include <mutex>
#include <new>
#include <vector>

namespace {

constexpr double kNormEps = 1e-16;
// Neurons per block and lanes of partial sums in the training kernel: a multiple of the vector width
constexpr int64_t kLanes = 16;

struct Options {
  // post: norm_time="post" with normalize (the new F is divided by its own norm; the old one is not)
  bool recurrent, normalize, oja, plastic, post;
  double clamp;  // +inf without a clamp: clamping and its mask are then no-ops, with no branch in the loops
  double retention;  // rho, the bound of lambda / n ("pre" with normalize only), +inf without one
};

// lambda F_{t-1} times the decay factor d (1/n for "pre", 1 for "post"); with Retain, min(lambda d, rho) F_{t-1}.
template <bool Retain, typename T>
inline T decayed(T l, T f, T d, T rho) {
  if constexpr (Retain) return std::min(l * d, rho) * f;
  return l * f * d;
}

// Per-thread buffers start on a cache line, as tensors do. GCC peels a loop's first iterations until a
// pointer is aligned, and the peeled ones may round differently from the vector body (FMA contraction):
// with malloc's 16-byte alignment the peel, so the last bits of the gradients, varied from call to call.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* ptr, std::size_t) { ::operator delete(ptr, std::align_val_t(64)); }
  bool operator==(const CacheLineAllocator&) const { return true; }
};

template <typename T>
using Buffer = std::vector<T, CacheLineAllocator<T>>;

template <typename T>
struct Params {
  // weight (H,K), bias (H), lambda/gamma (H,K), bias lambda/gamma (H), norm gain (H) or nullptr
  const T *W, *b, *L, *G, *bl, *bg, *ng;
  int64_t H, I, K, Kp;
};

// The bound is cast to T first: compared as double, float vectors were widened to double in the loops.
// Clamp = false (no clamp value set) drops the clamp and its gradient mask at compile time: in the
// transposed loops they were a third of the arithmetic of the backward's main pass.
template <bool Clamp = true, typename T>
inline T clamp_value(T v, const Options& o) {
  if constexpr (!Clamp) return v;
  const T c = static_cast<T>(o.clamp);
  return std::min<T>(std::max<T>(v, -c), c);
}

// True where torch.clamp lets the gradient through (inside the closed interval).
template <bool Clamp = true, typename T>
inline bool inside(T v, const Options& o) {
  if constexpr (!Clamp) return true;
  const T c = static_cast<T>(o.clamp);
  return v >= -c && v <= c;
}

// Sum of squares and drive G.z of one row of G = W + F (and, if asked, sum z^2 |G|).
template <typename T>
inline void row_pass(const T* __restrict__ w, const T* __restrict__ f, const T* __restrict__ z, const T* __restrict__ z2,
                     int64_t K, T& ss, T& a, T* energy) {
  T s = 0, d = 0, en = 0;
#pragma omp simd reduction(+ : s, d)
  for (int64_t k = 0; k < K; ++k) {
    const T g = w[k] + f[k];
    s += g * g;
    d += g * z[k];
  }
  if (energy) {
#pragma omp simd reduction(+ : en)
    for (int64_t k = 0; k < K; ++k) en += z2[k] * std::abs(w[k] + f[k]);
    *energy = en;
  }
  ss = s;
  a = d;
}

// 1/n of neuron i from its sum of squares: n = g_i (||G_i|| + eps), g_i = 1 without a norm gain.
template <typename T>
inline T inverse_norm(T ss, int64_t i, const Params<T>& p, const Options& o) {
  if (!o.normalize) return T(1);
  const T norm = std::sqrt(ss) + T(kNormEps);
  return T(1) / (p.ng ? p.ng[i] * norm : norm);
}

// e = z for Hebb; e = z - F^T h for Oja (F before the update).
template <typename T>
void presynaptic_trace(const T* F, const T* z, const T* h, const Params<T>& p, const Options& o, T* e) {
  std::copy(z, z + p.K, e);
  if (!o.oja) return;
  for (int64_t i = 0; i < p.H; ++i) {
    const T* f = F + i * p.Kp;
    const T hi = h[i];
#pragma omp simd
    for (int64_t k = 0; k < p.K; ++k) e[k] -= f[k] * hi;
  }
}

// Row i of F_t from that of F_{t-1}: src to dst, which may be the same row (in place) or not (the
// caller's F_0 is only read, and the backward's recompute writes each state into its own slot). With
// Next, the same pass also returns the next step's sums of this row of G = W + F_t (row_pass with
// z_next), so that the forward reads W and F once per step instead of twice.
template <typename T, bool Next, bool Retain>
inline void update_row(const T* src, T* dst, int64_t i, T invn, T hi, const T* __restrict__ e,
                       const T* __restrict__ z_next, const Params<T>& p, const Options& o, T& ss, T& a) {
  const T *__restrict__ l = p.L + i * p.K, *__restrict__ g = p.G + i * p.K, *__restrict__ w = p.W + i * p.K;
  const T rho = static_cast<T>(o.retention);
  T s = 0, d = 0;
#pragma omp simd reduction(+ : s, d)
  for (int64_t k = 0; k < p.K; ++k) {
    const T v = clamp_value(decayed<Retain>(l[k], src[k], invn, rho) + g[k] * hi * e[k], o);
    dst[k] = v;
    if constexpr (Next) {
      const T gk = w[k] + v;
      s += gk * gk;
      d += gk * z_next[k];
    }
  }
  if (o.plastic) dst[p.K] = clamp_value(p.bl[i] * src[p.K] + p.bg[i] * hi, o);
  if constexpr (Next) {
    ss = s;
    a = d;
  }
}

// Per-thread buffers of one sample's step (z_next: the next step's input, for the fused update).
template <typename T>
struct Scratch {
  // decay: what lambda F_{t-1} is multiplied by, 1/n ("pre", aliasing invn) or 1 ("post", ones);
  // qq, qa, invm, coef: the sums, 1/m and the gradient coefficient of the "post" division by m
  Buffer<T> z, z_next, z2, e, de, dz, dzp, invn, ss, a, u, h, dh, dhc, en, ones, qq, qa, invm, coef;
  const T* decay;
  // Whether every drive so far was finite (step_output): a non-finite F shows in its neurons' drives
  bool finite = true;
  Scratch(int64_t H, int64_t K, const Options& o)
      : z(K), z_next(K), z2(K), e(K), de(K), dz(K), dzp(K * kLanes), invn(H), ss(H), a(H), u(H), h(H), dh(H), dhc(H),
        en(H), ones(H, T(1)), qq(H), qa(H), invm(H), coef(H), decay(o.post ? ones.data() : invn.data()) {}
};

// tanh over n values. float: Eigen's rational approximation (within 4e-7 of tanh), which vectorises
// where std::tanh is a scalar libm call per neuron; double: std::tanh.
inline void tanh_all(const float* __restrict__ u, float* __restrict__ h, int64_t n) {
  constexpr float a1 = 4.89352455891786e-03f, a3 = 6.37261928875436e-04f, a5 = 1.48572235717979e-05f,
                  a7 = 5.12229709037114e-08f, a9 = -8.60467152213735e-11f, a11 = 2.00018790482477e-13f,
                  a13 = -2.76076847742355e-16f, b0 = 4.89352518554385e-03f, b2 = 2.26843463243900e-03f,
                  b4 = 1.18534705686654e-04f, b6 = 1.19825839466702e-06f, bound = 7.90531110763549805f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float x = std::min(std::max(u[i], -bound), bound), x2 = x * x;
    const float p = x * (((((((a13 * x2 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2) + a1);
    const float q = ((b6 * x2 + b4) * x2 + b2) * x2 + b0;
    h[i] = std::abs(u[i]) < 4e-4f ? u[i] : p / q;
  }
}

inline void tanh_all(const double* u, double* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = std::tanh(u[i]);
}

// The sums of one step of one sample over each row of G = W + F (H, Kp): ss = ||G||^2, a = G z, per
// neuron. Returns the energy (0 unless asked).
template <typename T>
T drive_pass(const T* F, const T* z, T* z2, bool record_energy, T* ss, T* a, const Params<T>& p, const Options& o) {
  if (record_energy)
    for (int64_t k = 0; k < p.K; ++k) z2[k] = z[k] * z[k];
  T energy = 0;
  for (int64_t i = 0; i < p.H; ++i) {
    T en = 0;
    row_pass(p.W + i * p.K, F + i * p.Kp, z, z2, p.K, ss[i], a[i], record_energy ? &en : nullptr);
    energy += en * std::abs(inverse_norm(ss[i], i, p, o));
  }
  return energy;
}

// The output of one step of one sample from its sums (ss, a) and F_{t-1}: h (H), and 1/n in s.invn.
// fb: the plastic bias of neuron 0 in F_{t-1}, that of neuron i at fb[i * stride] (row layout: F + K,
// stride Kp; transposed: row K, stride 1).
template <typename T>
void step_output(const T* fb, int64_t stride, const T* ss, const T* a, T* h, Scratch<T>& s, const Params<T>& p,
                 const Options& o) {
  T *invn = s.invn.data(), *u = s.u.data();
  for (int64_t i = 0; i < p.H; ++i) {
    invn[i] = inverse_norm(ss[i], i, p, o);
    u[i] = a[i] * invn[i] + p.b[i] + (o.plastic ? fb[i * stride] : T(0));
  }
  // An inf or NaN in a row of F_{t-1} (or in z) makes its drive inf or NaN: x * 0 is then NaN, else
  // 0. One sum per step over the H drives, where a check of F itself would be a pass over F.
  T probe = 0;
#pragma omp simd reduction(+ : probe)
  for (int64_t i = 0; i < p.H; ++i) probe += u[i] * T(0);
  s.finite = s.finite && probe == T(0);
  tanh_all(u, h, p.H);
}

// The update of one step after step_output: F_t into dst from F_{t-1} in src (may be dst). With z_next
// (the next step's input, when no reset comes before it) it also writes the next step's sums into
// ss_next, a_next (may be this step's: step_output has used them). "post": the update P comes with the
// sums of W + P, then F_t = P / m, m = g (||W + P|| + eps), on the row still in cache.
template <typename T, bool Retain>
void step_update(const T* src, T* dst, const T* z, const T* z_next, const T* h, T* ss_next, T* a_next, Scratch<T>& s,
                 const Params<T>& p, const Options& o) {
  presynaptic_trace(src, z, h, p, o, s.e.data());
  for (int64_t i = 0; i < p.H; ++i) {
    const int64_t row = i * p.Kp;
    const T decay = s.decay[i];
    if (o.post) {
      update_row<T, true, Retain>(src + row, dst + row, i, decay, h[i], s.e.data(), z, p, o, s.qq[i], s.qa[i]);
      const T invm = inverse_norm(s.qq[i], i, p, o);
      T* __restrict__ f = dst + row;
#pragma omp simd
      for (int64_t k = 0; k < p.K; ++k) f[k] *= invm;
      if (z_next) row_pass<T>(p.W + i * p.K, f, z_next, nullptr, p.K, ss_next[i], a_next[i], nullptr);
    } else if (z_next) {
      update_row<T, true, Retain>(src + row, dst + row, i, decay, h[i], s.e.data(), z_next, p, o, ss_next[i],
                                  a_next[i]);
    } else {
      update_row<T, false, Retain>(src + row, dst + row, i, decay, h[i], s.e.data(), z, p, o, ss_next[i], a_next[i]);
    }
  }
}

// ---- Training: the transposed layout. F, dF: (Kp, H) per sample; W, lambda, gamma: (K, H). ----

// F (H, Kp) of one sample to (Kp, H), and back.
template <typename T>
void to_columns(const T* __restrict__ rows, T* __restrict__ cols, int64_t H, int64_t Kp) {
  for (int64_t i = 0; i < H; ++i)
    for (int64_t k = 0; k < Kp; ++k) cols[k * H + i] = rows[i * Kp + k];
}

template <typename T>
void to_rows(const T* __restrict__ cols, T* __restrict__ rows, int64_t H, int64_t Kp) {
  for (int64_t k = 0; k < Kp; ++k)
    for (int64_t i = 0; i < H; ++i) rows[i * Kp + k] = cols[k * H + i];
}

// The sum of kLanes partial sums. GCC sums an array lane by lane through the stack (and so does an
// `omp simd reduction`), a chain of kLanes dependent scalar adds; with AVX-512 or AVX2 the lanes are
// summed as a tree in registers instead.
inline float lane_sum(const float* part) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(_mm512_loadu_ps(part));
#elif defined(__AVX2__)
  const __m256 v = _mm256_add_ps(_mm256_loadu_ps(part), _mm256_loadu_ps(part + 8));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
#else
  float s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += part[j];
  return s;
#endif
}

inline double lane_sum(const double* part) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_loadu_pd(part), _mm512_loadu_pd(part + 8)));
#elif defined(__AVX2__)
  const __m256d v = _mm256_add_pd(_mm256_add_pd(_mm256_loadu_pd(part), _mm256_loadu_pd(part + 4)),
                                  _mm256_add_pd(_mm256_loadu_pd(part + 8), _mm256_loadu_pd(part + 12)));
  const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
#else
  double s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += part[j];
  return s;
#endif
}

// The sum over neurons i < H of what body(i, acc) adds to acc, along with whatever else body does per
// neuron: the loop runs over blocks of kLanes neurons, one partial sum per lane (neurons past the last
// whole block go to lane 0), summed once by lane_sum.
template <typename T, typename Body>
inline T sum_over_neurons(int64_t H, Body&& body) {
  alignas(64) T part[kLanes] = {};
  int64_t i0 = 0;
  for (; i0 + kLanes <= H; i0 += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) body(i0 + j, part[j]);
  }
  for (int64_t i = i0; i < H; ++i) body(i, part[0]);
  return lane_sum(part);
}

// drive_pass on the transposed F: ss, a (H) and the energy (0 unless asked).
template <typename T>
T drive_pass_t(const T* F, const T* z, bool record_energy, T* __restrict__ ss, T* __restrict__ a, T* __restrict__ en,
               const Params<T>& p, const Options& o) {
  const int64_t H = p.H;
  std::fill_n(ss, H, T(0));
  std::fill_n(a, H, T(0));
  for (int64_t k = 0; k < p.K; ++k) {
    const T *__restrict__ w = p.W + k * H, *__restrict__ f = F + k * H;
    const T zk = z[k];
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) {
      const T g = w[i] + f[i];
      ss[i] += g * g;
      a[i] += g * zk;
    }
  }
  if (!record_energy) return T(0);
  std::fill_n(en, H, T(0));
  for (int64_t k = 0; k < p.K; ++k) {
    const T *__restrict__ w = p.W + k * H, *__restrict__ f = F + k * H;
    const T z2 = z[k] * z[k];
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) en[i] += z2 * std::abs(w[i] + f[i]);
  }
  T energy = 0;
  for (int64_t i = 0; i < H; ++i) energy += en[i] * std::abs(inverse_norm(ss[i], i, p, o));
  return energy;
}

// presynaptic_trace on the transposed F: e_k = z_k - sum_i F_ki h_i for Oja.
template <typename T>
void presynaptic_trace_t(const T* F, const T* z, const T* __restrict__ h, const Params<T>& p, const Options& o, T* e) {
  std::copy(z, z + p.K, e);
  if (!o.oja) return;
  for (int64_t k = 0; k < p.K; ++k) {
    const T* __restrict__ f = F + k * p.H;
    e[k] -= sum_over_neurons<T>(p.H, [&](int64_t i, T& acc) { acc += f[i] * h[i]; });
  }
}

// A block's column is one cache line per row, H elements apart: the hardware prefetcher follows such a
// stride only within a page, so where a (K, H) array outgrows kFarBytes (the columns then come from L3:
// B=8 T=128 I=512 H=128 went 10% faster) the loops ask for the rows kAhead ahead themselves. Below it
// (H=64, K=68: 17 kB) the data is in L1/L2 and the extra instructions cost 5%.
constexpr int64_t kAhead = 8;
constexpr int64_t kFarBytes = 128 * 1024;

template <typename T>
inline bool far_columns(const Params<T>& p) {
  return p.K * p.H * static_cast<int64_t>(sizeof(T)) >= kFarBytes;
}

inline void prefetch(const void* ptr) {
#if defined(__GNUC__)
  __builtin_prefetch(ptr);
#endif
}

// The fused update and next sums of neurons [i0, i0 + n) over all K rows, n = N if N > 0: with a
// compile-time block of kLanes neurons the block's sums stay in registers across the rows (as sums over
// whole rows they were loaded and stored for every element).
template <typename T, bool Clamp, bool Retain, int64_t N>
inline void update_block(const T* src, T* dst, const T* __restrict__ z_next, const T* __restrict__ h,
                         T* __restrict__ ss, T* __restrict__ a, const T* __restrict__ e, const T* __restrict__ invn,
                         const Params<T>& p, const Options& o, int64_t i0, int64_t n) {
  const int64_t m = N > 0 ? N : n, H = p.H;
  const bool far = far_columns(p);
  const T rho = static_cast<T>(o.retention);
  T bs[kLanes] = {}, ba[kLanes] = {};
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t r = k * H + i0;
    const T *__restrict__ l = p.L + r, *__restrict__ g = p.G + r, *__restrict__ w = p.W + r;
    // src and dst may be the same row: each element is read before it is written (omp simd: no versioning)
    const T* f = src + r;
    T* d = dst + r;
    if (far)
      for (const T* ahead : {l, g, w, f}) prefetch(ahead + kAhead * H);
    const T ek = e[k], zk = z_next[k];
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const T v = clamp_value<Clamp>(decayed<Retain>(l[j], f[j], invn[i0 + j], rho) + g[j] * h[i0 + j] * ek, o);
      d[j] = v;
      const T gk = w[j] + v;
      bs[j] += gk * gk;
      ba[j] += gk * zk;
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    ss[i0 + j] = bs[j];
    a[i0 + j] = ba[j];
  }
}

// "post" on the transposed F: F_t = P / m with m = g (||W + P|| + eps) from the sums in s.qq (the
// plastic bias row is not divided). With z_next, the next step's sums of W + F_t into ss, a.
template <typename T>
void divide_columns(T* F, const T* z_next, T* ss, T* a, Scratch<T>& s, const Params<T>& p, const Options& o) {
  const int64_t H = p.H;
  T* __restrict__ invm = s.invm.data();
  for (int64_t i = 0; i < H; ++i) invm[i] = inverse_norm(s.qq[i], i, p, o);
  for (int64_t k = 0; k < p.K; ++k) {
    T* __restrict__ f = F + k * H;
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) f[i] *= invm[i];
  }
  if (z_next) drive_pass_t(F, z_next, false, ss, a, s.en.data(), p, o);
}

// step_update on the transposed F: F_t into dst from F_{t-1} in src (may be dst). With z_next it also
// writes the next step's sums into ss, a (this step's, already used by step_output). "post": the
// update P comes with the sums of W + P (into s.qq), then divide_columns.
template <typename T, bool Clamp, bool Retain>
void step_update_t(const T* src, T* dst, const T* z, const T* z_next, const T* __restrict__ h, T* __restrict__ ss,
                   T* __restrict__ a, Scratch<T>& s, const Params<T>& p, const Options& o) {
  const int64_t H = p.H, K = p.K;
  presynaptic_trace_t(src, z, h, p, o, s.e.data());
  const T* __restrict__ invn = s.decay;
  const T* z_sums = o.post ? z : z_next;
  T *ss_update = o.post ? s.qq.data() : ss, *a_update = o.post ? s.qa.data() : a;
  if (z_sums) {
    int64_t i0 = 0;
    for (; i0 + kLanes <= H; i0 += kLanes)
      update_block<T, Clamp, Retain, kLanes>(src, dst, z_sums, h, ss_update, a_update, s.e.data(), invn, p, o, i0,
                                             kLanes);
    if (i0 < H)
      update_block<T, Clamp, Retain, 0>(src, dst, z_sums, h, ss_update, a_update, s.e.data(), invn, p, o, i0, H - i0);
  } else {
    const T rho = static_cast<T>(o.retention);
    for (int64_t k = 0; k < K; ++k) {
      const T *__restrict__ l = p.L + k * H, *__restrict__ g = p.G + k * H;
      const T* f = src + k * H;
      T* d = dst + k * H;
      const T ek = s.e[k];
#pragma omp simd
      for (int64_t i = 0; i < H; ++i)
        d[i] = clamp_value<Clamp>(decayed<Retain>(l[i], f[i], invn[i], rho) + g[i] * h[i] * ek, o);
    }
  }
  if (o.post) divide_columns(dst, z_next, ss, a, s, p, o);
  if (o.plastic)
    for (int64_t i = 0; i < H; ++i) dst[K * H + i] = clamp_value(p.bl[i] * src[K * H + i] + p.bg[i] * h[i], o);
}

// step_update_t for the options' clamp and retention bound.
template <typename T>
auto pick_update(const Options& o) {
  const bool retain = o.retention < INFINITY;
  if (o.clamp < INFINITY) return retain ? step_update_t<T, true, true> : step_update_t<T, true, false>;
  return retain ? step_update_t<T, false, true> : step_update_t<T, false, false>;
}

// Per-thread parameter gradients, W, lambda, gamma transposed (K, H).
template <typename T>
struct Grads {
  Buffer<T> W, L, G, b, bl, bg, ng;
  explicit Grads(const Params<T>& p)
      : W(p.H * p.K), L(p.H * p.K), G(p.H * p.K), b(p.H), bl(p.H), bg(p.H), ng(p.H) {}
};

// Through n = g_i (||G_i|| + eps), from dn and the sum of squares ss of the row G_i: adds g_i's gradient
// and returns the coefficient c of dG = c G. The gradient of ||G|| is G / ||G||, zero for a zero row as
// in torch.
template <typename T>
inline T norm_backward(T dn, T ss, int64_t i, Grads<T>& g, const Params<T>& p) {
  const T norm = std::sqrt(ss);
  if (p.ng) {
    g.ng[i] += dn * (norm + T(kNormEps));
    dn *= p.ng[i];
  }
  return norm > 0 ? dn / norm : T(0);
}

// "post" backward on the transposed F, before the rest of the step's backward: from dF, the gradient
// of F_t = P / m, m = g (||W + P|| + eps), to that of the (clamped) update P, in place; adds the
// gradients of W and g. P is recomputed from F_{t-1} (F) and the step's trace s.e.
template <typename T, bool Clamp>
void post_norm_backward(const T* F, T* dF, const T* __restrict__ h, Scratch<T>& s, Grads<T>& g, const Params<T>& p,
                        const Options& o) {
  const int64_t H = p.H, K = p.K;
  T *__restrict__ qq = s.qq.data(), *__restrict__ dp = s.qa.data(), *__restrict__ invm = s.invm.data(),
    *__restrict__ coef = s.coef.data();
  std::fill_n(qq, H, T(0));
  std::fill_n(dp, H, T(0));
  for (int64_t k = 0; k < K; ++k) {
    const T *__restrict__ f = F + k * H, *__restrict__ l = p.L + k * H, *__restrict__ gm = p.G + k * H,
            *__restrict__ w = p.W + k * H, *__restrict__ d = dF + k * H;
    const T ek = s.e[k];
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) {
      const T v = clamp_value<Clamp>(l[i] * f[i] + gm[i] * h[i] * ek, o), q = w[i] + v;
      qq[i] += q * q;
      dp[i] += d[i] * v;
    }
  }
  for (int64_t i = 0; i < H; ++i) {
    invm[i] = inverse_norm(qq[i], i, p, o);
    coef[i] = norm_backward(-dp[i] * invm[i] * invm[i], qq[i], i, g, p);
  }
  for (int64_t k = 0; k < K; ++k) {
    const T *__restrict__ f = F + k * H, *__restrict__ l = p.L + k * H, *__restrict__ gm = p.G + k * H,
            *__restrict__ w = p.W + k * H;
    T *__restrict__ d = dF + k * H, *__restrict__ gW = g.W.data() + k * H;
    const T ek = s.e[k];
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) {
      const T dq = coef[i] * (w[i] + clamp_value<Clamp>(l[i] * f[i] + gm[i] * h[i] * ek, o));
      gW[i] += dq;
      d[i] = d[i] * invm[i] + dq;
    }
  }
}

// Backward of one step for neurons [i0, i0 + n), n = N if N > 0, with the rows inner: the first pass
// over the block's columns of F and dF, the per-neuron part, then the second pass over the same
// columns, still in cache (as two passes over the whole of F and dF they came back from L2 or memory:
// 12% slower than the row layout at K=640). The block's sums (s1, s2, s3), 1/n, h, da and the
// coefficient of G stay in registers; the sums over neurons (dz) gather in s.dzp, kLanes lanes per row.
// Decay: how F_{t-1} decays, a template parameter so that the default "pre" loops are as they were. kPost:
// norm_time="post", whose F_{t-1} is not divided by n (dF is already that of the update, from post_norm_backward);
// kRetain: "pre" with the retention bound.
enum Decay { kPre, kPost, kRetain };

template <typename T, bool Oja, bool Clamp, Decay D, int64_t N>
inline void backward_block(const T* __restrict__ F, T* __restrict__ dF, const T* __restrict__ h, const T* ss,
                           const T* a, Scratch<T>& s, Grads<T>& g, const Params<T>& p, const Options& o, int64_t i0,
                           int64_t n) {
  const int64_t m = N > 0 ? N : n, H = p.H, K = p.K;
  const bool far = far_columns(p);
  const T *__restrict__ invn = s.invn.data() + i0, *__restrict__ hb = h + i0;
  // Through F_t = lambda F / n + gamma h e (kRetain: min(lambda / n, rho) F): per neuron, the sums s1 (for dn)
  // and s2, s3 (for dh)
  constexpr bool Post = D == kPost, Retain = D == kRetain;
  const T rho = static_cast<T>(o.retention);
  T s1[kLanes] = {}, s2[kLanes] = {}, s3[kLanes] = {};
  for (int64_t k = 0; k < K; ++k) {
    const int64_t r = k * H + i0;
    const T *__restrict__ f = F + r, *__restrict__ l = p.L + r, *__restrict__ gm = p.G + r;
    T *__restrict__ d = dF + r, *__restrict__ gL = g.L.data() + r, *__restrict__ gG = g.G.data() + r;
    T* __restrict__ zp = s.dzp.data() + k * kLanes;
    if (far)
      for (const T* ahead : {f, l, gm, static_cast<const T*>(d), static_cast<const T*>(gL), static_cast<const T*>(gG)})
        prefetch(ahead + kAhead * H);
    const T ek = s.e[k], dek = Oja ? s.de[k] : T(0);
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const T decay = Post ? T(1) : invn[j];
      const T dk = inside<Clamp>(decayed<Retain>(l[j], f[j], decay, rho) + gm[j] * hb[j] * ek, o) ? d[j] : T(0);
      // Where the bound holds the decay at rho, neither lambda nor n gets a gradient through it
      const T ratio = l[j] * decay, dk_free = Retain && !(ratio < rho) ? T(0) : dk;
      gL[j] += dk_free * f[j] * decay;
      gG[j] += dk * hb[j] * ek;
      s1[j] += dk_free * l[j] * f[j];
      s2[j] += dk * gm[j] * ek;
      const T d_old = Retain ? dk * std::min(ratio, rho) : dk * l[j] * decay;
      if constexpr (Oja) {
        s3[j] += dek * f[j];
        d[j] = d_old - hb[j] * dek;
      } else {
        zp[j] += dk * gm[j] * hb[j];
        d[j] = d_old;
      }
    }
  }
  // Through h = tanh(G z / n + b + F_bias) and n = ||G|| + eps: per neuron, da = d(drive)/n and the
  // coefficient of G in dG
  T da[kLanes], coef[kLanes];
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = i0 + j;
    const T hi = h[i];
    T dh = s.dh[i] + s2[j] - s3[j];
    T dfb = 0;
    if (o.plastic) {
      const T fb = F[K * H + i];
      const T dfbn = inside(p.bl[i] * fb + p.bg[i] * hi, o) ? dF[K * H + i] : T(0);
      g.bl[i] += dfbn * fb;
      g.bg[i] += dfbn * hi;
      dh += dfbn * p.bg[i];
      dfb = dfbn * p.bl[i];
    }
    const T du = dh * (T(1) - hi * hi);
    g.b[i] += du;
    if (o.plastic) dF[K * H + i] = dfb + du;
    da[j] = du;
    coef[j] = 0;
    if (o.normalize) {
      da[j] = du * invn[j];
      // n = g (||G|| + eps) enters the drive, and ("pre") the decay of F, whose part is s1
      const T dn = -((Post ? T(0) : s1[j]) + du * a[i]) * invn[j] * invn[j];
      coef[j] = norm_backward(dn, ss[i], i, g, p);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const int64_t r = k * H + i0;
    const T *__restrict__ f = F + r, *__restrict__ w = p.W + r;
    T *__restrict__ d = dF + r, *__restrict__ gW = g.W.data() + r;
    T* __restrict__ zp = s.dzp.data() + k * kLanes;
    const T zk = s.z[k];
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const T gk = w[j] + f[j];
      const T dg = da[j] * zk + coef[j] * gk;
      gW[j] += dg;
      d[j] += dg;
      zp[j] += da[j] * gk;
    }
  }
}

// Backward of one step of one sample, transposed. F: the state entering the step (after a reset), z
// (in s.z) and h: its input and output; dF: in, the gradient of F after the step, out, that of F
// entering it; s.dh: the whole gradient of h; s.dz: out; ss, a: the step's sums kept by the recompute.
// Parameter gradients are added to the per-thread sums in g.
template <typename T, bool Oja, bool Clamp, Decay D>
void step_backward(const T* F, const T* __restrict__ h, const T* ss, const T* a, T* dF, Scratch<T>& s, Grads<T>& g,
                   const Params<T>& p, const Options& o) {
  const int64_t H = p.H, K = p.K;
  T* __restrict__ invn = s.invn.data();
  presynaptic_trace_t(F, s.z.data(), h, p, o, s.e.data());
  for (int64_t i = 0; i < H; ++i) invn[i] = inverse_norm(ss[i], i, p, o);
  constexpr bool Post = D == kPost;
  if (Post) post_norm_backward<T, Clamp>(F, dF, h, s, g, p, o);
  if (Oja) {
    // Oja's trace couples the neurons: mask dF first and gather de_k = sum_i dF_ki gamma_ki h_i
    for (int64_t k = 0; k < K; ++k) {
      const T *__restrict__ f = F + k * H, *__restrict__ l = p.L + k * H, *__restrict__ gm = p.G + k * H;
      T* __restrict__ d = dF + k * H;
      const T ek = s.e[k], rho = static_cast<T>(o.retention);
      s.de[k] = sum_over_neurons<T>(H, [&](int64_t i, T& acc) {
        const T decay = Post ? T(1) : invn[i];
        d[i] = inside<Clamp>(decayed<D == kRetain>(l[i], f[i], decay, rho) + gm[i] * h[i] * ek, o) ? d[i] : T(0);
        acc += d[i] * gm[i] * h[i];
      });
    }
  }
  std::fill(s.dzp.begin(), s.dzp.end(), T(0));
  int64_t i0 = 0;
  for (; i0 + kLanes <= H; i0 += kLanes)
    backward_block<T, Oja, Clamp, D, kLanes>(F, dF, h, ss, a, s, g, p, o, i0, kLanes);
  if (i0 < H) backward_block<T, Oja, Clamp, D, 0>(F, dF, h, ss, a, s, g, p, o, i0, H - i0);
  for (int64_t k = 0; k < K; ++k) s.dz[k] = lane_sum(s.dzp.data() + k * kLanes) + (Oja ? s.de[k] : T(0));
}

template <typename T, bool Oja, bool Clamp>
auto pick_backward(const Options& o) {
  if (o.post) return step_backward<T, Oja, Clamp, kPost>;
  return o.retention < INFINITY ? step_backward<T, Oja, Clamp, kRetain> : step_backward<T, Oja, Clamp, kPre>;
}

template <typename T>
Params<T> make_params(const at::Tensor& W, const at::Tensor& b, const at::Tensor& L, const at::Tensor& G,
                      const at::Tensor& bl, const at::Tensor& bg, const at::Tensor& ng, int64_t I, int64_t Kp) {
  const bool plastic = bl.defined();
  return Params<T>{W.data_ptr<T>(),
                   b.data_ptr<T>(),
                   L.data_ptr<T>(),
                   G.data_ptr<T>(),
                   plastic ? bl.data_ptr<T>() : nullptr,
                   plastic ? bg.data_ptr<T>() : nullptr,
                   ng.defined() ? ng.data_ptr<T>() : nullptr,
                   W.size(0),
                   I,
                   W.size(1),
                   Kp};
}

// z_t of sample b: x_t, then (STPNr) h_{t-1}, zero after a reset.
template <typename T>
void gather_input(T* z, const T* x, const T* h0, const T* out, bool reset, int64_t t, int64_t b, int64_t B,
                  const Params<T>& p, const Options& o) {
  std::copy_n(x + (t * B + b) * p.I, p.I, z);
  if (!o.recurrent) return;
  const T* hprev = t > 0 ? out + ((t - 1) * B + b) * p.H : h0 + b * p.H;
  if (reset)
    std::fill_n(z + p.I, p.H, T(0));
  else
    std::copy_n(hprev, p.H, z + p.I);
}

// clamp and retention: <= 0 for none. The retention bound acts only with normalize and "pre".
Options make_options(bool recurrent, bool normalize, bool oja, bool plastic, bool post, double clamp, double retention) {
  const double rho = retention > 0 && normalize && !post ? retention : INFINITY;
  return Options{recurrent, normalize, oja, plastic, normalize && post, clamp > 0 ? clamp : INFINITY, rho};
}

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return present(t) ? t->contiguous() : at::Tensor();
}

// The entry points check every input before touching memory: the ops can be called directly, without
// stpn_sequence's checks, and a wrong size would read or write out of bounds.
void check_tensor(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& x) {
  TORCH_CHECK(t.device().is_cpu(), "sb3_stpn: ", name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "sb3_stpn: ", name, " must be ", x.scalar_type(), " like x, got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "sb3_stpn: ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Checks x, h0, the episode starts and the parameters; returns Kp, the length of a row of F.
int64_t check_inputs(const at::Tensor& x, const at::Tensor& h0, const std::optional<at::Tensor>& starts,
                     const at::Tensor& W, const at::Tensor& b, const at::Tensor& L, const at::Tensor& G,
                     const std::optional<at::Tensor>& bl, const std::optional<at::Tensor>& bg,
                     const std::optional<at::Tensor>& ng, bool recurrent) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "sb3_stpn: x must be a float32 or float64 CPU tensor, got ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(x.dim() == 3, "sb3_stpn: x must have shape (T, B, I), got ", x.sizes());
  TORCH_CHECK(W.dim() == 2, "sb3_stpn: weight must have shape (H, K), got ", W.sizes());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = W.size(0), K = I + (recurrent ? H : 0);
  TORCH_CHECK(T > 0 && B > 0, "sb3_stpn: x must hold at least one step and one sample, got ", x.sizes());
  check_tensor(W, "weight", {H, K}, x);
  check_tensor(h0, "h0", {B, H}, x);
  check_tensor(b, "bias", {H}, x);
  check_tensor(L, "weight_lambda", {H, K}, x);
  check_tensor(G, "weight_gamma", {H, K}, x);
  TORCH_CHECK(present(bl) == present(bg), "sb3_stpn: pass both bias_lambda and bias_gamma, or neither");
  if (present(bl)) {
    check_tensor(*bl, "bias_lambda", {H}, x);
    check_tensor(*bg, "bias_gamma", {H}, x);
  }
  if (present(ng)) check_tensor(*ng, "norm_gain", {H}, x);
  if (present(starts)) check_tensor(*starts, "episode starts", {T, B}, x);
  return K + (present(bl) ? 1 : 0);
}

}  // namespace

// The row-layout forward of samples [begin, end) without checkpoints (inference). Returns whether
// every drive was finite.
template <typename T>
bool forward_rows(int64_t begin, int64_t end, int64_t T_, int64_t B, const T* xp, const T* h0p, const T* sp,
                  const T* f0p, T* outp, T* fp, T* ep, bool record_energy, const Params<T>& p, const Options& o) {
  const int64_t H = p.H, state = H * p.Kp;
  Scratch<T> s(H, p.K, o);
  const auto update = o.retention < INFINITY ? step_update<T, true> : step_update<T, false>;
  for (int64_t bi = begin; bi < end; ++bi) {
    // F_0 is only read (the first update writes F), so it needs no copy
    const T* src = f0p + bi * state;
    T* F = fp + bi * state;
    bool summed = false;  // whether the update of step t - 1 gave the sums of step t
    for (int64_t t = 0; t < T_; ++t) {
      const bool reset = sp && sp[t * B + bi] != 0;
      if (reset) {
        std::fill_n(F, state, T(0));
        src = F;
      }
      gather_input(s.z.data(), xp, h0p, outp, reset, t, bi, B, p, o);
      if (!summed) {
        const T en = drive_pass(src, s.z.data(), s.z2.data(), record_energy, s.ss.data(), s.a.data(), p, o);
        if (record_energy) ep[t * B + bi] = en;
      }
      T* h = outp + (t * B + bi) * H;
      step_output(src + p.K, p.Kp, s.ss.data(), s.a.data(), h, s, p, o);
      // The energy needs a pass of its own: the update fuses the next step's sums only without it
      summed = !record_energy && t + 1 < T_ && !(sp && sp[(t + 1) * B + bi] != 0);
      if (summed) gather_input(s.z_next.data(), xp, h0p, outp, false, t + 1, bi, B, p, o);
      update(src, F, s.z.data(), summed ? s.z_next.data() : nullptr, h, s.ss.data(), s.a.data(), s, p, o);
      src = F;
    }
  }
  return s.finite;
}

// The transposed forward of samples [begin, end), keeping (transposed) checkpoints every `every` steps.
// With S (Kp, H) the states of one segment and ss, a (C, H) their sums, it is also the backward's
// recompute (record: each step's state and sums into its own slot, from the checkpoint in S). Returns
// whether every drive was finite.
template <typename T>
bool forward_columns(int64_t begin, int64_t end, int64_t T_, int64_t B, const T* xp, const T* h0p, const T* sp,
                     const T* f0p, T* outp, T* fp, T* ep, T* cp, int64_t every, bool record_energy, const Params<T>& p,
                     const Options& o) {
  const int64_t H = p.H, state = H * p.Kp;
  Scratch<T> s(H, p.K, o);
  Buffer<T> F(state);
  const auto update = pick_update<T>(o);
  for (int64_t bi = begin; bi < end; ++bi) {
    to_columns(f0p + bi * state, F.data(), H, p.Kp);
    bool summed = false;  // whether the update of step t - 1 gave the sums of step t
    for (int64_t t = 0; t < T_; ++t) {
      if (t % every == 0) std::copy_n(F.data(), state, cp + ((t / every) * B + bi) * state);
      const bool reset = sp && sp[t * B + bi] != 0;
      if (reset) std::fill(F.begin(), F.end(), T(0));
      gather_input(s.z.data(), xp, h0p, outp, reset, t, bi, B, p, o);
      if (!summed) {
        const T en = drive_pass_t(F.data(), s.z.data(), record_energy, s.ss.data(), s.a.data(),
                                  s.en.data(), p, o);
        if (record_energy) ep[t * B + bi] = en;
      }
      T* h = outp + (t * B + bi) * H;
      step_output(F.data() + p.K * H, 1, s.ss.data(), s.a.data(), h, s, p, o);
      summed = !record_energy && t + 1 < T_ && !(sp && sp[(t + 1) * B + bi] != 0);
      if (summed) gather_input(s.z_next.data(), xp, h0p, outp, false, t + 1, bi, B, p, o);
      update(F.data(), F.data(), s.z.data(), summed ? s.z_next.data() : nullptr, h, s.ss.data(), s.a.data(), s, p, o);
    }
    to_rows(F.data(), fp + bi * state, H, p.Kp);
  }
  return s.finite;
}

// W, lambda, gamma (H, K) transposed to (K, H) for the training kernel.
template <typename T>
Params<T> columns(Params<T> p, const at::Tensor& W, const at::Tensor& L, const at::Tensor& G) {
  p.W = W.data_ptr<T>();
  p.L = L.data_ptr<T>();
  p.G = G.data_ptr<T>();
  return p;
}

at::Tensor transposed(const at::Tensor& t) { return t.t().contiguous(); }

// Runs the sequence. Returns outputs (T,B,H), F_T (B,H,Kp), energy (T,B) or empty, when every > 0
// the checkpoints (ceil(T/every), B, Kp, H): F entering steps 0, every, 2 every, ..., transposed (only
// stpn_backward reads them), and whether every drive was finite (false when F entering a step held an
// inf or NaN; a bool, not a tensor: rollouts call this at every step).
std::tuple<std::vector<at::Tensor>, bool> stpn_forward(
    const at::Tensor& x_, const at::Tensor& h0_, const at::Tensor& fast0, const std::optional<at::Tensor>& starts_,
    const at::Tensor& W_, const at::Tensor& b_, const at::Tensor& L_, const at::Tensor& G_,
    const std::optional<at::Tensor>& bl_, const std::optional<at::Tensor>& bg_, const std::optional<at::Tensor>& ng_,
    bool recurrent, bool normalize, bool oja, bool post, double clamp, double retention, bool record_energy,
    int64_t every) {
  const int64_t Kp = check_inputs(x_, h0_, starts_, W_, b_, L_, G_, bl_, bg_, ng_, recurrent);
  check_tensor(fast0, "fast0", {x_.size(1), W_.size(0), Kp}, x_);
  TORCH_CHECK(every >= 0, "sb3_stpn: every must be >= 0, got ", every);
  const at::Tensor x = x_.contiguous(), h0 = h0_.contiguous(), W = W_.contiguous(), b = b_.contiguous(),
                   L = L_.contiguous(), G = G_.contiguous(), bl = optional_contiguous(bl_),
                   bg = optional_contiguous(bg_), ng = optional_contiguous(ng_), starts = optional_contiguous(starts_);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = W.size(0);
  at::Tensor out = at::empty({T, B, H}, x.options());
  const at::Tensor f0 = fast0.contiguous();
  at::Tensor fast = at::empty_like(f0);
  at::Tensor energy = at::empty({record_energy ? T : 0, B}, x.options());
  const int64_t n_ckpt = every > 0 ? (T + every - 1) / every : 0;
  at::Tensor ckpt = at::empty({n_ckpt, B, Kp, H}, x.options());
  const at::Tensor WT = every > 0 ? transposed(W) : W, LT = every > 0 ? transposed(L) : L,
                   GT = every > 0 ? transposed(G) : G;
  const Options o = make_options(recurrent, normalize, oja, bl.defined(), post, clamp, retention);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stpn_forward", [&] {
    using T_ = scalar_t;
    const Params<T_> p = make_params<T_>(W, b, L, G, bl, bg, ng, I, Kp);
    const T_ *xp = x.data_ptr<T_>(), *h0p = h0.data_ptr<T_>(), *sp = starts.defined() ? starts.data_ptr<T_>() : nullptr;
    const T_* f0p = f0.data_ptr<T_>();
    T_ *outp = out.data_ptr<T_>(), *fp = fast.data_ptr<T_>(), *ep = energy.data_ptr<T_>(), *cp = ckpt.data_ptr<T_>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      const bool part_finite =
          every > 0 ? forward_columns(begin, end, T, B, xp, h0p, sp, f0p, outp, fp, ep, cp, every, record_energy,
                                      columns(p, WT, LT, GT), o)
                    : forward_rows(begin, end, T, B, xp, h0p, sp, f0p, outp, fp, ep, record_energy, p, o);
      if (!part_finite) finite = false;
    });
  });
  return {std::vector<at::Tensor>{out, fast, energy, ckpt}, finite.load()};
}

// BPTT through the sequence from the forward's checkpoints. d_out (T,B,H) holds the gradient of
// every output (that of h_T included), d_fast (B,H,Kp) that of F_T. Returns the gradients of
// x, h0, F0, weight, bias, lambda, gamma, bias lambda, bias gamma, norm gain (each of the last three
// empty when absent).
std::vector<at::Tensor> stpn_backward(const at::Tensor& x_, const at::Tensor& h0_,
                                      const std::optional<at::Tensor>& starts_, const at::Tensor& ckpt_,
                                      const at::Tensor& out_, const at::Tensor& W_, const at::Tensor& b_,
                                      const at::Tensor& L_, const at::Tensor& G_, const std::optional<at::Tensor>& bl_,
                                      const std::optional<at::Tensor>& bg_, const std::optional<at::Tensor>& ng_,
                                      bool recurrent, bool normalize, bool oja, bool post, double clamp,
                                      double retention, int64_t every,
                                      const at::Tensor& d_out_, const at::Tensor& d_fast_) {
  const int64_t Kp = check_inputs(x_, h0_, starts_, W_, b_, L_, G_, bl_, bg_, ng_, recurrent);
  const int64_t T = x_.size(0), B = x_.size(1), I = x_.size(2), H = W_.size(0), K = W_.size(1);
  TORCH_CHECK(every > 0, "sb3_stpn: every must be positive, got ", every);
  check_tensor(ckpt_, "checkpoints", {(T + every - 1) / every, B, Kp, H}, x_);
  check_tensor(out_, "outputs", {T, B, H}, x_);
  check_tensor(d_out_, "the outputs' gradient", {T, B, H}, x_);
  check_tensor(d_fast_, "the gradient of F", {B, H, Kp}, x_);
  const at::Tensor x = x_.contiguous(), h0 = h0_.contiguous(), ckpt = ckpt_.contiguous(), out = out_.contiguous(),
                   W = W_.contiguous(), b = b_.contiguous(), L = L_.contiguous(), G = G_.contiguous(),
                   bl = optional_contiguous(bl_), bg = optional_contiguous(bg_), ng = optional_contiguous(ng_),
                   starts = optional_contiguous(starts_), d_out = d_out_.contiguous(), d_fast = d_fast_.contiguous();
  at::Tensor dx = at::empty_like(x), dh0 = at::empty_like(h0), dF = at::empty_like(d_fast);
  at::Tensor dW = at::zeros_like(W), db = at::zeros_like(b), dL = at::zeros_like(L), dG = at::zeros_like(G);
  at::Tensor dbl = bl.defined() ? at::zeros_like(bl) : at::empty({0}, x.options());
  at::Tensor dbg = bl.defined() ? at::zeros_like(bg) : at::empty({0}, x.options());
  at::Tensor dng = ng.defined() ? at::zeros_like(ng) : at::empty({0}, x.options());
  const at::Tensor WT = transposed(W), LT = transposed(L), GT = transposed(G);
  const Options o = make_options(recurrent, normalize, oja, bl.defined(), post, clamp, retention);
  std::mutex reduce;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stpn_backward", [&] {
    using T_ = scalar_t;
    std::vector<std::pair<int64_t, Grads<T_>>> parts;  // per thread: its first sample, its sums
    const Params<T_> p = columns(make_params<T_>(W, b, L, G, bl, bg, ng, I, Kp), WT, LT, GT);
    const T_ *xp = x.data_ptr<T_>(), *h0p = h0.data_ptr<T_>(), *sp = starts.defined() ? starts.data_ptr<T_>() : nullptr;
    const T_ *outp = out.data_ptr<T_>(), *cp = ckpt.data_ptr<T_>(), *dop = d_out.data_ptr<T_>();
    const T_* dfin = d_fast.data_ptr<T_>();
    T_ *dxp = dx.data_ptr<T_>(), *dh0p = dh0.data_ptr<T_>(), *dfp = dF.data_ptr<T_>();
    const int64_t state = H * Kp;
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Scratch<T_> s(H, K, o);
      Grads<T_> g(p);
      const bool clamped = o.clamp < INFINITY;
      const auto update = pick_update<T_>(o);
      const auto backward = oja ? (clamped ? pick_backward<T_, true, true>(o) : pick_backward<T_, true, false>(o))
                                : (clamped ? pick_backward<T_, false, true>(o) : pick_backward<T_, false, false>(o));
      // The sample's dF (transposed) and the recomputed segment: F entering each step and its sums
      // (ss, a) per neuron
      Buffer<T_> dFb(state), states(std::min(every, T) * state), sums_ss(std::min(every, T) * H),
          sums_a(std::min(every, T) * H);
      for (int64_t bi = begin; bi < end; ++bi) {
        to_columns(dfin + bi * state, dFb.data(), H, Kp);
        std::fill(s.dhc.begin(), s.dhc.end(), T_(0));
        for (int64_t seg = (T + every - 1) / every - 1; seg >= 0; --seg) {
          const int64_t t0 = seg * every, t1 = std::min(T, t0 + every);
          // Recompute the states entering the steps of this segment from its checkpoint
          // (the forward's arithmetic, fused sums included, so the same values)
          std::copy_n(cp + (seg * B + bi) * state, state, states.data());
          bool summed = false;
          for (int64_t t = t0; t < t1; ++t) {
            T_* S = states.data() + (t - t0) * state;
            T_ *ss = sums_ss.data() + (t - t0) * H, *a = sums_a.data() + (t - t0) * H;
            const bool reset = sp && sp[t * B + bi] != 0;
            if (reset) std::fill_n(S, state, T_(0));
            gather_input(s.z.data(), xp, h0p, outp, reset, t, bi, B, p, o);
            if (!summed) drive_pass_t(S, s.z.data(), false, ss, a, s.en.data(), p, o);
            if (t + 1 == t1) break;
            step_output(S + K * H, 1, ss, a, s.h.data(), s, p, o);
            summed = !(sp && sp[(t + 1) * B + bi] != 0);
            if (summed) gather_input(s.z_next.data(), xp, h0p, outp, false, t + 1, bi, B, p, o);
            update(S, S + state, s.z.data(), summed ? s.z_next.data() : nullptr, s.h.data(), ss + H, a + H, s, p, o);
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const bool reset = sp && sp[t * B + bi] != 0;
            gather_input(s.z.data(), xp, h0p, outp, reset, t, bi, B, p, o);
            const T_* dot = dop + (t * B + bi) * H;
            for (int64_t i = 0; i < H; ++i) s.dh[i] = dot[i] + s.dhc[i];
            const T_* S = states.data() + (t - t0) * state;
            const T_* h = outp + (t * B + bi) * H;
            const T_ *ss = sums_ss.data() + (t - t0) * H, *a = sums_a.data() + (t - t0) * H;
            backward(S, h, ss, a, dFb.data(), s, g, p, o);
            std::copy_n(s.dz.data(), I, dxp + (t * B + bi) * I);
            if (recurrent && !reset)
              std::copy_n(s.dz.data() + I, H, s.dhc.data());
            else
              std::fill(s.dhc.begin(), s.dhc.end(), T_(0));
            if (reset) std::fill(dFb.begin(), dFb.end(), T_(0));
          }
        }
        to_rows(dFb.data(), dfp + bi * state, H, Kp);
        std::copy(s.dhc.begin(), s.dhc.end(), dh0p + bi * H);
      }
      std::lock_guard<std::mutex> lock(reduce);
      parts.emplace_back(begin, std::move(g));
    });
    // The threads' sums are added in batch order, not in the order the threads finish: the gradients
    // are then the same on every call (gradcheck checks that backward is reentrant)
    std::sort(parts.begin(), parts.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    for (const auto& [begin, g] : parts) {
      // W, lambda, gamma gradients back from (K, H)
      const std::pair<at::Tensor*, const Buffer<T_>*> columns_sums[] = {{&dW, &g.W}, {&dL, &g.L}, {&dG, &g.G}};
      for (const auto& [total, part] : columns_sums) {
        T_* tp = total->data_ptr<T_>();
        for (int64_t i = 0; i < H; ++i)
          for (int64_t k = 0; k < K; ++k) tp[i * K + k] += (*part)[k * H + i];
      }
      const std::pair<at::Tensor*, const Buffer<T_>*> sums[] = {
          {&db, &g.b}, {&dbl, &g.bl}, {&dbg, &g.bg}, {&dng, &g.ng}};
      for (const auto& [total, part] : sums) {
        T_* tp = total->data_ptr<T_>();
        const int64_t n = total->numel();
        for (int64_t j = 0; j < n; ++j) tp[j] += (*part)[j];
      }
    }
  });
  return {dx, dh0, dF, dW, db, dL, dG, dbl, dbg, dng};
}

TORCH_LIBRARY(sb3_stpn, m) {
  m.def("forward", &stpn_forward);
  m.def("backward", &stpn_backward);
}
