"""Turn several receivers' streams and numbered segments into one clean recording.

Run before step 2a (``mps stitch``, ``mps concat``, ``mps trim``, ``mps remove-frames``):

* :func:`stitch_streams`: N >= 2 streams of one recording (a video plus its per-buffer
  metadata CSV each, one per wireless receiver) -> the best copy of every frame;
* :func:`concat_segments`: sequential segments of one stream -> one recording with a
  continuous frame index;
* :func:`trim_frames` / :func:`remove_frames`: drop frames at the ends / listed frames.

Every tool renumbers the metadata (``reconstructed_frame_index``) and decision tables
consistently, writes a log, refuses to overwrite outputs unless asked, and never writes
into the input folders. See ``docs/stitching.md``.
"""

from .segments import EditResult, concat_segments, parse_frame_list, remove_frames, trim_frames
from .stitcher import StitchResult, stitch_streams
from .write import OutputsExist

__all__ = [
    "stitch_streams",
    "concat_segments",
    "trim_frames",
    "remove_frames",
    "parse_frame_list",
    "StitchResult",
    "EditResult",
    "OutputsExist",
]
