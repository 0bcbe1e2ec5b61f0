"""The whole study in one command: the plan's trainings, several at once in dependency order, then the notebooks.

    python -m varlib.runner full --device cuda --out /tmp/study --jobs 4            # all seven notebooks
    python -m varlib.runner smoke --device cpu --out /tmp/s --jobs 2 03 04          # two of them
    python -m varlib.runner full --dry-run                                          # the plan, nothing trained
    python -m varlib.runner full --device cuda:0,cuda:1,cuda:2,cuda:3 --jobs 8 --out /tmp/study   # four GPUs

It builds `plan.plan(study, notebooks)`, leaves out the jobs whose artifact is already in the cache ($VARLIB_CACHE),
and runs the rest, each in its own process (`python -m varlib.runner PROFILE --job KEY`: a crash stays in its
process), at most `--jobs` at once, each when the jobs it reads are done: classifier, tokenizers, token sets, then
the transformers. At the quick profile the small models leave a GPU idle while the host launches kernels, so several
trainings at once fill it; at full every stage keeps an H200 80-96% busy (results/study_logs/full_h200/), and several
at once hide the processes' start-up and compilation. A job that fails is logged and every task that needs it is
skipped, by name; the others go on. Each notebook then runs under papermill (`-p profile -p device -p out_dir`) once
the jobs it reads are done, also up to `--jobs` at once, and finds every model in the cache; beside the notebooks
that read the classifier, scripts/validate_metrics.py tabulates whether the metrics on its features respond as they
should (at quick and full).
`03_ablation`, `06_fid_is` and `07_speed` time samplers, so they run last, each alone.

No two processes build one artifact at once: the plan holds each cache key once, and a notebook starts only after
every job it reads, so it finds them all in the cache. A model the plan lacked would still be trained by the notebook
that asks for it, as without the runner (tests/test_runner.py runs 03 and 04 at smoke on a read-only cache that
only the plan's jobs filled).

With several devices (`--device cuda:0,cuda:1`) the slots take them in turn, each process seeing its GPU alone
(CUDA_VISIBLE_DEVICES) as "cuda": independent jobs spread over the GPUs of one host.

With `--time-limit S` no task starts after S seconds and those still running are stopped then (status "stopped"):
a transformer or tokenizer resumes from its last snapshot on the next run, which finds the finished jobs in the cache
(a time-limited allocation runs the study in several calls on one cache).

Written to OUT: results/ and figures/ (the notebooks'). To OUT/logs (or --logs): jobs/<job>.log, <notebook>.log and
.ipynb, timings.tsv (one row per task: name, kind, status, exit code, start and end in seconds from the run's start,
wall seconds, worker slot, note), provenance.json (the run's record: commit, parameters, device, wall time) and
timings.json (the record with the same rows, the jobs found in the cache and the plan with each transformer's
training FLOPs). On a CUDA device with nvidia-smi also gpu_util.tsv (the GPU's utilisation sampled twice a second:
the share of time a kernel ran) and, in timings.json, its mean while each kind of task ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .artifacts import cache_dir, key_path
from .cli import positive_float, positive_int
from .config import PROFILES
from .device import resolve_device
from .plan import NOTEBOOKS, READS_CLASSIFIER, Job, comparisons_by_default, notebook_jobs, plan
from .report import PACKAGE_DIR, provenance, write_provenance
from .study import Study

log = logging.getLogger(__name__)

NOTEBOOK_DIR = PACKAGE_DIR.parent / "notebooks"
METRICS_CHECK = PACKAGE_DIR.parent / "scripts" / "validate_metrics.py"  # do the metrics respond as they should?
STAGES = ("classifier", "tokenizer", "tokens", "transformer")  # every job reads only jobs of earlier stages
EXCLUSIVE = {"03_ablation", "06_fid_is", "07_speed"}  # they time sampling (03's cost, 06's s_per_image, 07's
# claim): nothing may share the device with them
TIMINGS_COLUMNS = ("name", "kind", "status", "exit_code", "start_s", "end_s", "wall_s", "slot", "note")
POLL_S = 0.2
STOP_GRACE_S = 30.0  # seconds a stopped task has to end after SIGTERM (its cleanup runs) before it is killed


@dataclass(frozen=True)
class Task:
    """One process of a run: a job of the plan, the metrics check or a notebook."""

    name: str
    kind: str
    command: tuple[str, ...]
    log: Path
    deps: tuple[str, ...] = ()  # names of the tasks that must succeed first
    exclusive: bool = False  # runs after every other task, alone


@dataclass
class Outcome:
    """What became of one task: a row of timings.tsv."""

    name: str
    kind: str
    status: str  # "done" | "failed" | "skipped" | "stopped" (at the time limit)
    exit_code: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    wall_s: float | None = None
    slot: int | None = None
    note: str = ""  # a failed or stopped task's log; the failed or skipped tasks a skipped one needed, or "time limit"


def is_cached(key: str) -> bool:
    """Whether the artifact with cache key `key` is in the cache."""
    return key_path(key).is_file()


def execute(tasks: list[Task], jobs: int, timings: Path | None = None, time_limit_s: float | None = None,
            slot_env: list[dict[str, str]] | None = None) -> list[Outcome]:
    """Run every task as a subprocess (output to its log), at most `jobs` at once, in list order as far as the
    dependencies allow: a task starts once each of its `deps` is done, and is skipped when one failed or was skipped.
    Exclusive tasks run after all others, one at a time. After `time_limit_s` seconds the running tasks are stopped
    (`stop`: "stopped") and the waiting ones skipped (note "time limit"). Each outcome is appended to `timings` (TSV)
    as it comes. `slot_env`: environment variables of each slot's processes (`slot_devices`), one dict per slot.
    Returns the outcomes in the order they came."""
    if slot_env and len(slot_env) != jobs:
        raise ValueError(f"slot_env has {len(slot_env)} entries for {jobs} slots")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
    unknown = {d for t in tasks for d in t.deps} - set(names)
    if unknown:
        raise ValueError(f"tasks depend on tasks that are not in the run: {sorted(unknown)}")
    exclusive = {t.name for t in tasks if t.exclusive}
    after_exclusive = [t.name for t in tasks if exclusive & set(t.deps)]
    if after_exclusive:
        raise ValueError(f"exclusive tasks run last, so no task may depend on one: {after_exclusive}")
    t0 = time.perf_counter()
    waiting, running, free = list(tasks), {}, list(range(jobs))
    status: dict[str, str] = {}
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        status[outcome.name] = outcome.status
        outcomes.append(outcome)
        if timings is not None:
            with open(timings, "a") as f:
                f.write("\t".join("" if v is None else str(v) for v in asdict(outcome).values()) + "\n")
        done = f"[{len(outcomes)}/{len(tasks)}]"
        if outcome.status == "skipped":
            log.warning("%s skipped %s: %s", done, outcome.name, outcome.note if outcome.note == "time limit"
                        else f"it needs {outcome.note}")
        else:
            log.log(logging.INFO if outcome.status == "done" else logging.ERROR, "%s %s %s in %.1f s (slot %d)%s",
                    done, outcome.status, outcome.name, outcome.wall_s, outcome.slot,
                    f": see {outcome.note}" if outcome.note else "")

    def finish(slot: int, status_: str | None = None) -> None:
        task, proc, out, start = running.pop(slot)
        end = time.perf_counter()
        out.close()
        free.append(slot)
        free.sort()
        rc = proc.returncode
        status_ = status_ or ("done" if rc == 0 else "failed")
        record(Outcome(task.name, task.kind, status_, rc, round(start - t0, 1), round(end - t0, 1),
                       round(end - start, 1), slot, "" if status_ == "done" else str(task.log)))

    try:
        while waiting or running:
            if time_limit_s is not None and time.perf_counter() - t0 >= time_limit_s:
                for slot, (_, proc, _, _) in list(running.items()):
                    if proc.poll() is not None:  # ended by itself before the limit was seen
                        finish(slot)
                stop([proc for _, proc, _, _ in running.values()])
                for slot in list(running):
                    finish(slot, "stopped")
                for task in waiting:
                    record(Outcome(task.name, task.kind, "skipped", note="time limit"))
                waiting.clear()
                break
            for task in list(waiting):  # list order has dependencies first, so a skip reaches its dependents at once
                blocked = [d for d in task.deps if status.get(d) in ("failed", "skipped")]
                if blocked:
                    waiting.remove(task)
                    record(Outcome(task.name, task.kind, "skipped", note=", ".join(blocked)))
            ready = [t for t in waiting if all(status.get(d) == "done" for d in t.deps)]
            if any(task.exclusive for task, *_ in running.values()):
                starting = []
            elif running or any(not t.exclusive for t in waiting):
                starting = [t for t in ready if not t.exclusive][:len(free)]
            else:  # only exclusive tasks are left, and nothing runs
                starting = ready[:1]
            for task in starting:
                waiting.remove(task)
                slot = free.pop(0)
                task.log.parent.mkdir(parents=True, exist_ok=True)
                out = open(task.log, "w")
                env = {**os.environ, **slot_env[slot]} if slot_env else None
                proc = subprocess.Popen(task.command, stdout=out, stderr=subprocess.STDOUT, env=env)
                running[slot] = (task, proc, out, time.perf_counter())
                log.info("start %s (%s) on slot %d: log %s", task.name, task.kind, slot, task.log)
            if not running:
                if waiting:
                    raise RuntimeError(f"tasks wait on each other (a dependency cycle): {[t.name for t in waiting]}")
                break
            time.sleep(POLL_S)
            for slot, (_, proc, _, _) in list(running.items()):
                if proc.poll() is not None:
                    finish(slot)
    finally:  # an interrupted run leaves no process behind
        stop([proc for _, proc, _, _ in running.values()])
        for _, _, out, _ in running.values():
            out.close()
    return outcomes


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate every process at once (SIGTERM: a job process exits through `exit_on_sigterm`, so its cleanup runs,
    leaving its last snapshot and no half-written file), then kill those not ended within STOP_GRACE_S. Not SIGINT:
    a runner started in the background by a shell hands its children SIGINT ignored."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.perf_counter() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def slot_devices(device: str, jobs: int) -> tuple[str, list[dict[str, str]]]:
    """The device name each process is given and the environment of each of the `jobs` slots. One device: as it is,
    no environment. Several, `cuda:N,cuda:M,...`: the slots take them in turn, each process seeing its own GPU alone
    (CUDA_VISIBLE_DEVICES, of this process's visible ones) and named "cuda". ValueError on a bad list
    (`check_devices` also asks whether each device exists here)."""
    names = [d.strip() for d in device.split(",")]
    if len(names) == 1:
        return names[0], []
    indices: list[int] = []
    for name in names:
        kind, _, index = name.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ValueError(f"device {device!r}: several devices are named cuda:N,cuda:M,... (not {name!r})")
        indices.append(int(index))
    if len(set(indices)) < len(indices):
        raise ValueError(f"device {device!r} names a GPU twice")
    if jobs < len(indices):
        raise ValueError(f"--jobs {jobs} with {len(indices)} devices would leave a GPU idle: use --jobs "
                         f"{len(indices)} or more")
    gpus = [visible_gpu(i) for i in indices]
    return "cuda", [{"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} for k in range(jobs)]


def check_devices(device: str, jobs: int) -> tuple[str, list[dict[str, str]]]:
    """`slot_devices(device, jobs)`, after asking whether each device exists here: ValueError naming the problem."""
    slots = slot_devices(device, jobs)
    for name in device.split(","):
        resolve_device(name.strip())
    return slots


def visible_gpu(index: int) -> str:
    """The system's name (index or UUID) of this process's CUDA device `index`, through CUDA_VISIBLE_DEVICES where
    it is set; ValueError when it is not visible. (CUDA and nvidia-smi number the GPUs alike on a host of one GPU
    model; otherwise set CUDA_DEVICE_ORDER=PCI_BUS_ID.)"""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    names = visible.split(",")
    if index >= len(names):
        raise ValueError(f"cuda:{index} is not visible here (CUDA_VISIBLE_DEVICES={visible})")
    return names[index]


class GpuMonitor:
    """The utilisation (percent of time a kernel ran) and memory of the GPUs `gpus` (nvidia-smi's indices), sampled
    by nvidia-smi every `every_ms`, stamped in seconds from `t0` (time.perf_counter), written to `path` as they come
    (a row per GPU and sample). A context manager; does nothing without GPUs or without nvidia-smi."""

    def __init__(self, gpus: list[str], path: Path, t0: float, every_ms: int = 500) -> None:
        self.path, self.t0 = path, t0
        self.samples: list[tuple[float, str, float, float]] = []  # (t_s, GPU, utilisation %, memory MiB)
        self.command: list[str] | None = None
        if gpus and shutil.which("nvidia-smi"):
            self.command = ["nvidia-smi", "--query-gpu=uuid,index,utilization.gpu,memory.used",
                            "--format=csv,noheader,nounits", f"-lms={every_ms}", f"--id={','.join(gpus)}"]
        self.gpus = set(gpus)
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuMonitor:
        if self.command:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        odd = False
        with open(self.path, "w", buffering=1) as f:
            f.write("t_s\tgpu\tutilization_pct\tmemory_mib\n")
            for line in self.proc.stdout:
                try:
                    uuid, index, util, mem = (v.strip() for v in line.split(","))
                    sample = (time.perf_counter() - self.t0, uuid if uuid in self.gpus else index, float(util),
                              float(mem))
                except ValueError:  # "[N/A]" (MIG), "No devices were found", ...: the line is not a sample
                    if not odd:
                        log.warning("nvidia-smi printed %r: such lines are left out of %s", line.strip(), self.path)
                    odd = True
                    continue
                self.samples.append(sample)
                f.write(f"{sample[0]:.1f}\t{sample[1]}\t{util}\t{mem}\n")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is not None:
                log.warning("nvidia-smi ended early (exit code %s): %s has the samples up to then",
                            self.proc.returncode, self.path)
            stop([self.proc])
            self.thread.join(timeout=5)


def busy_by_kind(outcomes: list[Outcome], samples: list[tuple[float, str, float, float]],
                 slot_gpus: list[str] | None = None) -> dict[str, float]:
    """The mean GPU utilisation (percent) over the samples (t_s, GPU, utilisation, memory) taken while a task of each
    kind ran, and over the whole run ("all"); a kind with no sample is left out. With `slot_gpus` (the GPU of each
    slot, `slot_devices`) a sample counts for a task only on its slot's GPU; without, every sample of the run does."""
    windows: dict[str, list[tuple[float, float, str | None]]] = {}
    for o in outcomes:
        if o.start_s is not None and o.end_s is not None:
            windows.setdefault(o.kind, []).append((o.start_s, o.end_s, slot_gpus[o.slot] if slot_gpus else None))
    out = {"all": sum(s[2] for s in samples) / len(samples)} if samples else {}
    for kind, spans in windows.items():
        inside = [u for t, gpu, u, _ in samples if any(a <= t <= b and g in (None, gpu) for a, b, g in spans)]
        if inside:
            out[kind] = sum(inside) / len(inside)
    return {k: round(v, 1) for k, v in out.items()}


def find_notebook(name: str) -> str:
    """The notebook named by `name` or by the start of its name ("04" is "04_scaling")."""
    matches = [nb for nb in NOTEBOOKS if nb.startswith(name)]
    if len(matches) != 1:
        raise ValueError(f"notebook {name!r} matches {matches or 'none'} of {list(NOTEBOOKS)}")
    return matches[0]


def job_task(job: Job, pending: dict[str, Job], profile: str, device: str, logs: Path) -> Task:
    command = (sys.executable, "-m", "varlib.runner", profile, "--device", device, "--job", job.key)
    return Task(job.name, job.kind, command, logs / "jobs" / f"{job.name}.log",
                tuple(pending[d].name for d in job.deps if d in pending))


def notebook_task(study: Study, notebook: str, pending: dict[str, Job], profile: str, device: str, out: Path,
                  logs: Path) -> Task:
    path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such notebook (the runner runs the notebooks of a checkout)")
    command = (sys.executable, "-m", "papermill", "--log-output", "-p", "profile", profile, "-p", "device", device,
               "-p", "out_dir", str(out), str(path), str(logs / f"{notebook}.ipynb"))
    deps = tuple(pending[j.key].name for j in notebook_jobs(study, notebook) if j.key in pending)
    return Task(notebook, "notebook", command, logs / f"{notebook}.log", deps, notebook in EXCLUSIVE)


def metrics_check_task(study: Study, pending: dict[str, Job], profile: str, device: str, out: Path,
                       logs: Path) -> Task:
    """scripts/validate_metrics.py on the study's classifier (its tables, checks.csv among them, under `out`'s
    results/validate_metrics/, as a notebook's): with the notebooks, after every pending job, so that a time-limited
    run does it once, when the trainings are done. `run_study` adds it at quick and full: smoke's test split is too
    small for an FID on the classifier's features."""
    if not METRICS_CHECK.is_file():
        raise FileNotFoundError(f"{METRICS_CHECK}: no such script (the runner runs the scripts of a checkout)")
    command = (sys.executable, str(METRICS_CHECK), "--profile", profile, "--device", device, "--out-dir", str(out))
    return Task("validate_metrics", "check", command, logs / "validate_metrics.log",
                tuple(j.name for j in pending.values()))


def run_study(profile: str, device: str, out: str | Path, notebooks: list[str] | tuple[str, ...] = NOTEBOOKS,
              jobs: int = 1, train_only: bool = False, logs: str | Path | None = None,
              time_limit_s: float | None = None) -> list[Outcome]:
    """Train what `notebooks` need (the jobs not in the cache, up to `jobs` at once), then run the notebooks unless
    `train_only`, stopping after `time_limit_s` (`execute`); results and figures under `out`, timings and logs under
    `logs` (None: `out`/logs; see the module's docstring). Returns the outcomes."""
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(out).resolve()
    logs = Path(logs).resolve() if logs else out / "logs"
    task_device, slot_env = check_devices(device, jobs)
    study = Study.create(profile, device=device.split(",")[0])
    notebooks = [find_notebook(nb) for nb in notebooks]
    jobs_planned = plan(study, notebooks)
    pending = {j.key: j for j in jobs_planned if not is_cached(j.key)}
    log.info("%d jobs for %s: %d in the cache, %d to run, %d at once", len(jobs_planned), ", ".join(notebooks),
             len(jobs_planned) - len(pending), len(pending), jobs)
    # upstream stages first among the ready ones: a token set unblocks many trainings, a training nothing
    by_stage = sorted(pending.values(), key=lambda j: STAGES.index(j.kind))
    tasks = [job_task(j, pending, profile, task_device, logs) for j in by_stage]
    if not train_only:
        if READS_CLASSIFIER & set(notebooks) and comparisons_by_default(study):
            tasks.append(metrics_check_task(study, pending, profile, task_device, out, logs))
        tasks += [notebook_task(study, nb, pending, profile, task_device, out, logs) for nb in notebooks]
    logs.mkdir(parents=True, exist_ok=True)
    timings = logs / "timings.tsv"
    timings.write_text("\t".join(TIMINGS_COLUMNS) + "\n")
    remaining = None if time_limit_s is None else time_limit_s - (time.perf_counter() - started)
    gpus = sorted({env["CUDA_VISIBLE_DEVICES"] for env in slot_env}) if slot_env else (
        [visible_gpu(study.device.index or 0)] if study.device.type == "cuda" else [])
    with GpuMonitor(gpus, logs / "gpu_util.tsv", time.perf_counter()) as gpu:
        outcomes = execute(tasks, jobs, timings, remaining, slot_env)
    slot_gpus = [env["CUDA_VISIBLE_DEVICES"] for env in slot_env]
    record = provenance("varlib.runner", {"profile": profile, "device": device, "jobs": jobs, "notebooks": notebooks,
                                          "train_only": train_only, "out": str(out), "logs": str(logs),
                                          "time_limit_s": time_limit_s,
                                          "slot_gpus": slot_gpus},
                        study.device, None, time.perf_counter() - started,
                        [str(logs / name) for name in ("timings.tsv", "timings.json", "gpu_util.tsv")],
                        {"started_at": started_at, "cache": str(cache_dir())})
    write_provenance(logs, record)
    (logs / "timings.json").write_text(json.dumps({
        **record, "tasks": [asdict(o) for o in outcomes],
        "gpu_busy_pct": busy_by_kind(outcomes, gpu.samples, slot_gpus or None),
        "cached": [j.name for j in jobs_planned if j.key not in pending],
        "plan": [{"name": j.name, "kind": j.kind, "key": j.key, "deps": list(j.deps), "flops": j.flops}
                 for j in jobs_planned]}, indent=2) + "\n")
    bad = [o.name for o in outcomes if o.status != "done"]
    log.info("study run in %.0f s: %d tasks done%s", time.perf_counter() - started, len(outcomes) - len(bad),
             f", not done: {', '.join(bad)}" if bad else "")
    return outcomes


def exit_on_sigterm() -> None:
    """From now on SIGTERM raises SystemExit in this process, so that `finally` blocks and context managers run (the
    default action ends the process at once)."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_job(profile: str, device: str, key: str) -> None:
    """Build the job of the study's plan (all notebooks) whose cache key is `key`, in this process."""
    study = Study.create(profile, device=device)
    by_key = {j.key: j for j in plan(study)}
    if key not in by_key:
        raise SystemExit(f"no job with key {key!r} in the {profile} plan (made by another varlib version?)")
    job = by_key[key]
    log.info("job %s (%s), key %s, on %s", job.name, job.kind, key, study.device)
    job.build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varlib.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help=f"notebooks by name or its start, e.g. 03 (default: all of {', '.join(NOTEBOOKS)})")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N (every job and notebook), or cuda:N,cuda:M,... (the slots "
                             "take the GPUs in turn)")
    parser.add_argument("--out", type=Path, help="where results, figures and logs go (required unless --dry-run)")
    parser.add_argument("--logs", type=Path, help="where logs and timings go (default: OUT/logs)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes at once (default 1)")
    parser.add_argument("--train-only", action="store_true", help="train the plan's jobs, run no notebook")
    parser.add_argument("--time-limit", type=positive_float, metavar="S",
                        help="stop after S seconds: no task starts later, running ones are stopped (they resume "
                             "from their last snapshot next time)")
    parser.add_argument("--dry-run", action="store_true", help="list the plan's jobs (cached or not) and stop")
    parser.add_argument("--job", metavar="KEY", help=argparse.SUPPRESS)  # the runner's own call: one job
    args = parser.parse_intermixed_args(argv)  # notebooks may come before or after the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.job:
        exit_on_sigterm()  # stopped at a time limit, a training leaves its snapshot and no half-written file
        run_job(args.profile, args.device, args.job)
        return 0
    try:
        notebooks = [find_notebook(nb) for nb in args.notebooks or NOTEBOOKS]
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        jobs = plan(Study.create(args.profile, device="cpu"), notebooks)
        for j in jobs:
            work = f"{j.flops:9.3g} FLOP" if j.flops else ""
            print(f"{j.kind:<12} {j.name:<38} {'cached' if is_cached(j.key) else 'to run':<7} {j.key:<28} {work}")
        counts = {kind: sum(j.kind == kind for j in jobs) for kind in dict.fromkeys(j.kind for j in jobs)}
        print(f"{len(jobs)} jobs: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
              + f"; transformer training {sum(j.flops for j in jobs):.3g} FLOP")
        return 0
    if args.out is None:
        parser.error("--out is required (where results, figures and logs go)")
    try:
        check_devices(args.device, args.jobs)
    except ValueError as e:
        parser.error(str(e))
    outcomes = run_study(args.profile, args.device, args.out, notebooks, args.jobs, args.train_only, args.logs,
                         args.time_limit)
    return 0 if all(o.status == "done" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
