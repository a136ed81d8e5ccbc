// identity_dump: the patch-identity proof's probe (see oracle/tests/patch_identity.rs).
//
// build.rs links this file twice: against the patched libllama.a the oracle uses, and against
// a "stock" libllama.a whose llama.cpp.o is compiled from the UNPATCHED vendored
// src/llama.cpp (the only file oracle/patches/0002 touches) with CMake's exact command.
// Both copies run the same model and prompt; their outputs must be byte-identical.
//
//   identity_dump MODEL OUT   → prints "<tensors> <bytes>" on stdout
//
// OUT holds, for a prompt decoded as one batch (logits at every position) and then one more
// token through the KV cache: every graph node the eval callback is offered (name, type, ne,
// raw bytes as ggml_backend_tensor_get returns them), then the logits rows of each decode.

#include "llama.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

struct Dump {
    FILE * out = nullptr;
    size_t tensors = 0;
    size_t bytes = 0;
    std::vector<uint8_t> buf;

    void write(const void * p, size_t n) {
        fwrite(p, 1, n, out);
        bytes += n;
    }
};

// Every node: answer "yes" when asked, then write it out.
static bool eval_cb(struct ggml_tensor * t, bool ask, void * user) {
    if (ask) {
        return true;
    }
    Dump * d = (Dump *) user;
    const size_t n = ggml_nbytes(t);
    d->buf.resize(n);
    ggml_backend_tensor_get(t, d->buf.data(), 0, n);
    const uint32_t name_len = (uint32_t) strlen(t->name);
    const int32_t type = (int32_t) t->type;
    d->write(&name_len, sizeof(name_len));
    d->write(t->name, name_len);
    d->write(&type, sizeof(type));
    d->write(t->ne, sizeof(t->ne));
    d->write(d->buf.data(), n);
    d->tensors++;
    return true;
}

static void quiet(enum ggml_log_level, const char *, void *) {}

static bool decode(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, Dump & d, int n_vocab) {
    llama_batch batch = llama_batch_init((int32_t) toks.size(), 0, 1);
    batch.n_tokens = (int32_t) toks.size();
    for (size_t i = 0; i < toks.size(); i++) {
        batch.token[i] = toks[i];
        batch.pos[i] = pos0 + (int) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    const bool ok = llama_decode(ctx, batch) == 0;
    for (size_t i = 0; ok && i < toks.size(); i++) {
        d.write(llama_get_logits_ith(ctx, (int32_t) i), sizeof(float) * n_vocab);
    }
    llama_batch_free(batch);
    return ok;
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL OUT\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_load_model_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    Dump d;
    d.out = fopen(argv[2], "wb");
    if (!d.out) {
        fprintf(stderr, "cannot create %s\n", argv[2]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 64;
    cp.n_threads = cp.n_threads_batch = 1; // ggml spins at barriers: 1 thread is fast on a busy machine
    cp.cb_eval = eval_cb;
    cp.cb_eval_user_data = &d;
    llama_context * ctx = llama_new_context_with_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const char * text = "Hello world, the quick brown fox";
    std::vector<llama_token> toks(64);
    const int n = llama_tokenize(model, text, (int32_t) strlen(text), toks.data(), (int32_t) toks.size(), true, false);
    if (n <= 1) {
        fprintf(stderr, "tokenize failed (%d)\n", n);
        return 1;
    }
    toks.resize(n);
    const int n_vocab = llama_n_vocab(model);
    if (!decode(ctx, toks, 0, d, n_vocab) || !decode(ctx, {toks[1]}, n, d, n_vocab)) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    fclose(d.out);
    printf("%zu %zu\n", d.tensors, d.bytes);
    llama_free(ctx);
    llama_free_model(model);
    return 0;
}
