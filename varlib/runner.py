"""The whole study in one command: the plan's trainings, several at once in dependency order, then the notebooks.

    python -m varlib.runner full --device cuda --out /tmp/study --jobs 4            # all seven notebooks
    python -m varlib.runner smoke --device cpu --out /tmp/s --jobs 2 03 04          # two of them
    python -m varlib.runner full --dry-run                                          # the plan, nothing trained

It builds `plan.plan(study, notebooks)`, leaves out the jobs whose artifact is already in the cache ($VARLIB_CACHE),
and runs the rest, each in its own process (`python -m varlib.runner PROFILE --job KEY`: a crash stays in its
process), at most `--jobs` at once, each when the jobs it reads are done: classifier, tokenizers, token sets, then
the transformers. Small 32 px models leave a GPU idle while the host launches kernels, so several trainings at once
fill it. A job that fails is logged and every task that needs it is skipped, by name; the others go on. Each notebook
then runs under papermill (`-p profile -p device -p out_dir`) once the jobs it reads are done, also up to `--jobs`
at once, and finds every model in the cache; `03_ablation`, `06_fid_is` and
`07_speed` time samplers, so they run last, each alone.

No two processes build one artifact at once: the plan holds each cache key once, and a notebook starts only after
every job it reads, so it finds them all in the cache. A model the plan lacked would still be trained by the notebook
that asks for it, as without the runner (tests/test_runner.py runs 03 and 04 at smoke on a read-only cache that
only the plan's jobs filled).

With `--time-limit S` no task starts after S seconds and those still running are stopped then (status "stopped"):
a transformer or tokenizer resumes from its last snapshot on the next run, which finds the finished jobs in the cache
(a time-limited allocation runs the study in several calls on one cache).

Written to OUT: results/ and figures/ (the notebooks'). To OUT/logs (or --logs): jobs/<job>.log, <notebook>.log and
.ipynb, timings.tsv (one row per task: name, kind, status, exit code, start and end in seconds from the run's start,
wall seconds, worker slot, note) and timings.json (the same rows, the jobs found in the cache, the plan with each
transformer's training FLOPs, provenance). On a CUDA device with nvidia-smi also gpu_util.tsv (the GPU's utilisation
sampled twice a second: the share of time a kernel ran) and, in timings.json, its mean while each kind of task ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .artifacts import cache_dir, key_path
from .cli import positive_int
from .config import PROFILES
from .plan import NOTEBOOKS, Job, notebook_jobs, plan
from .report import PACKAGE_DIR, provenance
from .study import Study

log = logging.getLogger(__name__)

NOTEBOOK_DIR = PACKAGE_DIR.parent / "notebooks"
STAGES = ("classifier", "tokenizer", "tokens", "transformer")  # every job reads only jobs of earlier stages
EXCLUSIVE = {"03_ablation", "06_fid_is", "07_speed"}  # they time sampling (03's cost, 06's s_per_image, 07's
# claim): nothing may share the device with them
TIMINGS_COLUMNS = ("name", "kind", "status", "exit_code", "start_s", "end_s", "wall_s", "slot", "note")
POLL_S = 0.2


@dataclass(frozen=True)
class Task:
    """One process of a run: a job of the plan or a notebook."""

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
    note: str = ""  # the log of a failed task; the failed or skipped tasks that a skipped one needed


def is_cached(key: str) -> bool:
    """Whether the artifact with cache key `key` is in the cache."""
    return key_path(key).is_file()


def execute(tasks: list[Task], jobs: int, timings: Path | None = None,
            time_limit_s: float | None = None) -> list[Outcome]:
    """Run every task as a subprocess (output to its log), at most `jobs` at once, in list order as far as the
    dependencies allow: a task starts once each of its `deps` is done, and is skipped when one failed or was skipped.
    Exclusive tasks run after all others, one at a time. After `time_limit_s` seconds the running tasks are stopped
    (terminated: "stopped") and the waiting ones skipped (note "time limit"). Each outcome is appended to `timings`
    (TSV) as it comes. Returns the outcomes in the order they came."""
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
            log.warning("%s skipped %s: it needs %s", done, outcome.name, outcome.note)
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
                    proc.terminate()
                    proc.wait()
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
                proc = subprocess.Popen(task.command, stdout=out, stderr=subprocess.STDOUT)
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
        for _, proc, out, _ in running.values():
            proc.terminate()
            proc.wait()
            out.close()
    return outcomes


class GpuMonitor:
    """The GPU's utilisation (percent of time a kernel ran) and memory, sampled by nvidia-smi every `every_ms`,
    stamped in seconds from `t0` (time.perf_counter), written to `path` as they come. A context manager; does
    nothing where `device` is not CUDA or nvidia-smi is missing."""

    def __init__(self, device: str, path: Path, t0: float, every_ms: int = 500):
        self.path, self.t0, self.samples = path, t0, []
        self.command = None
        if device.startswith("cuda") and shutil.which("nvidia-smi"):
            index = device.partition(":")[2] or "0"
            self.command = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                            f"-lms={every_ms}", f"--id={index}"]

    def __enter__(self) -> GpuMonitor:
        if self.command:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        with open(self.path, "w") as f:
            f.write("t_s\tutilization_pct\tmemory_mib\n")
            for line in self.proc.stdout:
                util, mem = (float(v) for v in line.split(","))
                self.samples.append((time.perf_counter() - self.t0, util, mem))
                f.write(f"{self.samples[-1][0]:.1f}\t{util:.0f}\t{mem:.0f}\n")

    def __exit__(self, *exc) -> None:
        if self.command:
            self.proc.terminate()
            self.proc.wait()
            self.thread.join()


def busy_by_kind(outcomes: list[Outcome], samples: list[tuple[float, float, float]]) -> dict[str, float]:
    """The mean GPU utilisation (percent) over the samples (t_s, utilization, memory) taken while any task of each
    kind ran, and over the whole run ("all"); a kind with no sample is left out."""
    windows: dict[str, list[tuple[float, float]]] = {}
    for o in outcomes:
        if o.start_s is not None:
            windows.setdefault(o.kind, []).append((o.start_s, o.end_s))
    out = {"all": sum(u for _, u, _ in samples) / len(samples)} if samples else {}
    for kind, spans in windows.items():
        inside = [u for t, u, _ in samples if any(a <= t <= b for a, b in spans)]
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


def run_study(profile: str, device: str, out: str | Path, notebooks: list[str] | tuple[str, ...] = NOTEBOOKS,
              jobs: int = 1, train_only: bool = False, logs: str | Path | None = None,
              time_limit_s: float | None = None) -> list[Outcome]:
    """Train what `notebooks` need (the jobs not in the cache, up to `jobs` at once), then run the notebooks unless
    `train_only`, stopping after `time_limit_s` (`execute`); results and figures under `out`, timings and logs under
    `logs` (None: `out`/logs; see the module's docstring). Returns the outcomes."""
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(out).resolve()
    logs = Path(logs).resolve() if logs else out / "logs"
    study = Study.create(profile, device=device)
    notebooks = [find_notebook(nb) for nb in notebooks]
    jobs_planned = plan(study, notebooks)
    pending = {j.key: j for j in jobs_planned if not is_cached(j.key)}
    log.info("%d jobs for %s: %d in the cache, %d to run, %d at once", len(jobs_planned), ", ".join(notebooks),
             len(jobs_planned) - len(pending), len(pending), jobs)
    # upstream stages first among the ready ones: a token set unblocks many trainings, a training nothing
    by_stage = sorted(pending.values(), key=lambda j: STAGES.index(j.kind))
    tasks = [job_task(j, pending, profile, device, logs) for j in by_stage]
    if not train_only:
        tasks += [notebook_task(study, nb, pending, profile, device, out, logs) for nb in notebooks]
    logs.mkdir(parents=True, exist_ok=True)
    timings = logs / "timings.tsv"
    timings.write_text("\t".join(TIMINGS_COLUMNS) + "\n")
    remaining = None if time_limit_s is None else time_limit_s - (time.perf_counter() - started)
    with GpuMonitor(str(study.device), logs / "gpu_util.tsv", time.perf_counter()) as gpu:
        outcomes = execute(tasks, jobs, timings, remaining)
    record = provenance("varlib.runner", {"profile": profile, "device": device, "jobs": jobs, "notebooks": notebooks,
                                          "train_only": train_only, "out": str(out), "logs": str(logs),
                                          "time_limit_s": time_limit_s},
                        study.device, None, time.perf_counter() - started, [str(timings)],
                        {"started_at": started_at, "cache": str(cache_dir()), "tasks": [asdict(o) for o in outcomes],
                         "gpu_busy_pct": busy_by_kind(outcomes, gpu.samples),
                         "cached": [j.name for j in jobs_planned if j.key not in pending],
                         "plan": [{"name": j.name, "kind": j.kind, "key": j.key, "deps": list(j.deps),
                                   "flops": j.flops} for j in jobs_planned]})
    (logs / "timings.json").write_text(json.dumps(record, indent=2) + "\n")
    bad = [o.name for o in outcomes if o.status != "done"]
    log.info("study run in %.0f s: %d tasks done%s", time.perf_counter() - started, len(outcomes) - len(bad),
             f", not done: {', '.join(bad)}" if bad else "")
    return outcomes


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
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (every job and notebook)")
    parser.add_argument("--out", type=Path, help="where results, figures and logs go (required unless --dry-run)")
    parser.add_argument("--logs", type=Path, help="where logs and timings go (default: OUT/logs)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes at once (default 1)")
    parser.add_argument("--train-only", action="store_true", help="train the plan's jobs, run no notebook")
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="stop after S seconds: no task starts later, running ones are stopped (they resume "
                             "from their last snapshot next time)")
    parser.add_argument("--dry-run", action="store_true", help="list the plan's jobs (cached or not) and stop")
    parser.add_argument("--job", metavar="KEY", help=argparse.SUPPRESS)  # the runner's own call: one job
    args = parser.parse_intermixed_args(argv)  # notebooks may come before or after the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.job:
        run_job(args.profile, args.device, args.job)
        return 0
    try:
        notebooks = [find_notebook(nb) for nb in args.notebooks or NOTEBOOKS]
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        jobs = plan(Study.create(args.profile, device="cpu"), notebooks)
        for j in jobs:
            work = f"{j.flops / 1e15:7.2f} PFLOP" if j.flops else ""
            print(f"{j.kind:<12} {j.name:<38} {'cached' if is_cached(j.key) else 'to run':<7} {j.key:<28} {work}")
        counts = {kind: sum(j.kind == kind for j in jobs) for kind in dict.fromkeys(j.kind for j in jobs)}
        print(f"{len(jobs)} jobs: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
              + f"; transformer training {sum(j.flops for j in jobs) / 1e15:.1f} PFLOP")
        return 0
    if args.out is None:
        parser.error("--out is required (where results, figures and logs go)")
    outcomes = run_study(args.profile, args.device, args.out, notebooks, args.jobs, args.train_only, args.logs,
                         args.time_limit)
    return 0 if all(o.status == "done" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
