"""Seeded synthetic one-photon miniscope recordings with exact ground truth.

Every pipeline test (and ``mps demo``) draws its data from :func:`simulate` and compares the
pipeline's output with the truth stored in the returned :class:`Recording`.  The generative
model is therefore kept simple, fully explicit and reproducible: the same arguments (including
``seed``) always give bit-identical arrays.

Generative model
----------------
Coordinates are ``(y, x)`` in pixels, pixel ``(i, j)`` has its centre at ``y = i, x = j``.

1. **Cells.**  ``n_cells`` centres are drawn uniformly (random sequential placement) such that
   every pair is at least ``min_separation`` apart (default ``1.2 * cell_diameter``) and every
   centre is at least ``cell_diameter + max_shift`` from the frame edge, so the whole footprint
   stays inside the frame in every shifted frame.  If they cannot all be placed a ``ValueError``
   is raised.  Centres are sub-pixel and stored in ``Recording.centers``.
2. **Footprints.**  ``A_k(y, x) = max(exp(-q/2) - exp(-9/2), 0)`` with ``q`` the squared
   Mahalanobis distance of an elliptical Gaussian centred on the cell: base sigma
   ``cell_diameter / 4`` (so the blob has fallen to ~``exp(-2)`` at the nominal radius), the two
   axes scaled by ``a`` and ``1/a`` with ``a ~ U(0.85, 1.15)``, random orientation.  The
   offset makes the blob reach 0 continuously at 3 sigma (sparse support).  Each footprint is
   then divided by its maximum so its peak is exactly 1.  The blob is centrally symmetric, so
   its centre of mass equals the planted centre up to pixel-sampling error (~0.001 px).
3. **Spikes.**  ``s_k[t] = n * u`` with ``n ~ Poisson(spike_rate / fps)`` and
   ``u ~ U(0.5, 1.5)`` drawn per unit and frame: sparse and non-negative.
4. **Calcium.**  Autoregressive model ``c[t] = sum_{i=1..p} g_i c[t-i] + s[t]`` with
   ``c[t<0] = 0``.  AR(1): ``g = exp(-1 / (decay_time * fps))``.  AR(2) (difference of
   exponentials): ``d = exp(-1/(decay_time fps))``, ``r = exp(-1/(rise_time fps))``,
   ``g1 = d + r``, ``g2 = -d r``.  All units share the same ``g`` (stored per unit in ``g``).
   Note: with AR(2) a unit spike peaks above 1 after a few frames.
5. **Static background** (``Recording.background``): vignetted illumination
   ``background_level * (1 - 0.35 rho^2)`` with ``rho`` the distance from the frame centre
   divided by the half-diagonal, times ``(1 + neuropil * T)`` where ``T`` is a smooth random
   texture with unit standard deviation (Gaussian-blurred white noise, sigma =
   ``cell_diameter``); clipped at 0.
6. **Glow** (``Recording.glow_image``): a broad static Gaussian blob of peak ``glow`` grey
   levels and sigma a third of the shorter side, centred near the middle of the frame (the
   out-of-focus light typical of one-photon imaging).
7. **Bleaching** (``Recording.bleach_curve``): the background (not the glow or cells) is
   multiplied by ``b[t] = (1 - bleach) ** (t / (n_frames - 1))``, i.e. it loses the fraction
   ``bleach`` exponentially by the last frame.
8. **Clean scene** of frame t (in the reference, unshifted, coordinates)::

       S_t = background * b[t] + glow_image + cell_brightness * sum_k A_k * c_k[t]

9. **Motion.**  ``shifts[t] = (dy, dx)`` is a smoothed random walk (rescaled so its largest
   absolute component is ``0.8 * max_shift``) plus small Gaussian jitter, clipped to
   ``[-max_shift, max_shift]``; ``max_shift = 0`` gives no motion.  The *whole* scene moves
   rigidly.  **Convention:** ``shifts[t]`` is the shift that REGISTERS frame t, i.e. the
   recorded frame is the scene displaced by ``-shifts[t]``::

       F_t(y, x) = S_t(y + dy_t, x + dx_t)

   so ``scipy.ndimage.shift(F_t, shifts[t])`` (and any registration routine returning "the
   shift to apply to the moving image") recovers ``S_t``.  ``shifts[0]`` is generally not 0.
   Sub-pixel rendering uses ``cv2.warpAffine`` on float32 with Lanczos-4 interpolation (about
   3x more accurate than bicubic on cell-sized blobs: a shift/unshift round trip with
   ``scipy.ndimage.shift(order=3)`` errs by < 1 % of a cell's peak) and a
   reflected border (``d c b a | a b c d``, like scipy's ``mode="reflect"``).
10. **Camera.**  ``movie[t] = clip(rint(F_t + N(0, noise_sd^2)), 0, 255)`` as uint8.
    ``Recording.render()`` returns the noise-free ``F_t`` (float32) exactly as used here and
    ``Recording.scene(t)`` the unshifted ``S_t``.

Random draws all come from one ``np.random.default_rng(seed)`` in a fixed order.

Files
-----
:func:`write_miniscope` writes the movie as a UCLA Miniscope folder (lossless FFV1 AVIs):

* ``layout="v4"``: ``0.avi, 1.avi, ...`` + ``metaData.json`` (device-level keys as written by
  Miniscope-DAQ-QT-Software: ``deviceName, deviceType, deviceID, frameRate ("20FPS"),
  framesPerFile, compression, gain, led0, ewl, ROI{height, leftEdge, topEdge, width}``) +
  ``timeStamps.csv`` (``Frame Number,Time Stamp (ms),Buffer Index``; 0-based frame numbers,
  integer ms starting at 0 with +-1 ms deterministic jitter, buffer index 0).
* ``layout="v3"``: ``msCam1.avi, msCam2.avi, ...`` + ``timestamp.dat`` (tab separated,
  ``camNum\\tframeNum\\tsysClock\\tbuffer``; camNum 0, 1-based frameNum, sysClock in integer ms
  from 0 with the same jitter, buffer 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Recording", "simulate", "write_miniscope"]

# Fixed seed for the timestamp jitter of written files: the Recording carries no seed and the
# files must still be reproducible.
_TIMESTAMP_SEED = 12345
# Footprint support, in sigmas: beyond this the Gaussian is set to exactly zero (sparse A).
_SUPPORT_SIGMAS = 3.0


@dataclass
class Recording:
    """A synthetic recording and its ground truth (see the module docstring for the model)."""

    movie: np.ndarray  # (frame, height, width) uint8, what the camera recorded
    footprints: np.ndarray  # (unit, height, width) float32, peak 1
    calcium: np.ndarray  # (unit, frame) float32, c_t = sum_i g_i c_{t-i} + s_t
    spikes: np.ndarray  # (unit, frame) float32, the s_t driving calcium
    g: np.ndarray  # (unit, p) float64 AR coefficients
    shifts: np.ndarray  # (frame, 2) float32 (dy, dx) that REGISTERS frame t
    background: np.ndarray  # (height, width) float32 static background, before bleaching
    fps: float
    cell_diameter: float  # pixels
    centers: np.ndarray  # (unit, 2) float64 planted (y, x) cell centres
    glow_image: np.ndarray  # (height, width) float32 static glow added to every frame
    bleach_curve: np.ndarray  # (frame,) float32 multiplier of the background per frame
    cell_brightness: float  # grey levels per unit of calcium at a footprint peak
    noise_sd: float  # sd of the additive Gaussian camera noise (grey levels)

    def centroids(self) -> np.ndarray:
        """(unit, 2) ``(y, x)`` centres of mass of the footprints."""
        return _centres_of_mass(self.footprints)

    def scene(self, t: int) -> np.ndarray:
        """Unshifted clean scene ``S_t`` of frame ``t`` as float32 (height, width)."""
        return _scene(self, t)

    def render(self) -> np.ndarray:
        """Noise-free shifted frames ``F_t``, float32 (frame, height, width), exactly as used
        to make ``movie`` (which is ``F_t`` + noise, rounded and clipped)."""
        return np.stack([_shift_frame(_scene(self, t), -self.shifts[t]) for t in range(self.movie.shape[0])])


def simulate(
    n_frames: int = 200,
    height: int = 128,
    width: int = 128,
    n_cells: int = 12,
    cell_diameter: float = 10.0,
    fps: float = 20.0,
    ar_order: int = 1,
    decay_time: float = 0.4,
    rise_time: float = 0.08,
    spike_rate: float = 0.5,
    cell_brightness: float = 60.0,
    noise_sd: float = 3.0,
    background_level: float = 40.0,
    max_shift: float = 3.0,
    glow: float = 10.0,
    bleach: float = 0.0,
    min_separation: float | None = None,
    seed: int = 0,
    neuropil: float = 0.15,
) -> Recording:
    """Simulate a seeded miniscope recording with exact ground truth.

    Parameters are in pixels, seconds, Hz and grey levels; see the module docstring for the
    model.  ``neuropil`` is the relative amplitude (sd) of the smooth background texture
    (0 disables it).  Raises ValueError for invalid parameters or when the cells do not fit.
    """
    if min_separation is None:
        min_separation = 1.2 * cell_diameter
    _check_params(n_frames, height, width, n_cells, cell_diameter, fps, ar_order, decay_time,
                  rise_time, spike_rate, noise_sd, max_shift, bleach, neuropil, cell_brightness,
                  background_level, glow, min_separation)
    rng = np.random.default_rng(seed)

    centers = _place_cells(rng, n_cells, height, width, cell_diameter, max_shift, min_separation)
    footprints = _make_footprints(rng, centers, height, width, cell_diameter)
    g = np.tile(_ar_coefficients(ar_order, decay_time, rise_time, fps), (n_cells, 1))
    spikes = _make_spikes(rng, n_cells, n_frames, spike_rate / fps)
    calcium = _ar_calcium(spikes, g[0] if n_cells else np.zeros(ar_order))
    background = _make_background(rng, height, width, background_level, neuropil, cell_diameter)
    glow_image = _make_glow(rng, height, width, glow)
    shifts = _make_shifts(rng, n_frames, max_shift)
    bleach_curve = (1.0 - bleach) ** (np.arange(n_frames) / max(n_frames - 1, 1))

    rec = Recording(
        movie=np.empty((n_frames, height, width), np.uint8),
        footprints=footprints,
        calcium=calcium,
        spikes=spikes,
        g=g,
        shifts=shifts,
        background=background,
        fps=float(fps),
        cell_diameter=float(cell_diameter),
        centers=centers,
        glow_image=glow_image,
        bleach_curve=bleach_curve.astype(np.float32),
        cell_brightness=float(cell_brightness),
        noise_sd=float(noise_sd),
    )
    _fill_movie(rec, rng)
    return rec


# ----------------------------------------------------------------------------- validation


def _check_params(n_frames, height, width, n_cells, cell_diameter, fps, ar_order, decay_time,
                  rise_time, spike_rate, noise_sd, max_shift, bleach, neuropil, cell_brightness,
                  background_level, glow, min_separation) -> None:
    """Raise ValueError naming the first bad parameter."""
    for name, val in (("n_frames", n_frames), ("height", height), ("width", width)):
        if int(val) != val or val < 1:
            raise ValueError(f"simulate: {name} must be a positive integer, got {val!r}")
    if int(n_cells) != n_cells or n_cells < 0:
        raise ValueError(f"simulate: n_cells must be a non-negative integer, got {n_cells!r}")
    for name, val in (("cell_diameter", cell_diameter), ("fps", fps), ("decay_time", decay_time)):
        if not val > 0:
            raise ValueError(f"simulate: {name} must be > 0, got {val!r}")
    if ar_order not in (1, 2):
        raise ValueError(f"simulate: ar_order must be 1 or 2, got {ar_order!r}")
    if ar_order == 2 and not 0 < rise_time < decay_time:
        raise ValueError(f"simulate: rise_time must be in (0, decay_time={decay_time}) for ar_order=2, "
                         f"got {rise_time!r}")
    for name, val in (("spike_rate", spike_rate), ("noise_sd", noise_sd), ("max_shift", max_shift),
                      ("neuropil", neuropil), ("cell_brightness", cell_brightness),
                      ("background_level", background_level), ("glow", glow),
                      ("min_separation", min_separation)):
        if not val >= 0:
            raise ValueError(f"simulate: {name} must be >= 0, got {val!r}")
    if not 0 <= bleach < 1:
        raise ValueError(f"simulate: bleach must be in [0, 1), got {bleach!r}")


# ----------------------------------------------------------------------------- cells


def _place_cells(rng, n_cells, height, width, diameter, max_shift, min_sep) -> np.ndarray:
    """Random sequential placement of (n_cells, 2) (y, x) centres, or ValueError."""
    margin = diameter + max_shift  # whole footprint (< 0.9 d) stays inside after shifting
    lo, hi_y, hi_x = margin, height - 1 - margin, width - 1 - margin
    what = (f"n_cells={n_cells} cells of cell_diameter={diameter} with min_separation={min_sep:g} "
            f"in a {height}x{width} field (edge margin {margin:g} px)")
    if n_cells and (hi_y < lo or hi_x < lo):
        raise ValueError(f"simulate: cannot fit {what}: the field is too small for any cell")
    centers = np.empty((n_cells, 2))
    tries = 1000  # candidates per cell; the density limit of random placement is ~55 %
    for k in range(n_cells):
        cand = np.column_stack([rng.uniform(lo, hi_y, tries), rng.uniform(lo, hi_x, tries)])
        if k:
            d2 = ((cand[:, None, :] - centers[None, :k, :]) ** 2).sum(-1).min(1)
            ok = np.flatnonzero(d2 >= min_sep**2)
        else:
            ok = np.array([0])
        if ok.size == 0:
            raise ValueError(f"simulate: cannot fit {what}: only {k} placed; use fewer cells, a "
                             f"smaller min_separation or a larger frame")
        centers[k] = cand[ok[0]]
    return centers


def _make_footprints(rng, centers, height, width, diameter) -> np.ndarray:
    """(unit, height, width) float32 elliptical Gaussians, truncated at 3 sigma, peak 1."""
    n = len(centers)
    sigma = diameter / 4.0
    aspect = rng.uniform(0.85, 1.15, n)
    theta = rng.uniform(0.0, np.pi, n)
    half = int(np.ceil(_SUPPORT_SIGMAS * sigma * 1.15)) + 1
    out = np.zeros((n, height, width), np.float32)
    for k, (cy, cx) in enumerate(centers):
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 2, height)
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 2, width)
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        # rotate into the ellipse's principal axes
        c, s = np.cos(theta[k]), np.sin(theta[k])
        u, v = c * dx + s * dy, -s * dx + c * dy
        q = (u / (sigma * aspect[k])) ** 2 + (v / (sigma / aspect[k])) ** 2
        # subtract the value at the cut-off so the blob falls continuously to 0 there: a hard
        # cut would bias the centre of mass on the pixel grid
        patch = np.clip(np.exp(-0.5 * q) - np.exp(-0.5 * _SUPPORT_SIGMAS**2), 0.0, None)
        out[k, y0:y1, x0:x1] = patch / patch.max()
    return out


def _centres_of_mass(footprints: np.ndarray) -> np.ndarray:
    """(unit, 2) (y, x) intensity-weighted centres of (unit, height, width) images."""
    fp = np.asarray(footprints, np.float64)
    ys, xs = np.arange(fp.shape[1]), np.arange(fp.shape[2])
    mass = fp.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (fp.sum(2) @ ys) / mass
        cx = (fp.sum(1) @ xs) / mass
    return np.column_stack([cy, cx])


# ----------------------------------------------------------------------------- activity


def _ar_coefficients(order, decay_time, rise_time, fps) -> np.ndarray:
    """AR coefficients (g1[, g2]) from decay (and rise) time constants in seconds."""
    d = np.exp(-1.0 / (decay_time * fps))
    if order == 1:
        return np.array([d])
    r = np.exp(-1.0 / (rise_time * fps))
    return np.array([d + r, -d * r])


def _make_spikes(rng, n_cells, n_frames, rate_per_frame) -> np.ndarray:
    """(unit, frame) float32 Poisson spike counts times U(0.5, 1.5) amplitudes."""
    counts = rng.poisson(rate_per_frame, (n_cells, n_frames))
    amps = rng.uniform(0.5, 1.5, (n_cells, n_frames))
    return (counts * amps).astype(np.float32)


def _ar_calcium(spikes, g) -> np.ndarray:
    """c[t] = sum_i g_i c[t-i] + s[t] (zero initial state), computed in float64."""
    from scipy.signal import lfilter  # only for simulated recordings: a slow import

    a = np.concatenate([[1.0], -np.asarray(g, np.float64)])
    return lfilter([1.0], a, spikes.astype(np.float64), axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- scene


def _make_background(rng, height, width, level, neuropil, diameter) -> np.ndarray:
    """Vignetted illumination times (1 + neuropil * smooth unit-sd texture), float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rho2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (cy**2 + cx**2 + 1e-12)
    illum = level * (1.0 - 0.35 * rho2)
    noise = rng.standard_normal((height, width))
    tex = cv2.GaussianBlur(noise, (0, 0), sigmaX=diameter, borderType=cv2.BORDER_REFLECT)
    tex = (tex - tex.mean()) / (tex.std() + 1e-12)
    return np.clip(illum * (1.0 + neuropil * tex), 0.0, None).astype(np.float32)


def _make_glow(rng, height, width, amplitude) -> np.ndarray:
    """Broad static Gaussian blob of peak ``amplitude`` near the frame centre, float32."""
    cy = (height - 1) / 2.0 + rng.uniform(-0.1, 0.1) * height
    cx = (width - 1) / 2.0 + rng.uniform(-0.1, 0.1) * width
    sig = min(height, width) / 3.0
    yy, xx = np.mgrid[0:height, 0:width]
    return (amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))).astype(np.float32)


def _make_shifts(rng, n_frames, max_shift) -> np.ndarray:
    """(frame, 2) float32 smooth random-walk drift + jitter, bounded by max_shift."""
    steps = rng.standard_normal((n_frames, 2))
    jitter = rng.standard_normal((n_frames, 2))
    if max_shift == 0:
        return np.zeros((n_frames, 2), np.float32)
    walk = np.cumsum(steps, axis=0)
    k = max(1, min(n_frames, 9))  # moving-average smoothing so drift is slow
    kernel = np.ones(k) / k
    walk = np.column_stack([np.convolve(np.pad(walk[:, i], (k // 2, k - 1 - k // 2), mode="edge"),
                                        kernel, mode="valid") for i in range(2)])
    walk -= walk.mean(0)
    peak = np.abs(walk).max()
    drift = walk * (0.8 * max_shift / peak) if peak > 0 else walk
    total = drift + 0.05 * max_shift * jitter
    return np.clip(total, -max_shift, max_shift).astype(np.float32)


def _scene(rec: Recording, t: int) -> np.ndarray:
    """Unshifted clean scene S_t (float32): bleached background + glow + cells."""
    fp = rec.footprints.reshape(rec.footprints.shape[0], rec.background.size)
    cells = (rec.calcium[:, t] * np.float32(rec.cell_brightness)) @ fp
    return (rec.background * rec.bleach_curve[t] + rec.glow_image
            + cells.reshape(rec.background.shape).astype(np.float32))


def _shift_frame(img: np.ndarray, shift) -> np.ndarray:
    """Move ``img`` by ``shift`` = (dy, dx): out(y, x) = img(y - dy, x - dx), Lanczos-4."""
    dy, dx = float(shift[0]), float(shift[1])
    if dy == 0 and dx == 0:
        return img.astype(np.float32, copy=True)
    # WARP_INVERSE_MAP: out(x, y) = img(M @ [x, y, 1]) -> sample at (x - dx, y - dy)
    m = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]])
    return cv2.warpAffine(img.astype(np.float32, copy=False), m, (img.shape[1], img.shape[0]),
                          flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def _fill_movie(rec: Recording, rng) -> None:
    """Render F_t = scene displaced by -shifts[t], add camera noise, quantise into rec.movie."""
    n_frames, h, w = rec.movie.shape
    for t in range(n_frames):
        clean = _shift_frame(_scene(rec, t), -rec.shifts[t])
        noisy = clean + np.float32(rec.noise_sd) * rng.standard_normal((h, w), dtype=np.float32)
        np.clip(np.rint(noisy), 0, 255, out=noisy)
        rec.movie[t] = noisy.astype(np.uint8)


# ----------------------------------------------------------------------------- files


def write_miniscope(rec: Recording, folder, layout: str = "v4", frames_per_file: int = 1000) -> list[Path]:
    """Write ``rec.movie`` as a UCLA Miniscope folder; return the video paths in order.

    ``layout="v4"``: ``0.avi, 1.avi, ...`` + ``metaData.json`` + ``timeStamps.csv``.
    ``layout="v3"``: ``msCam1.avi, msCam2.avi, ...`` + ``timestamp.dat``.
    Videos are lossless grey FFV1 with ``frames_per_file`` frames each (last may be shorter).
    The folder is created if missing; ValueError if it already holds .avi files.
    """
    if layout not in ("v3", "v4"):
        raise ValueError(f"write_miniscope: layout must be 'v3' or 'v4', got {layout!r}")
    if int(frames_per_file) != frames_per_file or frames_per_file < 1:
        raise ValueError(f"write_miniscope: frames_per_file must be a positive integer, got {frames_per_file!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"write_miniscope: {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".avi")
    if existing:
        raise ValueError(f"write_miniscope: {folder} already holds .avi files ({', '.join(existing[:3])}...); "
                         f"choose an empty folder")

    n_frames = rec.movie.shape[0]
    starts = range(0, n_frames, int(frames_per_file))
    names = [f"{i}.avi" if layout == "v4" else f"msCam{i + 1}.avi" for i in range(len(starts))]
    paths = []
    for name, s in zip(names, starts):
        paths.append(folder / name)
        _write_avi(paths[-1], rec.movie[s:s + int(frames_per_file)], rec.fps)

    times = _timestamps_ms(n_frames, rec.fps)
    if layout == "v4":
        _write_v4_metadata(folder / "metaData.json", rec, int(frames_per_file))
        rows = [f"{i},{t},0" for i, t in enumerate(times)]
        (folder / "timeStamps.csv").write_text("Frame Number,Time Stamp (ms),Buffer Index\n" + "\n".join(rows) + "\n")
    else:
        rows = [f"0\t{i + 1}\t{t}\t0" for i, t in enumerate(times)]
        (folder / "timestamp.dat").write_text("camNum\tframeNum\tsysClock\tbuffer\n" + "\n".join(rows) + "\n")
    return paths


def _write_avi(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write (frame, h, w) uint8 frames as a lossless grey FFV1 AVI."""
    h, w = frames.shape[1:]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), float(fps), (w, h), isColor=False)
    if not writer.isOpened():
        raise RuntimeError(f"write_miniscope: OpenCV cannot open an FFV1 writer for {path}")
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f))
    finally:
        writer.release()


def _timestamps_ms(n_frames: int, fps: float) -> np.ndarray:
    """Integer ms timestamps from 0 at 1000/fps with deterministic +-1 ms jitter, increasing."""
    jitter = np.random.default_rng(_TIMESTAMP_SEED).integers(-1, 2, n_frames)
    jitter[0] = 0
    t = np.rint(np.arange(n_frames) * 1000.0 / fps).astype(np.int64) + jitter
    return np.maximum.accumulate(t)


def _write_v4_metadata(path: Path, rec: Recording, frames_per_file: int) -> None:
    """Device-level metaData.json in the style of Miniscope-DAQ-QT-Software (V4)."""
    h, w = rec.movie.shape[1:]
    meta = {
        "ROI": {"height": int(h), "leftEdge": 0, "topEdge": 0, "width": int(w)},
        "compression": "FFV1",
        "deviceDirectory": str(path.parent),
        "deviceID": 0,
        "deviceName": "Miniscope",
        "deviceType": "Miniscope_V4_BNO",
        "ewl": 0,
        "frameRate": f"{rec.fps:g}FPS",
        "framesPerFile": frames_per_file,
        "gain": "Low",
        "led0": 10,
    }
    path.write_text(json.dumps(meta, indent=4) + "\n")
