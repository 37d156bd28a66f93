"""A user's own per-frame function, applied to every frame as step 2a loads it.

The function is named by a text spec, either ``package.module:function`` (an importable
module) or ``path/to/file.py:function`` (a Python file; ``~`` is expanded and a relative
path is taken from the working directory). It receives one frame, a 2-D array (height,
width) in the recording's dtype (uint8 for most miniscopes, float32 after 'mean'
downsampling), and must return a 2-D real-valued array: either of the same shape, or of one
fixed new shape for every frame (e.g. a crop). Float results are stored as float32.

Example, a stripe filter that removes horizontal banding (save as ``stripes.py`` and set
``post_process`` to ``"/path/to/stripes.py:remove_row_offsets"``)::

    import numpy as np

    def remove_row_offsets(frame):
        frame = frame.astype(np.float32)           # uint8 arithmetic would wrap around
        return frame - np.median(frame, axis=1, keepdims=True)

Rules for the function: it must not keep state between calls (frames arrive in chunks, in
parallel threads, in no fixed order) and it runs inside the dask tasks, so on a cluster the
module must be importable (or the file readable at the same path) on every worker.

Checks happen early: :func:`check_importable` (import + callable, no data needed) runs
before a pipeline run starts, and :func:`prepare` runs the function once on the first frame
and checks shape, dtype and finiteness before any heavy work. Every problem is a one-line
``ValueError`` naming the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["HookSpec", "FrameHook", "parse_spec", "load_function", "check_importable",
           "prepare", "source_info"]

_FORMS = "'package.module:function' or 'path/to/file.py:function'"
_IDENT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_LOCK = threading.Lock()  # file modules are loaded once per process, even from many threads


@dataclass(frozen=True)
class HookSpec:
    """A parsed spec: ``kind`` 'module' or 'file', the module name or absolute file path,
    and the attribute path of the function inside it (may be dotted: ``Class.method``)."""

    text: str
    kind: str
    target: str
    attr: str


def parse_spec(spec: str) -> HookSpec:
    """Split ``'module:function'`` / ``'file.py:function'``; ValueError if malformed."""
    text = spec.strip()
    target, sep, attr = text.rpartition(":")  # last colon: Windows paths have one too
    target, attr = target.strip(), attr.strip()
    if not sep or not target or not _IDENT.match(attr):
        raise ValueError(f"post_process {spec!r}: expected {_FORMS}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().absolute()
        return HookSpec(text, "file", str(path), attr)
    if not _IDENT.match(target):
        raise ValueError(f"post_process {spec!r}: {target!r} is neither a module name nor a "
                         f".py file; expected {_FORMS}")
    return HookSpec(text, "module", target, attr)


def load_function(spec: HookSpec) -> Callable[[np.ndarray], Any]:
    """Import the module or file and return the named callable; ValueError if impossible."""
    module = _import_module(spec) if spec.kind == "module" else _import_file(spec)
    obj: Any = module
    for part in spec.attr.split("."):
        if not hasattr(obj, part):
            where = spec.target if spec.kind == "file" else f"module {spec.target!r}"
            raise ValueError(f"post_process {spec.text!r}: {where} has no {spec.attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"post_process {spec.text!r}: {spec.attr!r} is a "
                         f"{type(obj).__name__}, not a function")
    return obj


def check_importable(spec: str) -> None:
    """Pre-run check without data: the spec parses, imports and names a callable."""
    load_function(parse_spec(spec))


def _import_module(spec: HookSpec):
    try:
        return importlib.import_module(spec.target)
    except Exception as e:  # noqa: BLE001 -- any failure of user code is reported the same way
        raise ValueError(f"post_process {spec.text!r}: cannot import module {spec.target!r} "
                         f"({_one_line(e)})") from None


def _module_name(path: Path) -> str:
    """A stable module name per file path, so every load of a file is the same module and
    its functions pickle by reference (by name) where that module is registered."""
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"mps_frame_hook_{stem}_{digest}"


def _import_file(spec: HookSpec):
    path = Path(spec.target)
    if not path.is_file():
        raise ValueError(f"post_process {spec.text!r}: file {path} not found")
    name = _module_name(path)
    stamp = (path.stat().st_mtime_ns, path.stat().st_size)
    with _LOCK:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__mps_stamp__", None) == stamp:
            return module
        # a new or edited file: (re)load it from the path
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"post_process {spec.text!r}: {path} cannot be loaded as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # registered first: dataclasses and pickle look it up
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            sys.modules.pop(name, None)
            raise ValueError(f"post_process {spec.text!r}: loading {path} raised "
                             f"{_one_line(e)}") from None
        module.__mps_stamp__ = stamp
        return module


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


class FrameHook:
    """The user's function applied frame by frame, with the output shape and dtype fixed by
    the first frame.

    Picklable by spec: a copy sent to a dask worker holds only the spec text and loads the
    function there on first use, so a hook from a file or a module works on a cluster
    whenever the worker can import it, and says so clearly when it cannot.
    """

    def __init__(self, spec: HookSpec, in_shape: tuple[int, int], out_shape: tuple[int, int],
                 out_dtype: np.dtype, func: Callable | None = None):
        self.spec, self.in_shape, self.out_shape = spec, tuple(in_shape), tuple(out_shape)
        self.out_dtype = np.dtype(out_dtype)
        self._func = func

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_func"] = None  # reloaded where it runs
        return state

    def __dask_tokenize__(self) -> tuple:
        stamp = None
        if self.spec.kind == "file" and Path(self.spec.target).is_file():
            st = Path(self.spec.target).stat()
            stamp = (st.st_mtime_ns, st.st_size)
        return ("FrameHook", self.spec, stamp, self.in_shape, self.out_shape, str(self.out_dtype))

    @property
    def func(self) -> Callable:
        if self._func is None:
            try:
                self._func = load_function(self.spec)
            except ValueError as e:
                raise ValueError(f"{e} -- on a dask worker: the module must be importable "
                                 f"(or the file readable at the same path) on every worker"
                                 ) from None
        return self._func

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One frame through the function, checked against the first frame's shape."""
        func = self.func
        try:
            out = np.asarray(func(frame))
        except Exception as e:  # noqa: BLE001 -- user code: say whose error it is
            raise ValueError(f"post_process {self.spec.text!r} raised {_one_line(e)}") from e
        if out.shape != self.out_shape:
            raise ValueError(f"post_process {self.spec.text!r} returned shape {out.shape} for "
                             f"a frame of {frame.shape}; the first frame gave {self.out_shape} "
                             f"and every frame must give the same")
        return out.astype(self.out_dtype, copy=False)

    def apply_block(self, block: np.ndarray) -> np.ndarray:
        """(frames, h, w) -> (frames, *out_shape) in `out_dtype`."""
        # the function gets its own copy: a chunk may be shared with other tasks of the same
        # graph (frame QC reads the same decoded chunk), and user code may work in place
        block = np.array(block, copy=True)
        out = np.empty((block.shape[0],) + self.out_shape, self.out_dtype)
        for i in range(block.shape[0]):
            out[i] = self(block[i])
        return out


def prepare(spec_text: str, first_frame: np.ndarray) -> FrameHook:
    """Load the function and run it on the first frame; return the FrameHook or ValueError
    saying what was wrong (raised, not 2-D, empty, not real numbers, not finite)."""
    spec = parse_spec(spec_text)
    func = load_function(spec)
    frame = np.array(first_frame, copy=True)
    name = f"post_process {spec.text!r}"
    try:
        out = func(frame)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{name} raised {_one_line(e)} on the first frame") from None
    try:
        out = np.asarray(out)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{name} returned a {type(out).__name__}, not an array ({e})") from None
    if out.dtype.kind not in "iuf":
        what = "None" if out.dtype == object and out.ndim == 0 and out.item() is None \
            else f"dtype {out.dtype}"
        raise ValueError(f"{name} returned {what} for the first frame; expected a 2-D array "
                         f"of integers or floats")
    if out.ndim != 2 or out.size == 0:
        raise ValueError(f"{name} returned shape {out.shape} for a frame of {frame.shape}; "
                         f"expected a non-empty 2-D array (the same shape or one fixed new "
                         f"shape for every frame)")
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise ValueError(f"{name} returned {bad} NaN/infinite values on the first frame")
    # floats are stored as float32, like every later movie; integers keep their type
    dtype = np.dtype(np.float32) if out.dtype.kind == "f" else out.dtype
    return FrameHook(spec, frame.shape, out.shape, dtype, func)


def source_info(hook: FrameHook) -> dict[str, str]:
    """Where the function came from, for the record: its file and that file's SHA-256."""
    try:
        import inspect

        path = Path(inspect.getsourcefile(hook.func) or "")
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    except (TypeError, OSError):
        path, digest = Path(""), ""
    return {"post_process_file": str(path) if digest else "", "post_process_sha256": digest}
