"""tttc from Python: compile a ``.ttt`` program once, run it on numpy arrays or CPU torch tensors.

    import tttc
    prog = tttc.Program.load("examples/ttt_linear.ttt", set={"mini_batch_size": 16})
    out = prog(XQ=xq, XK=xk, XV=xv, token_eta=eta, ttt_lr_eta=lr, W1=w1, b1=b1,
               ln_weight=lnw, ln_bias=lnb)
    out["Z"]

Floating-point inputs are read in place (no copy) when they are C-contiguous arrays of the
program's precision; outputs are new arrays that the compiled code writes into; the GIL is
released while it runs. Outputs come back as the kind of array given (torch tensors when any
input is one). ``tttc.torch`` makes a program an autograd-aware PyTorch op. See docs/python.md.
"""

from __future__ import annotations

import itertools
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _native
from ._native import CompileError, backends, load_safetensors, release_memory, save_safetensors

__all__ = [
    "CompileError",
    "Program",
    "Session",
    "TensorSpec",
    "backends",
    "load_safetensors",
    "release_memory",
    "save_safetensors",
]


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a program: its name, its shape (ints for known extents, str for
    symbolic ones such as ``"B"``), and its dtype (the program's precision; ``"int64"`` for
    inputs declared ``int``, which also accept int32)."""

    name: str
    shape: Tuple[Union[int, str], ...]
    dtype: str


def _torch():
    """The torch module if it is imported (tttc never imports it itself)."""
    return sys.modules.get("torch")


def _as_array(name: str, value: Any) -> Tuple[np.ndarray, bool]:
    """``value`` as a numpy array (a view of a CPU torch tensor's storage, no copy) and whether
    it was a torch tensor."""
    if isinstance(value, np.ndarray):
        return value, False
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(
                f"input `{name}`: the tensor is on {value.device}; tttc runs on CPU tensors "
                "(pass tensor.cpu())"
            )
        try:
            return value.detach().numpy(), True
        except TypeError as e:
            raise TypeError(f"input `{name}`: {e}") from None
    raise TypeError(
        f"input `{name}`: expected a numpy array or a CPU torch tensor, got {type(value).__name__}"
    )


def _as_arrays(tensors: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], bool]:
    arrays = {}
    any_torch = False
    for name, value in tensors.items():
        arrays[name], is_torch = _as_array(name, value)
        any_torch = any_torch or is_torch
    return arrays, any_torch


def _wrap(outputs: Dict[str, np.ndarray], as_torch: bool) -> Dict[str, Any]:
    if not as_torch:
        return outputs
    torch = _torch()
    return {name: torch.from_numpy(a) for name, a in outputs.items()}


def _shape_of(name: str, value: Any) -> Tuple[int, ...]:
    """A shape given directly (a tuple of ints) or as the shape of an array or tensor."""
    shape = getattr(value, "shape", value)
    try:
        return tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"`{name}`: expected an array, a tensor or a shape (tuple of ints)") from None


def _specs(raw) -> Tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, tuple(shape), dtype) for name, shape, dtype in raw)


# Every live Program by a key of its own: how `tttc.torch`'s custom ops, whose arguments can only
# be tensors and plain values, find the program to run.
_live: "weakref.WeakValueDictionary[int, Program]" = weakref.WeakValueDictionary()
_keys = itertools.count()


class Program:
    """A compiled ``.ttt`` program.

    ``Program.load`` runs the graph stages once; the first call with a new set of input shapes
    binds the program to them and compiles it for the backend (kept for later calls with the
    same shapes).
    """

    def __init__(self, native: "_native.Program"):
        self._native = native
        self.inputs = _specs(native.inputs)
        self.outputs = _specs(native.outputs())
        self.input_names = tuple(s.name for s in self.inputs)
        self.output_names = tuple(s.name for s in self.outputs)
        self._key = next(_keys)
        _live[self._key] = self

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        config: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
        set: Optional[Mapping[str, Any]] = None,
        backend: str = "llvm",
        precision: str = "float32",
    ) -> "Program":
        """Compiles the ``.ttt`` file at ``path``.

        ``set``: values of configs and dimensions (name → number, bool or str), as ``--set``.
        ``config``: a Hugging Face style ``config.json`` (a path) or a dict; keys naming a
        setting of the program are used, others ignored; a value that differs from ``set`` is a
        ``ValueError``. ``backend``: ``"llvm"`` (default), ``"cranelift"``, ``"interp"`` (the
        reference interpreter) or ``"ptx"``. ``precision``: ``"float32"`` or ``"float64"``.

        Raises ``CompileError`` (a ``ValueError``) with the ``file:line:col`` diagnostic for a
        malformed program, ``OSError`` for a file that cannot be read.
        """
        if config is not None and not isinstance(config, Mapping):
            config = os.fspath(config)
        native = _native.Program.load(
            os.fspath(path),
            config=config,
            set=dict(set) if set is not None else None,
            backend=backend,
            precision=precision,
        )
        return cls(native)

    @property
    def path(self) -> str:
        """The program's file."""
        return str(self._native.path)

    @property
    def precision(self) -> str:
        """``"float32"`` or ``"float64"``."""
        return self._native.precision

    @property
    def backend(self) -> str:
        """The backend's name."""
        return self._native.backend

    def __call__(self, **tensors: Any) -> Dict[str, Any]:
        """Runs the program: every input by name (numpy arrays or CPU torch tensors) → every
        output by name, as numpy arrays, or torch tensors when any input is one.

        ``TypeError``: a missing or unknown input, a wrong dtype. ``ValueError``: shapes that do
        not fit the program (the message names the tensor and the dimension), a non-contiguous
        array, token ids out of range.
        """
        arrays, as_torch = _as_arrays(tensors)
        return _wrap(self._native.run(arrays), as_torch)

    def vjp(
        self,
        inputs: Mapping[str, Any],
        cotangents: Mapping[str, Any],
        checkpoint_every: int = 4,
    ) -> Dict[str, Any]:
        """The vector-Jacobian product, as ``tttc grad`` computes it: for every floating-point
        input, the gradient of ``sum_o <cotangents[o], o>`` (outputs without a cotangent count as
        zero). ``checkpoint_every``: the checkpoint group of every scan's backward. The
        gradient program (``tttc::GradProgram``) is compiled for the program's backend once per
        checkpoint group and input shapes, scans included."""
        arrays, as_torch = _as_arrays(inputs)
        cts, ct_torch = _as_arrays(cotangents)
        return _wrap(self._native.vjp(arrays, cts, checkpoint_every), as_torch or ct_torch)

    def forward_keeping(
        self, inputs: Mapping[str, Any], checkpoint_every: int = 4
    ) -> Tuple[Dict[str, Any], List[Any]]:
        """A training step's forward: every output by name (as calling the program returns
        them) and the residuals, the forward values that :meth:`backward` needs to compute
        :meth:`vjp`'s result for these inputs without running the forward again (the gradient
        program cut at its cotangents; ``docs/gradients.md``)."""
        arrays, as_torch = _as_arrays(inputs)
        outputs, residuals = self._native.forward_keeping(arrays, checkpoint_every)
        if as_torch:
            torch = _torch()
            residuals = [torch.from_numpy(r) for r in residuals]
        return _wrap(outputs, as_torch), residuals

    def backward(
        self,
        inputs: Mapping[str, Any],
        residuals: List[Any],
        cotangents: Mapping[str, Any],
        checkpoint_every: int = 4,
    ) -> Dict[str, Any]:
        """:meth:`vjp`'s result from the residuals that :meth:`forward_keeping` returned for the
        same ``inputs`` (and ``checkpoint_every``)."""
        arrays, as_torch = _as_arrays(inputs)
        cts, ct_torch = _as_arrays(cotangents)
        kept = [_as_array(f"residual {k}", r)[0] for k, r in enumerate(residuals)]
        grads = self._native.backward(arrays, kept, cts, checkpoint_every)
        return _wrap(grads, as_torch or ct_torch)

    def residual_shapes(self, checkpoint_every: int = 4, **shapes: Any) -> List[Tuple[int, ...]]:
        """The shapes of the residuals :meth:`forward_keeping` returns for inputs of these
        shapes, without running anything."""
        given = {name: _shape_of(name, v) for name, v in shapes.items()}
        return [tuple(s) for s in self._native.residual_shapes(given, checkpoint_every)]

    def output_shapes(self, **shapes: Any) -> Dict[str, Tuple[int, ...]]:
        """The shape of every output for inputs of these shapes (arrays or tuples), without
        running anything."""
        given = {name: _shape_of(name, v) for name, v in shapes.items()}
        return {k: tuple(v) for k, v in self._native.output_shapes(given).items()}

    def known_dims(self) -> Dict[str, int]:
        """The dimensions known before any input is seen: integer configs (given or default),
        dimensions given in ``set`` or ``config``, and the derived dimensions they determine
        (``dim f = hidden_size / num_attention_heads``)."""
        return dict(self._native.known_dims())

    def cost(self, **shapes: Any) -> Dict[str, Dict[str, int]]:
        """FLOPs and bytes of the primal and the optimized program for inputs of these shapes
        (arrays or tuples), as ``tttc cost --json``."""
        given = {name: _shape_of(name, v) for name, v in shapes.items()}
        return self._native.cost(given)

    def inspect(self, stage: Optional[str] = None, format: str = "text", **shapes: Any) -> str:
        """The program after ``stage`` as ``tttc inspect --after STAGE`` prints it: ``None``
        (after every graph stage), ``"parse"``, a graph stage, or a kernel stage (which needs
        every input's shape as keyword arguments). ``format``: ``"text"``, ``"json"`` or
        ``"dot"`` (graph IR only)."""
        given = {name: _shape_of(name, v) for name, v in shapes.items()} if shapes else None
        return self._native.inspect(stage, format, given)

    def session(self, **weights: Any) -> "Session":
        """A streaming session: ``weights`` are every input that does not run along the
        sequence; ``Session.feed`` takes the others, a chunk of tokens at a time."""
        arrays, as_torch = _as_arrays(weights)
        return Session(self._native.session(arrays), self, as_torch)

    def _last_addresses(self) -> Dict[str, int]:
        """Where the last in-place run read each input and wrote each output (tests)."""
        return self._native.last_addresses()

    def __repr__(self) -> str:
        return repr(self._native)


class Session:
    """A program fed in chunks: the outputs of all chunks equal one run over the whole
    sequence. Made by ``Program.session``; ``save``/``Session.load`` keep the state in a
    safetensors file."""

    def __init__(self, native: "_native.Session", program: Program, as_torch: bool):
        self._native = native
        self.program = program
        self._as_torch = as_torch

    def feed(self, **chunk: Any) -> Dict[str, Any]:
        """Feeds the next tokens (every per-token input, the same number of tokens each).
        Returns every output for them: per-token outputs for these tokens, whole-sequence
        outputs (such as final states) as they stand after them."""
        arrays, as_torch = _as_arrays(chunk)
        return _wrap(self._native.feed(arrays), as_torch or self._as_torch)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the session's state (position, every scan's carried state) to ``path``."""
        self._native.save(os.fspath(path))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], program: Program, **weights: Any) -> "Session":
        """A session of ``program`` with ``weights`` continuing from the state saved at
        ``path`` (by ``Session.save``, for the same program and weights)."""
        session = program.session(**weights)
        session._native.load(os.fspath(path))
        return session

    @property
    def position(self) -> int:
        """Tokens fed so far."""
        return self._native.position

    @property
    def token_inputs(self) -> Dict[str, int]:
        """The per-token inputs and their sequence axes."""
        return dict(self._native.token_inputs)
