#pragma once
// Host stand-in for cuda_bf16.h used by the CUDA emulator (csrc/cuda/emu).
#include "cuda_runtime.h"
#include <cstring>
struct __nv_bfloat16 { unsigned short bits; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16{b}; }
inline float __bfloat162float(__nv_bfloat16 h) { unsigned u = static_cast<unsigned>(h.bits) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }
