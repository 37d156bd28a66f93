"""The `mps` command: the same pipeline as the desktop app, headless.

    mps run --params FILE --input DIR --output DIR [--from ID] [--to ID] [--set ID.key=value ...]
    mps steps
    mps params --defaults
    mps export SESSION --step ID --format numpy DEST
    mps demo [--output DIR]
    mps notify-test

`mps run ... --notify` and `mps batch ... --notify` report the end of the work through the
saved notification settings (see mps_core.notify).

User mistakes print one line (and where the log is) and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

EXIT_USAGE, EXIT_FAILED, EXIT_CANCELLED = 2, 1, 130
_NOTIFY_HELP = ("when the work ends (done or failed), notify through the saved settings: "
                "command and/or e-mail (see `mps notify-test`)")


def _crash_tracebacks() -> None:
    """On a fatal crash in native code (segfault, abort), print every thread's Python stack
    to stderr: the only clue such a crash leaves in a batch log."""
    import faulthandler

    if not faulthandler.is_enabled() and sys.stderr is not None:
        try:
            faulthandler.enable()
        except (AttributeError, ValueError, OSError):  # stderr without a file descriptor
            pass


def main(argv: list[str] | None = None) -> int:
    from .memwatch import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread exists
    _crash_tracebacks()
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("mps: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .export import FORMATS

    p = argparse.ArgumentParser(prog="mps", description="MPS: miniscope processing, headless.")
    p.add_argument("--version", action="version", version=f"mps {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    r = sub.add_parser("run", help="run the pipeline (or part of it) on one recording")
    r.add_argument("--params", type=Path, help="parameter file (JSON); defaults if omitted")
    r.add_argument("--input", type=Path, help="folder holding the recording (sets 1.input_dir)")
    r.add_argument("--output", type=Path, help="session output folder (sets 1.output_dir)")
    r.add_argument("--from", dest="start", metavar="ID", help="first step (resume from here)")
    r.add_argument("--to", dest="stop", metavar="ID", help="last step")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID.key=value",
                   help="override one parameter, e.g. --set 2b.denoise_method=gaussian")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--notify", action="store_true", help=_NOTIFY_HELP)
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("batch", help="run the pipeline on many sessions listed in a file")
    b.add_argument("sessions", type=Path, metavar="SESSIONS.txt",
                   help="one session per line: INPUT_DIR [OUTPUT_DIR] [ANIMAL_ID] [SESSION_ID]")
    b.add_argument("--params", type=Path, help="parameter file (JSON) for every session; "
                   "defaults if omitted")
    b.add_argument("--output-root", type=Path, metavar="DIR",
                   help="default output folders go here (default: INPUT_DIR_mps beside each input)")
    b.add_argument("--summary", type=Path, metavar="PATH",
                   help="folder for batch_summary.csv, or a .csv file (default: current folder)")
    b.add_argument("--rerun", action="store_true",
                   help="run every session from step 1, even those already done")
    b.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="sessions at once; needs 1.scheduler_address (default 1)")
    b.add_argument("--to", dest="stop", metavar="ID",
                   help="last step of every session (for a quick check on part of the pipeline)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID.key=value",
                   help="override one parameter for every session")
    b.add_argument("--quiet", action="store_true", help="only the summary table")
    b.add_argument("--notify", action="store_true", help=_NOTIFY_HELP)
    b.set_defaults(func=cmd_batch)

    nf = sub.add_parser("notify-test", help="send a test notification with the saved "
                                            "notification settings")
    nf.set_defaults(func=cmd_notify_test)

    s = sub.add_parser("steps", help="list the pipeline steps and which are implemented")
    s.set_defaults(func=cmd_steps)

    pa = sub.add_parser("params", help="write or check parameter files")
    g = pa.add_mutually_exclusive_group(required=True)
    g.add_argument("--defaults", action="store_true", help="print every default as a parameter file")
    g.add_argument("--check", type=Path, metavar="FILE", help="validate a parameter file")
    pa.set_defaults(func=cmd_params)

    e = sub.add_parser("export", help="write one step's footprints and traces as NumPy files")
    e.add_argument("session", type=Path, help="a session output folder")
    e.add_argument("--step", required=True, metavar="ID",
                   help="the step to export, e.g. 4h (a step that keeps a smoothed copy of its "
                        "footprints, as 4h and 7f do, exports that copy)")
    e.add_argument("--format", choices=["numpy"], default="numpy")
    e.add_argument("dest", type=Path, help="folder for A.npy, C.npy, S.npy, motion.npy, frames.npy")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("export-video", help="write an MP4 of a movie stage (or two side by side)")
    v.add_argument("session", type=Path, help="a session output folder")
    v.add_argument("output", type=Path, help="the video file to write (.mp4)")
    v.add_argument("--stage", required=True, choices=_STAGE_CHOICES, help="the movie to show")
    v.add_argument("--compare", choices=_STAGE_CHOICES, metavar="STAGE",
                   help="a second stage shown beside the first, e.g. --stage 2b --compare 2e")
    v.add_argument("--frames", metavar="START:STOP:STEP",
                   help="original frame numbers to show, e.g. 0:1000:2 (default: all)")
    v.add_argument("--cmap", default="gray", metavar="NAME",
                   help="colour map: gray, viridis, inferno, magma, plasma, cividis, hot, jet, "
                        "turbo, bone, parula, diverging (default gray)")
    v.add_argument("--vmin", type=float, help="value shown black (default: robust percentile)")
    v.add_argument("--vmax", type=float, help="value shown white (default: robust percentile)")
    v.add_argument("--fps", type=float, help="frames per second (default: the recording's)")
    v.add_argument("--contours", action="store_true",
                   help="outline the final units' footprints on the frames")
    v.add_argument("--contour-level", type=float, default=0.3, metavar="FRACTION",
                   help="outline at this fraction of each footprint's maximum (default 0.3)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_export_video)

    mo = sub.add_parser("export-movie", help="write a movie stage as TIFF, .npy, .mat or zarr")
    mo.add_argument("session", type=Path, help="a session output folder")
    mo.add_argument("output_dir", type=Path, help="folder for movie_<stage>.<ext>")
    mo.add_argument("--stage", required=True, choices=_STAGE_CHOICES, help="the movie to write")
    mo.add_argument("--format", dest="fmt", required=True, choices=["tiff", "npy", "mat", "zarr"])
    mo.add_argument("--frames", metavar="START:STOP:STEP",
                    help="original frame numbers to write, e.g. 0:1000:2 (default: all)")
    mo.add_argument("--quiet", action="store_true", help="no progress bar")
    mo.set_defaults(func=cmd_export_movie)

    ex = sub.add_parser("explore", help="open the results explorer of a finished session "
                                        "(footprints, traces, movie, curation)")
    ex.add_argument("session", type=Path, metavar="OUTPUT_DIR", help="a session output folder")
    ex.set_defaults(func=cmd_explore)

    ec = sub.add_parser("export-curated", help="write the final results again with the "
                                              "explorer's labels applied (curation.json)")
    ec.add_argument("session", type=Path, help="a session output folder")
    ec.add_argument("dest", type=Path, nargs="?",
                    help="folder to write (default: SESSION/curated_export)")
    ec.add_argument("--include-rejected", action="store_true",
                    help="keep rejected units in the export, labelled as rejected")
    ec.add_argument("--formats", nargs="+", metavar="FORMAT", choices=FORMATS,
                    default=["numpy", "zarr", "json", "figures"],
                    help=", ".join(FORMATS) + " (default: numpy zarr json "
                         "figures)")
    ec.add_argument("--table-format", choices=["csv", "parquet"], default="csv",
                    help="file format of the per-frame tables when 'table' is chosen")
    ec.set_defaults(func=cmd_export_curated)

    d = sub.add_parser("demo", help="make a small synthetic recording and run every implemented step")
    d.add_argument("--output", type=Path, default=Path("mps-demo"),
                   help="folder for the demo recording and its session (default ./mps-demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    dc = sub.add_parser("docs", help="regenerate the parameter tables of the user guide (docs/)")
    dc.add_argument("--check", action="store_true",
                    help="change nothing; list the pages whose tables differ from the steps "
                         "and exit 1 if there are any")
    dc.add_argument("--dir", type=Path, metavar="DOCS",
                    help="the docs folder (default: docs/ next to the mps_core package)")
    dc.set_defaults(func=cmd_docs)

    st = sub.add_parser("stitch", help="stitch the streams of several wireless receivers into "
                                       "one recording (before step 2a)")
    st.add_argument("videos", nargs="+", type=Path, metavar="VIDEO",
                    help="one video per receiver (at least 2); ties go to the first")
    st.add_argument("--metadata", nargs="+", type=Path, metavar="CSV",
                    help="one metadata CSV per video, same order (default: the .csv of the "
                         "same name next to each video)")
    st.add_argument("--align", choices=["auto", "frame_num", "time"], default="auto",
                    help="match frames by frame_num, by buffer receive time, or auto: "
                         "frame_num unless it restarts (default auto)")
    st.add_argument("--tolerance", type=float, metavar="SECONDS",
                    help="time alignment: largest receive-time difference of two copies "
                         "(default half a frame interval)")
    st.add_argument("--debug-video", action="store_true",
                    help="also write NAME_debug.mp4: the copies side by side, differences red")
    st.set_defaults(func=cmd_stitch)

    ct = sub.add_parser("concat", help="concatenate sequential segments of one stream")
    ct.add_argument("videos", nargs="+", type=Path, metavar="VIDEO",
                    help="the segments in recording order (at least 2)")
    ct.add_argument("--metadata", nargs="+", type=Path, metavar="CSV",
                    help="one metadata CSV per segment (default: VIDEO's .csv when present)")
    ct.add_argument("--decisions", nargs="+", type=Path, metavar="CSV",
                    help="one decision table per segment (default: VIDEO's _decisions.csv "
                         "when present)")
    ct.set_defaults(func=cmd_concat)

    tr = sub.add_parser("trim", help="drop frames at the start and end of a recording")
    tr.add_argument("video", type=Path, metavar="VIDEO")
    tr.add_argument("--start", dest="trim_start", type=int, default=0, metavar="N",
                    help="frames dropped at the start")
    tr.add_argument("--end", dest="trim_end", type=int, default=0, metavar="M",
                    help="frames dropped at the end")
    tr.set_defaults(func=cmd_trim)

    rf = sub.add_parser("remove-frames", help="drop listed frames from a recording")
    rf.add_argument("video", type=Path, metavar="VIDEO")
    rf.add_argument("--frames", required=True, metavar="LIST",
                    help="0-based frames and inclusive ranges, e.g. 3,10-12,40")
    rf.set_defaults(func=cmd_remove_frames)

    for tool, default in ((st, "stitched"), (ct, "concatenated"), (tr, "VIDEO_trimmed"),
                          (rf, "VIDEO_cleaned")):
        if tool in (tr, rf):
            tool.add_argument("--metadata", type=Path, metavar="CSV",
                              help="its metadata CSV (default: VIDEO's .csv when present)")
            tool.add_argument("--decisions", type=Path, metavar="CSV",
                              help="its decision table (default: VIDEO's _decisions.csv when present)")
        tool.add_argument("--output", required=True, type=Path, metavar="DIR",
                          help="folder for the outputs (not an input's folder)")
        tool.add_argument("--name", help=f"base name of the output files (default {default})")
        tool.add_argument("--format", dest="fmt", choices=["auto", "avi", "tiff"], default="auto",
                          help="movie format: FFV1 .avi (8-bit) or TIFF stack, both lossless "
                               "(default auto: avi for 8-bit data)")
        tool.add_argument("--force", action="store_true", help="overwrite existing outputs")
        tool.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _fail(message: str, log: Path | None = None) -> int:
    print(f"mps: error: {message}" + (f" (log: {log})" if log else ""), file=sys.stderr)
    return EXIT_FAILED


def _load_params(path: Path | None, overrides: list[str]):
    from .params import ParamSet
    from .steps import STEPS

    ps = ParamSet.load(path, STEPS) if path else ParamSet(STEPS)
    return ps.with_overrides(overrides)


def cmd_params(args) -> int:
    from .params import ParamError, ParamSet
    from .steps import STEPS

    if args.defaults:
        sys.stdout.write(ParamSet(STEPS).dumps())
        return 0
    try:
        ParamSet.load(args.check, STEPS)
    except ParamError as e:
        return _fail(str(e))
    print(f"{args.check}: valid")
    return 0


def cmd_steps(args) -> int:
    from .steps import STEPS

    stage = None
    for s in STEPS:
        if s.stage != stage:
            stage = s.stage
            print(f"{stage}:")
        mark = "implemented" if s.implemented else "not implemented yet"
        print(f"  {s.id:<4}{s.title:<36}{mark}")
    return 0


def cmd_run(args) -> int:
    from .params import ParamError

    try:
        params = _load_params(args.params, args.overrides)
        extra = {}
        if args.input is not None:
            extra["input_dir"] = str(args.input)
        if args.output is not None:
            extra["output_dir"] = str(args.output)
        if extra:
            params = params.with_values("1", extra, source="command line")
    except ParamError as e:
        print(f"mps: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run_pipeline(params, args.start, args.stop, quiet=args.quiet, notify=args.notify)


def run_pipeline(params, start: str | None, stop: str | None, quiet: bool = False,
                 notify: bool = False) -> int:
    """Run steps start..stop; with `notify`, report the ending through the saved settings."""
    from .runner import PlanError, Runner, StepFailed
    from .steps import STEPS
    from .steps.config import check_config
    from .registry import StepError
    from .store import SessionStore, StoreError

    try:
        check_config(params["1"])
        store = SessionStore(Path(params["1"].output_dir).expanduser())
    except (StepError, StoreError) as e:
        print(f"mps: error: step 1 (Project configuration): {e}", file=sys.stderr)
        return EXIT_USAGE
    bar = ProgressBar(enabled=not quiet)
    runner = Runner(STEPS, params, store, on_progress=bar.update, on_event=bar.event)
    cancel = threading.Event()
    t0 = time.monotonic()

    def tell(status: str, summary: str) -> None:
        if notify:
            _notify_end("run", store.root, status, summary, time.monotonic() - t0)

    try:
        results = runner.run(start, stop, cancel=cancel)
    except PlanError as e:
        print(f"mps: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StepFailed as e:
        bar.close()
        tell("failed", str(e))
        return _fail(str(e), store.log_path)
    except KeyboardInterrupt:
        cancel.set()
        tell("cancelled", "interrupted (Ctrl-C)")
        raise
    bar.close()
    total = sum(r.duration_s for r in results)
    line = f"ran steps {results[0].step_id}..{results[-1].step_id} in {total:.1f} s"
    if results and results[-1].status == "cancelled":
        tell("cancelled", f"step {results[-1].step_id} cancelled")
    else:
        tell("done", line)
    print(f"{line}; results in {store.root}")
    return 0


def _notify_end(kind: str, folder: Path, status: str, summary: str, duration_s: float,
                details: str = "", event=None) -> None:
    """Send the ending through the saved settings; problems are warnings, never failures."""
    from . import notify as nt

    try:
        settings = nt.load_settings()
    except ValueError as e:
        print(f"mps: warning: no notification sent: {e}", file=sys.stderr)
        return
    if not settings.any_channel():
        print(f"mps: warning: --notify: no notification channel is enabled in "
              f"{nt.settings_path()}", file=sys.stderr)
        return
    event = event or nt.Event(kind, Path(folder), status, summary, duration_s, details)
    for o in nt.notify(event, settings):
        print(f"mps: notification {o.line()}", file=sys.stderr)


def cmd_notify_test(args) -> int:
    from . import notify as nt

    path = nt.settings_path()
    try:
        settings = nt.load_settings()
    except ValueError as e:
        return _fail(str(e))
    if not settings.any_channel():
        return _fail(f"no notification channel is enabled in {path}: enable the command or "
                     f"the e-mail there (or in the app: Tools > Notifications...)")
    outcomes = nt.send_test(settings)
    for o in outcomes:
        print(o.line())
    print(f"settings: {path}")
    return 0 if all(o.ok for o in outcomes) else EXIT_FAILED


def cmd_batch(args) -> int:
    from . import batch
    from .params import ParamError
    from .steps import STEPS

    if args.parallel < 1:
        print(f"mps: error: --parallel {args.parallel}: give 1 or more sessions at once",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        params = _load_params(args.params, args.overrides)
        entries = batch.read_session_list(args.sessions, args.output_root)
        batch.planned_steps(STEPS, args.stop)
    except (ParamError, ValueError) as e:
        print(f"mps: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.parallel > 1 and not params["1"].scheduler_address:
        print("mps: note: --parallel needs 1.scheduler_address (a Dask cluster); sessions "
              "run one after another", file=sys.stderr)
    summary = batch.summary_path(args.summary)
    n = len(entries)

    def show(ev) -> None:  # finished steps and sessions; a failure is said once, with its step
        if args.quiet or ev.kind == "progress" or (
                ev.kind == "step" and not ev.message.startswith("done")):
            return
        if ev.kind == "step":
            what = f"step {ev.step_id} {ev.message}"
        elif ev.kind in ("failed", "cancelled") and ev.step_id:
            what = f"{ev.kind} at step {ev.step_id}: {ev.message}"
        else:
            what = f"{ev.kind}: {ev.message}" if ev.message else ev.kind
        print(f"[{ev.index + 1}/{n}] {ev.session}: {what}", file=sys.stderr)

    outcomes = batch.run_batch(entries, params, on_event=show, rerun=args.rerun,
                               parallel=args.parallel, stop=args.stop, summary=summary)
    if args.notify:
        from .notify import batch_event

        _notify_end("batch", summary.parent, "", "", 0.0, event=batch_event(outcomes, summary))
    print(batch.format_table(outcomes))
    for o in outcomes:
        if o.status == "failed" and o.log:
            print(f"{o.entry.name}: log {o.log}")
    c = batch.counts(outcomes)
    print(", ".join(f"{v} {k}" for k, v in c.items()) + f"; summary in {summary}")
    if c.get("cancelled"):
        return EXIT_CANCELLED
    return EXIT_FAILED if c.get("failed") else 0


class ProgressBar:
    """One line per step on a terminal (redrawn), sparse lines when piped to a file."""

    def __init__(self, enabled: bool = True, stream=sys.stderr):
        self.enabled, self.stream = enabled, stream
        self.tty = stream.isatty()
        self.current, self.last_pct, self.t0 = None, -1, time.time()

    def event(self, step_id: str, event: str, message: str) -> None:
        if not self.enabled:
            return
        if event == "started":
            self.current, self.last_pct, self.t0 = step_id, -1, time.time()
            self._draw(0.0, message)
        else:
            self._draw(1.0 if event == "done" else max(self.last_pct, 0) / 100,
                       f"{event} {message}")
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()

    def update(self, step_id: str, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        pct = int(fraction * 100)
        # Piped output: every 10 %, and whenever a new pass of a multi-pass step starts
        # (its progress restarts lower; without this a log went silent after pass 1).
        if pct == self.last_pct or (not self.tty and 0 < pct - self.last_pct < 10):
            return
        self._draw(fraction, message)

    def _draw(self, fraction: float, message: str) -> None:
        self.last_pct = int(fraction * 100)
        width = 24
        filled = int(fraction * width)
        line = (f"[{self.current:>3}] |{'#' * filled}{'.' * (width - filled)}| "
                f"{self.last_pct:3d}% {time.time() - self.t0:6.1f}s {message[:60]}")
        if self.tty:
            self.stream.write("\r" + line.ljust(110))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def cmd_export(args) -> int:
    from .export import export_step
    from .store import SessionStore, StoreError

    try:
        files = export_step(SessionStore(args.session, create=False), args.step, args.dest)
    except (StoreError, ValueError) as e:
        return _fail(str(e))
    print("wrote " + ", ".join(p.name for p in files) + f" in {args.dest}")
    return 0


_STAGE_CHOICES = ["raw", "2b", "2e", "reconstruction", "residual"]


def _movie_export(args, label: str, run) -> int:
    """Run one movie / video export with a progress bar; user errors are one line."""
    from .movies import parse_frames
    from .registry import Cancelled
    from .store import SessionStore, StoreError

    try:
        parse_frames(args.frames)
    except ValueError as e:
        print(f"mps: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    bar = ProgressBar(enabled=not args.quiet)
    cancel = threading.Event()
    try:
        store = SessionStore(args.session, create=False)
        bar.event(label, "started", "reading")
        result = run(store, lambda f, m: bar.update(label, f, m), cancel)
    except (StoreError, ValueError, RuntimeError) as e:
        if bar.current is not None:
            bar.event(label, "failed", "")
        return _fail(str(e))
    except Cancelled:
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        cancel.set()
        raise
    bar.event(label, "done", f"{result.seconds:.1f} s")
    print(result.line())
    return 0


def cmd_export_video(args) -> int:
    from .video_export import export_video

    return _movie_export(args, "mp4", lambda store, progress, cancel: export_video(
        store, args.output, args.stage, compare=args.compare, frames=args.frames,
        cmap=args.cmap, vmin=args.vmin, vmax=args.vmax, fps=args.fps, contours=args.contours,
        contour_level=args.contour_level, progress=progress, cancel=cancel))


def cmd_export_movie(args) -> int:
    from .movie_export import export_movie

    return _movie_export(args, args.fmt[:3], lambda store, progress, cancel: export_movie(
        store, args.output_dir, args.stage, args.fmt, frames=args.frames, progress=progress,
        cancel=cancel))


def cmd_explore(args) -> int:
    from mps_gui.explorer import run_explorer  # Qt only when the explorer is asked for

    return run_explorer(args.session)


def cmd_export_curated(args) -> int:
    from .curation import CurationError, export_curated
    from .store import SessionStore, StoreError

    try:
        out = export_curated(SessionStore(args.session, create=False), args.dest,
                             include_rejected=args.include_rejected, formats=args.formats,
                             table_format=args.table_format)
    except (StoreError, CurationError, ValueError) as e:
        return _fail(str(e))
    merged = f", {len(out['merged'])} merged" if out["merged"] else ""
    print(f"wrote {out['n_units']} units{merged} in {out['folder']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.output, quiet=args.quiet)


def cmd_docs(args) -> int:
    from .docsgen import docs_dir, stale_pages, update_pages

    folder = args.dir or docs_dir()
    if folder is None:
        return _fail("no docs folder next to this installation; give one with --dir DOCS")
    try:
        if args.check:
            stale = stale_pages(folder)
            for page in stale:
                print(page)
            if stale:
                print(f"mps: {len(stale)} page(s) of {folder} differ from the step registry; "
                      f"run `mps docs` to regenerate them", file=sys.stderr)
                return EXIT_FAILED
            print(f"{folder}: every generated table matches the step registry")
            return 0
        changed = update_pages(folder)
    except ValueError as e:
        return _fail(str(e))
    for page in changed:
        print(f"updated {page}")
    print(f"{folder}: {len(changed)} page(s) updated")
    return 0


def _run_stitch_tool(args, label: str, run) -> int:
    """Run one stitching tool with a progress bar; user errors are one line."""
    from .registry import Cancelled

    bar = ProgressBar(enabled=not args.quiet)
    cancel = threading.Event()
    try:
        bar.event(label, "started", "reading")
        result = run(lambda f, m: bar.update(label, f, m), cancel)
    except Cancelled:
        return EXIT_CANCELLED
    except (ValueError, RuntimeError) as e:
        bar.event(label, "failed", "")
        return _fail(str(e))
    except KeyboardInterrupt:
        cancel.set()
        raise
    bar.event(label, "done", f"{result.seconds:.1f} s")
    for warning in result.warnings:
        print(f"mps: warning: {warning}", file=sys.stderr)
    print(result.line())
    print(f"log: {result.paths['log']}")
    return 0


def cmd_stitch(args) -> int:
    from .stitch import stitch_streams

    return _run_stitch_tool(args, "st", lambda progress, cancel: stitch_streams(
        args.videos, args.output, metadata=args.metadata, name=args.name or "stitched",
        fmt=args.fmt, align=args.align, tolerance_s=args.tolerance, debug_video=args.debug_video,
        force=args.force, progress=progress, cancel=cancel))


def cmd_concat(args) -> int:
    from .stitch import concat_segments

    return _run_stitch_tool(args, "cat", lambda progress, cancel: concat_segments(
        args.videos, args.output, metadata=args.metadata, decisions=args.decisions,
        name=args.name or "concatenated", fmt=args.fmt, force=args.force, progress=progress,
        cancel=cancel))


def cmd_trim(args) -> int:
    from .stitch import trim_frames

    return _run_stitch_tool(args, "trm", lambda progress, cancel: trim_frames(
        args.video, args.output, start=args.trim_start, end=args.trim_end, metadata=args.metadata,
        decisions=args.decisions, name=args.name, fmt=args.fmt, force=args.force,
        progress=progress, cancel=cancel))


def cmd_remove_frames(args) -> int:
    from .stitch import parse_frame_list, remove_frames

    try:
        frames = parse_frame_list(args.frames)
    except ValueError as e:
        print(f"mps: error: --{e}", file=sys.stderr)
        return EXIT_USAGE
    return _run_stitch_tool(args, "rmf", lambda progress, cancel: remove_frames(
        args.video, args.output, frames, metadata=args.metadata, decisions=args.decisions,
        name=args.name, fmt=args.fmt, force=args.force, progress=progress, cancel=cancel))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
