"""The step declaration: what every pipeline step is, in one record.

A :class:`Step` carries the id, title, stage, a short description, the parameter model, the
named inputs and outputs in the session store, the pure function and the preview figures.
The ordered list of all steps lives in :mod:`mps_core.steps`; everything else (runner, CLI,
GUI, docs) reads it from there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .paramtypes import StepParams


class StepNotImplemented(RuntimeError):
    """Raised when a registered step's numerics have not been built yet."""


class Cancelled(RuntimeError):
    """Raised inside a step when the user asked to cancel."""


class StepError(RuntimeError):
    """A user-facing failure of a step (bad data, impossible parameters): one clear line."""


# A step that reads the same stored movie many times (3b's 13 SVD passes) reads it once into
# memory when it takes at most this share of the memory limit: each pass otherwise decodes
# the whole movie again (0.6 s of 0.7 s per pass on a 1,000-frame 160 x 160 movie).
HOLD_SHARE = 0.25


def hold_if_small(data: Any, memory_limit_bytes: int, share: float, compute) -> Any:
    """``data`` (a dask array) computed once and wrapped again in its own chunks when its size
    is at most ``share`` of the memory limit; anything else unchanged. Same values either way."""
    import dask.array as da

    if not isinstance(data, da.Array) or data.nbytes > share * memory_limit_bytes:
        return data
    values, = compute(data)
    return da.from_array(values, chunks=data.chunks)


class Context(Protocol):
    """What a step function may use besides its inputs: progress, cancel, compute, sizing."""

    def progress(self, fraction: float, message: str = "") -> None: ...
    def check_cancel(self) -> None: ...
    def compute(self, *collections: Any, message: str = "") -> tuple: ...
    def chunk_frames(self, frame_bytes: int, copies: float = 4.0) -> int: ...
    def warn(self, message: str) -> None: ...
    # a dask array read once into memory when small (passes then skip the store); see hold()
    def hold(self, data: Any, share: float = HOLD_SHARE) -> Any: ...

    # folder for files a step writes itself (exports); committed atomically with its results
    output_dir: Any
    # step 1's memory limit per worker: steps size their in-memory arrays from it
    memory_limit_bytes: int
    n_workers: int


@dataclass(frozen=True)
class Preview:
    """A named preview figure: ``make(outputs, inputs, params) -> figures.Figure``."""

    name: str
    title: str
    make: Callable[[dict, dict, Any], Any]


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    stage: str
    summary: str
    params: type[StepParams]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    run: Callable[..., dict[str, Any]] | None = None
    previews: tuple[Preview, ...] = ()
    # inputs that are used when present but not required (e.g. a removal list)
    optional_inputs: tuple[str, ...] = ()
    # checks that need no data, run before anything runs (raise StepError)
    preflight: Callable[[Any], None] | None = None
    # outputs that may be deleted to save disk once every step reading them is done
    # (step 1's delete_intermediate_movies)
    intermediate: tuple[str, ...] = ()

    @property
    def implemented(self) -> bool:
        return self.run is not None

    def __call__(self, params: StepParams, ctx: Context, **inputs: Any) -> dict[str, Any]:
        if self.run is None:
            raise StepNotImplemented(
                f"step {self.id} ({self.title}) is not implemented yet in this version of MPS")
        if not isinstance(params, self.params):
            raise TypeError(f"step {self.id} expects {self.params.__name__}")
        out = self.run(params, ctx, **inputs)
        missing = set(self.outputs) - set(out)
        extra = set(out) - set(self.outputs)
        if missing or extra:
            raise RuntimeError(f"step {self.id} returned outputs {sorted(out)}; "
                               f"declared {list(self.outputs)}")
        return out


@dataclass
class SimpleContext:
    """A context for running a step function directly (tests, notebooks)."""

    cancel_event: threading.Event = field(default_factory=threading.Event)
    messages: list[str] = field(default_factory=list)
    memory_limit_bytes: int = 2 * 1024**3
    output_dir: Any = None
    n_workers: int = 1

    def progress(self, fraction: float, message: str = "") -> None:
        pass

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled")

    def compute(self, *collections: Any, message: str = "") -> tuple:
        import dask

        self.check_cancel()
        return dask.compute(*collections)

    def chunk_frames(self, frame_bytes: int, copies: float = 4.0) -> int:
        return chunk_frames_for(self.memory_limit_bytes, frame_bytes, copies)

    def warn(self, message: str) -> None:
        self.messages.append(message)

    def hold(self, data: Any, share: float = HOLD_SHARE) -> Any:
        return hold_if_small(data, self.memory_limit_bytes, share, self.compute)


def chunk_frames_for(memory_limit_bytes: int, frame_bytes: int, copies: float = 4.0,
                     workers: int = 1) -> int:
    """Frames per chunk so that `copies` copies of a chunk per worker fit in a quarter of memory.

    Chunks are also capped at ~64 MB: bigger chunks do not run faster but raise peak memory.
    """
    budget = memory_limit_bytes / 4 / max(copies, 1.0) / max(workers, 1)
    budget = min(budget, 64 * 1024**2)
    return int(max(8, min(2000, budget // max(frame_bytes, 1))))
