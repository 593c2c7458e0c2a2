/* cformer: the whole public API, one header per layer (docs/architecture.md). Programs include
 * this; the library's own files include only the headers of their layer and the layers below. */
#ifndef CFORMER_H
#define CFORMER_H
#include "core.h"        /* tensors, arena, tape, errors, RNG */
#include "param.h"       /* the parameter slab */
#include "schema.h"      /* the run configuration as data */
#include "kernels.h"     /* GEMM */
#include "ops.h"         /* differentiable ops */
#include "attention.h"   /* attention variants */
#include "nn.h"          /* layers with parameters */
#include "model.h"       /* the decoder-only model */
#include "encdec.h"      /* the encoder-decoder model */
#include "optim.h"       /* optimizers, gradient clipping */
#include "data.h"        /* byte files, the batch sampler */
#include "pairs.h"       /* sequence-to-sequence pairs */
#include "dist.h"        /* data parallelism over MPI */
#include "h5io.h"        /* HDF5 helpers */
#include "config.h"      /* the config as JSON */
#include "checkpoint.h"  /* checkpoints */
#include "decode.h"      /* sampling and translation */
#include "train.h"       /* trainer, schedule, evaluation, benchmark */
#endif
