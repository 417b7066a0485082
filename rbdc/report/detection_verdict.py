"""The verdict of a detection study's report (:mod:`rbdc.report.detection`), from the rows of its runs.

Without a control it reads every backbone's difference to the reference (the first label). With a random-init
control (issue 34) it first says whether backbones are being measured at all (:func:`measured`) and only then
whether each other backbone beats, matches or loses to the reference, and what that makes of the claim
(:func:`claim`). Every word comes from Welch intervals over pretraining seeds; nothing is drawn at random.

The claim reads four metrics at once (:data:`VERDICT_METRICS`), so its words come from family-wise intervals:
Bonferroni over the four, each at 1 − 0.05/4 = 98.75%. "Better on one metric and worse on none" then says
"supported" for backbones no better than the reference in at most 2.5% of studies (one 95% interval's one-sided
rate); four separate 95% intervals said it in 4% of simulated studies at 3 seeds a side and 7% at 5 (independent
metrics, the worst case; Bonferroni: 0.7% and 1.7%; ``tests/test_detection_random_init.py``). The table's intervals
stay 95%.
"""

from __future__ import annotations

import statistics

from .stats import welch

__all__ = [
    "LEARNED_AP50",
    "MEASURED_AP50",
    "VERDICT_METRICS",
    "measured",
    "claim",
    "verdict",
    "per_seed",
    "diff_text",
    "pretrained",
    "CLAIM_LEVEL",
    "claim_words",
]

# Below this box AP50 (%) in every run the detector has barely learned (one IoU-0.5 hit in ten detections at best), so
# AP differences measure the heads' noise, not the backbones: the verdict says so instead of reading them.
LEARNED_AP50 = 10.0
# Issue 34: backbones are being measured when the reference (scratch) side's mean box AP50 (%) reaches this and is above
# the random-init control beyond seed noise; below it, differences between pretrained backbones are not read.
MEASURED_AP50 = 20.0
# the metrics the verdict reads with a control, the gate's metric first
VERDICT_METRICS = [
    ("bbox_mAP_50", "box AP50"),
    ("bbox_mAP", "box AP"),
    ("segm_mAP_50", "mask AP50"),
    ("segm_mAP", "mask AP"),
]
# the confidence of each metric's interval in the claim: 95% family-wise over VERDICT_METRICS (Bonferroni)
CLAIM_LEVEL = 1 - 0.05 / len(VERDICT_METRICS)


def per_seed(rows: list[dict], label: str, key: str) -> list[float]:
    """AP of each pretraining seed of ``label`` (its fine-tuning seeds averaged)."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        if r["label"] == label and r[key] is not None:
            by_seed.setdefault(r["seed"], []).append(r[key])
    return [statistics.mean(v) for _, v in sorted(by_seed.items())]


def diff_text(a: list[float], b: list[float], level: float = 0.95) -> tuple[str, float | None, float | None]:
    if not a or not b:
        return "–", None, None
    d, hw = welch(a, b, level)
    if hw is None:
        return f"{d:+.1f}", None, None
    return f"{d:+.1f} [{d - hw:+.1f}, {d + hw:+.1f}]", d - hw, d + hw


def pretrained(study) -> list[str]:
    """The labels of the pretrained backbones (all but the random-init control), the reference first."""
    control = (study.random_init or {}).get("label")
    return [label for label in study.labels if label != control]


def verdict(study, rows: list[dict]) -> list[str]:
    if study.random_init is not None:
        return _verdict_with_control(study, rows)
    ref, others = study.labels[0], study.labels[1:]
    lines = []
    for label in others:
        for key, name in (("bbox_mAP", "box AP"), ("segm_mAP", "mask AP")):
            text, lo, hi = diff_text(per_seed(rows, label, key), per_seed(rows, ref, key))
            said = {
                "?": " (no interval: fewer than two seeds on a side).",
                "beats": f": **{label} backbones are better** at this scale.",
                "loses to": f": **{label} backbones are worse** at this scale.",
                "matches": ": **no difference distinguishable from seed noise** at this scale.",
            }[_word(lo, hi)]
            lines.append(f"- {label} vs {ref}, {name}: {text}{said}")
    best = max((r["bbox_mAP_50"] for r in rows if r["bbox_mAP_50"] is not None), default=None)
    if best is not None and best < LEARNED_AP50:
        lines.append(
            f"- **The detectors barely learned**: box AP50 is under {LEARNED_AP50:g}% in every run (the "
            f"best {best:.1f}%). At this scale and schedule the comparison measures the noise of heads near "
            f"their prior, not the backbones; it neither supports nor refutes a detection advantage."
        )
    return lines


def measured(ref_ap50: list[float], control_ap50: list[float], ref: str, control: str) -> tuple[bool, str]:
    """Whether backbones are being measured (issue 34): the reference's mean box AP50 (per pretraining seed) is at
    least :data:`MEASURED_AP50` and above the control's beyond seed noise (the Welch 95% interval of reference −
    control lies above 0). Returns the answer and the sentence that says why."""
    if len(ref_ap50) < 2 or len(control_ap50) < 2:
        return False, (
            f"**Backbones are not shown to be measured**: {ref} has {len(ref_ap50)} and {control} "
            f"{len(control_ap50)} finished seed(s); the test needs two or more on each side."
        )
    mean = statistics.mean(ref_ap50)
    text, lo, _ = diff_text(ref_ap50, control_ap50)
    high = mean >= MEASURED_AP50
    above = lo is not None and lo > 0
    facts = (
        f"{ref}'s mean box AP50 is {mean:.1f} ({'≥' if high else '<'} {MEASURED_AP50:g}) and {ref} − {control} is "
        f"{text} ({'above 0' if above else 'not above 0'} beyond seed noise)"
    )
    if high and above:
        return True, f"**Backbones are being measured**: {facts}."
    return False, f"**Backbones are not being measured**: {facts}."


def _word(lo: float | None, hi: float | None) -> str:
    """beats / loses to / matches, from the Welch interval of other − reference; `?` without an interval."""
    if lo is None:
        return "?"
    return "beats" if lo > 0 else "loses to" if hi < 0 else "matches"


def claim_words(rows: list[dict], label: str, ref: str, level: float = CLAIM_LEVEL) -> list[tuple[str, str, str]]:
    """(metric name, difference with its interval at ``level``, beats / matches / loses to / ?) of ``label`` vs
    ``ref`` on each of :data:`VERDICT_METRICS`."""
    out = []
    for key, name in VERDICT_METRICS:
        text, lo, hi = diff_text(per_seed(rows, label, key), per_seed(rows, ref, key), level)
        out.append((name, text, _word(lo, hi)))
    return out


def claim(words: list[str]) -> str:
    """The claim "these backbones are better" from the per-metric words: supported when they beat the reference on
    a metric and lose on none, refuted when they lose on one and beat on none, open otherwise (all within seed noise,
    mixed, or too few seeds)."""
    if "beats" in words and "loses to" not in words:
        return "supported"
    if "loses to" in words and "beats" not in words:
        return "refuted"
    return "still open"


def _verdict_with_control(study, rows: list[dict]) -> list[str]:
    ref, *others = pretrained(study)
    control = study.random_init["label"]
    ok, why = measured(per_seed(rows, ref, "bbox_mAP_50"), per_seed(rows, control, "bbox_mAP_50"), ref, control)
    lines = [f"- {why}"]
    if not ok:
        return lines + [
            f"- So the claim ({', '.join(others)} backbones better than {ref} for detection) is **still open** at this "
            f"scale: the differences between pretrained backbones above are not read."
        ]
    for label in others:
        words = []
        for name, text, word in claim_words(rows, label, ref):
            words.append(word)
            said = {
                "?": "no interval (fewer than two seeds on a side)",
                "matches": f"{label} matches {ref} (no difference distinguishable from seed noise)",
            }.get(word, f"{label} {word} {ref}")
            lines.append(f"- {label} vs {ref}, {name}: {text}: **{said}**.")
        lines.append(
            f"- The claim ({label} backbones better than {ref} for detection) is **{claim(words)}** at this scale "
            f"(Welch intervals over pretraining seeds at {CLAIM_LEVEL:.2%} each, 95% family-wise over the "
            f"{len(VERDICT_METRICS)} metrics (Bonferroni); supported: better on a metric and worse on none)."
        )
    return lines
