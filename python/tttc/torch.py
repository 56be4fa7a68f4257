"""A compiled program as an autograd-aware PyTorch op.

    import tttc, tttc.torch
    prog = tttc.Program.load("layer.ttt", precision="float64")
    out = tttc.torch.apply(prog, x=x, w=w)      # dict of tensors
    out["y"].sum().backward()                   # x.grad, w.grad from prog.vjp

The op is a ``torch.library.custom_op`` (``tttc::run``) with ``register_autograd`` (its
backward is a second custom op, ``tttc::vjp``, which calls ``Program.vjp``) and
``register_fake`` (output shapes from ``Program.output_shapes``, so ``torch.compile`` traces
around it without running it). A custom op's arguments must be tensors or plain values, not a
Python object, so a program travels as an int key (``Program._key``) into tttc's registry of
live programs (weak references: keep the program while its outputs may be differentiated).
"""

from typing import Any, Dict, List, Optional

import torch

from . import Program, _live

__all__ = ["apply"]

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
def _run(key: int, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    prog = _program(key)
    named = {n: t.contiguous() for n, t in zip(prog.input_names, tensors)}
    out = prog(**named)
    return [out[n] for n in prog.output_names]


@_run.register_fake
def _run_fake(key: int, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    prog = _program(key)
    shapes = prog.output_shapes(**{n: tuple(t.shape) for n, t in zip(prog.input_names, tensors)})
    like = tensors[0]
    return [like.new_empty(shapes[n], dtype=_dtype(prog)) for n in prog.output_names]


@torch.library.custom_op("tttc::vjp", mutates_args=())
def _vjp(
    key: int, tensors: List[torch.Tensor], cotangents: List[Optional[torch.Tensor]]
) -> List[torch.Tensor]:
    """Gradients of the floating-point inputs, in input order."""
    prog = _program(key)
    inputs = {n: t.contiguous() for n, t in zip(prog.input_names, tensors)}
    cts = {
        n: g.contiguous() for n, g in zip(prog.output_names, cotangents) if g is not None
    }
    ints = _int_inputs(prog)
    if not cts:
        return [torch.zeros_like(inputs[n]) for n in prog.input_names if n not in ints]
    grads = prog.vjp(inputs, cts)
    return [grads[n] for n in prog.input_names if n not in ints]


@_vjp.register_fake
def _vjp_fake(
    key: int, tensors: List[torch.Tensor], cotangents: List[Optional[torch.Tensor]]
) -> List[torch.Tensor]:
    prog = _program(key)
    ints = _int_inputs(prog)
    return [torch.empty_like(t) for n, t in zip(prog.input_names, tensors) if n not in ints]


def _setup_context(ctx, inputs, output):
    key, tensors = inputs
    ctx.key = key
    ctx.save_for_backward(*tensors)


def _backward(ctx, grads):
    prog = _program(ctx.key)
    tensors = list(ctx.saved_tensors)
    input_grads = iter(_vjp(ctx.key, tensors, list(grads)))
    ints = _int_inputs(prog)
    return None, [None if n in ints else next(input_grads) for n in prog.input_names]


_run.register_autograd(_backward, setup_context=_setup_context)


def apply(prog: Program, **tensors: Any) -> Dict[str, torch.Tensor]:
    """Runs ``prog`` on torch tensors (every input by name) as an autograd-aware op: returns
    every output by name; ``backward()`` through them computes the inputs' gradients with
    ``prog.vjp``. Integer inputs (token ids) get no gradient."""
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
    outputs = _run(prog._key, [tensors[n] for n in prog.input_names])
    return dict(zip(prog.output_names, outputs))
