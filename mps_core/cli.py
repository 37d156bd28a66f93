"""The `mps` command: the same pipeline as the desktop app, headless.

    mps run --params FILE --input DIR --output DIR [--from ID] [--to ID] [--set ID.key=value ...]
    mps steps
    mps params --defaults
    mps export SESSION --step ID --format numpy DEST
    mps demo [--output DIR]

User mistakes print one line (and where the log is) and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

EXIT_USAGE, EXIT_FAILED, EXIT_CANCELLED = 2, 1, 130


def main(argv: list[str] | None = None) -> int:
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
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("steps", help="list the pipeline steps and which are implemented")
    s.set_defaults(func=cmd_steps)

    pa = sub.add_parser("params", help="write or check parameter files")
    g = pa.add_mutually_exclusive_group(required=True)
    g.add_argument("--defaults", action="store_true", help="print every default as a parameter file")
    g.add_argument("--check", type=Path, metavar="FILE", help="validate a parameter file")
    pa.set_defaults(func=cmd_params)

    e = sub.add_parser("export", help="write one step's footprints and traces as NumPy files")
    e.add_argument("session", type=Path, help="a session output folder")
    e.add_argument("--step", required=True, metavar="ID", help="the step to export, e.g. 4h")
    e.add_argument("--format", choices=["numpy"], default="numpy")
    e.add_argument("dest", type=Path, help="folder for A.npy, C.npy, S.npy, motion.npy, frames.npy")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="make a small synthetic recording and run every implemented step")
    d.add_argument("--output", type=Path, default=Path("mps-demo"),
                   help="folder for the demo recording and its session (default ./mps-demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
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
    return run_pipeline(params, args.start, args.stop, quiet=args.quiet)


def run_pipeline(params, start: str | None, stop: str | None, quiet: bool = False) -> int:
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
    try:
        results = runner.run(start, stop, cancel=cancel)
    except PlanError as e:
        print(f"mps: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StepFailed as e:
        bar.close()
        return _fail(str(e), store.log_path)
    except KeyboardInterrupt:
        cancel.set()
        raise
    bar.close()
    total = sum(r.duration_s for r in results)
    print(f"ran steps {results[0].step_id}..{results[-1].step_id} in {total:.1f} s; "
          f"results in {store.root}")
    return 0


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
        if pct == self.last_pct or (not self.tty and pct - self.last_pct < 10):
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


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.output, quiet=args.quiet)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
