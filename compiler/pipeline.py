"""The one mobilec Relax pipeline, used by every build. Read top to bottom; phases are named.

  Phase 1 canonicalize  quantised (QDQ) convolutions and matrix products made integer kernels,
                        and where one's output is read back less its zero point, the zero
                        point's add and subtract dropped (cancel_zero_points.py);
                        exporters' leftovers removed: BN decomposed, constants folded; every
                        convolution converted to NHWC and the transposes this leaves (and those
                        NHWC exporters leave) cancelled, so the network converts once at its input;
                        channel-wise ops after a concatenation moved onto its parts
                        (through_concat.py) and batch norms no exporter folded folded into the
                        convolutions (fold_affine.py);
                        on CPUs with wider vectors for some kernels (AVX-512), hidden channel counts
                        padded to whole wide vectors where that is exact (pad_channels.py)
  Phase 2 fuse          mobilec's named fusions (SE, conv/dense epilogues, h-swish, h-sigmoid);
                        the scalar constants they read (scales) bound into them (bind_scalars.py)
  Phase 3 lower         ops to TIR (bilinear resizes as two 1-D passes; concatenations as one
                        copy per input (concat.py); QuantizeLinear and division
                        by one value as multiply-adds rounded exactly as the division:
                        exact_division.py; exp, sigmoid, tanh, erf and softmax as vectorisable
                        polynomials: fast_math.py); what no rule claimed is
                        fused by TVM's generic FuseOps;
                        float weights marked layout-free, integer ones packed (folded)
  Phase 4 schedule      kernels from the tuning database where it has them, mobilec's default
                        schedules for the rest (schedules/defaults.py); the weights each
                        schedule lays out for its own tiles packed at compile time
  Phase 5 finalize      TVM's CPU dataflow lowering and VM finalization
  then, for the kernels, TVM's TIR lowering with register tiles on the stack, not in the
  workspace pool (schedules/lowering.py; ``build`` runs both)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from mobilec import stops
from mobilec.compiler.bind_scalars import BindScalarConstants
from mobilec.compiler.cancel_zero_points import CancelZeroPoints
from mobilec.compiler.concat import legalize_concat
from mobilec.compiler.exact_division import LEGALIZE as EXACT_DIVISION
from mobilec.compiler.fast_math import LEGALIZE as FAST_MATH
from mobilec.compiler.fold_affine import FoldAffine
from mobilec.compiler.fusions import RULES, CancelTransposes
from mobilec.errors import ConfigError
from mobilec.compiler.pack_weights import PackConvWeights, pack_kernel_weights
from mobilec.compiler.pad_channels import PadChannels
from mobilec.compiler.quantized import integer_kernels
from mobilec.compiler.report import FusionReport
from mobilec.compiler.resize import TransposeBeforeUpsample, legalize_resize2d
from mobilec.compiler.through_concat import MoveThroughConcat
from mobilec.schedules.lowering import TIR_PIPELINE
from mobilec.schedules.database import for_target
from mobilec.schedules.defaults import apply_defaults, is_scheduled
from mobilec.targets import cpu_params

PIPELINE_NAME = "mobilec"
Progress = Callable[[str, str, int, int], None]
"""progress(stage, detail, n, of): a phase as it starts (detail "", n of the phases), or one kernel
of phase 4 as it is scheduled (detail: the kernel, n of the kernels); then "code generation" (TIR
lowering and LLVM, the longest step; n = of = 0: no count)."""
log = logging.getLogger("mobilec.compiler")


@dataclass
class PipelineOptions:
    tuning_db: Optional[str] = None
    dump_ir: Optional[str] = None
    fuse: bool = True  # False: phase 2 skipped (benchmarks compare fused against unfused)
    default_schedules: bool = True  # False: untuned kernels left to TVM's plain lowering
    layout: str = "NHWC"  # the activations' layout through the whole network ("NCHW": as imported)
    integer: bool = True  # False: a quantised (QDQ) model runs in float, dequantising as the file says
    report: FusionReport = field(default_factory=FusionReport)
    tuned_kernels: int = 0  # set by phase 4: kernels whose schedule came from the database
    kernels: int = 0  # set by phase 4: all kernels (the database could have matched any of them)
    default_kernels: dict = field(default_factory=dict)  # set by phase 4: kernel -> defaults.Scheduled
    progress: Optional[Progress] = field(default=None, repr=False, compare=False)  # told each phase and kernel


def _dump(directory: Optional[str], index: int, phase: str) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name=f"mobilec.Dump{phase}")
    def dump(mod, _ctx):
        path = Path(directory) / f"{index:02d}_{phase}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mod.script(show_meta=False))
        return mod

    return dump if directory else tvm.transform.Sequential([])


LAYOUTS = ("NHWC", "NCHW")


def _announce(progress: Optional[Progress], phase: str, n: int, of: int) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name=f"mobilec.Announce.{phase}")
    def announce(mod, _ctx):
        if progress is not None:
            progress(phase, "", n, of)
        return mod

    return announce


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")


def _convert_layout(layout: str) -> tvm.transform.Pass:
    """Every convolution in ``layout`` (NHWC: channels innermost, so each kernel vectorises over
    channels at any map size); the transposes this leaves around layout-agnostic ops are sunk and
    cancelled by CancelTransposes, so the network converts once at its input and once where the
    map is pooled to 1x1. A graph with no NCHW convolution is left alone, and so is one TVM's
    layout pass cannot convert (logged): its kernels run as imported."""
    check_layout(layout)

    @tvm.transform.module_pass(opt_level=0, name="mobilec.ConvertLayout")
    def convert(mod, _ctx):
        if layout == "NCHW" or not _has_nchw_conv(mod):
            return mod
        try:
            return relax.transform.ConvertLayout({"relax.nn.conv2d": [layout, "HWIO"]})(mod)
        except tvm.TVMError as e:
            log.warning("kept the imported NCHW layout: TVM's ConvertLayout failed (%s)",
                        str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            return mod

    return convert


def _has_nchw_conv(mod: tvm.IRModule) -> bool:
    found = []

    def visit(expr):
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.nn.conv2d"
                and expr.attrs.data_layout == "NCHW"):
            found.append(expr)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _count(report: FusionReport) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="mobilec.CountFusions")
    def count(mod, _ctx):
        report.count(mod)
        return mod

    return count


def _count_tuned(opts: PipelineOptions) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="mobilec.CountTunedKernels")
    def count(mod, _ctx):
        kernels = [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        opts.tuned_kernels = sum(1 for f in kernels if is_scheduled(f))
        opts.kernels = len(kernels)
        return mod

    return count


def _apply_database(path: str, target: tvm.target.Target) -> tvm.transform.Pass:
    """Kernels from the tuning database in ``path``, its records for this target only. Opened here,
    checked line by line (a corrupt file is one error naming file, line and fix), and made current
    for TVM's pass: given the directory instead, TVM opens it itself and prints a raw "Warning:
    Creating JSONDatabase" line, and applies records measured on any target."""
    @tvm.transform.module_pass(opt_level=0, name="mobilec.ApplyTuningDatabase")
    def apply(mod, _ctx):
        with target, for_target(path, target):
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    return apply


def phases(target: tvm.target.Target, opts: PipelineOptions) -> list[tuple[str, list]]:
    cpu = cpu_params(target)  # what the kernels' passes read of the CPU, derived once
    fusion = relax.transform.FuseOpsByPattern(
        [r.fusion_pattern(opts.report.refuse) for r in RULES], bind_constants=False, annotate_codegen=False)
    return [
        ("canonicalize", [
            integer_kernels(opts.report, cpu) if opts.integer else tvm.transform.Sequential([]),  # before folding DQ(W)
            CancelZeroPoints(),  # requantised then dequantised: the zero point's add and subtract dropped
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.FoldConstant(),
            _convert_layout(opts.layout),
            CancelTransposes(),  # before fusion: transposes would split conv from its epilogue
            relax.transform.EliminateCommonSubexpr(),  # one transpose of an input read twice
            TransposeBeforeUpsample(),  # LR-ASPP's NCHW output: transposed at 64x64, not 512x512
            relax.transform.FoldConstant(),
            MoveThroughConcat(),  # a concatenation's batch norm and activation onto its parts
            FoldAffine(),  # batch norms no exporter folded: into the convolutions' weights
            PadChannels(cpu.wide_lanes) if opts.layout == "NHWC"
            else tvm.transform.Sequential([]),
            PackConvWeights() if opts.default_schedules else tvm.transform.Sequential([]),
            relax.transform.DeadCodeElimination(),
        ]),
        ("fuse", [fusion if opts.fuse else tvm.transform.Sequential([]),
                  BindScalarConstants(),  # scales fold into the kernels (exact_division.py)
                  _count(opts.report)]),
        ("lower", cpu_generic.library_dispatch_passes(target) + [
            relax.transform.LegalizeOps(  # the rest: TVM's
                {"relax.image.resize2d": legalize_resize2d, "relax.concat": legalize_concat,
                 **EXACT_DIVISION, **FAST_MATH}),
        ] + cpu_generic.legalize_passes(target) + [
            pack_kernel_weights(cpu) if opts.default_schedules else tvm.transform.Sequential([]),
        ]),
        ("schedule", [
            _apply_database(opts.tuning_db, target) if opts.tuning_db else tvm.transform.Sequential([]),
            _count_tuned(opts),  # before the defaults: they mark what they schedule the same way
            apply_defaults(cpu, opts.default_kernels,
                           (lambda k, n, of: opts.progress("schedule", k, n, of)) if opts.progress else None)
            if opts.default_schedules
            else tvm.transform.Sequential([]),
            relax.transform.SplitLayoutRewritePreproc(),  # each schedule's weight packing, split off
            relax.transform.FoldConstant(),  # and evaluated here, at compile time
            relax.transform.DeadCodeElimination(),  # the packing functions, now unused
        ]),
        ("finalize", cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)),
    ]


def run_until(mod: tvm.IRModule, target: tvm.target.Target, opts: PipelineOptions, last: str) -> tvm.IRModule:
    """Run the phases up to and including ``last``: "fuse" for inspection, "lower" for tuning
    (the kernels tuning extracts are exactly the ones a build schedules)."""
    with target, stops.inside_tvm():  # TVM calls mobilec's Python passes
        for name, passes in phases(target, opts):
            mod = tvm.transform.Sequential(passes)(mod)
            if name == last:
                return mod
    raise ValueError(f"no pipeline phase {last!r}")


def pipeline(target: tvm.target.Target, opts: Optional[PipelineOptions] = None) -> tvm.transform.Pass:
    opts = opts or PipelineOptions()

    @tvm.transform.module_pass(opt_level=0, name="mobilec.Pipeline")
    def run(mod, _ctx):
        with target:  # some passes (MetaScheduleApplyDatabase) read the target when constructed
            passes = []
            steps = phases(target, opts)
            for i, (phase, ps) in enumerate(steps, start=1):
                passes += [_announce(opts.progress, phase, i, len(steps))] + ps + [_dump(opts.dump_ir, i, phase)]
            passes.append(_announce(opts.progress, "code generation", 0, 0))  # TVM's TIR lowering and LLVM, next
            return tvm.transform.Sequential(passes)(mod)

    return run


def build(mod: tvm.IRModule, target: tvm.target.Target, opts: Optional[PipelineOptions] = None):
    """The executable of an imported module: this Relax pipeline, then mobilec's TIR lowering."""
    with stops.inside_tvm():  # TVM calls mobilec's Python passes
        return tvm.compile(mod, target=target, relax_pipeline=pipeline(target, opts), tir_pipeline=TIR_PIPELINE)


@relax.register_pipeline(PIPELINE_NAME)
def _registered(target: tvm.target.Target = None, **kwargs) -> tvm.transform.Pass:
    """``tvm.compile(mod, target, relax_pipeline=relax.get_pipeline("mobilec", target=target))``."""
    return pipeline(target or tvm.target.Target.current(), PipelineOptions(**kwargs))
