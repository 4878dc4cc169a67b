"""``hack/tiny_model.py``: the AWQ GEMM checkpoint format, checked tensor by tensor."""

from __future__ import annotations

import json

import pytest

from hack import tiny_model as tm
from tests.vllm.conftest import TinyModels

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


def test_pack_order_matches_awq_gemm() -> None:
    torch = pytest.importorskip("torch")
    # Column c of a group of eight holds value c; AWQ stores column ORDER[i] in nibble i.
    values = torch.arange(8, dtype=torch.int32).reshape(1, 8)
    packed = tm.pack_awq(values)
    nibbles = [(int(packed[0, 0]) >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [0, 2, 4, 6, 1, 3, 5, 7]
    # Values with the top nibble set still round-trip through the signed int32 storage.
    full = torch.full((3, 16), 15, dtype=torch.int32)
    assert tm.pack_awq(full).dtype == torch.int32
    assert torch.equal(tm.unpack_awq(tm.pack_awq(full)), full)


def test_round_to_nearest_error_is_a_fraction_of_a_step() -> None:
    torch = pytest.importorskip("torch")
    weight = torch.randn(128, 256, generator=torch.Generator().manual_seed(3)) * 0.05
    tensors = tm.awq_gemm_tensors(weight, group_size=64)
    assert tensors["qweight"].shape == (256, 16)
    assert tensors["qzeros"].shape == (4, 16)
    assert tensors["scales"].shape == (4, 128)
    assert tensors["scales"].dtype == torch.float16
    restored = tm.dequantize_awq(tensors, group_size=64)
    step = tensors["scales"].float().t().repeat_interleave(64, dim=1)
    error = (restored - weight).abs() / step
    # Half a step from rounding, plus up to half a step where the rounded zero point clips an edge.
    assert float(error.max()) <= 1.0 + 1e-4
    assert float(error.mean()) < 0.3
    # Real quantization uses the whole 4-bit range of every group.
    q = tm.unpack_awq(tensors["qweight"])
    assert int(q.min()) == 0
    assert int(q.max()) == 15


def test_checkpoint_layout(tiny_models: TinyModels) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    config = json.loads((tiny_models.awq / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
    }  # fmt: skip
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (
        256,
        4,
        2,
    )
    assert "quantization_config" not in json.loads((tiny_models.float / "config.json").read_text())
    tensors = safetensors.load_file(str(tiny_models.awq / "model.safetensors"))
    k_proj = "model.layers.1.self_attn.k_proj"
    assert tensors[f"{k_proj}.qweight"].shape == (256, 16)  # [in, out/8], out = 2 KV heads x 64
    assert tensors[f"{k_proj}.scales"].shape == (4, 128)
    assert f"{k_proj}.weight" not in tensors
    assert tensors["model.layers.0.mlp.down_proj.qzeros"].shape == (8, 32)  # in = 512


def test_same_seed_same_model_other_seed_other_weights() -> None:
    pytest.importorskip("torch")
    shape = tm.TinyQwen2(num_hidden_layers=1)
    a = tm.checkpoint_tensors(shape, "awq", seed=1)
    b = tm.checkpoint_tensors(shape, "awq", seed=1)
    c = tm.checkpoint_tensors(shape, "awq", seed=2)
    name = "model.layers.0.mlp.up_proj.qweight"
    assert a[name].equal(b[name])
    assert not a[name].equal(c[name])


def test_tokenizer_speaks_chatml(tiny_models: TinyModels) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_models.awq))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(tok("The quick brown fox")["input_ids"]) == "The quick brown fox"
    assert tok.eos_token == "<|im_end|>"
