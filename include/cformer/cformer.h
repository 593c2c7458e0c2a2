/* cformer: the whole public API. */
#ifndef CFORMER_H
#define CFORMER_H
#include "core.h"
#include "kernels.h"
#include "ops.h"
#endif
