"""Organ dosimetry on the synthetic 177Lu course, beside its analytic truth.

The course of phantom/spect_course.py (0.5, 6, 24 and 72 h, a fifth point at
168 h; 11 mm PSF, Poisson noise; the physician's SEG of kidneys, spleen and
liver) is read and evaluated as a node does: each time point through
node/work/dosimetry.py's reading (the SPECT in Bq/ml, the SEG's organs
extended by 3 mm, the recovery correction with spleen and liver modelled,
the alignment check), then the course from the readings alone. Printed: the
seconds each point takes to read, and each kidney's absorbed dose after four
and five points beside the truth (the kinetics integrated analytically,
local deposition of 177Lu's electron energy, CT volume x 1.06 g/ml). The
issue's goal: within 2 %.

    .venv/bin/python bench/dosimetry.py [--seed N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.schema import Pipeline, PipelineDosimetry  # noqa: E402
from inference.dosimetry.course import evaluate_readings  # noqa: E402
from node.work.dosimetry import TimePointSources, dosimetry_settings, load_spect, read_time_point  # noqa: E402
from phantom.spect_course import write_course  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the course's noise and UIDs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        course = write_course(Path(folder) / "course", extra_points=(168.0,), seed=args.seed)
        pipeline = Pipeline(dosimetry=PipelineDosimetry(neighbours=["spleen", "liver"],
                                                        spect_fwhm_mm=course.psf_fwhm_mm))
        settings = dosimetry_settings("lu177", pipeline)
        readings = []
        print("time point   read (s)   not assessable / misaligned")
        for index, point in enumerate(course.time_points):
            start = time.perf_counter()
            sources = TimePointSources(load_spect(point.spect.files), point.spect.files, point.ct.files,
                                       point.seg)
            reading = read_time_point(sources, settings, lambda: None, Path(folder) / f"headers-{index}")
            seconds = time.perf_counter() - start
            readings.append(reading)
            flags = [f"{o.structure.name}: {o.alignment_not_assessable or o.misalignment}"
                     for o in reading.organs if o.alignment_not_assessable or o.misalignment]
            print(f"{point.hours:8.1f} h   {seconds:8.2f}   {'; '.join(flags) or '-'}")
        print("\npoints  organ          dose (Gy)  truth (Gy)  difference  fit")
        worst = 0.0
        for count in (4, 5):
            for organ in evaluate_readings(readings[:count], settings).organs:
                truth = course.organ(organ.structure.name).absorbed_dose_gy
                difference = organ.absorbed_dose_gy / truth - 1
                worst = max(worst, abs(difference))
                print(f"{count:6d}  {organ.structure.name:13s} {organ.absorbed_dose_gy:9.4f}  {truth:10.4f}"
                      f"  {difference:+9.2%}  {organ.fit_model}")
        print(f"\nlargest difference {worst:.2%} (goal: within 2 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
