"""The fusion report: which patterns matched how often, and which near misses were refused and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import tvm
from tvm import relax


@dataclass
class FusionReport:
    matched: dict[str, int] = field(default_factory=dict)
    refused: list[dict] = field(default_factory=list)  # {"pattern", "node", "reason"}
    int8: dict[str, int] = field(default_factory=dict)  # quantised ops compiled as integer kernels, by op
    float_quantized: list[dict] = field(default_factory=list)  # {"op", "reason"}: quantised ops left float

    def refuse(self, pattern: str, ctx, reason: str) -> None:
        node = str(ctx.value_to_bound_var.get(ctx.matched_expr, "")) or type(ctx.matched_expr).__name__
        entry = {"pattern": pattern, "node": node, "reason": reason}
        if entry not in self.refused:  # the matcher may ask twice about the same node
            self.refused.append(entry)

    def count(self, mod: tvm.IRModule) -> None:
        """Count call sites (identical fused functions are shared between them)."""
        composite = {gv.name_hint: str(f.attrs["Composite"]) for gv, f in mod.functions.items()
                     if isinstance(f, relax.Function) and f.attrs and "Composite" in f.attrs}
        names = Counter()
        for _, func in mod.functions.items():
            if not isinstance(func, relax.Function) or (func.attrs and "Composite" in func.attrs):
                continue
            for block in func.body.blocks:
                for binding in block.bindings:
                    value = binding.value
                    if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar) \
                            and value.op.name_hint in composite:
                        names[composite[value.op.name_hint]] += 1
        self.matched = dict(sorted(names.items()))

    @property
    def totals(self) -> dict[str, int]:
        """Per nonlinearity/block: h-swish, h-sigmoid, SE, ... wherever they were fused."""
        t = Counter()
        for name, n in self.matched.items():
            for key in ("hswish", "hsigmoid", "silu", "relu6", "relu", "se", "residual"):
                if name.endswith(key) or name.endswith(f"_{key}") or name == f"mobilec.{key}":
                    t[key] += n
                    break
        return dict(t)

    def to_dict(self) -> dict:
        return {"matched": self.matched, "totals": self.totals, "refused": self.refused, "int8": self.int8,
                "float_quantized": self.float_quantized}
