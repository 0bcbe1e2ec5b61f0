"""The study runner: its plan covers the notebooks, a packed job trains the model a sequential run trains, and the
scheduler keeps dependency order, skips what a failure blocks and lets the rest finish."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from varlib import plan as plan_mod
from varlib import runner
from varlib.artifacts import read_artifact
from varlib.runner import STAGES, Task, execute, find_notebook, is_cached, run_study
from varlib.study import Study
from varlib.transformer import build_model, training_flops

ROOT = Path(__file__).resolve().parents[1]
# Between them every kind of stage: the classifier, the tokenizers (VAR's, the raster AR's, and 01's without the
# perceptual term), plain and augmented token sets, VAR, the raster AR, the ablation variants and the learning-rate
# runs (12 transformers at smoke). 02, 05 and 06 would add minutes on 2 CPU cores and no new kind of stage.
COVERED = ["01_tokenizer", "03_ablation", "04_scaling"]


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_the_plan_knows_every_notebook_of_the_checkout():
    assert list(plan_mod.NOTEBOOKS) == sorted(p.stem for p in (ROOT / "notebooks").glob("0*.ipynb"))
    assert find_notebook("04") == "04_scaling"
    with pytest.raises(ValueError, match="matches none"):
        find_notebook("09")


def test_the_full_plan_is_computed_without_training_and_lists_each_stage_once_after_its_inputs(fresh_cache,
                                                                                                monkeypatch):
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "1")  # any attempt to build would raise
    study = Study.create("full", device="cpu")
    jobs = plan_mod.plan(study)
    keys = [j.key for j in jobs]
    assert len(set(keys)) == len(keys) and len({j.name for j in jobs}) == len(jobs)
    kind_of = {j.key: j.kind for j in jobs}
    for i, job in enumerate(jobs):
        assert set(job.deps) <= set(keys[:i]), f"{job.name} comes before a job it reads"
        assert all(STAGES.index(kind_of[d]) < STAGES.index(job.kind) for d in job.deps), job.name  # runner's order
    assert [j.kind for j in jobs].count("classifier") == 1
    tokenizers = {study.tokenizer_key(study.ar_configs()[0]),  # the raster AR's; VAR's with and without perceptual
                  *(s.tokenizer_key() for s in study.perceptual_variants().values())}
    assert {j.key for j in jobs if j.kind == "tokenizer"} == tokenizers
    runs = plan_mod.scaling_runs(study) + [plan_mod.main_run(study)]  # 02's model is 03's, 05's and 06's: one job
    assert {r.key() for r in runs} <= set(keys) and len({r.seed for r in runs}) == len(study.profile.claim_seeds)
    assert not any(fresh_cache.rglob("*.pt"))
    main_job = next(j for j in jobs if j.key == plan_mod.main_run(study).key())
    tc = study.train_config
    assert main_job.flops == training_flops(build_model(study.var_config()), tc.steps, tc.batch_size) > 0
    assert all((j.flops > 0) == (j.kind == "transformer") for j in jobs)


def test_the_dry_run_lists_the_plan_and_its_training_work(capsys):
    assert runner.main(["smoke", "--dry-run", "04"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.endswith(" FLOP") for line in lines[:-1]) == sum(line.startswith("transformer") for line in lines)
    assert "jobs:" in lines[-1] and lines[-1].endswith(" FLOP")


def test_the_scheduler_keeps_dependency_order_and_skips_what_a_failure_blocks(tmp_path):
    logs = tmp_path / "logs"
    tasks = [Task("a", "job", py("import time; time.sleep(1)"), logs / "a.log"),
             Task("fails", "job", py("import sys; print('boom'); sys.exit(3)"), logs / "fails.log"),
             Task("after_a", "job", py("pass"), logs / "after_a.log", deps=("a",)),
             Task("after_fails", "job", py("pass"), logs / "after_fails.log", deps=("fails",)),
             Task("after_skipped", "notebook", py("pass"), logs / "after_skipped.log", deps=("after_fails", "a")),
             Task("alone", "notebook", py("pass"), logs / "alone.log", exclusive=True)]
    timings = tmp_path / "timings.tsv"
    outcomes = {o.name: o for o in execute(tasks, jobs=2, timings=timings)}
    assert {n: o.status for n, o in outcomes.items()} == {
        "a": "done", "fails": "failed", "after_a": "done", "after_fails": "skipped", "after_skipped": "skipped",
        "alone": "done"}
    assert outcomes["fails"].exit_code == 3 and "boom" in Path(outcomes["fails"].note).read_text()
    assert outcomes["after_fails"].note == "fails" and outcomes["after_skipped"].note == "after_fails"
    assert not (logs / "after_fails.log").exists()  # never started
    assert outcomes["a"].start_s < outcomes["fails"].end_s  # two at once
    assert outcomes["after_a"].start_s >= outcomes["a"].end_s
    assert outcomes["alone"].start_s >= max(o.end_s for o in outcomes.values() if o.end_s and o.name != "alone")
    assert {o.slot for o in outcomes.values() if o.status != "skipped"} == {0, 1}
    assert [row.split("\t")[0] for row in timings.read_text().splitlines()] == list(outcomes)  # as they came


def test_the_metrics_check_runs_after_every_pending_job_with_its_tables_under_out(tmp_path):
    study = Study.create("quick", device="cpu")
    pending = {j.key: j for j in plan_mod.plan(study, ["06_fid_is"])}
    task = runner.metrics_check_task(study, pending, "quick", "cpu", tmp_path / "out", tmp_path / "logs")
    assert task.kind == "check" and set(task.deps) == {j.name for j in pending.values()} and not task.exclusive
    assert Path(task.command[1]).is_file() and task.command[-2:] == ("--out-dir", str(tmp_path / "out"))


def test_the_time_limit_stops_what_runs_and_starts_nothing_after_it(tmp_path):
    logs = tmp_path / "logs"
    cleaned = tmp_path / "cleaned"  # stopped with SIGTERM, a process that handles it runs its finally blocks
    long = f"import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\ntry:\n" \
           f"    time.sleep(60)\nfinally:\n    open({str(cleaned)!r}, 'w').write('snapshot kept')"
    tasks = [Task("long", "job", py(long), logs / "long.log"),
             Task("short", "job", py("pass"), logs / "short.log"),
             Task("after_long", "notebook", py("pass"), logs / "after_long.log", deps=("long",))]
    started = time.perf_counter()
    outcomes = {o.name: o for o in execute(tasks, jobs=2, time_limit_s=2.0)}
    assert time.perf_counter() - started < runner.STOP_GRACE_S  # it ended at SIGTERM, not at the kill
    assert {n: o.status for n, o in outcomes.items()} == {"short": "done", "long": "stopped", "after_long": "skipped"}
    assert outcomes["long"].end_s >= 2.0 and outcomes["long"].note == str(logs / "long.log")
    assert outcomes["after_long"].note == "time limit" and not (logs / "after_long.log").exists()
    assert cleaned.read_text() == "snapshot kept" and outcomes["long"].exit_code == 143


def test_a_job_process_exits_through_its_cleanup_on_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    try:
        runner.exit_on_sigterm()  # what `python -m varlib.runner --job` does first
        with pytest.raises(SystemExit) as stopped:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                cleaned = True
        assert cleaned and stopped.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, before)


def test_several_devices_are_taken_in_turn_by_the_slots_each_process_seeing_its_gpu_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runner.slot_devices("cpu", 3) == ("cpu", []) and runner.slot_devices("cuda:1", 2) == ("cuda:1", [])
    name, envs = runner.slot_devices("cuda:0, cuda:2", 3)
    assert name == "cuda" and [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "2", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # indices are this process's visible GPUs
    assert [e["CUDA_VISIBLE_DEVICES"] for e in runner.slot_devices("cuda:0,cuda:2", 2)[1]] == ["4", "6"]
    for bad, match in [("cuda:0,cpu", "cuda:N,cuda:M"), ("cuda:1,cuda:1", "twice"), ("cuda:0,cuda:3", "not visible")]:
        with pytest.raises(ValueError, match=match):
            runner.slot_devices(bad, 4)
    with pytest.raises(ValueError, match="idle"):
        runner.slot_devices("cuda:0,cuda:1,cuda:2", 2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="does not exist here"):
            runner.check_devices("cuda:0,cuda:1", 2)
    logs = tmp_path / "logs"
    show = py("import os, time; time.sleep(0.5); print(os.environ['VARLIB_TEST_SLOT'])")
    tasks = [Task(f"t{i}", "job", show, logs / f"t{i}.log") for i in range(4)]
    outcomes = execute(tasks, jobs=2, slot_env=[{"VARLIB_TEST_SLOT": "a"}, {"VARLIB_TEST_SLOT": "b"}])
    for o in outcomes:
        assert (logs / f"{o.name}.log").read_text().strip() == "ab"[o.slot]


def test_gpu_busy_is_averaged_over_the_samples_taken_while_each_kind_ran():
    outcomes = [runner.Outcome("tok", "tokenizer", "done", 0, 0.0, 10.0, 10.0, 0),
                runner.Outcome("a", "transformer", "done", 0, 5.0, 20.0, 15.0, 1),
                runner.Outcome("b", "transformer", "skipped", note="tok")]
    samples = [(t, "0", 10.0 if t < 5 else 90.0, 1000.0) for t in range(0, 30, 2)]  # 0..28 s
    assert runner.busy_by_kind(outcomes, samples) == {"all": round((3 * 10 + 12 * 90) / 15, 1), "tokenizer": round(
        (3 * 10 + 3 * 90) / 6, 1), "transformer": 90.0}
    assert runner.busy_by_kind(outcomes, []) == {}
    # two GPUs, one slot each: a sample counts for a task only on its own slot's GPU
    two = [(t, gpu, 20.0 if gpu == "0" else 80.0, 0.0) for t in range(0, 30, 2) for gpu in ("0", "1")]
    assert runner.busy_by_kind(outcomes, two, ["0", "1"]) == {"all": 50.0, "tokenizer": 20.0, "transformer": 80.0}


def test_the_gpu_monitor_reads_nvidia_smi_and_leaves_out_what_is_not_a_sample(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"  # prints two samples around a MIG-style "[N/A]" line, then ends
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'GPU-a, 0, 50, 1000\\n[N/A], 0, [N/A], 1000\\nGPU-a, 0, 70, 1100\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with runner.GpuMonitor(["0"], tmp_path / "gpu_util.tsv", time.perf_counter()) as gpu:
        gpu.thread.join(timeout=10)
    assert [(g, u, m) for _, g, u, m in gpu.samples] == [("0", 50.0, 1000.0), ("0", 70.0, 1100.0)]
    assert (tmp_path / "gpu_util.tsv").read_text().splitlines()[0] == "t_s\tgpu\tutilization_pct\tmemory_mib"
    with runner.GpuMonitor([], tmp_path / "none.tsv", time.perf_counter()) as gpu:  # no GPU: nothing to sample
        pass
    assert gpu.samples == [] and not (tmp_path / "none.tsv").exists()


def test_the_scheduler_refuses_unknown_dependencies_and_cycles(tmp_path):
    with pytest.raises(ValueError, match="not in the run"):
        execute([Task("x", "job", py("pass"), tmp_path / "x.log", deps=("y",))], jobs=1)
    with pytest.raises(RuntimeError, match="cycle"):
        execute([Task("x", "job", py("pass"), tmp_path / "x.log", deps=("y",)),
                 Task("y", "job", py("pass"), tmp_path / "y.log", deps=("x",))], jobs=2)


@pytest.fixture(scope="module")
def planned_cache(tmp_path_factory):
    """An empty cache filled by the runner with the jobs of COVERED, two at once on the CPU."""
    cache = tmp_path_factory.mktemp("planned") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VARLIB_CACHE", str(cache))
        mp.delenv("VARLIB_CACHE_READONLY", raising=False)
        outcomes = run_study("smoke", "cpu", cache.parent / "train", COVERED, jobs=2, train_only=True)
    failed = [o for o in outcomes if o.status != "done"]
    assert not failed, f"jobs not done: {[(o.name, o.status, o.note) for o in failed]}"
    return cache, outcomes


@pytest.mark.slow
def test_the_notebooks_find_every_model_of_the_plan_in_a_read_only_cache(planned_cache, tmp_path, monkeypatch):
    cache, trained = planned_cache
    assert any(a.start_s < b.end_s and b.start_s < a.end_s for a in trained for b in trained
               if a.name < b.name and a.kind == b.kind == "transformer"), "no two trainings ran at once"
    monkeypatch.setenv("VARLIB_CACHE", str(cache))
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "1")  # a model the plan missed stops its notebook, named
    outcomes = run_study("smoke", "cpu", tmp_path, COVERED, jobs=2)
    assert [o.kind for o in outcomes] == ["notebook"] * len(COVERED), "every job should be in the cache"
    for o in outcomes:
        assert o.status == "done", f"{o.name}: {Path(o.note).read_text()[-3000:] if o.note else o}"
        assert (tmp_path / "results" / o.name / "smoke" / "claims.csv").is_file()
    header, *rows = (tmp_path / "logs" / "timings.tsv").read_text().splitlines()
    assert header.split("\t")[:8] == ["name", "kind", "status", "exit_code", "start_s", "end_s", "wall_s", "slot"]
    assert sorted(r.split("\t")[0] for r in rows) == COVERED
    assert (tmp_path / "logs" / "timings.json").is_file()
    record = json.loads((tmp_path / "logs" / "provenance.json").read_text())
    assert record["notebook"] == "varlib.runner" and record["parameters"]["notebooks"] == COVERED


@pytest.mark.slow
def test_a_job_trained_beside_another_equals_the_model_trained_in_process(planned_cache, tmp_path, monkeypatch):
    cache, _ = planned_cache
    fresh = tmp_path / "cache"
    for kind in ("tokenizer", "tokens"):  # the same inputs; the transformer is trained anew, here
        shutil.copytree(cache / kind, fresh / kind)
    monkeypatch.setenv("VARLIB_CACHE", str(fresh))
    study = Study.create("smoke", device="cpu")
    run = plan_mod.main_run(study)
    assert not is_cached(run.key())
    model, _ = run.transformer()
    packed = read_artifact(cache / "var" / f"{run.key()}.pt")["model"]
    assert packed.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, packed[name]), name
