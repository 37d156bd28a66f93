"""The right-hand viewers: a step's preview plots and, for movie steps, the movie itself.

Plots are rebuilt from the store in a worker thread (they may read frames) and drawn with
pyqtgraph; movies are browsed frame by frame straight from the store, never loaded whole.
"""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QLabel, QTabWidget, QVBoxLayout, QWidget

from .viewers import FigureView, MovieView
from .worker import PreviewThread

# which stored movies a step's page shows: one movie, or a before / after pair
STEP_MOVIES: dict[str, tuple[str, ...]] = {
    "2a": ("movie_raw",),
    "2b": ("movie_raw", "movie_filtered"),
    "2e": ("movie_filtered", "movie"),
    "2f": ("movie",),
    "3a": ("movie_cropped",),
}
MOVIE_LABELS = {"movie_raw": "loaded (2a)", "movie_filtered": "denoised (2b)",
                "movie": "motion corrected (2e)", "movie_cropped": "cropped (3a)"}


class PreviewPanel(QWidget):
    def __init__(self, steps, parent=None):
        super().__init__(parent)
        self.steps = steps
        self.producer = {n: s.id for s in steps for n in s.outputs}
        self.choice = QComboBox()
        self.figure = FigureView()
        self.movie = MovieView()
        self.movie_note = QLabel()
        self.movie_note.setWordWrap(True)
        plots = QWidget()
        pl = QVBoxLayout(plots)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.choice)
        pl.addWidget(self.figure, 1)
        movies = QWidget()
        ml = QVBoxLayout(movies)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addWidget(self.movie_note)
        ml.addWidget(self.movie, 1)
        self.tabs = QTabWidget()
        self.tabs.addTab(plots, "Plots")
        self.tabs.addTab(movies, "Movie")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        self.choice.currentIndexChanged.connect(self._show_choice)
        self._previews: list = []
        self._thread: PreviewThread | None = None
        self._step_id: str | None = None
        self._stale_threads: list[PreviewThread] = []

    def show_step(self, step, store) -> None:
        """Show what is stored for `step` (plots rebuilt in the background)."""
        self._step_id = step.id
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.blockSignals(False)
        self._previews = []
        self._show_movies(step, store)
        if store is None or store.manifest(step.id) is None:
            self.figure.show_message(f"Run step {step.id} to see its plots here."
                                     if step.previews else f"Step {step.id} has no plots.")
            return
        if not step.previews:
            self.figure.show_message(f"Step {step.id} has no plots.")
            return
        self.figure.show_message(f"Drawing the plots of step {step.id}...")
        if self._thread is not None and self._thread.isRunning():
            self._stale_threads.append(self._thread)  # its result is ignored when it arrives
        self._thread = PreviewThread(step, store, self.steps, self)
        self._thread.ready.connect(self._ready)
        self._thread.start()

    def busy(self) -> bool:
        return any(t.isRunning() for t in [self._thread, *self._stale_threads] if t is not None)

    def wait(self, ms: int = 30000) -> None:
        for t in [self._thread, *self._stale_threads]:
            if t is not None:
                t.wait(ms)
        self._stale_threads = [t for t in self._stale_threads if t.isRunning()]

    def _ready(self, step_id: str, previews: list) -> None:
        if step_id != self._step_id:
            return
        self._previews = previews
        self.choice.blockSignals(True)
        self.choice.clear()
        for p in previews:
            self.choice.addItem(p.title)
        self.choice.blockSignals(False)
        self.choice.setVisible(len(previews) > 1)
        self._show_choice(0)

    def _show_choice(self, i: int) -> None:
        if not (0 <= i < len(self._previews)):
            return
        p = self._previews[i]
        if p.figure is None:
            self.figure.show_message(f"The plot '{p.title}' could not be drawn: {p.error}")
        else:
            self.figure.show_figure(p.figure)

    def _show_movies(self, step, store) -> None:
        names = STEP_MOVIES.get(step.id, ())
        if store is None or not names:
            self.movie.clear()
            self.movie_note.setText("This step has no movie to show." if not names else
                                    "Run this step to browse its movie here.")
            return
        movies = {}
        for n in names:
            src = self.producer[n]
            if store.has(src, n):
                movies[MOVIE_LABELS.get(n, n)] = store.load(src, n)
        if not movies:
            self.movie.clear()
            self.movie_note.setText("Run this step to browse its movie here.")
            return
        try:
            self.movie.set_movies(movies)
            self.movie_note.setText(" | ".join(movies))
        except ValueError as e:  # a before/after pair of different lengths: show the last
            last = list(movies)[-1]
            self.movie.set_movies({last: movies[last]})
            self.movie_note.setText(f"{last} ({e})")
