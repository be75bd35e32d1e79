"""What the report claims, in words and one table per depth: each configuration's mean top-1 with its 95 %
interval, each arm's paired difference from the plain ResNet, and one headline sentence per depth that says
what those intervals support and nothing more (the numbers come from `suite.report.stats`)."""

from __future__ import annotations

from collections import Counter

from suite.report.cells import config_table, runs_cell, setup_cell, where
from suite.report.data import Config, fmt_eps
from suite.report.document import DASH, Table, fmt_bounds, fmt_num, fmt_pm
from suite.report.stats import BETTER, WORSE, Paired, is_plain, joint_half, top1_bar, top1_ci
from suite.vocab import PURGE_MATCH

NO_CONCLUSION = "no conclusion"
HEADERS = (
    "configuration",
    "setup",
    "runs",
    "top-1 mean (%)",
    "std (pp)",
    "95 % CI of the mean (%)",
    "paired Δ vs ResNet (pp)",
    "pairs",
    "verdict",
)
NOTES = (
    "Top-1 mean: the arithmetic mean over every ok run (no olympic trimming: the interval is of this mean); "
    "std: the sample standard deviation (n − 1).",
    "95 % CI of the mean: mean ± t(0.975, n − 1) · std / √n, Student t with n − 1 degrees of freedom.",
    "1 run: no spread to estimate, so the interval is that run's binomial (Wilson 95 %) interval from its "
    "test-set size, and no conclusion is drawn from it.",
    "Paired Δ: this configuration's top-1 − that of the plain ResNet (`variant: resnet`, no side head) of the "
    "same setup, repeat by repeat over the repeats ok in both (pairs), as mean ± its 95 % t-interval (pairs − 1 "
    "degrees of freedom).",
    "Verdict: better or worse when that interval lies wholly above or below 0, no significant difference when "
    "it covers 0; fewer than 2 pairs: no conclusion.",
)


def _pp(value: float, digits: int = 2) -> str:
    return fmt_num(abs(value), digits, 100)


def ci_cell(c: Config) -> str:
    ci = top1_ci(c)
    if ci is None:
        return DASH
    if ci.half is None:
        bounds = top1_bar(c)  # None: the row has no test_images to size a binomial interval by
        return (
            f"1 run: {fmt_bounds(bounds, 2, 100)} (test set)" if bounds else "1 run (test-set size unknown)"
        )
    return fmt_pm(ci.mean, ci.half, 2, 100)


def _paired_cells(c: Config, paired: Paired | None) -> tuple[str, str, str]:
    if is_plain(c):
        return "baseline", DASH, DASH
    if paired is None:
        return DASH, DASH, "no plain ResNet of this setup"
    if paired.diff is None:
        return DASH, "0", f"{NO_CONCLUSION} (no repeat ok in both)"
    value = fmt_pm(paired.diff.mean, paired.diff.half, 2, 100, signed=True)
    return value, str(paired.pairs), paired.verdict or f"{NO_CONCLUSION} (1 pair)"


def top1_table(members: list[Config], varying: list[str], paired: dict[str, Paired], explain: bool) -> Table:
    """One row per configuration; `explain`: the legend, under the first depth's table only (it is the same
    for every depth)."""
    rows = []
    for c in members:
        ci = top1_ci(c)
        rows.append(
            (
                c.label,
                setup_cell(c, varying),
                runs_cell(c),
                DASH if ci is None else fmt_num(ci.mean, 2, 100),
                DASH if ci is None or ci.std is None else fmt_num(ci.std, 2, 100),
                ci_cell(c),
                *_paired_cells(c, paired.get(c.key)),
            )
        )
    notes = NOTES if explain else ("Columns as in the first depth's table.",)
    return config_table("Top-1 over repeats, and against the plain ResNet", HEADERS, rows, varying, notes)


# ----------------------------------------------------------------------------------------------------------
def arm_phrase(c: Config) -> str:
    """The arm in a few words, the depth left out (the sentence starts with it)."""
    inside = ", ".join(
        ([f"ε = {fmt_eps(c.epsilon)}"] if c.epsilon is not None else [])
        + ([] if c.lr_reset else ["no LR restarts"])
    )
    parent = "ε-ResNet" + (f" ({inside})" if inside else "")
    side = " with the side head" if c.side_head else ""
    if c.variant == "eps":
        return parent + ("" if c.side_head else " without the side head")
    if c.variant == "scratch":
        return f"{parent}'s pruned architecture re-trained from scratch{side}"
    if c.variant == "posthoc":
        k = (
            f"as many blocks as {parent} discarded"
            if c.purge_blocks == PURGE_MATCH
            else f"k = {c.purge_blocks}"
        )
        tune = f", fine-tuned {c.spec['finetune_epochs']} ep" if c.spec.get("finetune_epochs") else ""
        return f"the post-hoc purge ({k}{tune}){side}"
    return "the plain ResNet" + (" + side head" if c.side_head else "")


def _clause(phrase: str, paired: Paired | None, against: str = "the plain ResNet") -> str:
    if paired is None:
        return f"{phrase}: no plain ResNet of the same setup to compare with"
    if paired.diff is None:
        return f"{phrase}: no repeat finished ok in both, {NO_CONCLUSION}"
    if paired.diff.half is None:
        single = len(paired.arm.ok_runs) == 1 and len(paired.base.ok_runs) == 1
        return f"{phrase}: {'single runs' if single else 'one paired repeat'}, {NO_CONCLUSION}"
    d = paired.diff
    side = "above" if d.mean > 0 else "below" if d.mean < 0 else "level with"
    return (
        f"{phrase} is {_pp(d.mean)} ± {_pp(d.half)} pp {side} {against} over {paired.pairs} paired "
        f"repeats — {paired.verdict}"
    )


def headline_sentence(title: str, members: list[Config], paired: dict[str, Paired], many_grids: bool) -> str:
    """`ResNet-50: ε-ResNet (ε = 0.5) is 0.21 ± 0.34 pp below the plain ResNet over 3 paired repeats — no
    significant difference; …`: one clause per arm, in the order of the tables."""
    arms = [c for c in members if not is_plain(c) and c.ok_runs]
    if not arms:
        return f"{title}: only plain ResNet runs, nothing to compare."
    phrases = [arm_phrase(c) for c in arms]
    twice = {p for p, n in Counter(phrases).items() if n > 1}
    clauses = []
    for c, phrase in zip(arms, phrases, strict=True):
        if phrase in twice:  # the same arm in two setups (world sizes, launchers): say which
            phrase = f"{phrase} ({where(c, many_grids)})"
        clauses.append(_clause(phrase, paired.get(c.key)))
    return f"{title}: " + "; ".join(clauses) + "."


def parent_sentence(title: str, members: list[Config], parents: dict[str, Paired]) -> str | None:
    """`ResNet-50 against the ε parent (same seed and select split): …`; None when no child has its parent."""
    children = [c for c in members if c.key in parents]
    if not children:
        return None
    clauses = [_clause(arm_phrase(c), parents[c.key], "its ε parent") for c in children]
    return f"{title} against the ε parent (same seed and select split): " + "; ".join(clauses) + "."


def depth_sentences(
    title: str, members: list[Config], paired: dict[str, Paired], parents: dict[str, Paired], many_grids: bool
) -> list[str]:
    """The headline of one depth: its arms against the plain ResNet, then its children against their parent."""
    against_parent = parent_sentence(title, members, parents)
    return [headline_sentence(title, members, paired, many_grids)] + (
        [against_parent] if against_parent else []
    )


def multiplicity_sentence(comparisons: list[tuple[str, Paired]]) -> str | None:
    """What the headline's verdicts are worth together. Each of its N intervals is at 95 %, so with no
    difference anywhere about N/20 of them would still read better or worse; held to 95 % jointly
    (Bonferroni), this says which better/worse verdicts stand. `comparisons`: (what is compared, its pairing)
    for every paired comparison the headline makes; those without an interval (under 2 pairs) do not count.
    None under two comparisons."""
    counted = [(name, p) for name, p in comparisons if p.diff is not None and p.diff.half is not None]
    n = len(counted)
    if n < 2:
        return None
    decided = [(name, p) for name, p in counted if p.verdict in (BETTER, WORSE)]
    stand, fall = [], []
    for name, p in decided:
        half = joint_half(p.diff, n)
        text = f"{name}, {fmt_pm(p.diff.mean, half, 2, 100, signed=True)} pp"
        (stand if abs(p.diff.mean) > half else fall).append(text)
    opening = (
        f"Multiplicity: the sentences above make {n} paired comparisons, each at 95 %; were there no "
        f"difference anywhere, about {fmt_num(n / 20, 1)} of them would still read better or worse."
    )
    if not decided:
        return f"{opening} None of them reads better or worse."
    joint = (
        f" Held to 95 % together (Bonferroni: each interval at t(1 − 0.05/{2 * n}), pairs − 1 degrees of "
        f"freedom), {len(stand)} of the {len(decided)} better/worse verdicts stand"
    )
    return (
        opening
        + joint
        + (": " + "; ".join(stand) if stand else "")
        + (". These fall to no significant difference: " + "; ".join(fall) if fall else "")
        + "."
    )
