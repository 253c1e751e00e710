"""timm's own model tests (``tests/test_models.py`` of the installed timm's source) on converted models.

The source distribution matching the installed timm is downloaded once (pip, into
``~/.cache/equivit``, or ``EQUIVIT_TIMM_TESTS`` if set to a folder holding ``test_models.py``).
Its tests run twice on the same models, stock and converted (one example model per registered
family; ``EQUIVIT_TIMM_MODELS`` picks others), through ``tests/timm_suite/equivit_timm_plugin.py``.
No test may fail on the converted models that passes on the stock ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import timm

from equivit.registry import registered_families

PLUGIN_DIR = Path(__file__).resolve().parent / "timm_suite"
MARKERS = "base or forward or backward or cfg or torchscript or features or fxforward or fxbackward"


def timm_tests() -> Path:
    """The folder holding timm's ``test_models.py`` for the installed version, downloaded if needed."""
    if os.environ.get("EQUIVIT_TIMM_TESTS"):
        return Path(os.environ["EQUIVIT_TIMM_TESTS"])
    folder = Path.home() / ".cache" / "equivit" / f"timm-{timm.__version__}-tests"
    if (folder / "test_models.py").is_file():
        return folder
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, f"timm=={timm.__version__}", "-d", download], check=True)
        (archive,) = Path(download).glob("timm-*.tar.gz")
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for name in ("test_models.py", "conftest.py"):
                member = tar.getmember(f"{archive.name[: -len('.tar.gz')]}/tests/{name}")
                (folder / name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    # An ini file of its own: timm's markers are not registered (warnings only), and this project's
    # pytest options (markers, xdist) do not apply there.
    (folder / "pytest.ini").write_text("[pytest]\n")
    return folder


def chosen_models() -> list[str]:
    """One model of every registered family: the timm name of its first example (timm's default configuration)."""
    if os.environ.get("EQUIVIT_TIMM_MODELS"):
        return os.environ["EQUIVIT_TIMM_MODELS"].split(",")
    names: list[str] = []
    for family in registered_families():
        for example in family.examples.values():
            if example.model_name in timm.list_models() and example.model_name not in names:
                names.append(example.model_name)
                break
    return names


# equivit refuses image sizes that its anchors cannot tile (padding would break equivariance), where
# timm pads (Swin's window padding), refuses to resize a converted Swin in place (timm's resize
# would bring back the border masks), and refuses configurations it cannot make exact with an
# UnsupportedModelError that names the module (dilated stages for output_stride < 32). A test that
# fails converted with one of these messages is refused by design; any other failure is a regression.
REFUSAL = re.compile(r"is not a (positive )?multiple of|keeps the windows it was converted with|UnsupportedModelError")

# timm tests of the machinery that conversion replaces, by name, and why they cannot pass converted.
BY_DESIGN = {
    "test_swin_family_window_padding": "asserts that the stock blocks hold border masks; converted blocks have none",
    "test_swin_family_dynamic_mask_trace": "traces at 224 x 224 and runs the trace at 224 x 320, which is not a "
    "multiple of the windows (a traced graph keeps no input check, so the anchors fail on the size)",
}


def run_suite(folder: Path, models: list[str], mode: str, report: Path) -> dict[str, str]:
    """Run timm's model tests on ``models``; the outcome of every test by its id.

    Outcomes: ``passed``, ``skipped``, ``failed``, or ``refused`` for a failure whose message is one
    of equivit's refusals (:data:`REFUSAL`) or a test of :data:`BY_DESIGN`.
    """
    env = {
        **os.environ,
        "EQUIVIT_TIMM_MODELS": ",".join(models),
        "EQUIVIT_TIMM_MODE": mode,
        "PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "equivit_timm_plugin", "-p", "no:cacheprovider"]
    # Only the tests that name a chosen model: timm's suite also holds tests of fixed other models.
    command += ["-m", MARKERS, "-k", " or ".join(models), f"--junitxml={report}", "test_models.py"]
    if os.environ.get("EQUIVIT_TIMM_WORKERS"):
        command += ["-n", os.environ["EQUIVIT_TIMM_WORKERS"]]
    subprocess.run(command, cwd=folder, env=env, check=False, stdout=subprocess.DEVNULL)
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        problems = [child for child in case if child.tag in ("failure", "error")]
        if problems:
            text = " ".join(f"{child.get('message', '')} {child.text or ''}" for child in problems)
            by_design = case.get("name", "").split("[")[0] in BY_DESIGN
            outcome = "refused" if by_design or REFUSAL.search(text) else "failed"
        else:
            outcome = "skipped" if any(child.tag == "skipped" for child in case) else "passed"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes


@pytest.mark.slow
def test_timm_model_tests_pass_on_converted_models_wherever_they_pass_on_stock(tmp_path: Path) -> None:
    folder, models = timm_tests(), chosen_models()
    stock = run_suite(folder, models, "stock", tmp_path / "stock.xml")
    converted = run_suite(folder, models, "converted", tmp_path / "converted.xml")
    assert stock, "timm's tests collected nothing for the chosen models"
    assert set(converted) == set(stock)
    regressions = sorted(test for test, outcome in converted.items() if outcome == "failed" and stock[test] == "passed")
    refused = sorted(test for test, outcome in converted.items() if outcome == "refused")
    passed = {name: sum(o == "passed" for o in run.values()) for name, run in [("stock", stock), ("ours", converted)]}
    print(f"timm {timm.__version__} test_models.py, {len(models)} models, {len(stock)} tests, passed: {passed}")
    print(f"refused by design (sizes, in-place resizes, border masks): {len(refused)}", *refused, sep="\n  ")
    listed = "\n".join(regressions)
    assert not regressions, f"{len(regressions)} of timm's tests fail converted but pass stock:\n{listed}"
