// The N-API addon: the C ABI of ul_engine.h as a Node module (plain node_api.h, no C++ wrapper).
// Thin by design: check argument types, call the ABI, convert results; every failure throws an
// Error whose `status` is the ul_status number (native/ts/addon-host.ts maps it to typed errors).
// The engine handle is an external with a finalizer, so a forgotten close still frees the GPU.
// forwardAsync and stepAsync run the forward pass on a libuv worker thread (a 4096-token GPU chunk must not
// block the event loop); while it runs the engine is busy and every other call on it is refused.
#include <node_api.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "ul_engine.h"

namespace {

struct Handle {
  ul_engine* engine = nullptr;
  int32_t vocab = 0;
  bool busy = false;          // a forwardAsync is running on a worker thread
  bool destroy_after = false;  // destroy() came while busy: done when the work completes
};

napi_value throw_status(napi_env env, ul_status st, const std::string& message) {
  napi_value msg, err, code;
  napi_create_string_utf8(env, message.c_str(), message.size(), &msg);
  napi_create_error(env, nullptr, msg, &err);
  napi_create_int32(env, static_cast<int32_t>(st), &code);
  napi_set_named_property(env, err, "status", code);
  napi_throw(env, err);
  return nullptr;
}

napi_value throw_type(napi_env env, const char* what) {
  napi_throw_type_error(env, nullptr, what);
  return nullptr;
}

#define ARGS(n)                                                    \
  size_t argc = n;                                                 \
  napi_value argv[n];                                              \
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);      \
  if (argc < n) return throw_type(env, "missing arguments");

bool get_i32(napi_env env, napi_value v, int32_t* out) { return napi_get_value_int32(env, v, out) == napi_ok; }
bool get_f64(napi_env env, napi_value v, double* out) { return napi_get_value_double(env, v, out) == napi_ok; }

/** The engine behind an external, or nullptr (closed, not an engine, or busy: a JS exception is
 *  pending for busy). */
Handle* get_handle(napi_env env, napi_value v) {
  void* p = nullptr;
  if (napi_get_value_external(env, v, &p) != napi_ok) return nullptr;
  Handle* h = static_cast<Handle*>(p);
  if (h && h->busy) {
    throw_status(env, UL_ERR_STATE, "engine is busy: a forward pass is running");
    return nullptr;
  }
  return h && h->engine ? h : nullptr;
}

/** After a get_handle failure: throws the type error unless get_handle already threw. */
napi_value no_handle(napi_env env, const char* what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  return pending ? nullptr : throw_type(env, what);
}

bool typed_array(napi_env env, napi_value v, void** data, size_t* bytes) {
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  napi_value buffer;
  if (napi_get_typedarray_info(env, v, &type, &length, data, &buffer, &offset) != napi_ok) return false;
  size_t es = 1;
  switch (type) {
    case napi_int16_array: case napi_uint16_array: es = 2; break;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: es = 4; break;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: es = 8; break;
    default: es = 1;
  }
  *bytes = length * es;
  return true;
}

napi_value check(napi_env env, Handle* h, ul_status st) {
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h ? h->engine : nullptr));
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

void finalize(napi_env, void* data, void*) {
  Handle* h = static_cast<Handle*>(data);
  if (h->engine) ul_engine_destroy(h->engine);
  delete h;
}

/** A numeric property (0 when absent or not a number; the engine's config check rejects zeros). */
double prop_f64(napi_env env, napi_value obj, const char* name) {
  napi_value v;
  double out = 0;
  napi_get_named_property(env, obj, name, &v);
  napi_get_value_double(env, v, &out);
  return out;
}
int32_t prop_i32(napi_env env, napi_value obj, const char* name) {
  return static_cast<int32_t>(prop_f64(env, obj, name));
}

// backendCompiled(kind: number): boolean
napi_value BackendCompiled(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t kind;
  if (!get_i32(env, argv[0], &kind)) return throw_type(env, "kind must be a number");
  napi_value out;
  napi_get_boolean(env, ul_backend_compiled(static_cast<ul_backend_kind>(kind)) != 0, &out);
  return out;
}

// create(config: {hiddenSize, ..., invFreq: Float64Array, ...}[, blockTokens, totalBlocks[,
// deviceBlocks]]): external. With the pool sizes it is ul_engine_create_paged; with deviceBlocks
// the _tiered form (blockTokens = totalBlocks = 0: the single-sequence ul_engine_create_tiered).
napi_value Create(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc < 1) return throw_type(env, "missing arguments");
  int32_t block_tokens = 0, total_blocks = 0, device_blocks = 0;
  bool paged = argc >= 3, tiered = argc >= 4;
  if (paged && (!get_i32(env, argv[1], &block_tokens) || !get_i32(env, argv[2], &total_blocks)))
    return throw_type(env, "create(config, blockTokens, totalBlocks)");
  if (tiered && !get_i32(env, argv[3], &device_blocks))
    return throw_type(env, "create(config, blockTokens, totalBlocks, deviceBlocks)");
  paged = paged && !(tiered && block_tokens == 0 && total_blocks == 0);
  ul_config c{};
  napi_value cfg = argv[0], inv;
  c.hidden_size = prop_i32(env, cfg, "hiddenSize");
  c.intermediate_size = prop_i32(env, cfg, "intermediateSize");
  c.num_layers = prop_i32(env, cfg, "numLayers");
  c.num_heads = prop_i32(env, cfg, "numHeads");
  c.num_kv_heads = prop_i32(env, cfg, "numKvHeads");
  c.head_dim = prop_i32(env, cfg, "headDim");
  c.vocab_size = prop_i32(env, cfg, "vocabSize");
  napi_value tie;
  bool tied = false;
  napi_get_named_property(env, cfg, "tieWordEmbeddings", &tie);
  napi_get_value_bool(env, tie, &tied);
  c.tie_word_embeddings = tied ? 1 : 0;
  c.rms_norm_eps = static_cast<float>(prop_f64(env, cfg, "rmsNormEps"));
  c.rotary_dim = prop_i32(env, cfg, "rotaryDim");
  c.attention_scaling = static_cast<float>(prop_f64(env, cfg, "attentionScaling"));
  c.max_positions = prop_i32(env, cfg, "maxPositions");
  c.kv_dtype = static_cast<ul_dtype>(prop_i32(env, cfg, "kvDtype"));
  c.backend = static_cast<ul_backend_kind>(prop_i32(env, cfg, "backend"));
  c.max_chunk = prop_i32(env, cfg, "maxChunk");
  napi_get_named_property(env, cfg, "invFreq", &inv);
  void* inv_data = nullptr;
  size_t inv_bytes = 0;
  if (!typed_array(env, inv, &inv_data, &inv_bytes) || inv_bytes != static_cast<size_t>(c.rotary_dim / 2) * 8)
    return throw_type(env, "invFreq must be a Float64Array of rotaryDim / 2 values");
  c.inv_freq = static_cast<const double*>(inv_data);
  ul_engine* e = nullptr;
  ul_status st = tiered ? (paged ? ul_engine_create_paged_tiered(&c, block_tokens, total_blocks, device_blocks, &e)
                                 : ul_engine_create_tiered(&c, device_blocks, &e))
                        : (paged ? ul_engine_create_paged(&c, block_tokens, total_blocks, &e) : ul_engine_create(&c, &e));
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(nullptr));
  Handle* h = new Handle{e, c.vocab_size};
  napi_value out;
  napi_create_external(env, h, finalize, nullptr, &out);
  return out;
}

// setTensor(h, name, shape: number[], data: TypedArray, dtype)
napi_value SetTensor(napi_env env, napi_callback_info info) {
  ARGS(5);
  Handle* h = get_handle(env, argv[0]);
  if (!h) return no_handle(env, "closed or invalid engine");
  size_t len = 0;
  napi_get_value_string_utf8(env, argv[1], nullptr, 0, &len);
  std::string name(len, '\0');
  napi_get_value_string_utf8(env, argv[1], &name[0], len + 1, &len);
  uint32_t nd = 0;
  napi_get_array_length(env, argv[2], &nd);
  std::vector<int64_t> shape(nd);
  for (uint32_t i = 0; i < nd; ++i) {
    napi_value v;
    napi_get_element(env, argv[2], i, &v);
    double d = 0;
    get_f64(env, v, &d);
    shape[i] = static_cast<int64_t>(d);
  }
  void* data = nullptr;
  size_t bytes = 0;
  int32_t dtype;
  if (!typed_array(env, argv[3], &data, &bytes) || !get_i32(env, argv[4], &dtype))
    return no_handle(env, "setTensor(h, name, shape, typedArray, dtype)");
  return check(env, h, ul_engine_set_tensor(h->engine, name.c_str(), static_cast<ul_dtype>(dtype), shape.data(),
                                            static_cast<int32_t>(nd), data));
}

napi_value Ready(napi_env env, napi_callback_info info) {
  ARGS(1);
  Handle* h = get_handle(env, argv[0]);
  if (!h) return no_handle(env, "closed or invalid engine");
  return check(env, h, ul_engine_ready(h->engine));
}

// forward(h, tokens: Int32Array, wantLogits: boolean): Float32Array | null
napi_value Forward(napi_env env, napi_callback_info info) {
  ARGS(3);
  Handle* h = get_handle(env, argv[0]);
  void* tokens = nullptr;
  size_t bytes = 0;
  bool want = false;
  if (!h || !typed_array(env, argv[1], &tokens, &bytes)) return no_handle(env, "forward(h, Int32Array, bool)");
  napi_get_value_bool(env, argv[2], &want);
  napi_value out = nullptr;
  float* logits = nullptr;
  if (want) {
    napi_value ab;
    void* p = nullptr;
    napi_create_arraybuffer(env, static_cast<size_t>(h->vocab) * 4, &p, &ab);
    napi_create_typedarray(env, napi_float32_array, h->vocab, ab, 0, &out);
    logits = static_cast<float*>(p);
  } else {
    napi_get_null(env, &out);
  }
  ul_status st = ul_engine_forward(h->engine, static_cast<const int32_t*>(tokens), static_cast<int32_t>(bytes / 4), logits);
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h->engine));
  return out;
}

// sample(h, temperature, seed: bigint): number
napi_value Sample(napi_env env, napi_callback_info info) {
  ARGS(3);
  Handle* h = get_handle(env, argv[0]);
  double t = 0;
  uint64_t seed = 0;
  bool lossless = false;
  if (!h || !get_f64(env, argv[1], &t) || napi_get_value_bigint_uint64(env, argv[2], &seed, &lossless) != napi_ok)
    return no_handle(env, "sample(h, temperature, bigint seed)");
  int32_t token = 0;
  ul_status st = ul_engine_sample(h->engine, static_cast<float>(t), seed, &token);
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h->engine));
  napi_value out;
  napi_create_int32(env, token, &out);
  return out;
}

napi_value Position(napi_env env, napi_callback_info info) {
  ARGS(1);
  Handle* h = get_handle(env, argv[0]);
  if (!h) return no_handle(env, "closed or invalid engine");
  napi_value out;
  napi_create_int32(env, ul_engine_position(h->engine), &out);
  return out;
}

napi_value Truncate(napi_env env, napi_callback_info info) {
  ARGS(2);
  Handle* h = get_handle(env, argv[0]);
  int32_t p;
  if (!h || !get_i32(env, argv[1], &p)) return no_handle(env, "truncate(h, position)");
  return check(env, h, ul_engine_truncate(h->engine, p));
}

// exportKv(h, start, end, dtype, bytes): Uint8Array
napi_value ExportKv(napi_env env, napi_callback_info info) {
  ARGS(5);
  Handle* h = get_handle(env, argv[0]);
  int32_t s, e, dt;
  double bytes;
  if (!h || !get_i32(env, argv[1], &s) || !get_i32(env, argv[2], &e) || !get_i32(env, argv[3], &dt) ||
      !get_f64(env, argv[4], &bytes))
    return no_handle(env, "exportKv(h, start, end, dtype, bytes)");
  napi_value ab, out;
  void* p = nullptr;
  size_t n = static_cast<size_t>(bytes);
  napi_create_arraybuffer(env, n, &p, &ab);
  napi_create_typedarray(env, napi_uint8_array, n, ab, 0, &out);
  ul_status st = ul_engine_export_kv(h->engine, s, e, static_cast<ul_dtype>(dt), p, n);
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h->engine));
  return out;
}

// importKv(h, bytes: Uint8Array, tokens, dtype)
napi_value ImportKv(napi_env env, napi_callback_info info) {
  ARGS(4);
  Handle* h = get_handle(env, argv[0]);
  void* data = nullptr;
  size_t bytes = 0;
  int32_t tokens, dt;
  if (!h || !typed_array(env, argv[1], &data, &bytes) || !get_i32(env, argv[2], &tokens) || !get_i32(env, argv[3], &dt))
    return no_handle(env, "importKv(h, Uint8Array, tokens, dtype)");
  return check(env, h, ul_engine_import_kv(h->engine, data, bytes, tokens, static_cast<ul_dtype>(dt)));
}

// The ul_engine_backend_info JSON line as a string (native/ts/abi.ts parses it).
napi_value BackendInfo(napi_env env, napi_callback_info info) {
  ARGS(1);
  Handle* h = get_handle(env, argv[0]);
  if (!h) return no_handle(env, "closed or invalid engine");
  std::string line(static_cast<size_t>(ul_engine_backend_info(h->engine, nullptr, 0)) + 1, '\0');
  ul_engine_backend_info(h->engine, &line[0], line.size());
  line.pop_back();  // the NUL
  napi_value out;
  napi_create_string_utf8(env, line.c_str(), line.size(), &out);
  return out;
}

/** A JS object of number properties from (name, u64) pairs. */
napi_value number_object(napi_env env, std::initializer_list<std::pair<const char*, uint64_t>> fields) {
  napi_value out;
  napi_create_object(env, &out);
  for (const auto& f : fields) {
    napi_value v;
    napi_create_double(env, static_cast<double>(f.second), &v);
    napi_set_named_property(env, out, f.first, v);
  }
  return out;
}

// memoryTiers(h): {blockTokens, deviceBlocks, hostBlocks, deviceKvBytes, hostKvBytes, stagingBytes}
napi_value MemoryTiers(napi_env env, napi_callback_info info) {
  ARGS(1);
  Handle* h = get_handle(env, argv[0]);
  if (!h) return no_handle(env, "closed or invalid engine");
  ul_kv_tiers r{};
  ul_status st = ul_engine_memory_tiers(h->engine, &r);
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h->engine));
  return number_object(env, {{"blockTokens", r.block_tokens}, {"deviceBlocks", r.device_blocks},
                             {"hostBlocks", r.host_blocks}, {"deviceKvBytes", r.device_kv_bytes},
                             {"hostKvBytes", r.host_kv_bytes}, {"stagingBytes", r.staging_bytes}});
}

napi_value Memory(napi_env env, napi_callback_info info) {
  ARGS(1);
  Handle* h = get_handle(env, argv[0]);
  if (!h) return no_handle(env, "closed or invalid engine");
  ul_memory_report r{};
  ul_status st = ul_engine_memory(h->engine, &r);
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h->engine));
  return number_object(env, {{"weightBytes", r.weight_bytes}, {"kvBytes", r.kv_bytes},
                             {"activationBytes", r.activation_bytes}, {"deviceFree", r.device_free},
                             {"deviceTotal", r.device_total}});
}

// forwardAsync(h, tokens: Int32Array, wantLogits): Promise<Float32Array | null>
// stepAsync(h, items: {tokens, start, table, logits}[]): Promise<Float32Array | null> (paged engine)
struct ForwardWork {
  Handle* h;
  napi_ref keep;  // keeps the external (and so the Handle) alive while the worker runs
  napi_deferred deferred;
  napi_async_work work;
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // empty: no logits wanted
  // stepAsync: every item's tokens and table copied (the caller's arrays may change meanwhile).
  bool step = false;
  std::vector<std::vector<int32_t>> item_tokens, item_tables;
  std::vector<ul_step_item> items;
  ul_status status = UL_OK;
  std::string error;
};

void forward_execute(napi_env, void* data) {  // worker thread: no N-API calls here
  ForwardWork* w = static_cast<ForwardWork*>(data);
  if (w->step) {
    for (size_t i = 0; i < w->items.size(); ++i) {
      w->items[i].tokens = w->item_tokens[i].data();
      w->items[i].table = w->item_tables[i].data();
    }
    w->status = ul_engine_step(w->h->engine, static_cast<int32_t>(w->items.size()), w->items.data(),
                               w->logits.empty() ? nullptr : w->logits.data());
  } else {
    w->status = ul_engine_forward(w->h->engine, w->tokens.data(), static_cast<int32_t>(w->tokens.size()),
                                  w->logits.empty() ? nullptr : w->logits.data());
  }
  if (w->status != UL_OK) w->error = ul_engine_last_error(w->h->engine);
}

void forward_complete(napi_env env, napi_status, void* data) {
  ForwardWork* w = static_cast<ForwardWork*>(data);
  Handle* h = w->h;
  h->busy = false;
  if (w->status == UL_OK) {
    napi_value out;
    if (w->logits.empty()) {
      napi_get_null(env, &out);
    } else {
      napi_value ab;
      void* p = nullptr;
      napi_create_arraybuffer(env, w->logits.size() * 4, &p, &ab);
      std::memcpy(p, w->logits.data(), w->logits.size() * 4);
      napi_create_typedarray(env, napi_float32_array, w->logits.size(), ab, 0, &out);
    }
    napi_resolve_deferred(env, w->deferred, out);
  } else {
    napi_value msg, err, code;
    napi_create_string_utf8(env, w->error.c_str(), w->error.size(), &msg);
    napi_create_error(env, nullptr, msg, &err);
    napi_create_int32(env, static_cast<int32_t>(w->status), &code);
    napi_set_named_property(env, err, "status", code);
    napi_reject_deferred(env, w->deferred, err);
  }
  if (h->destroy_after && h->engine) {
    ul_engine_destroy(h->engine);
    h->engine = nullptr;
  }
  napi_delete_async_work(env, w->work);
  napi_delete_reference(env, w->keep);
  delete w;
}

/** Queues `w` on a worker thread (the engine is busy until it completes); its promise. */
napi_value queue_work(napi_env env, ForwardWork* w, napi_value handle, const char* what) {
  napi_value promise, name;
  napi_create_promise(env, &w->deferred, &promise);
  napi_create_reference(env, handle, 1, &w->keep);
  napi_create_string_utf8(env, what, NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, nullptr, name, forward_execute, forward_complete, w, &w->work);
  w->h->busy = true;
  napi_queue_async_work(env, w->work);
  return promise;
}

napi_value ForwardAsync(napi_env env, napi_callback_info info) {
  ARGS(3);
  Handle* h = get_handle(env, argv[0]);
  void* tokens = nullptr;
  size_t bytes = 0;
  bool want = false;
  if (!h || !typed_array(env, argv[1], &tokens, &bytes)) return no_handle(env, "forwardAsync(h, Int32Array, bool)");
  napi_get_value_bool(env, argv[2], &want);
  auto* w = new ForwardWork();
  w->h = h;
  const int32_t* t = static_cast<const int32_t*>(tokens);
  w->tokens.assign(t, t + bytes / 4);  // copied: the caller's array may change meanwhile
  if (want) w->logits.resize(static_cast<size_t>(h->vocab));
  return queue_work(env, w, argv[0], "ul_engine_forward");
}

/** Copies an Int32Array argument (false when it is not one). */
bool int32s(napi_env env, napi_value v, std::vector<int32_t>* out) {
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value buffer;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &buffer, &offset) != napi_ok || type != napi_int32_array)
    return false;
  const int32_t* p = static_cast<const int32_t*>(data);
  out->assign(p, p + length);
  return true;
}

napi_value StepAsync(napi_env env, napi_callback_info info) {
  ARGS(2);
  Handle* h = get_handle(env, argv[0]);
  uint32_t n = 0;
  bool is_array = false;
  napi_is_array(env, argv[1], &is_array);
  if (!h || !is_array) return no_handle(env, "stepAsync(h, items[])");
  napi_get_array_length(env, argv[1], &n);
  auto* w = new ForwardWork();
  w->h = h;
  w->step = true;
  w->item_tokens.resize(n);
  w->item_tables.resize(n);
  w->items.resize(n);
  size_t wanted = 0;
  for (uint32_t i = 0; i < n; ++i) {
    napi_value item, tokens, table, want;
    napi_get_element(env, argv[1], i, &item);
    bool logits = false;
    napi_get_named_property(env, item, "tokens", &tokens);
    napi_get_named_property(env, item, "table", &table);
    napi_get_named_property(env, item, "logits", &want);
    napi_get_value_bool(env, want, &logits);
    if (!int32s(env, tokens, &w->item_tokens[i]) || !int32s(env, table, &w->item_tables[i])) {
      delete w;
      return throw_type(env, "stepAsync: every item needs Int32Array tokens and table");
    }
    ul_step_item& it = w->items[i];
    it.n_tokens = static_cast<int32_t>(w->item_tokens[i].size());
    it.start = prop_i32(env, item, "start");
    it.n_blocks = static_cast<int32_t>(w->item_tables[i].size());
    it.want_logits = logits ? 1 : 0;
    wanted += logits ? 1 : 0;
  }
  w->logits.resize(wanted * static_cast<size_t>(h->vocab));
  return queue_work(env, w, argv[0], "ul_engine_step");
}

// copyBlocks(h, pairs: Int32Array)
napi_value CopyBlocks(napi_env env, napi_callback_info info) {
  ARGS(2);
  Handle* h = get_handle(env, argv[0]);
  std::vector<int32_t> pairs;
  if (!h || !int32s(env, argv[1], &pairs)) return no_handle(env, "copyBlocks(h, Int32Array)");
  return check(env, h, ul_engine_copy_blocks(h->engine, static_cast<int32_t>(pairs.size() / 2), pairs.data()));
}

// exportKvPaged(h, table: Int32Array, start, end, dtype, bytes): Uint8Array
napi_value ExportKvPaged(napi_env env, napi_callback_info info) {
  ARGS(6);
  Handle* h = get_handle(env, argv[0]);
  std::vector<int32_t> table;
  int32_t s, e, dt;
  double bytes;
  if (!h || !int32s(env, argv[1], &table) || !get_i32(env, argv[2], &s) || !get_i32(env, argv[3], &e) ||
      !get_i32(env, argv[4], &dt) || !get_f64(env, argv[5], &bytes))
    return no_handle(env, "exportKvPaged(h, table, start, end, dtype, bytes)");
  napi_value ab, out;
  void* p = nullptr;
  size_t n = static_cast<size_t>(bytes);
  napi_create_arraybuffer(env, n, &p, &ab);
  napi_create_typedarray(env, napi_uint8_array, n, ab, 0, &out);
  ul_status st = ul_engine_export_kv_paged(h->engine, table.data(), static_cast<int32_t>(table.size()), s, e,
                                           static_cast<ul_dtype>(dt), p, n);
  if (st != UL_OK) return throw_status(env, st, ul_engine_last_error(h->engine));
  return out;
}

// importKvPaged(h, table: Int32Array, start, bytes: Uint8Array, tokens, dtype)
napi_value ImportKvPaged(napi_env env, napi_callback_info info) {
  ARGS(6);
  Handle* h = get_handle(env, argv[0]);
  std::vector<int32_t> table;
  void* data = nullptr;
  size_t bytes = 0;
  int32_t s, tokens, dt;
  if (!h || !int32s(env, argv[1], &table) || !get_i32(env, argv[2], &s) || !typed_array(env, argv[3], &data, &bytes) ||
      !get_i32(env, argv[4], &tokens) || !get_i32(env, argv[5], &dt))
    return no_handle(env, "importKvPaged(h, table, start, Uint8Array, tokens, dtype)");
  return check(env, h, ul_engine_import_kv_paged(h->engine, table.data(), static_cast<int32_t>(table.size()), s, data,
                                                  bytes, tokens, static_cast<ul_dtype>(dt)));
}

napi_value Destroy(napi_env env, napi_callback_info info) {
  ARGS(1);
  void* p = nullptr;
  if (napi_get_value_external(env, argv[0], &p) == napi_ok && p) {
    Handle* h = static_cast<Handle*>(p);
    if (h->busy) {
      h->destroy_after = true;
    } else {
      if (h->engine) ul_engine_destroy(h->engine);
      h->engine = nullptr;
    }
  }
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"backendCompiled", nullptr, BackendCompiled, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"create", nullptr, Create, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setTensor", nullptr, SetTensor, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"ready", nullptr, Ready, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"forward", nullptr, Forward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"forwardAsync", nullptr, ForwardAsync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"sample", nullptr, Sample, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"position", nullptr, Position, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"truncate", nullptr, Truncate, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"exportKv", nullptr, ExportKv, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"importKv", nullptr, ImportKv, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"memory", nullptr, Memory, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"memoryTiers", nullptr, MemoryTiers, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"backendInfo", nullptr, BackendInfo, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"stepAsync", nullptr, StepAsync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"copyBlocks", nullptr, CopyBlocks, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"exportKvPaged", nullptr, ExportKvPaged, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"importKvPaged", nullptr, ImportKvPaged, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"destroy", nullptr, Destroy, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
