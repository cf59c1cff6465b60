"""Export to GGUF for llama.cpp (`pixtral convert SRC DST --to gguf`), with the `gguf` package.

Two files, as llama.cpp's own converter writes them for Pixtral (convert_hf_to_gguf.py, mistral format):
- the decoder as a `llama` architecture model: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v,
  attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, output; the tekken tokenizer as a
  "gpt2" BPE vocabulary with pre-tokenizer "tekken" (tokens, types, merges, special ids) and the chat
  template name "mistral-v3-tekken";
- the vision encoder + adapter as an mmproj file (`clip` architecture, projector type "pixtral"):
  v.patch_embd, v.pre_ln, v.blk.N.{attn_q, attn_k, attn_v, attn_out, ln1, ln2, ffn_gate, ffn_up, ffn_down},
  mm.1 / mm.2 (the adapter), and v.token_embd.img_break (the [IMG_BREAK] row of the token embedding).

RoPE layout: llama.cpp's "normal" rope rotates adjacent pairs (2i, 2i+1), which is the Mistral native
(interleaved) layout our model keeps in memory. llama.cpp's converter permutes q/k only for HF-format
weights (half-split -> interleaved, `LlamaModel.permute`) and sets `undo_permute = False` for Mistral
format; we always export from the native layout, so no permutation is applied. head_dim is written
explicitly (attention.key_length / value_length = 128 for NeMo, not 5120 / 32).

Tensor types: f32 everything in float32; f16 2-D weights in float16, norms/biases float32 (llama.cpp's
rule); q8_0 2-D weights whose rows split into blocks of 32 in Q8_0, the rest as for f16. Tensors are
converted and written one at a time: memory stays at one tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import torch
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.multimodal import DATASET_MEAN, DATASET_STD

from pixtral.checkpoint.formats import tokenizer_file
from pixtral.checkpoint.loader import Checkpoint, open_checkpoint
from pixtral.checkpoint.progress import track
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError, MissingDependencyError

DTYPES = ("f32", "f16", "q8_0")
CHAT_TEMPLATE = "mistral-v3-tekken"  # llama.cpp's built-in template name for tekken v3 (Pixtral-12B-2409)
_CHUNK_ROWS = 8192  # rows quantized to Q8_0 at a time (numpy temporaries)


def _gguf():
    try:
        import gguf
    except ImportError as e:  # an optional dependency: only this exporter needs it
        raise MissingDependencyError(
            "GGUF export needs the optional `gguf` package: pip install 'pixtral[gguf]'"
        ) from e
    return gguf


@dataclass
class GGUFExport:
    model_path: Path
    mmproj_path: Path | None
    tensors: int
    tokenizer: bool  # tokenizer metadata written
    notes: list[str] = field(default_factory=list)


# ---- names --------------------------------------------------------------------------------------

_DECODER_LAYER = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
}
_DECODER_TOP = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
_VISION_LAYER = {
    "attention_norm.weight": "ln1.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_out.weight",
    "ffn_norm.weight": "ln2.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
}
_VISION_TOP = {
    "vision_encoder.patch_conv.weight": "v.patch_embd.weight",
    "vision_encoder.ln_pre.weight": "v.pre_ln.weight",
    "vision_language_adapter.w_in.weight": "mm.1.weight",
    "vision_language_adapter.w_in.bias": "mm.1.bias",
    "vision_language_adapter.w_out.weight": "mm.2.weight",
    "vision_language_adapter.w_out.bias": "mm.2.bias",
    # Mistral Small 3.1+: llama.cpp's names for the projector norm and the patch merger (gguf-py's
    # tensor_mapping: V_MM_INP_NORM, V_MM_PATCH_MERGER); the merger's input stays channel-major, as stored
    "pre_mm_projector_norm.weight": "mm.input_norm.weight",
    "patch_merger.merging_layer.weight": "mm.patch_merger.weight",
}
IMG_BREAK_TENSOR = "v.token_embd.img_break"


def gguf_name(native: str) -> tuple[str, str]:
    """Native tensor name -> ("model" | "mmproj", GGUF name)."""
    if native in _DECODER_TOP:
        return "model", _DECODER_TOP[native]
    if native in _VISION_TOP:
        return "mmproj", _VISION_TOP[native]
    parts = native.split(".")
    if parts[0] == "layers":
        return "model", f"blk.{parts[1]}.{_DECODER_LAYER['.'.join(parts[2:])]}"
    if parts[:3] == ["vision_encoder", "transformer", "layers"]:
        return "mmproj", f"v.blk.{parts[3]}.{_VISION_LAYER['.'.join(parts[4:])]}"
    raise KeyError(f"no GGUF name for tensor {native!r}")


# ---- tensor encoding ------------------------------------------------------------------------------


def _ggml_type(gguf, name: str, shape: tuple[int, ...], dtype: str, mmproj: bool):
    T = gguf.GGMLQuantizationType
    if dtype == "f32" or len(shape) == 1 or name.endswith(".bias") or name == IMG_BREAK_TENSOR:
        return T.F32
    if mmproj and "patch_embd" in name:
        return T.F16  # llama.cpp keeps the patch convolution in f16 (it is not a matmul weight)
    if dtype == "q8_0" and len(shape) == 2 and shape[-1] % 32 == 0:
        return T.Q8_0
    return T.F16


def _nbytes(gguf, shape: tuple[int, ...], qtype) -> int:
    T = gguf.GGMLQuantizationType
    n = int(np.prod(shape))
    if qtype == T.F32:
        return 4 * n
    if qtype == T.F16:
        return 2 * n
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return n // block * size


def _encode(gguf, t: torch.Tensor, qtype) -> np.ndarray:
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        return t.float().contiguous().numpy()
    if qtype == T.F16:
        return t.to(torch.float16).contiguous().numpy()
    rows = [
        gguf.quants.quantize(t[r : r + _CHUNK_ROWS].float().numpy(), qtype)
        for r in range(0, t.shape[0], _CHUNK_ROWS)
    ]
    return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)


def _file_type(gguf, dtype: str) -> int:
    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0}[dtype]


# ---- metadata -----------------------------------------------------------------------------------


def _decoder_metadata(writer, config: PixtralConfig, name: str, dtype: str, gguf) -> None:
    t = config.text
    writer.add_name(name)
    writer.add_file_type(_file_type(gguf, dtype))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(t.vocab_size)
    writer.add_context_length(t.max_seq_len)
    writer.add_embedding_length(t.dim)
    writer.add_block_count(t.n_layers)
    writer.add_feed_forward_length(t.hidden_dim)
    writer.add_head_count(t.n_heads)
    writer.add_head_count_kv(t.n_kv_heads)
    writer.add_key_length(t.head_dim)
    writer.add_value_length(t.head_dim)
    writer.add_rope_dimension_count(t.head_dim)
    writer.add_rope_freq_base(t.rope_theta)
    writer.add_layer_norm_rms_eps(t.norm_eps)


def _tokenizer_metadata(writer, tokenizer, config: PixtralConfig, gguf) -> str | None:
    """tekken -> a gpt2-style BPE vocabulary, the way llama.cpp's `_set_vocab_mistral` writes it.
    Returns why it was skipped, or None when written."""
    from gguf.vocab import MistralTokenizerType, MistralVocab  # optional, as _gguf()

    tekken = tokenizer.instruct_tokenizer.tokenizer
    if type(tekken).__name__ != "Tekkenizer":
        return f"tokenizer {type(tekken).__name__} is not tekken: not exported"
    if tekken.n_words != config.text.vocab_size:
        return (
            f"tokenizer has {tekken.n_words} tokens but the model {config.text.vocab_size}: "
            "tokenizer metadata not exported"
        )

    class _Vocab(MistralVocab):  # the gguf package's Mistral vocabulary, from an already loaded tokenizer
        def __init__(self, tok) -> None:
            self.tokenizer = tok
            self.tokenizer_type = MistralTokenizerType.tekken
            self.vocab_size = tok.n_words

    vocab = _Vocab(tekken)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    writer.add_tokenizer_model(vocab.gguf_tokenizer_model)  # "gpt2"
    writer.add_tokenizer_pre("tekken")
    writer.add_token_merges(vocab.extract_vocab_merges_from_model())
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    # llama.cpp's template names: v3 (Pixtral-12B), v7 for the later tekken versions ([SYSTEM_PROMPT] blocks)
    version = getattr(tekken.version, "value", str(tekken.version))
    writer.add_chat_template(CHAT_TEMPLATE if version == "v3" else "mistral-v7-tekken")
    return None


def _mmproj_metadata(writer, config: PixtralConfig, name: str, dtype: str, gguf) -> None:
    v = config.vision
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(_file_type(gguf, dtype))
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.PIXTRAL)
    writer.add_vision_projection_dim(config.text.dim)
    writer.add_vision_image_size(v.image_size)
    writer.add_vision_patch_size(v.patch_size)
    writer.add_vision_embedding_length(v.hidden_size)
    writer.add_vision_feed_forward_length(v.intermediate_size)
    writer.add_vision_block_count(v.num_hidden_layers)
    writer.add_vision_head_count(v.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(v.norm_eps)
    writer.add_vision_image_mean(list(DATASET_MEAN))
    writer.add_vision_image_std(list(DATASET_STD))
    writer.add_vision_use_silu(True)
    writer.add_rope_freq_base(v.rope_theta)
    if v.has_patch_merger:
        writer.add_vision_spatial_merge_size(v.spatial_merge_size)


def _find_tokenizer(folder: Path):
    """The folder's own tokenizer (formats.tokenizer_file), else mistral-common's packaged Pixtral tokenizer
    (as prompt/tokenizer.py; read here directly so that the checkpoint layer does not import the prompt layer)."""
    own = tokenizer_file(folder)
    if own is not None:
        return MistralTokenizer.from_file(str(own))
    with as_file(files("mistral_common") / "data" / "tekken_240911.json") as path:
        return MistralTokenizer.from_file(str(path))


# ---- writing ------------------------------------------------------------------------------------


def _write(
    path: Path, arch: str, metadata, items: list[tuple[str, tuple[int, ...], object, object]], gguf
) -> None:
    """items: (gguf name, numpy-order shape, ggml type, zero-argument function giving the torch tensor)."""
    writer = gguf.GGUFWriter(str(path), arch)
    metadata(writer)
    for name, shape, qtype, _ in items:
        np_dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
            qtype
        )
        if np_dtype is None:  # quantized: declared as bytes, the byte shape maps back to the element shape
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            byte_shape = (*shape[:-1], shape[-1] // block * size)
            writer.add_tensor_info(
                name, byte_shape, np.dtype(np.uint8), _nbytes(gguf, shape, qtype), raw_dtype=qtype
            )
        else:
            writer.add_tensor_info(
                name, shape, np.dtype(np_dtype), _nbytes(gguf, shape, qtype), raw_dtype=qtype
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    sizes = [_nbytes(gguf, shape, qtype) for _, shape, qtype, _ in items]
    for _, _, qtype, read in track(items, f"writing {path.name}", sizes, sum(sizes)):
        writer.write_tensor_data(_encode(gguf, read(), qtype))
    writer.close()


def mmproj_path_for(dst: Path) -> Path:
    """model.gguf -> mmproj-model.gguf (beside it), llama.cpp's usual naming."""
    return dst.with_name(f"mmproj-{dst.name}")


def export_gguf(
    src: str | Path | Checkpoint,
    dst: str | Path,
    dtype: str = "f16",
    *,
    mmproj: str | Path | bool = True,
    tokenizer: bool | object = True,
    name: str | None = None,
) -> GGUFExport:
    """Write `dst` (the decoder, llama architecture) and, unless mmproj=False, the vision projector file
    (default path: mmproj-<dst name> beside it). The tokenizer is the model folder's tekken.json, else the
    packaged Pixtral tokenizer (or a MistralTokenizer passed as `tokenizer`); it is written when its size
    matches the model's vocabulary, else `notes` says why not."""
    gguf = _gguf()
    if dtype not in DTYPES:
        raise ValueError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    config = ckpt.config
    if config.text.yarn or config.text.llama_4_scaling:
        raise CheckpointError(
            f"{ckpt.folder}: GGUF export of a YaRN / llama-4-scaled decoder (Ministral 3, Devstral Small 2) is "
            "not supported: the 'llama' architecture written here has no keys for them"
        )
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    name = name or ckpt.folder.name
    notes: list[str] = []

    model_items, mmproj_items = [], []
    for native, source in ckpt.sources.items():
        kind, gname = gguf_name(native)
        mm = kind == "mmproj"
        item = (
            gname,
            tuple(source.shape),
            _ggml_type(gguf, gname, tuple(source.shape), dtype, mm),
            source.read,
        )
        (mmproj_items if mm else model_items).append(item)
    tok = None
    if tokenizer is not False:
        tok = _find_tokenizer(ckpt.folder) if tokenizer is True else tokenizer
    encoder = tok.instruct_tokenizer.image_encoder if tok is not None else None
    if encoder is not None and tok.instruct_tokenizer.tokenizer.n_words != config.text.vocab_size:
        encoder = None  # a fallback tokenizer of another vocabulary: its ids say nothing about this model
    # the [IMG_BREAK] row: the id the tokenizer writes (Pixtral-Large: 14), not a default
    img_break = encoder.special_ids.img_break if encoder is not None else config.vision.image_break_token_id
    embed = ckpt.sources["tok_embeddings.weight"]
    mmproj_items.append(
        (
            IMG_BREAK_TENSOR,
            (config.text.dim,),
            gguf.GGMLQuantizationType.F32,
            lambda: embed.read()[img_break].clone(),
        )
    )

    def model_metadata(writer) -> None:
        _decoder_metadata(writer, config, name, dtype, gguf)
        if tok is not None:
            why = _tokenizer_metadata(writer, tok, config, gguf)
            if why:
                notes.append(why)

    _write(dst, "llama", model_metadata, model_items, gguf)
    mm_path = None
    if mmproj is not False:
        mm_path = mmproj_path_for(dst) if mmproj is True else Path(mmproj)
        _write(mm_path, "clip", lambda w: _mmproj_metadata(w, config, name, dtype, gguf), mmproj_items, gguf)
    return GGUFExport(dst, mm_path, len(model_items), tokenizer is not False and not notes, notes)
