"""What the arms hold equal and each confound, from the sweep's plan (fairness.json), and the
per-byte comparison where the arms' tokenizers differ."""

from __future__ import annotations

from ablate.report.parts import Bullets, Context, Heading, Part, Section


class Fairness(Section):
    name = "fairness"

    def build(self, ctx: Context) -> Part:
        lines = found_lines(ctx)
        return Part([Heading("Fairness"), Bullets(lines)] if lines else [])


def found_lines(ctx: Context) -> list[str]:
    found = ctx.experiment.fairness()
    if found is None:
        lines = ["not planned by `ablate-train -m`: the arms were not checked for confounds"]
    else:
        lines = [f"**{c}**" for c in found.get("confounds", [])]
        if not lines and len(found.get("arms", [])) > 1:
            axes = ", ".join(f"`{a}`" for a in found.get("axes", [])) or "nothing"
            lines.append(f"no confound: the arms' configs differ only in {axes}")
        lines += found.get("notes", [])
    per_byte = ctx.analysis.tokenizers
    if per_byte:
        lines.append("the arms use different tokenizers (" + ", ".join(f"`{f}`" for f in per_byte)
                     + "): losses are compared in bits per byte of the held-out text (val bits/byte); per-token "
                     "loss and perplexities are shown but not compared, since a token is not the same unit "
                     "across them")
    return lines
