"""``convkit doctor``: each front end's state, probed in its own interpreter."""

import importlib.util
import json

from conftest import run_convkit


def test_doctor_lists_every_front_end_with_versions():
    done = run_convkit("doctor", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["onnxruntime"] and "CPUExecutionProvider" in found["providers"]
    states = {f["framework"]: f for f in found["frameworks"]}
    assert {"torch", "tensorflow"} <= set(states)
    for name, module in (("torch", "torch"), ("tensorflow", "tensorflow")):
        if importlib.util.find_spec(module) is not None:
            assert states[name]["status"] == "ready"
            assert states[name]["versions"][module]


def test_a_broken_install_is_blocked_and_a_missing_one_says_what_installs_it(tmp_path, monkeypatch):
    # a framework that fails at import with an error of its own, and one that is simply absent
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise RuntimeError('simulated broken install')\n")
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\")\n"
    )
    # doctor probes each framework in an interpreter of its own, which reads PYTHONPATH when it starts
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    done = run_convkit("doctor", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()}
    assert "blocked" in rows["tensorflow"] and "simulated broken install" in rows["tensorflow"]
    assert "not installed" in rows["torch"] and "pip install 'convkit[torch]'" in rows["torch"]


def test_a_framework_environment_not_created_says_how_to_create_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVKIT_ENVS", str(tmp_path / "no-envs"))  # read when doctor runs, not at import
    done = run_convkit("doctor", "--json")
    assert done.returncode == 0, done.stderr
    paddle = next(f for f in json.loads(done.stdout)["frameworks"] if f["framework"] == "paddle")
    assert paddle["status"] == "not installed" and paddle["install"] == "convkit env create paddle"


def test_deeplearning4j_is_listed_as_planned_with_what_blocks_it_and_does_not_fail_doctor():
    done = run_convkit("doctor", "--json")
    assert done.returncode == 0, done.stderr
    dl4j = next(f for f in json.loads(done.stdout)["frameworks"] if f["framework"] == "dl4j")
    assert dl4j["status"] == "planned" and dl4j["reason"].startswith("blocked: needs Maven Central")
    # asking for it by name says the same in one line, exit 2
    export = run_convkit("export", "model.zip", "--framework", "deeplearning4j", "-o", "out.onnx")
    assert export.returncode == 2 and "Traceback" not in export.stderr
    assert "no dl4j front end yet: blocked: needs Maven Central" in export.stderr
