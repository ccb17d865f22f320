"""The 2020 analysis on the platform: the starter kit's random-search, scikit-optimize and hyperopt examples
and the project's trust-region optimizer scored as four teams' submissions, with baselines built by the
fleet path, then compared by leaderboard score (95% bootstrap interval over studies) and convergence.

On a stack of its own (embedded Redis, a gateway, N workers; sandboxes by docker where an engine runs,
else bwrap), in a scratch state folder:
1. the spec's feedback phase is written to a spec file of the run's own (`--studies` and
   `--baseline-studies` applied, the final phase dropped: only the feedback problems are scored), and its
   baselines are built by `bbo admin baselines build --fleet` on the run's workers, unless `--baselines`
   gives a file built before for the same problems and settings;
2. each optimizer's folder is zipped as `bbo submit` zips it and uploaded through the gateway by a team
   of its name (the team CLI's client);
3. once all four are scored, bench/analysis_report.py writes results.md, convergence.png and
   results.json to `--out` (with a copy of the baseline file) and the figures go to stdout.

The starter kit's code is never part of this repository: `--starter-kit` names an exported copy, e.g.

    git --git-dir=/work/.mirror/rdturnermtl+bbo_challenge_starter_kit/repo/.git archive HEAD \\
        example_submissions | tar -x -C /tmp/kit
    python -m bench analysis --starter-kit /tmp/kit --spec analysis2020 --out /tmp/analysis --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Stack, logger, print_figures, scratch_state, team_api, try_upload

log = logger("analysis")

# Team name -> the starter kit's example folder (the 2020 kit's names).
KIT_OPTIMIZERS = {"random-search": "random-search", "skopt": "skopt", "hyperopt": "hyperopt"}
TRUST_REGION = ROOT / "baselines" / "optimizers" / "trust_region"
FINISHED = {"scored", "failed", "stopped"}
POLL_S = 2.0


def kit_folders(starter_kit: Path) -> dict[str, Path]:
    """The three examples' folders: under DIR/example_submissions (the kit's root) or DIR itself."""
    base = (
        starter_kit / "example_submissions" if (starter_kit / "example_submissions").is_dir() else starter_kit
    )
    folders = {team: base / name for team, name in KIT_OPTIMIZERS.items()}
    missing = [str(f) for f in folders.values() if not (f / "optimizer.py").is_file()]
    if missing:
        raise SystemExit(f"bench analysis: no optimizer.py in {', '.join(missing)}")
    return folders


def run_spec(spec: str, work: Path, studies: int | None, baseline_studies: int | None) -> Path:
    """The analysis' own spec file: the spec's text with its final phase dropped and the overrides applied.
    Edited as text, so that everything else (limits, obfuscation, baseline seed) stays as written."""
    from runtime.spec import load

    source = Path(load(spec).source)
    text = source.read_text()
    # [phases.final] and its sub-tables run to the next table that is not one of them.
    text = re.sub(r"(?ms)^\[phases\.final(\.[^\]]*)?\].*?(?=^\[(?!phases\.final)|\Z)", "", text)
    if studies is not None:
        text = _set_in_table(text, "phases.feedback", "studies", studies)
        per_job = re.search(r"(?m)^studies_per_job\s*=\s*(\d+)", text)
        if per_job and int(per_job.group(1)) > studies:
            text = _set_in_table(text, "phases.feedback", "studies_per_job", studies)
    if baseline_studies is not None:
        text = _set_in_table(text, "baselines", "random_studies", baseline_studies)
    path = work / f"{load(spec).name}.toml"
    path.write_text(text)
    load(path)  # a spec the edits broke fails here, with the spec's own message
    return path


def _set_in_table(text: str, table: str, key: str, value: int) -> str:
    # The table's header (a comment may follow it), then the key before any next table.
    pattern = rf"(?ms)(^\[{re.escape(table)}\][^\n]*\n(?:(?!^\[).)*?^{key}\s*=\s*)\d+"
    edited, count = re.subn(pattern, rf"\g<1>{value}", text, count=1)
    if not count:
        raise SystemExit(f"bench analysis: the spec has no {key} in [{table}] to override")
    return edited


def build_baselines(stack: Stack, spec_path: Path) -> dict[str, Any]:
    """`bbo admin baselines build --fleet` against the run's store: its units go to the workers."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "admin", "baselines", "build", "--spec", str(spec_path), "--fleet"]
        + ["--json"],
        env=stack.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench analysis: the fleet baseline build failed ({done.returncode})")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "path": data["path"],
        "version": data["version"],
        "units": data["fleet"]["units"],
        "wall_s": round(time.monotonic() - started, 1),
    }


def submit_all(stack: Stack, r: Any, folders: dict[str, Path]) -> dict[str, str]:
    """One team per optimizer, each uploading its folder as `bbo submit` does; team -> submission id."""
    from cli.team import pack
    from competition import teams

    ids = {}
    for team, folder in folders.items():
        token = teams.add_team(r, team)
        data, filename = pack(folder)
        with team_api(stack.base, token) as api:
            outcome = try_upload(api, data, filename)
        if outcome.status != 201 or outcome.id is None:
            raise SystemExit(f"bench analysis: the upload of {team} was refused: {outcome.why}")
        ids[team] = outcome.id
        log(f"{team}: submission {outcome.id}")
    return ids


def wait_scored(stack: Stack, r: Any, ids: dict[str, str], timeout: float) -> None:
    from queue_schema.records import load_submission

    deadline = time.monotonic() + timeout
    last = ""
    while True:
        subs = {team: load_submission(r, sid) for team, sid in ids.items()}
        line = ", ".join(
            f"{t} {s.state.value} {s.progress.studies_done}/{s.progress.studies_total}"
            for t, s in subs.items()
        )
        if line != last:
            log(line)
            last = line
        if all(s.state.value in FINISHED for s in subs.values()):
            break
        if stack.exited_workers():
            raise SystemExit(f"bench analysis: a worker exited; see {stack.log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench analysis: not scored after {timeout:.0f} s: {line}")
        time.sleep(POLL_S)
    bad = {t: s for t, s in subs.items() if s.state.value != "scored"}
    if bad:
        reasons = "; ".join(f"{t}: {s.state.value} {s.failure}" for t, s in bad.items())
        raise SystemExit(f"bench analysis: not every optimizer was scored: {reasons}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def choose_backend(name: str) -> str:
    if name != "auto":
        return name
    from workers.sandbox import docker

    return "docker" if docker.available() else "bwrap"


def run(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench import analysis_report

    folders = {**kit_folders(Path(args.starter_kit)), "trust-region": TRUST_REGION}
    spec_path = run_spec(args.spec, state, args.studies, args.baseline_studies)
    from runtime.spec import load

    spec = load(spec_path)
    backend = choose_backend(args.backend)
    log(f"spec {spec.name} ({len(spec.phases['feedback'].problems)} problems), backend {backend}")
    started = time.monotonic()
    stack = Stack(state, unsafe=backend == "process", prefix="analysis")
    try:
        r = stack.start_store()
        stack.start_workers(args.workers, timeout=180)
        if args.baselines:
            target = spec.baseline_plan().built_paths[0]
            shutil.copyfile(args.baselines, target)
            baselines = {"path": str(target), "reused": args.baselines}
        else:
            baselines = build_baselines(stack, spec_path)
        log(f"baselines: {baselines}")
        stack.start_gateway(spec_path, backend=backend, timeout=180)
        ids = submit_all(stack, r, folders)
        wait_scored(stack, r, ids, args.timeout)
        scored = [analysis_report.read_scored(r, team, sid) for team, sid in ids.items()]
    finally:
        stack.stop()
    summary = analysis_report.summarize(scored)
    figures = {
        "spec": spec.name,
        "problems": list(spec.phases["feedback"].problems),
        "studies": spec.phases["feedback"].studies,
        "rounds": spec.rounds,
        "batch": spec.batch,
        "backend": backend,
        "workers": args.workers,
        "baselines": baselines,
        # Which code was scored: docs/results.md shows these are the unchanged 2020 files.
        "sources": {
            team: {"path": str(folder), "optimizer_sha256": _sha256(folder / "optimizer.py")}
            for team, folder in folders.items()
        },
        "wall_s": round(time.monotonic() - started, 1),
        **summary,
    }
    if args.out:
        out = Path(args.out)
        shape = (
            f"{len(figures['problems'])} problems, {figures['studies']} studies, {spec.rounds} x {spec.batch}"
        )
        title = f"{spec.name}: {shape}"
        figures["files"] = analysis_report.write(figures, out, title)
        shutil.copyfile(baselines["path"], out / "baselines.json")
    return figures


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--starter-kit", required=True, help="the 2020 starter kit (or its example_submissions folder)"
    )
    parser.add_argument("--spec", default="analysis2020", help="a shipped spec name or a spec file")
    parser.add_argument("--studies", type=int, help="studies per problem (default: the spec's)")
    parser.add_argument(
        "--baseline-studies", type=int, help="random-search studies of the baselines (default: the spec's)"
    )
    parser.add_argument("--baselines", help="a baseline file built before for the same spec: no build")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--backend", default="auto", choices=("auto", "docker", "bwrap", "process"))
    parser.add_argument("--out", help="folder for results.md, convergence.png, results.json, baselines.json")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the scores")
    parser.add_argument("--keep-state", action="store_true", help="keep the scratch state folder")
    args = parser.parse_args(argv)
    with scratch_state("bbo-an-", keep=args.keep_state) as state:
        if args.keep_state:
            log(f"state folder {state}")
        figures = run(state, args)
    print_figures(figures, args.json, width=16)
