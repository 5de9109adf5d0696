// Random convolutional features in one pass (the CPU fast path of imgcate.encoders.RandomConvNet).
//
// For each chip: the per-band normalization (x - mean) / std, the k x k "valid" convolution
// with the filter bank, and the means over positions of relu(conv - b) and relu(-conv - b),
// without ever writing the (y, x, filter) responses out. imgcate/encoders/native.py loads this
// library with ctypes (calls release the GIL, so Python threads split a batch across cores) and
// falls back to the JAX forward pass where it is not built or the CPU lacks AVX-512.
//
// Layout: the chip is normalized into a (y, x, band) buffer, so the k * bands inputs of one
// filter row at one position are contiguous. Filters come packed by imgcate/encoders/native.py
// as (block, dy, dx * bands + band, 64): blocks of 64 filters, the 64 filters of one weight
// contiguous. The micro-kernel holds 6 positions x 64 filters (24 AVX-512 accumulators) in
// registers: per weight it loads 4 filter vectors and broadcasts 6 inputs for 24 FMAs, so it
// is bound by the FMA units rather than by loads (benchmarks/embed_speed.py measures it).
#include <Python.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

extern "C" {

// The calling convention and layout imgcate/encoders/native.py expects (argument list,
// 64-filter blocks, band counts 1-16): a library built from another version of this file is not
// used.
int rcf_abi_version(void) { return 2; }

// 1 when this CPU runs the kernel (x86-64 with AVX-512F), else 0.
int rcf_supported(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
  return 0;
#endif
}

static struct PyModuleDef rcf_module = {
    PyModuleDef_HEAD_INIT, "_rcf", "Native random-convolution kernel (used via ctypes).", -1,
    nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__rcf(void) { return PyModule_Create(&rcf_module); }

}  // extern "C"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define RCF_TARGET __attribute__((target("avx512f,fma")))
#define RCF_INLINE __attribute__((always_inline)) inline

namespace {

constexpr int kVectors = 4;               // filter vectors of 16 per block
constexpr int kBlock = 16 * kVectors;     // filters per block
constexpr int kTile = 6;                  // positions per micro-kernel call
constexpr int kMaxBands = 16;             // band counts with a compiled kernel

// P positions (x .. x + P - 1 of one output row) x 64 filters: accumulate the convolution,
// starting from -b, then add max(conv - b, 0) to pos and min(conv + b, 0) to neg.
template <int P, int C>
RCF_TARGET RCF_INLINE void tile(const float* __restrict r0, int64_t rowstride, int k,
                                const float* __restrict w, const float* __restrict bias,
                                float* __restrict pos, float* __restrict neg) {
  __m512 acc[P][kVectors];
  for (int v = 0; v < kVectors; ++v) {
    const __m512 nb = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(bias + 16 * v));
    for (int p = 0; p < P; ++p) acc[p][v] = nb;
  }
  const int kc = k * C;
  for (int dy = 0; dy < k; ++dy) {
    const float* r = r0 + dy * rowstride;
    const float* wd = w + dy * kc * kBlock;
    for (int j = 0; j < kc; ++j) {
      __m512 wv[kVectors];
      for (int v = 0; v < kVectors; ++v) {
        wv[v] = _mm512_loadu_ps(wd + j * kBlock + 16 * v);
        // Keep the filter vectors in registers: without this the compiler folds a load into
        // every FMA and the loop is bound by loads (docs/benchmarks.md: the first version).
        __asm__ volatile("" : "+v"(wv[v]));
      }
      for (int p = 0; p < P; ++p) {
        const __m512 xb = _mm512_set1_ps(r[p * C + j]);
        for (int v = 0; v < kVectors; ++v) acc[p][v] = _mm512_fmadd_ps(xb, wv[v], acc[p][v]);
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int v = 0; v < kVectors; ++v) {
    __m512 b2 = _mm512_loadu_ps(bias + 16 * v);
    b2 = _mm512_add_ps(b2, b2);
    __m512 ps = _mm512_loadu_ps(pos + 16 * v);
    __m512 ns = _mm512_loadu_ps(neg + 16 * v);
    for (int p = 0; p < P; ++p) {
      ps = _mm512_add_ps(ps, _mm512_max_ps(acc[p][v], zero));                       // conv - b
      ns = _mm512_add_ps(ns, _mm512_min_ps(_mm512_add_ps(acc[p][v], b2), zero));    // conv + b
    }
    _mm512_storeu_ps(pos + 16 * v, ps);
    _mm512_storeu_ps(neg + 16 * v, ns);
  }
}

// One block of 64 filters over every position of one normalized chip, into pos_total and
// neg_total (double: float32 running sums over a whole large chip drift; each row is summed
// in float32, then added in double).
template <int C>
RCF_TARGET void chip_block(const float* buf, int64_t Ho, int Wo, int W, int k, const float* w,
                           const float* bias, double* pos_total, double* neg_total) {
  const int64_t rowstride = static_cast<int64_t>(W) * C;
  alignas(64) float pos[kBlock];
  alignas(64) float neg[kBlock];
  for (int64_t y = 0; y < Ho; ++y) {
    for (int f = 0; f < kBlock; ++f) pos[f] = neg[f] = 0.0f;
    const float* row = buf + y * rowstride;
    int x = 0;
    for (; x + kTile <= Wo; x += kTile) tile<kTile, C>(row + x * C, rowstride, k, w, bias, pos, neg);
    const float* q = row + x * C;
    switch (Wo - x) {
      case 1: tile<1, C>(q, rowstride, k, w, bias, pos, neg); break;
      case 2: tile<2, C>(q, rowstride, k, w, bias, pos, neg); break;
      case 3: tile<3, C>(q, rowstride, k, w, bias, pos, neg); break;
      case 4: tile<4, C>(q, rowstride, k, w, bias, pos, neg); break;
      case 5: tile<5, C>(q, rowstride, k, w, bias, pos, neg); break;
      default: break;
    }
    for (int f = 0; f < kBlock; ++f) {
      pos_total[f] += pos[f];
      neg_total[f] += neg[f];
    }
  }
}

using ChipBlock = void (*)(const float*, int64_t, int, int, int, const float*, const float*,
                           double*, double*);

template <int C>
ChipBlock pick_upto(int bands) {
  if constexpr (C > kMaxBands) {
    return nullptr;
  } else {
    return bands == C ? &chip_block<C> : pick_upto<C + 1>(bands);
  }
}

}  // namespace

extern "C" {

// Features of n chips x (n, bands, H, W) float32, C order, into out (n, 2 * n_filters):
// [mean relu(conv - b) per filter, mean relu(-conv - b) per filter].
// Returns -1 on success; i >= 0 when chip i holds a NaN or infinite pixel (out is then
// incomplete); -2 for an unsupported band count or a chip smaller than the kernel; -3 when
// memory runs out.
RCF_TARGET int64_t rcf_pool(const float* x, int64_t n, int64_t bands, int64_t H, int64_t W,
                            int64_t k, const float* band_mean, const float* band_std,
                            const float* packed, const float* bias, int64_t n_filters,
                            float* out) {
  const ChipBlock block_fn = pick_upto<1>(static_cast<int>(bands));
  if (block_fn == nullptr) return -2;
  const int C = static_cast<int>(bands);
  if (k < 1 || H < k || W < k) return -2;
  const int64_t Ho = H - k + 1;
  const int Wo = static_cast<int>(W - k + 1);
  const int64_t n_blocks = (n_filters + kBlock - 1) / kBlock;
  const int64_t block_size = k * k * C * kBlock;
  const int64_t pixels = H * W;
  float* buf = static_cast<float*>(std::malloc(sizeof(float) * (pixels * C + 16)));
  if (buf == nullptr) return -3;
  double pos[kBlock];
  double neg[kBlock];
  const double scale = 1.0 / (static_cast<double>(Ho) * static_cast<double>(Wo));
  for (int64_t i = 0; i < n; ++i) {
    const float* chip = x + i * C * pixels;
    bool finite = true;
    for (int c = 0; c < C; ++c) {
      const float m = band_mean[c], s = band_std[c];
      const float* src = chip + c * pixels;
      for (int64_t p = 0; p < pixels; ++p) {
        const float v = src[p];
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        finite &= (bits & 0x7f800000u) != 0x7f800000u;  // exponent all ones: NaN or +-inf
        buf[p * C + c] = (v - m) / s;
      }
    }
    if (!finite) {
      std::free(buf);
      return i;
    }
    float* row_out = out + i * 2 * n_filters;
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      for (int f = 0; f < kBlock; ++f) pos[f] = neg[f] = 0.0;
      block_fn(buf, Ho, Wo, static_cast<int>(W), static_cast<int>(k), packed + blk * block_size,
               bias + blk * kBlock, pos, neg);
      for (int f = 0; f < kBlock && blk * kBlock + f < n_filters; ++f) {
        row_out[blk * kBlock + f] = static_cast<float>(pos[f] * scale);
        row_out[n_filters + blk * kBlock + f] = static_cast<float>(-neg[f] * scale);
      }
    }
  }
  std::free(buf);
  return -1;
}

}  // extern "C"

#else  // not x86-64 with GCC or Clang: no kernel; rcf_supported() says 0

extern "C" int64_t rcf_pool(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                            const float*, const float*, const float*, const float*, int64_t,
                            float*) {
  return -2;
}

#endif
