/* cublas_v2.h — stands in for the CUDA header of that name in the CPU emulator (../cuda_emu.h). */
#include "../cuda_emu.h"
