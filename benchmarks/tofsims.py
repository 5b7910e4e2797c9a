"""Pixel accuracy of the ToF-SIMS fusion (argmax vs NMF) on simulated ion maps at several doses.

    .venv/bin/python benchmarks/tofsims.py [--doses 0.1 0.3 1 3 10] [--out docs/bench_tofsims.json]

Phase maps: the real segmented cathode SEM image ``../shared/data/real/cathode_sem_3phase_2d.tif``
(427 x 427; values 1 -> active material, 2 -> carbon-binder, 0 -> pore) and one slice of the
synthetic phantom (``seglearn.synth``, 256 x 256). Ions: ``seglearn.tofsims.simulate.default_ions``
(Ni+ / C2H- / C7H7+ and an LiF2- interphase ion at the active material / carbon-binder boundary,
which is not a main phase). Accuracy = share of pixels whose main phase (``Result.phases``)
equals the phase map; "AM frac err" = fused minus true active-material fraction.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from seglearn.tofsims import IonModel, IonStack, SimConfig, default_ions, process, simulate_counts
from seglearn.tofsims.simulate import phase_map_from_real

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "cathode_sem_3phase_2d.tif"


def phase_maps() -> dict[str, np.ndarray]:
    from seglearn.io import read_stack
    from seglearn.synth import make_phantom

    maps = {}
    if REAL.exists():
        raw, _ = read_stack(REAL)
        maps["cathode_sem_427"] = phase_map_from_real(raw[0], [1, 2, 0])
    ph = make_phantom({"shape": [8, 256, 256], "seed": 1})
    maps["phantom_256"] = phase_map_from_real(ph.truth[4], [3, 2, 1])  # AM, CBD, pore
    return maps


METHODS = {
    "argmax": {"method": "argmax"},
    "argmax+smooth1": {"method": "argmax", "smooth_sigma": 1.0},
    "nmf": {"method": "nmf"},
    "nmf+smooth1": {"method": "nmf", "smooth_sigma": 1.0},
}
IONS = ["Ni+", "C2H-", "C7H7+", "LiF2-"]
MAINS = IONS[:3]


def scenario_ions(name: str) -> list[IonModel]:
    """``clean``: one fingerprint ion per phase (small cross-talk); ``shared``: the epoxy ion C7H7+
    also comes from the carbon-binder (its yield there is 80 % of that in the pores), as when a
    fragment is common to two organic phases."""
    ions = default_ions(interphase=True)
    if name == "shared":
        ions[2] = IonModel("C7H7+", [0.2, 2.0, 2.5])
    return ions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--scenarios", nargs="+", default=["clean", "shared"])
    ap.add_argument("--maps", nargs="+", default=None, help="subset of: cathode_sem_427 phantom_256")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = []
    for (map_name, truth), scen in ((m, s) for m in phase_maps().items() for s in args.scenarios):
        if args.maps and map_name not in args.maps:
            continue
        true_am = float((truth == 1).mean())
        for dose in args.doses:
            for name, params in METHODS.items():
                accs, errs, secs = [], [], []
                for seed in range(args.seeds):
                    counts = simulate_counts(truth, SimConfig(ions=scenario_ions(scen), dose=dose, seed=seed))
                    stack = IonStack(counts=counts.astype(np.float64), names=IONS, files=[], fov_um=(40.0, 40.0))
                    res = process(stack, dict(params, mains=MAINS, crop="none", particles={"enabled": False}))
                    secs.append(res.stats["seconds"]["fusion"])
                    accs.append(float((res.phases[0] == truth).mean()))
                    errs.append(float((res.phases[0] == 1).mean()) - true_am)
                row = {"map": map_name, "scenario": scen, "dose": dose, "method": name,
                       "accuracy": float(np.mean(accs)),
                       "accuracy_std": float(np.std(accs)), "am_fraction_error": float(np.mean(errs)),
                       "seconds": float(np.mean(secs)),
                       "ni_counts_in_am": float(default_ions()[0].yields[0] * dose)}
                rows.append(row)
                print(f"{map_name:16s} {scen:6s} dose {dose:5.2f} {name:15s} acc {row['accuracy']:.4f} "
                      f"(+-{row['accuracy_std']:.4f})  AM frac err {row['am_fraction_error']:+.4f}  "
                      f"fusion {row['seconds']:.2f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
