"""What `python -m bench analysis` makes of the scored submissions: per optimizer the leaderboard score with
its 95% bootstrap interval over studies (baselines/ranking.py), each problem's score, the mean normalized
convergence curve per round (competition/scores.py, as the console and the team pages draw it), a PNG
plot of the curves and a markdown table, both written to an output folder for docs/results.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from baselines.ranking import bootstrap, point_score
from competition import scores
from queue_schema.records import load_submission
from runtime.spec import stored_spec
from runtime.versions import studies_by_problem


@dataclass(frozen=True)
class Scored:
    """One optimizer's scored submission, read back from the store."""

    optimizer: str
    submission: str
    study_scores: dict[str, list[float]]  # problem -> each study's normalized score at the last round
    curve: list[float]  # mean normalized best-so-far per round
    random_curve: list[float]  # the random-search baseline's, over the same problems
    suggest_s: float = 0.0  # the optimizer's own time (init, suggest, observe), all studies
    eval_s: float = 0.0  # the objective's, all studies


def read_scored(r: redis.Redis, optimizer: str, sid: str) -> Scored:
    """The organizer's report of the submission (real problem names even when the spec obfuscates them)."""
    problems = scores.report(r, sid)["problems"]
    study_scores = {p["problem"]: [s["normalized"] for s in p["studies"]] for p in problems}
    missing = [p for p, values in study_scores.items() if not values or None in values]
    if missing:
        raise SystemExit(f"bench analysis: {optimizer} has unscored studies on {', '.join(missing)}")
    sub = load_submission(r, sid)
    curve, random_curve = scores.convergence(r, sub, problems)
    # Where the CPU went, to size a bigger run: the records hold each study's optimizer and objective time.
    studies = [
        s
        for found in studies_by_problem(r, sub, stored_spec(r, sub.spec_hash), sub.score_version).values()
        for s in found
    ]
    suggest_s = sum(s.suggest_time_s for s in studies)
    eval_s = sum(s.eval_time_s for s in studies)
    return Scored(optimizer, sid, study_scores, curve, random_curve, suggest_s, eval_s)


def summarize(scored: list[Scored]) -> dict[str, Any]:
    """Leaderboard order (best first) with the bootstrap's interval and rank stability, per optimizer."""
    ordered = sorted(scored, key=lambda s: -point_score(s.study_scores))
    uncertain = bootstrap([s.study_scores for s in ordered])
    optimizers = {}
    for entry, u in zip(ordered, uncertain, strict=True):
        optimizers[entry.optimizer] = {
            "rank": u.rank,
            "score": round(u.score, 3),
            "ci_low": round(u.ci_low, 3),
            "ci_high": round(u.ci_high, 3),
            "rank_stability": round(u.rank_stability, 3),
            "studies": u.studies,
            "submission": entry.submission,
            "problems": {p: round(point_score({p: v}), 3) for p, v in sorted(entry.study_scores.items())},
            "suggest_s": round(entry.suggest_s, 1),
            "eval_s": round(entry.eval_s, 1),
            "curve": [round(v, 5) for v in entry.curve],
        }
    # Every submission ran the same problems, so any one's random curve is the baseline's.
    random_curve = next((s.random_curve for s in ordered if s.random_curve), [])
    return {"optimizers": optimizers, "random_baseline_curve": [round(v, 5) for v in random_curve]}


def markdown(summary: dict[str, Any], title: str) -> str:
    """The leaderboard table, then the per-problem scores (100 is the best-known loss, 0 the clip)."""
    optimizers = summary["optimizers"]
    lines = [
        f"### {title}",
        "",
        "| rank | optimizer | score | 95% interval | rank stability | studies | optimizer s / study |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for name, o in optimizers.items():
        lines.append(
            f"| {o['rank']} | {name} | {o['score']:.2f} | [{o['ci_low']:.2f}, {o['ci_high']:.2f}] "
            f"| {o['rank_stability']:.2f} | {o['studies']} | {o['suggest_s'] / o['studies']:.1f} |"
        )
    names = list(optimizers)
    problems = sorted({p for o in optimizers.values() for p in o["problems"]})
    lines += ["", "| problem | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for problem in problems:
        cells = [f"{optimizers[n]['problems'].get(problem, float('nan')):.2f}" for n in names]
        lines.append(f"| {problem} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server, and no window wanted
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, o in summary["optimizers"].items():
        rounds = range(1, len(o["curve"]) + 1)
        ax.plot(rounds, o["curve"], marker="o", markersize=3, label=f"{name} ({o['score']:.1f})")
    random_curve = summary["random_baseline_curve"]
    if random_curve:
        ax.plot(
            range(1, len(random_curve) + 1), random_curve, "k--", linewidth=1, label="random-search baseline"
        )
    ax.set_xlabel("round")
    ax.set_ylabel("mean normalized score (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(summary: dict[str, Any], out: Path, title: str) -> dict[str, str]:
    """results.md, convergence.png and results.json in `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": out / "results.md",
        "plot": out / "convergence.png",
        "json": out / "results.json",
    }
    files["markdown"].write_text(markdown(summary, title))
    plot(summary, files["plot"], title)
    files["json"].write_text(json.dumps(summary, indent=1) + "\n")
    return {k: str(v) for k, v in files.items()}
