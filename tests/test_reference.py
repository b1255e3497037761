"""The README's reference quickstart table quotes the committed report: every number in it equals
results/quickstart/report/table.csv at the precision the README prints."""

import math
import re

import pandas as pd
import pytest

from conftest import ROOT

REPORT = ROOT / "results" / "quickstart" / "report" / "table.csv"
COLUMNS = {"val loss": "train|val_loss", "agreement acc": "ablate_agreement|acc",
           "average acc (chance-adj.)": "average|acc_chance_adj", "params (non-emb.)": "train|non_embedding_params",
           "KV bytes/token": "train|kv_bytes_per_token",
           **{f"ppl {x}": f"extrapolation_{x}|perplexity" for x in ("0.5x", "1x", "2x", "4x", "8x")}}


def readme_table() -> pd.DataFrame:
    text = (ROOT / "README.md").read_text().split("### The reference quickstart result")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    header, body = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    return pd.DataFrame(body, columns=header).set_index("variant")


def test_readme_quotes_the_committed_reference():
    quoted, report = readme_table(), pd.read_csv(REPORT, index_col=0)
    assert list(quoted.index) == list(report.index)
    for label, key in COLUMNS.items():
        for variant, text in quoted[label].items():
            value = float(report.loc[variant, key])
            if text == "n/a":
                assert math.isnan(value), (variant, label)
                continue
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert float(text.replace(",", "")) == pytest.approx(round(value, decimals), abs=1e-9), (variant, label)


def test_every_quoted_column_is_checked():
    assert set(readme_table().columns) == set(COLUMNS)
    assert re.search(r"\d+m\d+s for all 8 runs here", (ROOT / "README.md").read_text())
