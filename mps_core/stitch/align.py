"""Align the frames of several streams of one recording into one timeline.

Every frame of every stream becomes a *candidate* of one output frame; the output keeps
the union (a frame any receiver got is kept).

``frame_num``
    The sensor numbers its frames, so copies of one frame share ``frame_num``: one output
    frame per distinct ``frame_num``, in increasing order. Used when every stream's
    ``frame_num`` is continuous (:func:`is_continuous`).
``time``
    After a device restart ``frame_num`` starts again and the same number names two
    different moments, so frames are aligned on their mean buffer receive time instead.
    Streams are merged one after another: a frame joins the output frame (so far) whose
    time is its mutual nearest neighbour within ``tolerance_s`` (default: half the median
    frame interval), else it starts a new output frame. Mutual nearest matching pairs each
    frame with at most one frame of the other side, so two neighbouring frames can never
    collapse into one. Output frames are ordered by time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .streams import FrameTable

__all__ = ["MODES", "Alignment", "is_continuous", "mutual_nearest", "align_streams"]

MODES = ("auto", "frame_num", "time")


@dataclass
class Alignment:
    """Candidates grouped by output frame.

    ``group``, ``stream`` (0-based position in the list) and ``frame`` (video frame index in
    that stream) are parallel arrays sorted by output frame; the candidates of output frame
    ``g`` are ``starts[g]:starts[g + 1]``. ``key`` is each output frame's ``frame_num``
    (mode ``frame_num``) or mean receive time (mode ``time``).
    """

    mode: str
    key: np.ndarray
    group: np.ndarray
    stream: np.ndarray
    frame: np.ndarray
    starts: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.key.size)


def _grouped(mode: str, key: np.ndarray, group: np.ndarray, stream: np.ndarray,
             frame: np.ndarray) -> Alignment:
    """Sort candidates by (output frame, stream, frame) and index the groups."""
    order = np.lexsort((frame, stream, group))
    group, stream, frame = group[order], stream[order], frame[order]
    starts = np.searchsorted(group, np.arange(key.size + 1))
    return Alignment(mode, key, group, stream, frame, starts)


def is_continuous(frame_num: np.ndarray) -> bool:
    """Whether a stream's ``frame_num`` never goes back, ignoring isolated outliers.

    A single frame out of step with both neighbours (a corrupted header, or a late stray
    buffer reconstructed as its own frame) is an outlier, not a restart; a restart is a
    lasting step back.
    """
    f = np.asarray(frame_num, np.int64)
    if f.size < 2 or (f < 0).any():
        return f.size < 2
    keep = np.ones(f.size, bool)
    if f.size >= 3:
        prev, mid, nxt = f[:-2], f[1:-1], f[2:]
        outlier = (prev <= nxt) & ((mid < prev) | (mid > nxt))
        keep[1:-1] = ~outlier
        keep[0] = not (f[0] > f[1] and f[1] <= f[2])
        keep[-1] = not (f[-1] < f[-2] and f[-3] <= f[-2])
    return bool((np.diff(f[keep]) >= 0).all())


def _align_frame_num(tables: list[FrameTable]) -> Alignment:
    nums = [t.frame_num for t in tables]
    key, group = np.unique(np.concatenate(nums), return_inverse=True)
    stream = np.concatenate([np.full(n.size, s, np.int64) for s, n in enumerate(nums)])
    frame = np.concatenate([np.arange(n.size, dtype=np.int64) for n in nums])
    return _grouped("frame_num", key, group.ravel().astype(np.int64), stream, frame)


def _nearest(sorted_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index into ``sorted_times`` of the nearest value to each of ``times``."""
    pos = np.clip(np.searchsorted(sorted_times, times), 1, max(sorted_times.size - 1, 1))
    left = np.maximum(pos - 1, 0)
    right = np.minimum(pos, sorted_times.size - 1)
    take_left = np.abs(times - sorted_times[left]) <= np.abs(sorted_times[right] - times)
    return np.where(take_left, left, right)


def mutual_nearest(a: np.ndarray, b: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(ia, ib)`` where ``a[ia]`` and ``b[ib]`` are each other's nearest neighbour
    and at most ``tolerance`` apart. Inputs need not be sorted."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0 or b.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    oa, ob = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    a_to_b = ob[_nearest(b[ob], a)]  # for each a, its nearest b
    b_to_a = oa[_nearest(a[oa], b)]
    ia = np.arange(a.size)
    mutual = (b_to_a[a_to_b] == ia) & (np.abs(a - b[a_to_b]) <= tolerance)
    return ia[mutual], a_to_b[mutual]


def _frame_interval(tables: list[FrameTable]) -> float:
    """Median interval between consecutive frames of the streams (seconds)."""
    steps = [np.diff(np.sort(t.time[np.isfinite(t.time)])) for t in tables]
    steps = np.concatenate([s[s > 0] for s in steps]) if steps else np.zeros(0)
    if steps.size == 0:
        raise ValueError("stitch: cannot estimate the frame interval from the receive times; "
                         "give tolerance_s")
    return float(np.median(steps))


def _align_time(tables: list[FrameTable], tolerance_s: float | None,
                names: list[str]) -> Alignment:
    for name, t in zip(names, tables):
        if not np.isfinite(t.time).all():
            raise ValueError(f"{name}: frames without buffer_recv_unix_time; time alignment "
                             f"needs it for every frame (or use frame_num alignment)")
    tol = 0.5 * _frame_interval(tables) if tolerance_s is None else float(tolerance_s)
    if not tol > 0:
        raise ValueError(f"stitch: tolerance_s must be > 0, got {tolerance_s}")
    group_time = np.zeros(0)
    group_count = np.zeros(0)
    groups, streams, frames = [], [], []
    for s, t in enumerate(tables):
        ig, ifr = mutual_nearest(group_time, t.time, tol)
        new = np.setdiff1d(np.arange(t.time.size), ifr)
        gid = np.empty(t.time.size, np.int64)
        gid[ifr] = ig
        gid[new] = group_time.size + np.arange(new.size)
        # Running mean keeps a group's time between its members' times.
        group_time[ig] = (group_time[ig] * group_count[ig] + t.time[ifr]) / (group_count[ig] + 1)
        group_count[ig] += 1
        group_time = np.concatenate([group_time, t.time[new]])
        group_count = np.concatenate([group_count, np.ones(new.size)])
        groups.append(gid)
        streams.append(np.full(t.time.size, s, np.int64))
        frames.append(np.arange(t.time.size, dtype=np.int64))
    order = np.argsort(group_time, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return _grouped("time", group_time[order], rank[np.concatenate(groups)],
                    np.concatenate(streams), np.concatenate(frames))


def align_streams(tables: list[FrameTable], mode: str = "auto",
                  tolerance_s: float | None = None, names: list[str] | None = None) -> Alignment:
    """Align the frames of ``tables`` (one per stream).

    Parameters
    ----------
    tables : list of FrameTable
        Per-frame summaries of the streams (:func:`mps_core.stitch.streams.frame_table`).
    mode : {"auto", "frame_num", "time"}
        ``auto`` uses ``frame_num`` when every stream's ``frame_num`` is continuous, else
        ``time`` (see the module docstring).
    tolerance_s : float, optional
        Largest receive-time difference of two copies of one frame (mode ``time``);
        default half the median frame interval.
    names : list of str, optional
        The streams' file names, for error messages.
    """
    names = names or [f"stream {k + 1}" for k in range(len(tables))]
    if mode not in MODES:
        raise ValueError(f"stitch: align must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        usable = all(is_continuous(t.frame_num) for t in tables)
        mode = "frame_num" if usable else "time"
    if mode == "frame_num":
        for name, t in zip(names, tables):
            if (t.frame_num < 0).any():
                raise ValueError(f"{name}: frame_num missing or negative; frame_num alignment "
                                 f"needs it for every frame (or use time alignment)")
        return _align_frame_num(tables)
    return _align_time(tables, tolerance_s, names)
