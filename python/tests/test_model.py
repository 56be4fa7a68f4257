"""tttc.torch.TTTModel on a tiny whole model (examples/ttt_lm.ttt, 2 layers, hidden 32, vocab
61, L 32): logits equal `tttc run` of its saved folder, gradients equal `tttc grad` (f64 1e-10:
the same program in the same precision, only the compiled code differs), state_dict and
save_pretrained / from_pretrained round trips, and `tttc generate --model` reads the folder."""

import json

import numpy as np
import pytest
import torch

import tttc
import tttc.torch
from conftest import ROOT, assert_close, run_cli

LM = ROOT / "examples" / "ttt_lm.ttt"


def tiny_config(layer="linear", mamba=False, tie=False):
    extra = {"mlp_width": 64} if layer == "mlp" else {}  # TTT-MLP's hidden width, 4 x f
    return {
        **extra,
        "vocab_size": 61,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mini_batch_size": 8,
        "ttt_layer_type": layer,
        "ttt_base_lr": 1.0,
        "share_qk": mamba,
        "pre_conv": mamba,
        "use_gate": mamba,
        "conv_kernel": 4,
        "tie_word_embeddings": tie,
    }


def ids(B=2, L=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 61, (B, L)))


def perturbed(model, seed=1):
    """Every parameter moved off its initial value (ones/zeros would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model


def config_args(config):
    args = []
    for k, v in config.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    return args


@pytest.mark.parametrize("layer,mamba", [("linear", False), ("mlp", True)])
def test_logits_and_gradients_equal_the_cli(layer, mamba, tttc_bin, tmp_path):
    config = tiny_config(layer, mamba)
    model = perturbed(tttc.torch.TTTModel(LM, config, precision="float64", backend="cranelift"))
    names = [n for n, _ in model.named_parameters()]
    assert set(names) == {s.name for s in model.program.inputs} - {"input_ids"}
    assert "model.layers.0.seq_modeling_block.q_proj.weight" in names
    x = ids()
    logits = model(x)
    assert logits.shape == (2, 32, 61) and logits.dtype == torch.float64
    ct = torch.from_numpy(np.random.default_rng(2).standard_normal(logits.shape))
    (logits * ct).sum().backward()

    model.save_pretrained(tmp_path / "m")
    tttc.save_safetensors(tmp_path / "ids.safetensors", {"input_ids": x.numpy()})
    run_cli(tttc_bin, "run", LM, "--model", tmp_path / "m", "--inputs", tmp_path / "ids.safetensors",
            "--out", tmp_path / "logits.safetensors", "--precision", "f64")
    cli_logits = tttc.load_safetensors(tmp_path / "logits.safetensors")["logits"]
    assert_close(logits.detach().numpy(), cli_logits, 1e-10, "logits vs tttc run")

    inputs = {n: p.detach().numpy() for n, p in model.named_parameters()}
    inputs["input_ids"] = x.numpy()
    tttc.save_safetensors(tmp_path / "inputs.safetensors", inputs)
    tttc.save_safetensors(tmp_path / "ct.safetensors", {"logits": ct.numpy()})
    run_cli(tttc_bin, "grad", LM, "--inputs", tmp_path / "inputs.safetensors", "--cotangents",
            tmp_path / "ct.safetensors", "--out", tmp_path / "grad.safetensors", "--precision",
            "f64", "--backend", "cranelift", *config_args(config))
    grads = tttc.load_safetensors(tmp_path / "grad.safetensors")
    assert set(grads) == set(names)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert_close(p.grad.numpy(), grads[name], 1e-10, f"d{name} vs tttc grad")


def test_state_dict_and_folder_round_trip(tttc_bin, tmp_path):
    config = tiny_config(tie=True)
    model = perturbed(tttc.torch.TTTModel(LM, config, precision="float64", backend="cranelift"))
    sd = model.state_dict()
    assert "lm_head.weight" not in sd  # tied: the program has no such input
    assert "model.embed_tokens.weight" in sd
    other = tttc.torch.TTTModel(LM, config, precision="float64", backend="cranelift", seed=5)
    x = ids()
    assert not torch.equal(other(x), model(x))
    other.load_state_dict(sd)
    assert torch.equal(other(x), model(x))
    assert list(other.state_dict()) == list(sd)

    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["hidden_size"] == 32 and saved["tttc_program"] == str(LM.resolve())
    again = tttc.torch.TTTModel.from_pretrained(tmp_path / "m", precision="float64",
                                                backend="cranelift")
    assert torch.equal(again(x), model(x))

    out = run_cli(tttc_bin, "generate", LM, "--model", tmp_path / "m", "--prompt-ids", "1,2,3",
                  "--max-new-tokens", "4", "--precision", "f64", "--backend", "cranelift")
    generated = [int(t) for t in out.replace(",", " ").split()]
    assert len(generated) >= 4 and all(0 <= t < 61 for t in generated)


def test_model_errors(tmp_path):
    with pytest.raises(ValueError, match="hidden_size"):
        tttc.torch.TTTModel(LM, {"num_hidden_layers": 1})
    with pytest.raises(ValueError, match="`nope` is not an output"):
        tttc.torch.TTTModel(LM, tiny_config(), output="nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="tttc_program"):
        tttc.torch.TTTModel.from_pretrained(tmp_path)
