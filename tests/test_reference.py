"""The README's reference quickstart tables quote the committed report: every number in them equals
results/quickstart/report/table.csv (means and interval half-widths) or noise.csv (signal-to-noise
ratios) at the precision the README prints."""

import math
import re

import pandas as pd
import pytest

from conftest import ROOT

REPORT = ROOT / "results" / "quickstart" / "report"
COLUMNS = {"val loss": "train|val_loss", "length acc": "ablate_length|acc", "nesting acc": "ablate_nesting|acc",
           "agreement acc": "ablate_agreement|acc", "recall acc": "ablate_recall|acc",
           **{f"ppl {x}": f"extrapolation_{x}|perplexity" for x in ("1x", "2x", "8x")}}
PROBE_COLUMNS = {"chance", "best", "best acc", "SNR"}


def section_tables(heading: str) -> list[pd.DataFrame]:
    """The pipe tables of the README's section under `heading`, up to the next `## ` (cells split on
    unescaped pipes)."""
    text = (ROOT / "README.md").read_text().split(f"{heading}\n")[1].split("\n## ")[0]
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
        elif rows:
            header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            tables.append(pd.DataFrame(body, columns=header))
            rows = []
    return tables


def readme_tables() -> list[pd.DataFrame]:
    """The reference quickstart's tables, indexed by their first column."""
    return [t.set_index(t.columns[0]) for t in section_tables("### The reference quickstart result")]


def check(text: str, value: float, label: str) -> None:
    """`text` is `value` at the precision it is printed with (n/a: no value)."""
    if text == "n/a":
        assert math.isnan(value), label
        return
    decimals = len(text.split(".")[1]) if "." in text else 0
    assert float(text.replace(",", "")) == pytest.approx(round(value, decimals), abs=1e-9), (label, text, value)


def test_readme_quotes_the_committed_reference():
    variants, probes = readme_tables()
    report = pd.read_csv(REPORT / "table.csv", index_col=0)
    assert list(variants.index) == list(report.index)
    for label, key in COLUMNS.items():
        for variant, text in variants[label].items():
            mean, _, half = text.partition(" ± ")
            check(mean, float(report.loc[variant, key]), f"{variant} {label}")
            if half:
                high = float(report.loc[variant, f"{key}|high"])
                check(half, high - float(report.loc[variant, key]), f"{variant} {label} ±")
    noise = pd.read_csv(REPORT / "noise.csv", index_col=0)
    for probe, row in probes.iterrows():
        key = f"ablate_{probe.strip('`')}|acc"
        best = report[key].idxmax()
        assert row["best"] == f"`{best}`", probe
        mean, _, half = row["best acc"].partition(" ± ")
        check(mean, float(report.loc[best, key]), f"{probe} best")
        check(half, float(report.loc[best, f"{key}|high"] - report.loc[best, key]), f"{probe} best ±")
        check(row["SNR"], float(noise.loc[key, "snr"]), f"{probe} SNR")
    header = (REPORT / "table.md").read_text()
    for probe, row in probes.iterrows():
        assert f"{probe.strip('`')} acc (chance {row['chance']}" in header, probe


def test_every_quoted_column_is_checked():
    variants, probes = readme_tables()
    assert set(variants.columns) == set(COLUMNS) and set(probes.columns) == PROBE_COLUMNS
    assert set(probes.index) == {"`agreement`", "`nesting`", "`length`", "`recall`", "`copy`"}
    assert re.search(r"\d+m\d+s for all 12 runs", (ROOT / "README.md").read_text())


def test_the_verdict_quoted_in_the_readme_is_the_reports():
    text = (ROOT / "README.md").read_text().split("**The verdict**")[1].split("**Each probe")[0]
    table = (REPORT / "table.md").read_text()
    numbers = re.findall(r"\d+\.\d{3}", text)
    assert len(numbers) >= 12 and all(n in table for n in numbers), [n for n in numbers if n not in table]


def test_readme_quotes_the_committed_distillation_result():
    (_, result) = section_tables("## Distillation")
    report = pd.read_csv(ROOT / "results" / "distillation" / "report" / "table.csv", index_col=0)
    for _, row in result.iterrows():
        variant = row["variant"].split("`")[1]
        mean, _, rest = row["val_loss (3 seeds)"].partition(" ± ")
        check(mean, float(report.loc[variant, "train|val_loss"]), variant)
        half = report.loc[variant, "train|val_loss|high"] - report.loc[variant, "train|val_loss"]
        check(rest.split()[0], float(half), f"{variant} ±")
        check(row["tokens/s"], float(report.loc[variant, "train|tokens_per_s"]), f"{variant} tokens/s")


def test_readme_quotes_the_committed_tokenizer_study():
    (table,) = [t for t in section_tables("## Tokenizers") if "breaking the rule" in t.columns]
    study = pd.read_csv(ROOT / "results" / "tokenizers" / "manpages" / "fertility.csv")
    for _, row in table.iterrows():
        part = study[study.vocab_size == int(row["vocabulary"].replace(",", ""))]
        for column, decision in (("breaking the rule", "yes"), ("undecided", "undecided")):
            found = part[part.breaks_rule == decision].language.tolist()
            expected = (f"all {len(part)}" if len(found) == len(part) else
                        f"{', '.join(found)} ({len(found)})" if found else "none")
            assert row[column] == expected, (column, row[column], expected)
        low, high = part.loc[part.ratio.idxmin()], part.loc[part.ratio.idxmax()]
        assert row["ratio range"] == f"{low.ratio:.3f} ({low.language}) - {high.ratio:.3f} ({high.language})"


def test_the_reference_verdict_and_its_marks_agree():
    """The committed report's verdict calls a variant better or worse exactly where comparisons.csv
    marks it (the primary family, Holm); no metric outside the family gets a verdict."""
    comps = pd.read_csv(REPORT / "comparisons.csv")
    text = (REPORT / "table.md").read_text().split("## Verdict")[1].split("\n## ")[0]
    lines = [line for line in text.splitlines() if line.startswith("- **")]
    primary = comps[comps.family == "primary"]
    assert len(lines) == primary.metric.nunique() and comps.significant[comps.family != "primary"].isna().all()
    labels = {"train|val_loss": "val_loss", "extrapolation|ratio_8x": "extrapolation"}
    for metric, rows in primary.groupby("metric"):
        label = labels.get(metric, metric.split("|")[0].removeprefix("ablate_") + " " + metric.split("|")[1])
        (line,) = [x for x in lines if x.startswith(f"- **{label}**")]
        for r in rows.itertuples():
            if metric.startswith("extrapolation|ratio"):
                part = line.split(f"`{r.variant}` ")[1].split(";")[0]
                assert part.endswith("*") == bool(r.significant), (r.variant, part)
            else:
                said = next(s.split(":")[0] for s in line.split("): ", 1)[1].split("; ") if f"`{r.variant}`" in s)
                assert (said in ("better", "worse")) == bool(r.significant), (metric, r.variant, said)
