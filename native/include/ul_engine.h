/*
 * ul_engine.h: the C ABI of the native core (ARCHITECTURE.md, native/).
 *
 * One engine = one model's weights + a KV pool, on one kernel set ("backend"):
 *   UL_BACKEND_REFERENCE  portable C++ loops, the oracle (also what the emscripten build runs)
 *   UL_BACKEND_CUDA       bf16 storage, fp32 accumulation, tensor cores (needs a CUDA build + GPU)
 *
 * Two forms over one implementation:
 *   single sequence  ul_engine_create: the engine holds ONE sequence's position; forward / truncate /
 *                    export_kv / import_kv / sample act on it. Inside it is a pool of
 *                    ceil(max_positions / 64) blocks of 64 positions and one contiguous block table.
 *   paged            ul_engine_create_paged: a pool of total_blocks blocks of block_tokens positions
 *                    and no per-sequence state; every call names the block table of the sequence it
 *                    acts on (ul_engine_step, ul_engine_copy_blocks, ul_engine_export_kv_paged,
 *                    ul_engine_import_kv_paged). Position p of a table lives in pool slot
 *                    table[p / block_tokens] * block_tokens + p % block_tokens.
 *
 * Lifecycle:
 *   ul_engine_create(&config, &engine)       shapes, rope, KV dtype, capacity; allocates the cache
 *     (or ul_engine_create_paged(&config, block_tokens, total_blocks, &engine))
 *   ul_engine_set_tensor(...) for every weight  (or ul_engine_load_safetensors per shard)
 *   ul_engine_ready(engine)                  checks that every weight is present
 *   ul_engine_forward / ul_engine_sample / ul_engine_export_kv / ul_engine_import_kv ...
 *   ul_engine_destroy(engine)
 *
 * The config is passed in as a struct, already parsed and validated by TypeScript
 * (core/model/config.ts) with rope inverse frequencies from core/model/rope.ts: one parser and one
 * rope implementation for the whole project. RoPE is computed from the position in every kernel
 * (angle = position * inv_freq[i] in float64, cos/sin scaled by attention_scaling), never from a
 * table. float64 because at 4M positions an f32 angle is off by up to 0.25 rad.
 *
 * Every call returns a ul_status; on failure ul_engine_last_error() holds a one-line message.
 * Calls on one engine are not thread-safe; different engines are independent.
 */
#ifndef UL_ENGINE_H
#define UL_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UL_ABI_VERSION 4 /* 4: tiered KV (ul_engine_create_tiered, _paged_tiered, _memory_tiers) */

/*
 * fp8 KV: one f32 scale per (layer, K|V, kv_head, block of UL_FP8_BLOCK pool slots). A paged fp8
 * engine needs block_tokens to be a multiple of UL_FP8_BLOCK, so a scale block is 64 consecutive
 * positions of one sequence, aligned to absolute positions (block b = positions [b * 64, b * 64 + 64))
 * exactly as in the snapshot layout. x = fp8 * scale.
 */
#define UL_FP8_BLOCK 64

typedef enum ul_status {
  UL_OK = 0,
  UL_ERR_INVALID_ARGUMENT = 1, /* caller passed something wrong (shape, range, name, dtype) */
  UL_ERR_FORMAT = 2,           /* a file is malformed (safetensors header, truncated data) */
  UL_ERR_NOT_AVAILABLE = 3,    /* backend not compiled in, no GPU, cuBLASLt absent where required */
  UL_ERR_OUT_OF_MEMORY = 4,    /* host or device allocation failed */
  UL_ERR_LIMIT = 5,            /* KV capacity (max_positions) exceeded */
  UL_ERR_DEVICE = 6,           /* a CUDA call failed (message names file:line and the CUDA error) */
  UL_ERR_IO = 7,               /* a file could not be opened or read */
  UL_ERR_STATE = 8             /* call out of order (forward before ready, set_tensor after ready) */
} ul_status;

typedef enum ul_dtype {
  UL_DTYPE_F32 = 0,
  UL_DTYPE_BF16 = 1,
  UL_DTYPE_F16 = 2,
  UL_DTYPE_FP8_E4M3 = 3 /* KV cache and KV payloads only: per-block scales (UL_FP8_BLOCK) */
} ul_dtype;

typedef enum ul_backend_kind { UL_BACKEND_REFERENCE = 0, UL_BACKEND_CUDA = 1 } ul_backend_kind;

typedef struct ul_config {
  int32_t hidden_size;       /* 4096 for Llama-3.1-8B */
  int32_t intermediate_size; /* 14336 */
  int32_t num_layers;        /* 32 */
  int32_t num_heads;         /* 32 query heads */
  int32_t num_kv_heads;      /* 8 (GQA: num_heads % num_kv_heads == 0) */
  int32_t head_dim;          /* 128 */
  int32_t vocab_size;        /* 128256 */
  int32_t tie_word_embeddings; /* 1: lm_head is model.embed_tokens.weight */
  float rms_norm_eps;          /* 1e-5 */
  /* RoPE: the first rotary_dim dims of each head rotate (rotate_half convention, HF layout). */
  int32_t rotary_dim;          /* head_dim * partial_rotary_factor */
  const double* inv_freq;      /* (rotary_dim / 2) radians per position; copied at create */
  float attention_scaling;     /* multiplies cos and sin (YaRN mscale; 1 otherwise) */
  int32_t max_positions;       /* single: KV capacity to allocate; paged: most positions of ONE sequence */
  ul_dtype kv_dtype;           /* F32 (reference only), BF16, F16 (reference only), FP8_E4M3 */
  ul_backend_kind backend;
  int32_t max_chunk;           /* rows per internal prefill chunk (activation memory); 0 = default */
} ul_config;

typedef struct ul_memory_report {
  uint64_t weight_bytes;     /* weights as held by the backend */
  uint64_t kv_bytes;         /* the KV pool, both tiers (incl. fp8 scales; ul_engine_memory_tiers) */
  uint64_t activation_bytes; /* scratch for one chunk of max_chunk rows */
  uint64_t device_free;      /* CUDA: cudaMemGetInfo free; reference: 0 */
  uint64_t device_total;     /* CUDA: cudaMemGetInfo total; reference: 0 */
} ul_memory_report;

/*
 * Tiered KV (ABI 4): where the pool's blocks live. Blocks [0, device_blocks) are in device memory,
 * blocks [device_blocks, device_blocks + host_blocks) in host memory (CUDA: pinned); each layer's
 * host blocks that a micro-batch touches are copied into one of two device staging buffers (layer
 * l + 1's copy overlapping layer l's compute) and the rows it writes are copied back. Results are
 * bit for bit those of an all-resident engine. device_kv_bytes + host_kv_bytes == kv_bytes of
 * ul_memory_report; staging_bytes is device memory beside it (0 without a host tier).
 */
typedef struct ul_kv_tiers {
  uint64_t block_tokens;    /* positions per block (the single-sequence engine: 64) */
  uint64_t device_blocks;
  uint64_t host_blocks;
  uint64_t device_kv_bytes; /* the device tier, incl. fp8 scales */
  uint64_t host_kv_bytes;   /* the host tier, incl. fp8 scales */
  uint64_t staging_bytes;   /* two staging buffers of one layer's host tier (K and V, fp8 scales) */
} ul_kv_tiers;

typedef struct ul_engine ul_engine;

/* Human-readable name of a status ("invalid_argument", ...). Never NULL. */
const char* ul_status_name(ul_status status);
/* 1 when this build has the backend compiled in (CUDA also needs a device at create time). */
int32_t ul_backend_compiled(ul_backend_kind kind);

ul_status ul_engine_create(const ul_config* config, ul_engine** out);
/* A paged engine: a KV pool of total_blocks blocks of block_tokens positions (all allocated now).
 * fp8 KV needs block_tokens % UL_FP8_BLOCK == 0. The single-sequence calls (forward, sample,
 * position, truncate, export_kv, import_kv) return UL_ERR_STATE on it. */
ul_status ul_engine_create_paged(const ul_config* config, int32_t block_tokens, int32_t total_blocks,
                                 ul_engine** out);
/* ul_engine_create / ul_engine_create_paged with only the pool's first device_blocks blocks in
 * device memory and the rest in the host tier (ul_kv_tiers). The single-sequence pool is
 * ceil(max_positions / 64) blocks of 64: positions >= device_blocks * 64 live on the host.
 * device_blocks must be in [0, the pool's blocks]; equal to it, the engine is all resident. */
ul_status ul_engine_create_tiered(const ul_config* config, int32_t device_blocks, ul_engine** out);
ul_status ul_engine_create_paged_tiered(const ul_config* config, int32_t block_tokens, int32_t total_blocks,
                                        int32_t device_blocks, ul_engine** out);
void ul_engine_destroy(ul_engine* engine);
/* Message of the last failed call on this engine (or of the last failed create when NULL). */
const char* ul_engine_last_error(const ul_engine* engine);

/*
 * One weight by its Hugging Face name ("model.layers.0.self_attn.q_proj.weight"), row-major, in
 * `dtype` (F32, BF16 or F16), with the shape the config implies (checked against `shape`). The
 * backend converts: the reference keeps f32, CUDA keeps bf16. Unknown names are an error.
 */
ul_status ul_engine_set_tensor(ul_engine* engine, const char* name, ul_dtype dtype,
                               const int64_t* shape, int32_t ndim, const void* data);
/* Every tensor of one safetensors file (a shard or the whole model), via ul_engine_set_tensor. */
ul_status ul_engine_load_safetensors(ul_engine* engine, const char* path);
/* Checks that every weight is set; forward and KV import need it. */
ul_status ul_engine_ready(ul_engine* engine);

/*
 * Runs tokens[0..n) at positions [position, position + n), appending their K and V to the cache.
 * If logits != NULL, writes the vocab_size logits of the LAST token (f32). Long spans run in chunks
 * of max_chunk rows (causal attention against the whole cache).
 */
ul_status ul_engine_forward(ul_engine* engine, const int32_t* tokens, int32_t n, float* logits);
/* Samples from the logits of the last forward that computed logits, on the device: temperature
 * <= 0 is argmax; otherwise Gumbel-max with a counter-based RNG keyed by (seed, position). */
ul_status ul_engine_sample(ul_engine* engine, float temperature, uint64_t seed, int32_t* token);
int32_t ul_engine_position(const ul_engine* engine);
ul_status ul_engine_truncate(ul_engine* engine, int32_t position);

/*
 * KV of positions [start, end) in the snapshot layout of core/kv/layout.ts:
 *   for layer: K (kv_head, pos, head_dim) post-RoPE, then V (kv_head, pos, head_dim)
 * converted to `dtype` (F32, BF16, F16 or FP8_E4M3). In FP8_E4M3 each K and each V is preceded by
 * its scales (kv_head, ceil(n / UL_FP8_BLOCK)) f32, blocks counted from `start`: an fp8 cache
 * exported from a multiple of UL_FP8_BLOCK is copied as stored, otherwise requantised per block.
 * `out_bytes` must be exactly the payload size.
 */
ul_status ul_engine_export_kv(ul_engine* engine, int32_t start, int32_t end, ul_dtype dtype,
                              void* out, size_t out_bytes);
/* Appends `tokens` positions at the current position from bytes in that layout and `dtype` (any of
 * the four; an fp8 cache takes an fp8 payload as stored when the position is a multiple of
 * UL_FP8_BLOCK, and otherwise writes the dequantised values as a forward would). */
ul_status ul_engine_import_kv(ul_engine* engine, const void* bytes, size_t n_bytes,
                              int32_t tokens, ul_dtype dtype);

/*
 * Paged: one sequence's share of a step. New tokens[0..n_tokens) at positions [start, start +
 * n_tokens); positions [0, start) are already in the blocks of `table`, which must name at least
 * ceil((start + n_tokens) / block_tokens) blocks (n_blocks may be more; the rest are not read).
 */
typedef struct ul_step_item {
  const int32_t* tokens;
  int32_t n_tokens;
  int32_t start;
  const int32_t* table;
  int32_t n_blocks;
  int32_t want_logits; /* 1: this item's last token's vocab_size logits go to logits_out */
} ul_step_item;

/*
 * Paged: one forward over every item. Rows of all items go through the projections together (in
 * pieces of max_chunk rows; an item may straddle two); attention runs per item over its table,
 * causal within the item. logits_out gets one vocab_size row (f32) per item with want_logits, in
 * item order (NULL allowed when none wants them). Every item is checked before anything runs (token
 * ids, start, max_positions -> UL_ERR_LIMIT, table length and block ids -> UL_ERR_INVALID_ARGUMENT):
 * a refused step writes nothing. Items must not write the same slot; a table may share blocks with
 * others only below its start (copy-on-write is the caller's, via ul_engine_copy_blocks).
 */
ul_status ul_engine_step(ul_engine* engine, int32_t n_items, const ul_step_item* items,
                         float* logits_out);
/* Paged: for each pair (pairs[2i], pairs[2i + 1]) = (from, to), block `to` becomes a copy of block
 * `from` in every layer, K and V (fp8: with its scales). Every id is checked first. */
ul_status ul_engine_copy_blocks(ul_engine* engine, int32_t n_pairs, const int32_t* pairs);
/* Paged: ul_engine_export_kv / ul_engine_import_kv for positions [start, end) (import: [start,
 * start + tokens)) of the sequence whose blocks are `table` (n_blocks ids, at least
 * ceil(end / block_tokens)). Same payload layout, dtypes and fp8 rules (a range starting at a
 * multiple of UL_FP8_BLOCK copies fp8 bytes and scales as stored). */
ul_status ul_engine_export_kv_paged(ul_engine* engine, const int32_t* table, int32_t n_blocks,
                                    int32_t start, int32_t end, ul_dtype dtype, void* out,
                                    size_t out_bytes);
ul_status ul_engine_import_kv_paged(ul_engine* engine, const int32_t* table, int32_t n_blocks,
                                    int32_t start, const void* bytes, size_t n_bytes,
                                    int32_t tokens, ul_dtype dtype);

ul_status ul_engine_memory(const ul_engine* engine, ul_memory_report* out);
/* Which tier holds what (ABI 4). */
ul_status ul_engine_memory_tiers(const ul_engine* engine, ul_kv_tiers* out);

/*
 * What runs this engine, as one line of JSON written NUL-terminated into buf (cut at size - 1):
 *   {"kernels":"cuda","gemm":"cublaslt","cublaslt":"/path/libcublasLt.so.13","cublaslt_tried":[...],
 *    "kv_dtype":"bf16"}
 * kernels: "reference" or "cuda"; gemm: "cublaslt", "own-wmma" (our tensor-core kernel) or
 * "reference"; cublaslt: the library file that loaded, or null, with cublaslt_tried naming each
 * candidate that failed and why. Returns the length of the whole line (snprintf style: a return
 * >= size means it was cut); -1 when engine is NULL.
 */
int32_t ul_engine_backend_info(const ul_engine* engine, char* buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* UL_ENGINE_H */
