"""Load ``torch.export`` programs (``.pt2``) without letting the file run code.

The archive has been inspected by :mod:`.archive` before anything here runs (no AOTInductor or other
native code, safe member names, no zip bombs, only the members of a plain ``torch.export.save``); torch
reads a re-packed copy of the accepted members.

``torch.export.load`` is not safe on untrusted files as it stands: it unpickles tensor payloads with
``weights_only=False`` (and falls back to it when a safe load fails), unpickles "opaque" constants with
plain :mod:`pickle`, parses symbolic shape expressions with ``sympy.sympify`` (which evaluates Python),
``exec``-utes the program's guard code, and resolves operator names to any attribute of ``torch``. We run
it with every one of those doors shut:

* every pickled payload is read with ``torch.load(weights_only=True)`` (tensors only, no fallback);
  opaque and script-object constants are refused;
* the program's JSON is checked before it is parsed: operators must be ``torch.ops.aten``/``prims``
  overloads or plain arithmetic, names must be identifiers, shape expressions must be sympy ``srepr``
  text built from a short list of constructors, guard code must be simple size comparisons, and node
  metadata (stack traces, module paths) is dropped;
* after loading, every graph node is checked again.

Anything outside that is refused with a one-line :class:`~neuralcleanse.errors.ModelError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
import pickle
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from ..errors import ModelError, exception_line, first_line, shorten
from .adapt import FLOAT_INPUTS
from .archive import ZipArchive

log = logging.getLogger(__name__)

__all__ = ["ExportInfo", "load_exported_program"]

_LOCK = threading.Lock()

_OP_NAMESPACES = ("aten", "prims")
_OPERATORS = frozenset(
    f"_operator.{n}"
    for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne",
              "lt", "le", "gt", "ge", "and_", "or_", "not_", "abs")
) | frozenset(f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt"))  # fmt: skip
_SAFE_CALLABLES = frozenset(
    [operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
     operator.mod, operator.neg, operator.pow, operator.eq, operator.ne, operator.lt, operator.le,
     operator.gt, operator.ge, operator.and_, operator.or_, operator.not_, operator.abs,
     math.ceil, math.floor, math.trunc, math.sqrt]
)  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+\Z")
# sympy srepr text: constructors from this list, quoted symbol names, numbers, keyword flags
_SYMPY_NAMES = frozenset(
    [
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Mod",
        "Max",
        "Min",
        "Abs",
        "FloorDiv",
        "CleanDiv",
        "CeilDiv",
        "ModularIndexing",
        "PythonMod",
        "IntTrueDiv",
        "FloatTrueDiv",
        "FloorToInt",
        "CeilToInt",
        "TruncToInt",
        "TruncToFloat",
        "RoundToInt",
        "ToFloat",
        "PowByNatural",
        "FloatPow",
        "Identity",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "true",
        "false",
        "oo",
        "zoo",
        "NegativeOne",
        "One",
        "Zero",
        "Half",
        "Infinity",
        "NegativeInfinity",
        "BooleanTrue",
        "BooleanFalse",
        "True",
        "False",
        "positive",
        "integer",
        "real",
        "nonnegative",
        "finite",
        "Where",
        "floor",
        "ceiling",
        "sqrt",
        "Piecewise",
        "ExprCondPair",
    ]
)
_SYMPY_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>'[A-Za-z_][A-Za-z0-9_]*')|"
                          r"(?P<num>-?\d+(?:\.\d+)?(?:e-?\d+)?)|(?P<punct>[(),=+\-*/]))")  # fmt: skip
_GUARD = re.compile(
    r"\s*L\['[A-Za-z_][A-Za-z0-9_]*'\](?:\[\d+\])*(?:\.size\(\)\[\d+\]|\.stride\(\)\[\d+\])?"
    r"\s*(?:==|!=|<=|>=|<|>)\s*-?\d+\s*\Z"
)
_DROPPED_METADATA = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom")


@dataclass(frozen=True)
class ExportInfo:
    """What the exported program says about its input: shape of the first input, fixed batch size."""

    input_shape: tuple[int, int, int] | None
    static_batch: int | None
    dtype: torch.dtype | None = None  # the input's floating-point type when it is not float32


def _check_sympy(text: str, source: str) -> None:
    pos = 0
    while pos < len(text):
        m = _SYMPY_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                return
            raise ModelError(
                f"{source}: refused: unexpected text in a shape expression: {text[pos : pos + 30]!r}"
            )
        name = m.group("name")
        if name is not None and name not in _SYMPY_NAMES:
            raise ModelError(f"{source}: refused: unknown name {name!r} in a shape expression")
        pos = m.end()


def _sanitize(node: Any, source: str) -> Any:
    """Validate the program JSON (see module docstring) and drop node metadata; returns the cleaned tree."""
    if isinstance(node, list):
        return [_sanitize(v, source) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "metadata" and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k not in _DROPPED_METADATA}
            continue
        if key == "target" and isinstance(value, str) and "inputs" in node:
            if not (_TARGET.match(value) or value in _OPERATORS):
                raise ModelError(f"{source}: refused: operator {value!r} is not an aten/prims operator")
        elif key == "expr_str" and isinstance(value, str):
            _check_sympy(value, source)
        elif key == "guards_code":
            for guard in value or []:
                if not (isinstance(guard, str) and all(_GUARD.match(p) for p in guard.split(" and "))):
                    raise ModelError(f"{source}: refused: unsupported guard code {str(guard)[:60]!r}")
        elif key == "name" and isinstance(value, str) and value and not _IDENT.match(value):
            raise ModelError(f"{source}: refused: {value[:40]!r} is not a valid node name")
        out[key] = _sanitize(value, source)
    return out


def _refuse(what: str) -> Any:
    def fail(*_a: Any, **_k: Any) -> Any:
        raise ModelError(f"refused: the program contains {what}, which would run code on load")

    return fail


def _tensor_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["weights_only"] = True
    kwargs["map_location"] = "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(f, *args, **kwargs)


class _Proxy:
    """A stand-in for a module: the given attributes replaced, everything else looked up on the module."""

    def __init__(self, module: Any, **overrides: Any) -> None:
        self._module, self._overrides = module, overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._module, name)


@contextlib.contextmanager
def _restricted(source: str) -> Iterator[None]:
    """Shut the pickle, sympify and JSON doors of ``torch.export.load`` (see the module docstring)."""
    from torch._export.serde import serialize
    from torch.export.pt2_archive import _package

    original_bytes_to_dataclass = serialize._bytes_to_dataclass

    def checked_bytes_to_dataclass(cls: Any, artifact: bytes) -> Any:
        try:
            tree = json.loads(artifact.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{source}: corrupt exported program ({exc})") from None
        clean = json.dumps(_sanitize(tree, source)).encode("utf-8")
        return original_bytes_to_dataclass(cls, clean)

    safe_c = _Proxy(torch._C, _pickle_load_obj=_refuse("a script object"))
    safe_torch = _Proxy(torch, load=_tensor_only_load, _C=safe_c)
    safe_pickle = _Proxy(pickle, loads=_refuse("a pickled Python object"), load=_refuse("a pickle"))
    with (
        _LOCK,
        mock.patch.object(serialize, "_bytes_to_dataclass", checked_bytes_to_dataclass),
        mock.patch.object(serialize, "torch", safe_torch),
        mock.patch.object(_package, "torch", safe_torch),
        mock.patch.object(_package, "pickle", safe_pickle),
    ):
        yield


def _check_graph(module: nn.Module, source: str) -> None:
    graph = getattr(module, "graph", None)
    if graph is None:
        raise ModelError(f"{source}: the exported program has no graph")
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module" and node.target == "_guards_fn":  # built from the checked guard code
            continue
        if node.op != "call_function":
            raise ModelError(f"{source}: refused: graph node {node.name!r} is a {node.op}")
        target = node.target
        if isinstance(target, torch._ops.OpOverload) and target.namespace in _OP_NAMESPACES:
            continue
        if target in _SAFE_CALLABLES:
            continue
        raise ModelError(f"{source}: refused: graph node {node.name!r} calls {target!r}")


def _pickled_members(archive: ZipArchive) -> list[str]:
    """The members torch would unpickle: sample inputs, and weights/constants marked ``use_pickle``."""
    names = [n for n in archive.members if n.startswith("data/sample_inputs/")]
    for config in (
        n for n in archive.members if n.endswith(("_weights_config.json", "_constants_config.json"))
    ):
        folder = config.rpartition("/")[0]
        try:
            entries = json.loads(archive.read(config)).get("config", {})
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ModelError(f"{archive.source}: corrupt member {archive.root}/{config} ({exc})") from None
        for entry in entries.values() if isinstance(entries, dict) else []:
            if isinstance(entry, dict) and entry.get("use_pickle"):
                name = f"{folder}/{entry.get('path_name')}"
                if name in archive.members:
                    names.append(name)
    return names


def _check_pickled_members(archive: ZipArchive) -> None:
    """Members torch would unpickle must hold tensors only: each is read tensor-only here first, so a
    refusal names the member instead of ending in torch's advice to unpickle it."""
    for name in _pickled_members(archive):
        try:
            _tensor_only_load(io.BytesIO(archive.read(name)))
        except pickle.UnpicklingError:
            raise ModelError(
                f"{archive.source}: refused: member {archive.root}/{name} holds pickled Python objects, not "
                "only tensors; they would run code if unpickled"
            ) from None
        except Exception as exc:
            first = first_line(exc, limit=120)
            raise ModelError(f"{archive.source}: corrupt member {archive.root}/{name} ({first})") from None


class _Kept(logging.Handler):
    """Keeps torch's log records during a load instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def cause(self) -> str | None:
        """The error inside the last record that carries one (its exception's own line)."""
        for record in reversed(self.records):
            if record.exc_info and record.exc_info[1] is not None:
                return exception_line(record.exc_info[1])
        return None


def load_exported_program(path: Path, archive: ZipArchive) -> tuple[nn.Module, ExportInfo]:
    """Load the program in ``archive`` (the checked archive of ``path``) safely; returns its module and
    input facts. Only the allow-listed members of a plain ``torch.export.save`` program are accepted, and
    torch reads a re-packed copy holding just those."""
    source = str(path)
    archive.check_members("export")
    _check_pickled_members(archive)
    data = archive.repack()

    # torch logs its own "ran into an error" traceback and then raises "check the warnings above": the
    # records are kept from the terminal, and the error they name goes into our one line
    seen = _Kept()
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch.export.pt2_archive._package")]
    before = [(g.propagate, g.level, g.handlers) for g in loggers]
    for g in loggers:  # torch gives "torch.export" a terminal handler of its own
        g.propagate, g.handlers = False, [seen]
        g.setLevel(logging.WARNING)
    try:
        with _restricted(source):
            program = torch.export.load(io.BytesIO(data))
            module = program.module()
    except ModelError as exc:
        msg = str(exc)
        raise ModelError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except Exception as exc:  # torch raises many kinds on corrupt archives
        first = seen.cause() or first_line(exc)
        raise ModelError(f"{source}: cannot load exported program ({shorten(first, 200)})") from None
    finally:
        for g, (propagate, level, handlers) in zip(loggers, before, strict=True):
            g.propagate, g.level, g.handlers = propagate, level, handlers
    _check_graph(module, source)
    lifted = _lift_linears(module)
    if lifted:
        log.debug("%s: linear layers %s lifted into modules", source, ", ".join(lifted))
    info = _input_info(program, source)
    for p in module.parameters():
        p.requires_grad_(False)
    return module, info


def _lift_linears(gm: Any) -> list[str]:
    """Turn the program's inlined ``aten.linear`` calls back into ``nn.Linear`` modules, in place.

    ``torch.export`` inlines every layer into one graph of operators, which Python hooks cannot reach; the
    validation and the mitigations read and mask the input of the final classifier. A call
    ``aten.linear(x, P.weight, P.bias)`` whose parameters belong to the submodule ``P`` alone becomes a call
    of ``P`` rebuilt as an ``nn.Linear`` holding the same parameters (same state-dict keys, same
    arithmetic: ``nn.Linear`` calls that very operator). Returns the lifted names.
    """
    linear_op = torch.ops.aten.linear.default
    lifted: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not linear_op or node.kwargs:
            continue
        x, weight, *rest = node.args
        bias = rest[0] if rest else None
        if not (weight.op == "get_attr" and weight.target.endswith(".weight")):
            continue
        owner = weight.target[: -len(".weight")]
        if bias is not None and not (bias.op == "get_attr" and bias.target == f"{owner}.bias"):
            continue
        try:
            sub = gm.get_submodule(owner)
        except AttributeError:
            continue
        params = dict(sub.named_parameters(recurse=False))
        if type(sub) is not nn.Module or set(params) != (
            {"weight", "bias"} if bias is not None else {"weight"}
        ):
            continue  # the parameters live in a module that does more, or are shared
        if next(sub.children(), None) is not None or next(sub.buffers(recurse=False), None) is not None:
            continue
        if len(weight.users) > 1:
            continue
        w = params["weight"]
        if w.ndim != 2:
            continue
        linear = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=bias is not None, device="meta")
        linear.weight = w
        if bias is not None:
            linear.bias = params["bias"]
        parent, _, leaf = owner.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, linear)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(owner, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        for attr in (weight, bias):
            if attr is not None and not attr.users:
                gm.graph.erase_node(attr)
        lifted.append(owner)
    if lifted:
        gm.graph.lint()
        gm.recompile()
    return lifted


def _dims(dims: tuple[Any, ...]) -> str:
    """Sizes for a message, a symbolic (dynamic) one as ``?``: ``28x28x1``."""
    return "x".join(str(d) if isinstance(d, int) else "?" for d in dims)


def _input_info(program: Any, source: str) -> ExportInfo:
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise ModelError(
            f"{source}: the exported program takes {len(user_inputs)} inputs; a classifier takes one image batch"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            shape = tuple(val.shape) if val is not None else ()
            dtype = getattr(val, "dtype", torch.float32)
            break
    else:
        return ExportInfo(None, None)
    if dtype != torch.float32 and dtype not in FLOAT_INPUTS:
        raise ModelError(
            f"{source}: the exported program takes {str(dtype).removeprefix('torch.')} images; the trigger is "
            "optimised by gradients, which need floating-point input: export the model with a float input "
            "(and its own scaling inside, or --input-range 0-255)"
        )
    if len(shape) != 4:
        raise ModelError(
            f"{source}: the exported program's input has shape {shape}; expected (N, C, H, W) "
            "(export the model with its image input, not a flattened one: --input-shape cannot change it)"
        )
    static = shape[0] if isinstance(shape[0], int) else None
    chw = shape[1:]
    fixed = tuple(int(d) for d in chw) if all(isinstance(d, int) for d in chw) else None
    channels = chw[0] if isinstance(chw[0], int) else None
    if channels is not None and channels not in (1, 3):
        if isinstance(chw[2], int) and chw[2] in (1, 3):
            raise ModelError(
                f"{source}: the exported program takes channels-last images (N, H, W, C), {_dims(chw)} after the "
                "batch; "
                "PyTorch programs are run on channels-first images (N, C, H, W): export the model with a "
                "permute in front of it (only Keras files are read channels-last)"
            )
        raise ModelError(
            f"{source}: the exported program's input has {channels} channels ({_dims(chw)} after the batch); an image "
            "input is (N, C, H, W) with 1 (grey) or 3 (RGB) channels"
        )
    return ExportInfo(fixed, static, None if dtype == torch.float32 else dtype)  # type: ignore[arg-type]
