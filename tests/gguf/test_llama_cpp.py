"""Our GGUF export loaded by llama.cpp itself (llama-cpp-python; skipped where it is not installed).

- decoder: llama.cpp's logits for a token sequence match our float32 model's (f32 file: cosine >= 0.99999,
  max |diff| <= 1e-2 x max |logit| — llama.cpp keeps its KV cache in f16; same argmax everywhere), and its
  tokenizer, built from the exported tekken vocabulary and merges, splits text as tekken does;
- mmproj: llama.cpp's mtmd encodes an image into the same embeddings as our vision encoder + adapter, with
  the [IMG_BREAK] row between patch rows (cosine >= 0.9999 per token).
Measured here: decoder cosine 0.9999995 (max diff 0.006 of 6.0); image embeddings cosine 0.999997.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is optional (a source build of several minutes): pip install llama-cpp-python",
)


@pytest.fixture(scope="module")
def exported(tiny_f32_export):
    model, result = tiny_f32_export
    llm = llama_cpp.Llama(
        model_path=str(result.model_path), n_ctx=256, logits_all=True, verbose=False, n_threads=1
    )
    yield model, result, llm
    llm.close()


def test_llama_cpp_logits_match_ours(exported):
    model, _, llm = exported
    ids = [1, 1500, 2900, 33000, 4100, 250, 7000, 64000, 1200, 10000]
    with torch.inference_mode():
        ours = model(torch.tensor([ids]))[0].numpy()
    llm.reset()
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    cos = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cos.min() >= 0.99999, cos
    assert np.abs(ours - theirs).max() <= 1e-2 * np.abs(ours).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_llama_cpp_tokenizes_like_tekken(exported):
    from pixtral.prompt.tokenizer import packaged_tokenizer

    _, _, llm = exported
    tekken = packaged_tokenizer().instruct_tokenizer.tokenizer
    for text in [" hello world", "Pixtral reads images: 1024×1024, 16-px patches!", "日本語のテキスト"]:
        assert llm.tokenize(text.encode(), add_bos=False) == tekken.encode(text, bos=False, eos=False), text
    assert llm.token_bos() == 1 and llm.token_eos() == 2


def test_mtmd_encodes_an_image_like_our_vision_encoder(exported):
    from llama_cpp import mtmd_cpp as M
    from mistral_common.tokens.tokenizers.multimodal import DATASET_MEAN, DATASET_STD

    model, result, llm = exported
    params = M.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 1
    ctx = M.mtmd_init_from_file(str(result.mmproj_path).encode(), llm.model, params)
    assert ctx and M.mtmd_support_vision(ctx)
    try:
        h, w = 48, 64  # multiples of 16 below the size limit: neither side resizes
        img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        bitmap = M.mtmd_bitmap_init(w, h, (ctypes.c_uint8 * img.size).from_buffer_copy(img.tobytes()))
        chunks = M.mtmd_input_chunks_init()
        text = b"describe " + M.mtmd_default_marker()
        prompt = M.mtmd_input_text()
        prompt.text, prompt.text_len, prompt.add_special, prompt.parse_special = text, len(text), False, True
        assert (
            M.mtmd_tokenize(ctx, chunks, ctypes.byref(prompt), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        )
        image = [
            M.mtmd_input_chunks_get(chunks, i)
            for i in range(M.mtmd_input_chunks_size(chunks))
            if M.mtmd_input_chunk_get_type(M.mtmd_input_chunks_get(chunks, i))
            == M.MTMD_INPUT_CHUNK_TYPE_IMAGE
        ]
        assert len(image) == 1
        n = M.mtmd_input_chunk_get_n_tokens(image[0])
        assert M.mtmd_encode_chunk(ctx, image[0]) == 0
        dim = model.config.text.dim
        theirs = np.ctypeslib.as_array(M.mtmd_get_output_embd(ctx), shape=(n * dim,)).reshape(n, dim).copy()
        M.mtmd_input_chunks_free(chunks)
        M.mtmd_bitmap_free(bitmap)
    finally:
        M.mtmd_free(ctx)
    pixels = torch.tensor((img / 255.0 - np.array(DATASET_MEAN)) / np.array(DATASET_STD), dtype=torch.float32)
    with torch.inference_mode():
        feats = model.encode_images([pixels.permute(2, 0, 1)]).numpy()  # (rows * cols, dim)
        brk = model.tok_embeddings.weight[model.config.vision.image_break_token_id].numpy()
    rows, cols = h // 16, w // 16
    ours = []
    for r in range(rows):  # llama.cpp inserts [IMG_BREAK] between rows of patches (not after the last)
        ours += [feats[r * cols : (r + 1) * cols]] + ([brk[None]] if r < rows - 1 else [])
    ours = np.concatenate(ours)
    assert theirs.shape == ours.shape
    cos = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cos.min() >= 0.9999, cos
