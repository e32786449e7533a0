"""The demo report's claim-by-claim verdict (issue 14's targets, from the CoOp paper), generated from the measured
numbers in ``results.json`` (never hand-written); the base-to-new section is :mod:`vlprompt.microclip.demo_base2new`'s."""

from __future__ import annotations

ZERO_SHOT = "Zero-shot CLIP"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("holds" if ok else "does not hold")


def claims(results: dict) -> list[tuple[str, str, bool | None]]:
    """``[(claim, measured, holds)]`` for every target the run's shots and tasks can measure (``None``: cannot)."""
    tasks = results["summary"]["tasks"]
    avg = tasks.get("Average")
    shots = results["config"]["shots"]
    if not avg:
        return []
    top, out = max(shots), []
    out.append(("zero-shot average ≤ 85", f"{avg['zero_shot']:.1f}", avg["zero_shot"] <= 85))
    hi = avg["shots"].get(top)
    if hi:
        out.append((f"best CoOp variant at {top} shots ≥ +15 over zero-shot on average", f"{hi['gain']:+.1f}",
                    hi["gain"] >= 15 if top == 16 else None))  # fmt: skip
        gains = {t: s["shots"][top]["gain"] for t, s in tasks.items() if t != "Average" and top in s["shots"]}
        best = max(gains, key=gains.get)
        out.append(("… and ≥ +40 on the best task", f"{gains[best]:+.1f} ({best})",
                    gains[best] >= 40 if top == 16 else None))  # fmt: skip
    if 2 in avg["shots"]:
        g = avg["shots"][2]["gain"]
        out.append(("CoOp ≥ zero-shot on average at 2 shots", f"{g:+.1f}", g >= 0))
    lp = [(k, v["best_coop"] - v["linear_probe"]) for k, v in sorted(avg["shots"].items())
          if k <= 4 and v["linear_probe"] is not None]  # fmt: skip
    if lp:
        out.append(("linear probe below CoOp at 1–4 shots", ", ".join(f"{k}: {d:+.1f}" for k, d in lp),
                    all(d > 0 for _, d in lp)))  # fmt: skip
    shift = results.get("domain_shift") or {}
    if ZERO_SHOT in shift:
        zs = sum(v["mean"] for v in shift[ZERO_SHOT].values()) / len(shift[ZERO_SHOT])
        learned = {lbl: sum(v["mean"] for v in d.values()) / len(d) for lbl, d in shift.items()
                   if lbl != ZERO_SHOT and "CSC" not in lbl}  # fmt: skip
        text = ", ".join(f"{lbl} {a:.1f}" for lbl, a in learned.items())
        out.append(("learned prompts (unified context) ≥ zero-shot on average over the shifted test sets",
                    f"zero-shot {zs:.1f}; {text}", all(a >= zs for a in learned.values()) if learned else None))
    return out


def claim_lines(results: dict) -> list[str]:
    """The ``## Claims`` section."""
    rows = claims(results)
    if not rows:
        return []
    lines = ["## Claims of the paper on this suite", "", "| claim (issue 14 target) | measured | verdict |",
             "|---|---|---|"]  # fmt: skip
    lines += [f"| {c} | {m} | {_verdict(ok)} |" for c, m, ok in rows]
    return [*lines, ""]
