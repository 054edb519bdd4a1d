// Just enough of the Metal Shading Language, declared in C++, for clang to syntax-check a kernel
// body that mx.fast.metal_kernel would wrap. It catches typos, undeclared names and type errors;
// it says nothing about Metal semantics (address spaces, barriers, simdgroup behaviour).
// Declarations only: nothing here is ever linked or run.
#pragma once

// Address-space qualifiers carry no meaning on the host.
#define device
#define constant
#define threadgroup
#define thread
#define kernel

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned long size_t;
typedef long ptrdiff_t;

// Metal's half and bfloat are arithmetic types; clang's _Float16 and __bf16 behave alike.
typedef _Float16 half;
typedef __bf16 bfloat;
typedef half float16_t;      // the names MLX's generated signatures use
typedef bfloat bfloat16_t;

#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define FLT_MAX 3.402823466e+38F
#define FLT_MIN 1.175494351e-38F
#define M_LOG2E_F 1.442695040888963F
#define M_LN2_F 0.693147180559945F

// Vector types: members x, y, z, w (and r, g, b, a), element-wise arithmetic, scalar broadcast.
template <typename T, int N> struct vec;

#define MACFT_VEC_OPS(N)                                                              \
  vec() = default;                                                                     \
  vec(T s);                                                                            \
  template <typename U> explicit vec(vec<U, N> other);                                 \
  T& operator[](int i);                                                                \
  const T& operator[](int i) const;                                                    \
  vec operator+(vec o) const;                                                          \
  vec operator-(vec o) const;                                                          \
  vec operator*(vec o) const;                                                          \
  vec operator/(vec o) const;                                                          \
  vec operator-() const;                                                               \
  vec& operator+=(vec o);                                                              \
  vec& operator-=(vec o);                                                              \
  vec& operator*=(vec o);                                                              \
  vec& operator/=(vec o);

template <typename T> struct vec<T, 2> {
  T x, y;
  MACFT_VEC_OPS(2)
  vec(T a, T b);
};
template <typename T> struct vec<T, 3> {
  T x, y, z;
  MACFT_VEC_OPS(3)
  vec(T a, T b, T c);
  vec<T, 2> xy() const;
};
template <typename T> struct vec<T, 4> {
  T x, y, z, w;
  MACFT_VEC_OPS(4)
  vec(T a, T b, T c, T d);
  vec(vec<T, 2> a, vec<T, 2> b);
  vec(vec<T, 3> a, T d);
};
#undef MACFT_VEC_OPS

template <typename T, int N> vec<T, N> operator*(T s, vec<T, N> v);
template <typename T, int N> vec<T, N> operator+(T s, vec<T, N> v);

#define MACFT_VECS(T)            \
  typedef vec<T, 2> T##2;        \
  typedef vec<T, 3> T##3;        \
  typedef vec<T, 4> T##4;
MACFT_VECS(float)
MACFT_VECS(half)
MACFT_VECS(bfloat)
MACFT_VECS(int)
MACFT_VECS(uint)
MACFT_VECS(short)
MACFT_VECS(ushort)
MACFT_VECS(char)
MACFT_VECS(uchar)
MACFT_VECS(ulong)
MACFT_VECS(bool)
#undef MACFT_VECS

namespace metal {

// Math: one template covers float, half and bfloat (and the vector types).
template <typename T> T exp(T x);
template <typename T> T exp2(T x);
template <typename T> T log(T x);
template <typename T> T log2(T x);
template <typename T> T sqrt(T x);
template <typename T> T rsqrt(T x);
template <typename T> T abs(T x);
template <typename T> T fabs(T x);
template <typename T> T floor(T x);
template <typename T> T ceil(T x);
template <typename T> T round(T x);
template <typename T> T tanh(T x);
template <typename T> T sin(T x);
template <typename T> T cos(T x);
template <typename T> T pow(T x, T y);
template <typename T> T max(T x, T y);
template <typename T> T min(T x, T y);
template <typename T> T fmax(T x, T y);
template <typename T> T fmin(T x, T y);
template <typename T> T fma(T a, T b, T c);
template <typename T> T clamp(T x, T lo, T hi);
template <typename T> T select(T a, T b, bool c);
template <typename T> bool isinf(T x);
template <typename T> bool isnan(T x);
template <typename T, int N> T dot(vec<T, N> a, vec<T, N> b);

namespace fast {
template <typename T> T exp(T x);
template <typename T> T exp2(T x);
template <typename T> T log(T x);
template <typename T> T rsqrt(T x);
template <typename T> T tanh(T x);
}  // namespace fast

namespace precise {
template <typename T> T exp(T x);
template <typename T> T log(T x);
}  // namespace precise

// Reductions and exchanges across the 32 lanes of a simdgroup.
template <typename T> T simd_sum(T x);
template <typename T> T simd_max(T x);
template <typename T> T simd_min(T x);
template <typename T> T simd_prefix_exclusive_sum(T x);
template <typename T> T simd_prefix_inclusive_sum(T x);
template <typename T> T simd_shuffle(T x, ushort lane);
template <typename T> T simd_shuffle_down(T x, ushort delta);
template <typename T> T simd_shuffle_up(T x, ushort delta);
template <typename T> T simd_shuffle_xor(T x, ushort mask);
template <typename T> T simd_broadcast(T x, ushort lane);
template <typename T> T simd_broadcast_first(T x);
bool simd_all(bool x);
bool simd_any(bool x);

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) {
  return mem_flags(int(a) | int(b));
}
void threadgroup_barrier(mem_flags flags);
void simdgroup_barrier(mem_flags flags);

// Atomics on device or threadgroup memory.
enum memory_order { memory_order_relaxed };
template <typename T> struct atomic {
  T value;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
template <typename T> void atomic_store_explicit(atomic<T>* a, T v, memory_order o);
template <typename T> T atomic_load_explicit(const atomic<T>* a, memory_order o);
template <typename T> T atomic_fetch_add_explicit(atomic<T>* a, T v, memory_order o);
template <typename T> T atomic_fetch_max_explicit(atomic<T>* a, T v, memory_order o);
template <typename T> T atomic_fetch_min_explicit(atomic<T>* a, T v, memory_order o);
template <typename T>
bool atomic_compare_exchange_weak_explicit(atomic<T>* a, T* expected, T desired, memory_order s,
                                           memory_order f);

template <typename T> T as_type(...);

template <typename T> struct numeric_limits {
  static T infinity();
  static T max();
  static T min();
  static T lowest();
};

// 8x8 matrices held across a simdgroup (metal_simdgroup_matrix).
template <typename T, int R, int C> struct simdgroup_matrix {
  simdgroup_matrix() = default;
  simdgroup_matrix(T diagonal);
  vec<T, 2> thread_elements();
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <typename T, int R, int C>
void simdgroup_load(simdgroup_matrix<T, R, C>& m, const T* src, ulong elements_per_row = C,
                    ulong2 origin = ulong2(0), bool transpose = false);
template <typename T, int R, int C>
void simdgroup_store(simdgroup_matrix<T, R, C> m, T* dst, ulong elements_per_row = C,
                     ulong2 origin = ulong2(0), bool transpose = false);
template <typename T, int R, int C>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, R, C>& d, simdgroup_matrix<T, R, C> a,
                                   simdgroup_matrix<T, R, C> b, simdgroup_matrix<T, R, C> c);
template <typename T, int R, int C>
void simdgroup_multiply(simdgroup_matrix<T, R, C>& d, simdgroup_matrix<T, R, C> a,
                        simdgroup_matrix<T, R, C> b);

}  // namespace metal

// MLX's preamble puts the kernel after `using namespace metal;`.
using namespace metal;
