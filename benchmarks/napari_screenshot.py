"""Screenshot of the real napari viewer with seglearn's widget after a short training (``docs/napari.png``).

Opens the demo dataset with the plugin's reader, fine-tunes ``checkpoints/fibsem_base.ckpt`` on
its scribbles for a few steps in the widget (the same code path as the Train button), predicts
the shown slice, asks for a suggestion (the viewer jumps there), and saves the whole window.
Runs headless under Xvfb (``xvfb-run`` when no DISPLAY is set).

    .venv/bin/python benchmarks/napari_screenshot.py [--data data/demo] [--steps 40] [--out docs/napari.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait(widget, app, timeout: float = 900.0) -> None:
    """Process Qt events until the widget's worker (and any worker it started) is done."""
    t0 = time.perf_counter()
    app.processEvents()
    while widget.worker is not None:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget's worker did not finish")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--slice", type=int, default=None, help="slice shown while training (default: a test slice)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "napari.png"))
    args = ap.parse_args()
    if not os.environ.get("DISPLAY"):  # headless: run again under a virtual X server (Debian's xvfb)
        os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])
    shoot(args)


def shoot(args) -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from seglearn.napari.widget import SeglearnWidget

    viewer = napari.Viewer(show=True, title="seglearn in napari")
    viewer.window.resize(1500, 900)
    viewer.open(args.data, plugin="seglearn")
    w = SeglearnWidget(viewer)
    viewer.window.add_dock_widget(w, name="seglearn", area="right")
    app = QApplication.instance()
    test = viewer.layers["test labels"].data if "test labels" in viewer.layers else None
    z = args.slice if args.slice is not None else (int(np.nonzero(test.reshape(len(test), -1).max(1))[0][0])
                                                   if test is not None and test.any() else 0)
    viewer.dims.set_current_step(0, z)
    w.base_box.setCurrentText(str(ROOT / "checkpoints" / "fibsem_base.ckpt"))
    w.steps.setValue(args.steps)
    t0 = time.perf_counter()
    w._train(settings={"runs": 1, "val_every": 10})
    wait(w, app)
    print(f"trained and predicted slice {z} in {time.perf_counter() - t0:.0f} s: {w.status.text()}", flush=True)
    w._on_score()
    wait(w, app)
    score = w.status.text().replace("\n", "; ")
    print(f"score: {score}", flush=True)
    w._on_suggest()
    wait(w, app)
    print(f"suggest: {w.status.text()}", flush=True)
    w.status.setText(f"{w.status.text()}\n\n{score}")
    viewer.layers["prediction"].visible = False  # the uncertainty over SE2, the scribbles, the suggestion
    viewer.layers.selection.active = viewer.layers["train labels"]
    viewer.reset_view()
    try:  # close notification toasts (e.g. napari's PyQt5 deprecation notice) so they do not cover the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
    except (ImportError, AttributeError):
        pass
    wait(w, app)
    img = viewer.screenshot(canvas_only=False, flash=False)
    from skimage.io import imsave

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    imsave(args.out, img, check_contrast=False)
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
    viewer.close()


if __name__ == "__main__":
    main()
