"""The dock widget: Train (fine-tune a base model or from scratch), Predict, Suggest, Score, Export.

The work runs in napari worker threads (:func:`napari.qt.threading.create_worker`), so the viewer
stays responsive; training reports every step to the progress bar and stops at the next step
after Cancel (the best weights so far are kept). The logic is in :mod:`seglearn.napari.session`
and :mod:`seglearn.suggest`.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from seglearn.data import load_dataset
from seglearn.data.layout import labels_from_probabilities
from seglearn.napari.layers import class_colours, save_labels, uncertainty_kwargs
from seglearn.napari.session import (
    export_checkpoint,
    finetune_settings,
    format_scores,
    predict_slices,
    progress_fraction,
    score_test,
    train_model,
)
from seglearn.suggest import forest_labels, load_config, normalised_entropy, suggest

SCRATCH = "(train from scratch)"
CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(float, str)


class SeglearnWidget(QWidget):
    """seglearn's interactive loop: scribble, train, see, correct, and where to label next."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.ckpt: Path | None = None          # the last trained model
        self.probs: np.ndarray | None = None   # (K, Z, Y, X) of the whole volume, for Suggest
        self.suggestions: list[dict] = []
        self.scores: dict | None = None
        self.train_result: dict | None = None  # what the training function returned
        self.worker = None
        self._stop = threading.Event()
        self._workdir = Path(tempfile.mkdtemp(prefix="seglearn_napari_"))
        self._runs = 0
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.labels_box = QComboBox()
        self.base_box = QComboBox()
        self.base_box.setEditable(True)
        for p in sorted(CHECKPOINTS.glob("fibsem_base*.ckpt")):
            self.base_box.addItem(str(p))
        self.base_box.addItem(SCRATCH)
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_base)
        base_row = QHBoxLayout()
        base_row.addWidget(self.base_box, 1)
        base_row.addWidget(browse)
        self.steps = QSpinBox()
        self.steps.setRange(1, 100000)
        self.steps.setValue(int(finetune_settings().get("max_steps", 300)))
        self.where_box = QComboBox()
        self.where_box.addItems(["current slice", "whole volume"])
        self.forest_box = QCheckBox("compare with the random forest")
        self.forest_box.setChecked(True)
        form = QFormLayout()
        form.addRow("labels", self.labels_box)
        form.addRow("base model", base_row)
        form.addRow("steps", self.steps)
        form.addRow("predict", self.where_box)
        form.addRow("", self.forest_box)
        self.buttons = {}
        grid = QVBoxLayout()
        for row in (("Train", "Cancel"), ("Predict", "Suggest"), ("Score", "Export", "Save labels")):
            h = QHBoxLayout()
            for name in row:
                b = QPushButton(name)
                b.clicked.connect(getattr(self, "_on_" + name.lower().replace(" ", "_")))
                self.buttons[name] = b
                h.addWidget(b)
            grid.addLayout(h)
        self.buttons["Cancel"].setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.status = QLabel("paint labels, then Train")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(grid)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _browse_base(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "base checkpoint", str(CHECKPOINTS), "checkpoints (*.ckpt)")
        if path:
            self.base_box.setCurrentText(path)

    def _refresh_layers(self, event=None) -> None:
        current = self.labels_box.currentText()
        self.labels_box.clear()
        names = [ly.name for ly in self.viewer.layers if ly.metadata.get("seglearn", {}).get("role") == "train"]
        self.labels_box.addItems(names)
        if current in names:
            self.labels_box.setCurrentText(current)

    # ------------------------------------------------------------------ helpers
    def labels_layer(self):
        name = self.labels_box.currentText()
        if not name or name not in self.viewer.layers:
            raise RuntimeError("open a seglearn dataset first (napari DATASET/dataset.yaml, or File > Open)")
        return self.viewer.layers[name]

    def dataset_root(self) -> Path:
        return Path(self.labels_layer().metadata["seglearn"]["root"])

    def _tag(self) -> dict:
        return self.labels_layer().metadata["seglearn"]

    def _run(self, func, done, *args, _cancellable: bool = False, **kwargs):
        """Run ``func`` in a worker thread; ``done(result)`` in the GUI thread; errors go to the status line."""
        from napari.qt.threading import create_worker

        worker = create_worker(func, *args, _start_thread=False, **kwargs)
        worker.returned.connect(done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._on_finished(worker))
        self.worker = worker
        for b in self.buttons.values():
            b.setEnabled(False)
        self.buttons["Cancel"].setEnabled(_cancellable)
        worker.start()
        return worker

    def _on_error(self, exc) -> None:
        self.status.setText(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")

    def _on_finished(self, worker) -> None:
        if worker is not self.worker:  # a worker started from this one's result is running
            return
        self.worker = None
        for name, b in self.buttons.items():
            b.setEnabled(name != "Cancel")

    def _on_progress(self, frac: float, text: str) -> None:
        self.bar.setValue(int(round(frac * 1000)))
        self.status.setText(text)

    def _try(self, func) -> None:
        try:
            func()
        except Exception as exc:  # shown in the widget, not a crash of the viewer
            self._on_error(exc)

    # ------------------------------------------------------------------ Train / Cancel
    def _on_train(self) -> None:
        self._try(self._train)

    def _train(self, settings: dict | None = None) -> None:
        layer, root = self.labels_layer(), self.dataset_root()
        base = self.base_box.currentText().strip()
        base = None if base in ("", SCRATCH) else base
        overrides = {"max_steps": self.steps.value()} if base else {"trainer.max_steps": self.steps.value()}
        overrides.update(settings or {})
        self._stop.clear()
        self._runs += 1
        out = self._workdir / f"run{self._runs}"
        labels = np.array(layer.data, copy=True)  # the painting may go on while training

        def hook(info: dict) -> bool:
            self._bridge.progress.emit(progress_fraction(info), f"training: step {info['step']} of "
                                       f"{info['max_steps']}" + (f" (run {info['run'] + 1} of {info['runs']})"
                                                                 if "runs" in info else ""))
            return self._stop.is_set()

        self.bar.setValue(0)
        self.status.setText("training …")
        self._run(train_model, self._trained, root, labels, out, base=base, settings=overrides, on_step=hook,
                  _cancellable=True)

    def _trained(self, result: dict) -> None:
        self.train_result = result
        self.ckpt = Path(result["best_ckpt"])
        self.probs = None
        self.bar.setValue(1000)
        awe = result.get("best_val_awe", result.get("best_awe"))
        self.status.setText(f"trained{' (stopped)' if result.get('stopped') else ''}: validation awe "
                            f"{awe if awe is None else round(float(awe), 2)} %; predicting …")
        self._try(self._predict)

    def _on_cancel(self) -> None:
        self._stop.set()
        if self.worker is not None:
            self.status.setText("stopping at the next step …")

    # ------------------------------------------------------------------ Predict
    def _on_predict(self) -> None:
        self._try(self._predict)

    def _predict(self) -> None:
        if self.ckpt is None:
            raise RuntimeError("train a model first (or Train from a base model)")
        root = self.dataset_root()
        whole = self.where_box.currentText() == "whole volume"
        z = None if whole else [int(self.viewer.dims.current_step[0])]

        def work():
            ds = load_dataset(root, labels=())
            probs, zs = predict_slices(self.ckpt, ds.images, ds.detectors, z)
            return probs, zs, ds.shape

        self._run(work, self._predicted)

    def _predicted(self, res) -> None:
        probs, zs, shape = res
        tag = self._tag()
        scale = self.labels_layer().scale
        if len(zs) == shape[0]:
            self.probs = probs
        pred = np.zeros(shape, np.uint8)
        unc = np.zeros(shape, np.float32)
        pred[zs] = labels_from_probabilities(probs)
        unc[zs] = normalised_entropy(probs)
        meta = {"seglearn": {**tag, "role": "prediction"}}
        if "prediction" in self.viewer.layers:
            self.viewer.layers["prediction"].data = pred
        else:
            self.viewer.add_labels(pred, name="prediction", scale=scale, colormap=class_colours(tag["classes"]),
                                   opacity=0.5, metadata=meta)
        if "uncertainty" in self.viewer.layers:
            self.viewer.layers["uncertainty"].data = unc
        else:
            self.viewer.add_image(unc, **{**uncertainty_kwargs(scale, meta), "scale": scale})
        self.viewer.layers.selection.active = self.labels_layer()  # keep painting on the labels
        self.status.setText(f"predicted {'the whole volume' if len(zs) == shape[0] else f'slice {zs[0]}'}; "
                            f"mean uncertainty {float(unc[zs].mean()):.3f}")

    # ------------------------------------------------------------------ Suggest
    def _on_suggest(self) -> None:
        self._try(self._suggest)

    def _suggest(self) -> None:
        if self.ckpt is None:
            raise RuntimeError("train a model first: Suggest ranks where the model is unsure")
        root, labels, ckpt, probs = self.dataset_root(), np.array(self.labels_layer().data), self.ckpt, self.probs
        cfg = load_config()
        use_forest = self.forest_box.isChecked() and float(cfg["weights"]["disagreement"]) > 0

        def work():
            ds = load_dataset(root, labels=())
            p = probs if probs is not None else predict_slices(ckpt, ds.images, ds.detectors)[0]
            forest = forest_labels(cfg["forest"], ds, labels) if use_forest and np.any(labels) else None
            ranked, _ = suggest(p, labels, voxel_size_nm=ds.voxel_size_nm, forest_labels=forest, settings=cfg)
            return ranked, p

        self.status.setText("ranking slices …")
        self._run(work, self._suggested)

    def _suggested(self, res) -> None:
        ranked, probs = res
        self._predicted((probs, list(range(probs.shape[1])), probs.shape[1:]))  # the whole volume was predicted
        self.suggestions = ranked
        if not ranked:
            self.status.setText("no suggestion")
            return
        self.go_to(ranked[0])
        scale = np.asarray(self.labels_layer().scale)
        rects = [np.array([[r["z"], r["y0"], r["x0"]], [r["z"], r["y0"], r["x1"]], [r["z"], r["y1"], r["x1"]],
                           [r["z"], r["y1"], r["x0"]]], float) for r in ranked]
        if "suggestions" in self.viewer.layers:
            self.viewer.layers.remove("suggestions")
        self.viewer.add_shapes(rects, shape_type="rectangle", name="suggestions", scale=scale, edge_color="yellow",
                               face_color="transparent", edge_width=2, text={"string": [str(r["rank"]) for r in ranked],
                                                                            "color": "yellow"})
        self.viewer.layers.selection.active = self.labels_layer()
        top = ", ".join(f"z={r['z']}" for r in ranked[1:6]) or "-"
        self.status.setText(f"label next: slice {ranked[0]['z']}, y {ranked[0]['y0']}:{ranked[0]['y1']}, "
                            f"x {ranked[0]['x0']}:{ranked[0]['x1']} (then {top})")

    def go_to(self, rec: dict) -> None:
        """Show the slice of a suggestion with its region centred."""
        sz, sy, sx = self.labels_layer().scale[-3:]
        self.viewer.dims.set_current_step(0, int(rec["z"]))
        cy, cx = 0.5 * (rec["y0"] + rec["y1"]) * sy, 0.5 * (rec["x0"] + rec["x1"]) * sx
        self.viewer.camera.center = (rec["z"] * sz, cy, cx)

    # ------------------------------------------------------------------ Score / Export / Save
    def _on_score(self) -> None:
        self._try(self._score)

    def _score(self) -> None:
        if self.ckpt is None:
            raise RuntimeError("train a model first")
        self.status.setText("scoring on the test labels …")
        self._run(score_test, self._scored, self.ckpt, self.dataset_root())

    def _scored(self, s: dict) -> None:
        self.scores = s
        self.status.setText(format_scores(s))

    def _on_export(self) -> None:
        self._try(self._export_dialog)

    def _export_dialog(self) -> None:
        if self.ckpt is None:
            raise RuntimeError("train a model first")
        path, _ = QFileDialog.getSaveFileName(self, "export checkpoint", str(Path.cwd() / "model.ckpt"),
                                              "checkpoints (*.ckpt)")
        if path:  # the dialog has asked before replacing a file
            self.export(path, overwrite=True)

    def export(self, path, *, overwrite: bool = False) -> Path:
        """Write the trained model to ``path`` (usable with ``predict.py ckpt=PATH``)."""
        out = export_checkpoint(self.ckpt, path, overwrite=overwrite)
        self.status.setText(f"exported {out}; python predict.py ckpt={out} input=DATASET")
        return out

    def _on_save_labels(self) -> None:
        self._try(self.save_labels)

    def save_labels(self) -> Path:
        """Write the labels layer back to ``DATASET/labels/train.tif``."""
        out = save_labels(self.dataset_root(), self.labels_layer().data)
        self.status.setText(f"saved {out}")
        return out

