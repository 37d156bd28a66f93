"""The open session as the window sees it: parameters, session folder, what can run.

No widgets here: the main window and the tests both drive this object. The session folder
is step 1's ``output_dir``; it is opened (or created) when step 1 runs or when the user opens
an existing session, and every step's status is read from it.
"""

from __future__ import annotations

from pathlib import Path

from mps_core.params import ParamSet
from mps_core.registry import Step, StepError
from mps_core.runner import PlanError, Runner
from mps_core.steps import STEPS
from mps_core.store import SessionStore, StoreError


class Session:
    def __init__(self, params: ParamSet | None = None, store: SessionStore | None = None):
        self.steps: tuple[Step, ...] = STEPS
        self.by_id = {s.id: s for s in self.steps}
        self.params = params or ParamSet(self.steps)
        self.store = store

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open_folder(cls, folder: Path) -> tuple["Session", list[str]]:
        """An existing session folder with the parameters of its last run.

        Returns the session and the problems found in its parameter file (one line each).
        """
        store = SessionStore(Path(folder), create=False)
        params, problems = ParamSet(STEPS), []
        if store.params_path.exists():
            params, problems = ParamSet.load_lenient(store.params_path, STEPS)
        # the folder was opened from here: keep output_dir pointing at it even if it moved
        params = params.with_values("1", {"output_dir": str(store.root)})
        return cls(params, store), problems

    def ensure_store(self) -> SessionStore:
        """The session folder named by step 1, created if needed (raises StepError/StoreError)."""
        from mps_core.steps.config import check_config

        p = self.params["1"]
        check_config(p)
        root = Path(p.output_dir).expanduser().absolute()
        if self.store is None or self.store.root != root:
            self.store = SessionStore(root)
        return self.store

    # -- state ----------------------------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        ids = [s.id for s in self.steps]
        if self.store is None:
            return {sid: "not run" for sid in ids}
        return self.store.statuses(ids)

    def runner(self, **callbacks) -> Runner:
        if self.store is None:
            raise StoreError("no session folder yet: fill in step 1 and run it")
        return Runner(self.steps, self.params, self.store, **callbacks)

    def why_not_runnable(self, start: str, stop: str | None = None) -> str | None:
        """None when steps start..stop can run now, else the one-line reason."""
        step = self.by_id[start]
        if not step.implemented:
            return f"step {step.id} is not available yet in this version of MPS"
        if start == self.steps[0].id:
            try:
                from mps_core.steps.config import check_config
                check_config(self.params["1"])
            except StepError as e:
                return str(e)
        if self.store is None:
            if start != self.steps[0].id:
                return "no session yet: fill in step 1 (or File > New session) and run it first"
            return None
        try:
            Runner(self.steps, self.params, self.store).plan(start, stop or start)
        except PlanError as e:
            return str(e)
        return None

    def set_step_params(self, step_id: str, model) -> None:
        self.params.values[step_id] = model
