"""A compiled program as an autograd-aware PyTorch op.

    import tttc, tttc.torch
    prog = tttc.Program.load("layer.ttt", precision="float64")
    out = tttc.torch.apply(prog, x=x, w=w)      # dict of tensors
    out["y"].sum().backward()                   # x.grad, w.grad from prog.vjp

The op is a ``torch.library.custom_op`` (``tttc::run``) with ``register_autograd`` (its
backward is a second custom op, ``tttc::vjp``, which calls ``Program.vjp``); when gradients are
wanted (grad mode on, an input that requires one) it is ``tttc::run_keeping`` instead, which
also returns the residuals (``Program.forward_keeping``) for its backward, ``tttc::backward``
(``Program.backward``), so that a training step runs the forward once. Both have
``register_fake`` (output shapes from ``Program.output_shapes``, so ``torch.compile`` traces
around it without running it). A custom op's arguments must be tensors or plain values, not a
Python object, so a program travels as an int key (``Program._key``) into tttc's registry of
live programs (weak references: keep the program while its outputs may be differentiated).
"""

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from . import Program, _live, load_safetensors, save_safetensors

__all__ = ["TTTModel", "apply", "default_init"]

def _program(key: int) -> Program:
    prog = _live.get(key)
    if prog is None:
        raise RuntimeError(
            "the tttc.Program this op ran was garbage-collected; keep a reference to it while "
            "its outputs may be differentiated"
        )
    return prog


def _dtype(prog: Program) -> torch.dtype:
    return torch.float64 if prog.precision == "float64" else torch.float32


def _int_inputs(prog: Program) -> set:
    return {s.name for s in prog.inputs if s.dtype.startswith("int")}


@torch.library.custom_op("tttc::run", mutates_args=())
def _run(key: int, every: int, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    prog = _program(key)
    named = {n: t.contiguous() for n, t in zip(prog.input_names, tensors)}
    out = prog(**named)
    return [out[n] for n in prog.output_names]


@_run.register_fake
def _run_fake(key: int, every: int, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    prog = _program(key)
    shapes = prog.output_shapes(**{n: tuple(t.shape) for n, t in zip(prog.input_names, tensors)})
    like = tensors[0]
    return [like.new_empty(shapes[n], dtype=_dtype(prog)) for n in prog.output_names]


@torch.library.custom_op("tttc::vjp", mutates_args=())
def _vjp(
    key: int, every: int, tensors: List[torch.Tensor], cotangents: List[Optional[torch.Tensor]]
) -> List[torch.Tensor]:
    """Gradients of the floating-point inputs, in input order."""
    prog = _program(key)
    return _input_grads(prog, tensors, cotangents, lambda i, c: prog.vjp(i, c, checkpoint_every=every))


def _input_grads(prog: Program, tensors, cotangents, grads_of) -> List[torch.Tensor]:
    """The floating-point inputs' gradients, in input order, from ``grads_of(inputs,
    cotangents)`` (both by name; outputs without a gradient left out), or zeros when no output
    has one."""
    inputs = {n: t.contiguous() for n, t in zip(prog.input_names, tensors)}
    cts = {
        n: g.contiguous() for n, g in zip(prog.output_names, cotangents) if g is not None
    }
    ints = _int_inputs(prog)
    if not cts:
        return [torch.zeros_like(inputs[n]) for n in prog.input_names if n not in ints]
    grads = grads_of(inputs, cts)
    return [grads[n] for n in prog.input_names if n not in ints]


@_vjp.register_fake
def _vjp_fake(
    key: int, every: int, tensors: List[torch.Tensor], cotangents: List[Optional[torch.Tensor]]
) -> List[torch.Tensor]:
    prog = _program(key)
    ints = _int_inputs(prog)
    return [torch.empty_like(t) for n, t in zip(prog.input_names, tensors) if n not in ints]


def _setup_context(ctx, inputs, output):
    key, every, tensors = inputs
    ctx.key = key
    ctx.every = every
    ctx.save_for_backward(*tensors)


def _backward(ctx, grads):
    prog = _program(ctx.key)
    tensors = list(ctx.saved_tensors)
    input_grads = iter(_vjp(ctx.key, ctx.every, tensors, list(grads)))
    ints = _int_inputs(prog)
    return None, None, [None if n in ints else next(input_grads) for n in prog.input_names]


_run.register_autograd(_backward, setup_context=_setup_context)


# With gradients wanted, the forward keeps what the backward needs (``Program.forward_keeping``):
# the op returns the outputs, then the residuals, which autograd saves for ``tttc::backward``
# (``Program.backward``): the forward runs once per training step, not again in the backward.
@torch.library.custom_op("tttc::run_keeping", mutates_args=())
def _run_keeping(key: int, every: int, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    prog = _program(key)
    named = {n: t.contiguous() for n, t in zip(prog.input_names, tensors)}
    out, residuals = prog.forward_keeping(named, checkpoint_every=every)
    return [out[n] for n in prog.output_names] + list(residuals)


@_run_keeping.register_fake
def _run_keeping_fake(key: int, every: int, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    prog = _program(key)
    shapes = {n: tuple(t.shape) for n, t in zip(prog.input_names, tensors)}
    out = prog.output_shapes(**shapes)
    kept = prog.residual_shapes(every, **shapes)
    like, dtype = tensors[0], _dtype(prog)
    return [like.new_empty(out[n], dtype=dtype) for n in prog.output_names] + [
        like.new_empty(s, dtype=dtype) for s in kept
    ]


@torch.library.custom_op("tttc::backward", mutates_args=())
def _backward_op(
    key: int,
    every: int,
    tensors: List[torch.Tensor],
    residuals: List[torch.Tensor],
    cotangents: List[Optional[torch.Tensor]],
) -> List[torch.Tensor]:
    """Gradients of the floating-point inputs, in input order, from the residuals."""
    prog = _program(key)
    kept = [r.contiguous() for r in residuals]
    return _input_grads(
        prog, tensors, cotangents, lambda i, c: prog.backward(i, kept, c, checkpoint_every=every)
    )


@_backward_op.register_fake
def _backward_op_fake(key, every, tensors, residuals, cotangents):
    prog = _program(key)
    ints = _int_inputs(prog)
    return [torch.empty_like(t) for n, t in zip(prog.input_names, tensors) if n not in ints]


def _setup_keeping(ctx, inputs, output):
    key, every, tensors = inputs
    prog = _program(key)
    count = len(prog.output_names)
    ctx.key, ctx.every, ctx.inputs = key, every, len(tensors)
    # No zero tensors for the residuals' (and unused outputs') gradients: they are never used.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*tensors, *output[count:])


def _backward_keeping(ctx, grads):
    prog = _program(ctx.key)
    saved = list(ctx.saved_tensors)
    tensors, residuals = saved[: ctx.inputs], saved[ctx.inputs :]
    cts = list(grads[: len(prog.output_names)])
    input_grads = iter(_backward_op(ctx.key, ctx.every, tensors, residuals, cts))
    ints = _int_inputs(prog)
    return None, None, [None if n in ints else next(input_grads) for n in prog.input_names]


_run_keeping.register_autograd(_backward_keeping, setup_context=_setup_keeping)


def apply(prog: Program, checkpoint_every: int = 4, **tensors: Any) -> Dict[str, torch.Tensor]:
    """Runs ``prog`` on torch tensors (every input by name) as an autograd-aware op: returns
    every output by name; ``backward()`` through them computes the inputs' gradients with
    ``prog.vjp`` (``checkpoint_every``: its scans' checkpoint group). Integer inputs (token
    ids) get no gradient."""
    missing = [n for n in prog.input_names if n not in tensors]
    if missing:
        raise TypeError(f"missing input(s): {', '.join(missing)}")
    unknown = [n for n in tensors if n not in prog.input_names]
    if unknown:
        raise TypeError(
            f"`{unknown[0]}` is not an input of the program (its inputs: "
            f"{', '.join(prog.input_names)})"
        )
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"input `{name}`: expected a torch tensor, got {type(t).__name__}")
    ordered = [tensors[n] for n in prog.input_names]
    if torch.is_grad_enabled() and any(t.requires_grad for t in ordered):
        outputs = _run_keeping(prog._key, checkpoint_every, ordered)[: len(prog.output_names)]
    else:
        outputs = _run(prog._key, checkpoint_every, ordered)
    return dict(zip(prog.output_names, outputs))


def default_init(name: str, shape: tuple, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """The initial value of parameter ``name`` by the naming conventions of Hugging Face
    checkpoints (ttt-lm-pytorch's ``_init_weights``): a name ending in ``norm.weight`` or
    ``norm_weight`` (a normalization's scale) starts at ones; one ending in ``bias`` or
    ``_idx`` (an offset) at zeros; every other tensor at normal(0, 0.02). Pass your own
    function as ``TTTModel(..., init=...)`` for other programs."""
    if name.endswith(("norm.weight", "norm_weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(("bias", "_idx")):
        return torch.zeros(shape, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype) * 0.02


def _read_config(config: Union[None, str, os.PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    return json.loads(Path(config).read_text())


class TTTModel(torch.nn.Module):
    """A whole model written as a ``.ttt`` program (such as ``examples/ttt_lm.ttt``) as a
    ``torch.nn.Module``: every floating-point input of the program is an ``nn.Parameter`` under
    its own name (``model.layers.0.seq_modeling_block.q_proj.weight``: the dots make nested
    submodules, so ``state_dict()`` and ``named_parameters()`` use the authors' names), the one
    integer input takes the token ids, and ``forward(input_ids)`` returns the output ``output``
    (``"logits"``) through :func:`apply`, whose backward is the program's compiled VJP.

    ``config``: a Hugging Face style ``config.json`` (path) or dict, given to
    :meth:`tttc.Program.load` (dimensions such as ``hidden_size`` must be in it or in ``set``:
    they size the parameters). ``init(name, shape, generator, dtype)`` makes each parameter's
    first value (:func:`default_init`); ``seed`` seeds it. ``checkpoint_every``: the scans'
    checkpoint group in the backward."""

    def __init__(
        self,
        program: Union[str, os.PathLike, Program],
        config: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
        *,
        set: Optional[Mapping[str, Any]] = None,
        backend: str = "llvm",
        precision: str = "float32",
        output: str = "logits",
        init: Callable[..., torch.Tensor] = default_init,
        seed: int = 0,
        checkpoint_every: int = 4,
    ):
        super().__init__()
        cfg = _read_config(config)
        if isinstance(program, Program):
            prog = program
        else:
            prog = Program.load(program, config=cfg or None, set=set, backend=backend,
                                precision=precision)
        if output not in prog.output_names:
            raise ValueError(
                f"`{output}` is not an output of {prog.path} (its outputs: "
                f"{', '.join(prog.output_names)})"
            )
        ints = [s for s in prog.inputs if s.dtype.startswith("int")]
        if len(ints) != 1:
            raise ValueError(
                f"{prog.path}: a TTTModel's program takes exactly one integer input (the token "
                f"ids), this one takes {len(ints)}"
            )
        # Plain attributes (not parameters), set before any submodule so that a tensor named
        # like one of them is refused below.
        object.__setattr__(self, "program", prog)
        object.__setattr__(self, "config", cfg)
        object.__setattr__(self, "set", dict(set or {}))
        self.output = output
        self.ids_name = ints[0].name
        self.checkpoint_every = checkpoint_every
        dtype = _dtype(prog)
        generator = torch.Generator().manual_seed(seed)
        self._param_names: List[str] = []
        dims = prog.known_dims()
        for spec in prog.inputs:
            if spec.name == self.ids_name:
                continue
            shape = tuple(d if isinstance(d, int) else dims.get(d, d) for d in spec.shape)
            unknown = [d for d in shape if not isinstance(d, int)]
            if unknown:
                raise ValueError(
                    f"parameter `{spec.name}` of {prog.path} has shape {spec.shape}: give "
                    f"{', '.join(map(str, unknown))} in the config or `set`"
                )
            value = init(spec.name, shape, generator, dtype)
            self._add_parameter(spec.name, torch.nn.Parameter(value.to(dtype)))
            self._param_names.append(spec.name)

    def _add_parameter(self, name: str, param: torch.nn.Parameter) -> None:
        *path, leaf = name.split(".")
        module: torch.nn.Module = self
        for part in path:
            child = module._modules.get(part)
            if child is None:
                if not part or hasattr(module, part):
                    raise ValueError(f"parameter `{name}`: `{part}` cannot name a submodule")
                child = torch.nn.Module()
                module.add_module(part, child)
            module = child
        if not leaf or (hasattr(module, leaf) and leaf not in module._parameters):
            raise ValueError(f"parameter `{name}`: `{leaf}` cannot name a parameter")
        module.register_parameter(leaf, param)

    def parameters_by_name(self) -> Dict[str, torch.nn.Parameter]:
        """Every parameter under the program's input name."""
        return dict(self.named_parameters())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The output (``logits``) for token ids ``[B, L]`` (int64 or int32)."""
        params = self.parameters_by_name()
        tensors = {n: params[n] for n in self._param_names}
        tensors[self.ids_name] = input_ids
        return apply(self.program, checkpoint_every=self.checkpoint_every, **tensors)[self.output]

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> None:
        """Writes ``config.json`` (the config, with ``set`` merged in and the program's path
        under ``tttc_program``) and ``model.safetensors`` (every parameter by name) into
        ``directory``: a folder that ``tttc generate PROGRAM --model DIR`` and
        :meth:`from_pretrained` read."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        config.update(self.set)
        config["tttc_program"] = str(Path(self.program.path).resolve())
        tensors = {n: p.detach().cpu().contiguous().numpy() for n, p in self.named_parameters()}
        save_safetensors(out / "model.safetensors", tensors)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        directory: Union[str, os.PathLike],
        program: Union[None, str, os.PathLike] = None,
        **kwargs: Any,
    ) -> "TTTModel":
        """The model of a Hugging Face style folder (``config.json`` + ``model.safetensors``):
        ``program`` defaults to the ``tttc_program`` that :meth:`save_pretrained` recorded.
        Other keyword arguments go to the constructor."""
        folder = Path(directory)
        config = _read_config(folder / "config.json")
        if program is None:
            program = config.get("tttc_program")
            if program is None:
                raise ValueError(
                    f"{folder / 'config.json'} names no `tttc_program`: pass program=PATH"
                )
        config.pop("tttc_program", None)
        model = cls(program, config, **kwargs)
        tensors = load_safetensors(folder / "model.safetensors")
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        model.load_state_dict(state, strict=True)
        return model
