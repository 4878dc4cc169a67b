"""A small Qwen2 checkpoint in real AWQ GEMM format, for the real-vLLM tests and benchmark.

    python hack/tiny_model.py DIR [--format awq|float] [--seed N]

vLLM loads it with the same loader and AWQ layers it uses for ``Qwen/Qwen2.5-*-AWQ``, so the
CPU tier exercises the production code path in about a minute per server instead of needing a
GPU and a 1 GB download. The float weights come from a seeded RNG and are quantized for real
(4-bit round-to-nearest per group of 64 inputs, with zero points); ``--format float`` writes the
same weights unquantized, so a test can check the AWQ model follows the float one.

torch, safetensors, tokenizers and transformers are imported inside the functions: they are
installed only in the vLLM environment (run it with ``.venv-vllm/bin/python``), and importing
this module elsewhere stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The tokenizer's training text; also a handy source of prompts for tests.
CORPUS = (
    "V-Gate serves quantized language models behind one OpenAI-compatible gateway.",
    "The gateway routes each request to a healthy worker and relays its answer.",
    "Workers run vLLM with AWQ weights: four bits per value, one scale per group.",
    "Prefix caching lets repeated prompts skip work the engine has already done.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Kubernetes restarts a pod when its health check fails and routes around it.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 128 256 512 1024.",
    "system user assistant: hello, how are you today? I am fine, thank you.",
)
# AWQ's GEMM kernels read the eight nibbles of each int32 in this column order.
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
PROJECTIONS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip


@dataclass(frozen=True)
class TinyQwen2:
    """Shape of the model; head_dim = hidden / heads = 64."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    group_size: int = 64
    bits: int = 4

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """[out, in] of each quantized linear layer, by its name within a decoder layer."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        return {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (i, h),
            "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i),
        }


def float_weights(shape: TinyQwen2, seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights under the Hugging Face Qwen2 parameter names."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def normal(*size: int, std: float) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * std

    h = shape.hidden_size
    weights = {
        "model.embed_tokens.weight": normal(shape.vocab_size, h, std=1.0),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": normal(shape.vocab_size, h, std=h**-0.5),
    }
    for layer in range(shape.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        weights[prefix + "input_layernorm.weight"] = torch.ones(h)
        weights[prefix + "post_attention_layernorm.weight"] = torch.ones(h)
        for name, (out_f, in_f) in shape.projection_shapes().items():
            # 1/sqrt(fan_in) keeps every layer's contribution to the residual stream comparable.
            weights[prefix + name + ".weight"] = normal(out_f, in_f, std=in_f**-0.5)
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                weights[prefix + name + ".bias"] = normal(out_f, std=0.02)
    return weights


def quantize_rtn(
    weight: torch.Tensor, group_size: int, bits: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest per group of inputs, as AutoAWQ does.

    ``weight`` is [out, in]; returns ``q`` [out, in], ``zeros`` and float16 ``scales`` [out, in/group],
    with ``weight ~= (q - zeros) * scales`` within each group.
    """
    import torch

    out_f, in_f = weight.shape
    top = 2**bits - 1
    grouped = weight.float().reshape(out_f, in_f // group_size, group_size)
    lo, hi = grouped.amin(dim=-1), grouped.amax(dim=-1)
    # Round the scales to float16 first: the kernel dequantizes with the stored value.
    scales = ((hi - lo).clamp(min=1e-5) / top).half().float()
    zeros = torch.clamp(torch.round(-lo / scales), 0, top)
    q = torch.clamp(torch.round(grouped / scales[..., None]) + zeros[..., None], 0, top)
    return q.reshape(out_f, in_f).to(torch.int32), zeros.to(torch.int32), scales.half()


def pack_awq(values: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Pack [rows, cols] integers in [0, 2**bits) into int32 [rows, cols*bits/32], AWQ column order."""
    import torch

    per_int = 32 // bits
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows, cols // per_int, per_int)
    packed = torch.zeros(rows, cols // per_int, dtype=torch.int64)
    for slot, column in enumerate(AWQ_PACK_ORDER):
        packed |= grouped[..., column] << (bits * slot)
    # Reinterpret the unsigned 32-bit pattern as the int32 the checkpoint stores.
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_awq(packed: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Inverse of :func:`pack_awq`."""
    import torch

    per_int = 32 // bits
    rows, n = packed.shape
    unsigned = packed.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros(rows, n, per_int, dtype=torch.int64)
    for slot, column in enumerate(AWQ_PACK_ORDER):
        out[..., column] = (unsigned >> (bits * slot)) & (2**bits - 1)
    return out.reshape(rows, n * per_int).to(torch.int32)


def awq_gemm_tensors(weight: torch.Tensor, group_size: int, bits: int = 4) -> dict[str, torch.Tensor]:
    """``qweight`` [in, out/8], ``qzeros`` [in/group, out/8] and ``scales`` [in/group, out] for one linear."""
    q, zeros, scales = quantize_rtn(weight, group_size, bits)
    return {
        "qweight": pack_awq(q.t().contiguous(), bits),
        "qzeros": pack_awq(zeros.t().contiguous(), bits),
        "scales": scales.t().contiguous(),
    }


def dequantize_awq(tensors: dict[str, torch.Tensor], group_size: int, bits: int = 4) -> torch.Tensor:
    """The [out, in] float weight an AWQ kernel computes with: ``(q - zero) * scale``."""
    q = unpack_awq(tensors["qweight"], bits).float()
    zeros = unpack_awq(tensors["qzeros"], bits).float().repeat_interleave(group_size, dim=0)
    scales = tensors["scales"].float().repeat_interleave(group_size, dim=0)
    return ((q - zeros) * scales).t().contiguous()


def checkpoint_tensors(shape: TinyQwen2, fmt: str, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint: AWQ triples for the projections, float16 for the rest."""
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in float_weights(shape, seed).items():
        is_projection = name.endswith(".weight") and any(p in name for p in PROJECTIONS)
        if fmt == "awq" and is_projection:
            base = name.removesuffix(".weight")
            for suffix, tensor in awq_gemm_tensors(weight, shape.group_size, shape.bits).items():
                tensors[f"{base}.{suffix}"] = tensor
        else:
            tensors[name] = weight.half().contiguous()
    return tensors


def model_config(shape: TinyQwen2, fmt: str, token_ids: dict[str, int]) -> dict[str, Any]:
    """``config.json`` for a Qwen2ForCausalLM; AWQ adds its ``quantization_config``."""
    config: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        **{k: v for k, v in asdict(shape).items() if k not in ("group_size", "bits")},
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "max_window_layers": shape.num_hidden_layers,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float16",
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
    }
    if fmt == "awq":
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": shape.bits,
            "group_size": shape.group_size,
            "zero_point": True,
            "version": "gemm",
        }
    return config


def write_tokenizer(directory: Path, vocab_size: int) -> dict[str, int]:
    """Train a byte-level BPE on :data:`CORPUS`, save it with a ChatML template; return special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=TinyQwen2.max_position_embeddings,
    )
    fast.save_pretrained(str(directory))
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def write_model(directory: Path, fmt: str = "awq", seed: int = 0, shape: TinyQwen2 | None = None) -> Path:
    """Write tokenizer, config, generation config and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    shape = shape or TinyQwen2()
    directory.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(directory, shape.vocab_size)
    config = model_config(shape, fmt, ids)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": False}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file(checkpoint_tensors(shape, fmt, seed), str(directory / "model.safetensors"), {"format": "pt"})
    return directory


#: The projections a test adapter adapts, and its rank: small, so vLLM's default --max-lora-rank (16) serves it.
LORA_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
LORA_RANK = 8


def write_lora(
    directory: Path, base: Path, seed: int = 1, shape: TinyQwen2 | None = None, rank: int = LORA_RANK
) -> Path:
    """A LoRA adapter for the tiny model in PEFT's layout (``adapter_config.json`` and
    ``adapter_model.safetensors``), as vLLM's ``load_lora_adapter`` reads it.

    A and B come from a seeded RNG and are large enough (scale ``lora_alpha / r`` = 2) that
    greedy answers differ from the base model's; two seeds give two different adapters.
    """
    import torch
    from safetensors.torch import save_file

    shape = shape or TinyQwen2()
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    shapes = shape.projection_shapes()
    for layer in range(shape.num_hidden_layers):
        for name in LORA_TARGETS:
            out_f, in_f = shapes[name]
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, in_f, generator=gen) * 0.2).half()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out_f, rank, generator=gen) * 0.2).half()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": [t.split(".")[-1] for t in LORA_TARGETS],
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(directory / "adapter_model.safetensors"), {"format": "pt"})
    return directory


def main(argv: Sequence[str]) -> int:
    """``python hack/tiny_model.py DIR [--format awq|float] [--seed N]``."""
    p = argparse.ArgumentParser(
        prog="hack/tiny_model.py",
        description="Write a tiny Qwen2 model (AWQ 4-bit GEMM, or float16) that vLLM serves on CPU.",
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--format", choices=("awq", "float"), default="awq", help="default: awq")
    p.add_argument("--seed", type=int, default=0, help="RNG seed for the float weights (default 0)")
    args = p.parse_args(list(argv))
    try:
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(
            f"hack/tiny_model.py: error: needs torch, safetensors, tokenizers and "
            f"transformers ({exc.name} is missing); `make venv-vllm` installs them in .venv-vllm",
            file=sys.stderr,
        )
        return 2
    path = write_model(args.directory, args.format, args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
