"""One layout for the whole network: convolutions converted to NHWC once, the transposes around
layout-agnostic ops cancelled, pointwise weights packed per vector tile at compile time; the
imported NCHW layout still builds and matches (``layout="NCHW"``)."""

import itertools

import pytest

from graphs import assert_matches_onnxruntime
from graphs import depthwise_graph, kernel_zoo, pointwise_graph


@pytest.mark.structure
@pytest.mark.parametrize("lanes,registers", [(8, 16), (4, 32), (4, 16), (16, 32)])
def test_nhwc_pointwise_tiles_fit_the_register_file_and_divide_the_axes(lanes, registers):
    from mobilec.schedules.defaults import CpuParams
    from mobilec.schedules.kernels.pointwise import nhwc_tiles

    cpu = CpuParams(lanes, registers, 2)
    for f, x, k in itertools.product((16, 24, 40, 72, 120, 160, 672, 960), (7, 14, 28, 56, 112), (16, 96, 960)):
        score, rows, pixels, vectors = nhwc_tiles(x, x, f, k, cpu)
        if f % lanes:  # no whole vector of channels: the schedule takes the row of channels whole
            assert (score, rows, pixels, vectors) == (0.0, 1, 1, 0)
            continue
        assert vectors and f % (vectors * lanes) == 0 and x % rows == 0 and x % pixels == 0, (f, x, rows, vectors)
        assert rows * pixels * vectors + vectors + 1 <= registers, (f, x, rows, vectors)  # no spilled accumulator
        assert score > 0
    assert nhwc_tiles(7, 7, 12, 16, CpuParams(8, 16, 2)) == (0.0, 1, 1, 0)  # no whole vector of channels


@pytest.mark.structure
def test_nhwc_pointwise_tiles_share_broadcasts_between_vectors():
    """Where the channels allow, a block of pixels x several vectors (each broadcast input feeds
    several FMAs), not one long row x one vector (measured 1.3x slower on AVX2)."""
    from mobilec.schedules.defaults import CpuParams
    from mobilec.schedules.kernels.pointwise import nhwc_tiles

    cpu = CpuParams(8, 16, 2)
    for y, f, k in [(14, 672, 112), (14, 112, 672), (56, 72, 24), (28, 120, 40)]:
        _, rows, pixels, vectors = nhwc_tiles(y, y, f, k, cpu)
        assert vectors >= 2 and rows * pixels * vectors >= 8, (y, f, k, rows, pixels, vectors)
    # no second vector divides 184 channels: one vector, the longest row that fits
    assert nhwc_tiles(14, 14, 184, 80, cpu)[1:] == (1, 14, 1)


@pytest.mark.build
def test_network_converts_layout_once_and_packs_pointwise_weights(exported):
    import tvm

    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until
    from mobilec.targets import resolve

    target = resolve("host", None, 2).tvm_target()
    imp = import_onnx(exported("mobilenet_v3_small"), {})
    fused = run_until(imp.mod, target, PipelineOptions(), "fuse")
    # the input into NHWC, and the pooled 1x1 map back before the classifier's reshape
    assert fused["main"].script().count("R.permute_dims(") == 2
    lowered = run_until(imp.mod, target, PipelineOptions(), "lower")
    kernels = [f for _, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    pointwise = [f for f in kernels if "conv2d_nhwc" in f.script() and "group_conv2d" not in f.script()
                 and "_red" not in f.script()]
    # pointwise weights: the schedule lays them out for its tiles (TVM's layout_free_buffers)
    free = [f for f in kernels if f.attrs and "layout_free_buffers" in f.attrs]
    assert free and len(free) >= len(pointwise) - 1, (len(free), len(pointwise))  # the stem is 3x3
    scheduled = run_until(imp.mod, target, PipelineOptions(), "schedule")
    names = [gv.name_hint for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    packed = [n for n in names if n.endswith("_prepacked")]  # kernels reading packed weights
    assert len(packed) >= len(free) - 1, (len(packed), len(free))
    # the packing ran at compile time: no packing kernel left in the library, none called
    assert not [n for n in names if "prepack" in n and n not in packed]
    assert "prepack(" not in scheduled["main"].script(show_meta=False)


@pytest.mark.build
@pytest.mark.parametrize("build", [kernel_zoo, lambda: pointwise_graph(7, 32, 48), lambda: depthwise_graph(14, 24, 5, 2)],
                         ids=["zoo", "pointwise", "depthwise"])
def test_imported_nchw_layout_still_builds_and_matches(build, tmp_path):
    res = assert_matches_onnxruntime(build(), tmp_path, layout="NCHW")
    assert "unscheduled" not in res.manifest.default_schedules


@pytest.mark.build
def test_unknown_layout_is_a_config_error(tmp_path):
    from mobilec.errors import ConfigError

    with pytest.raises(ConfigError, match="NHWC, NCHW"):
        assert_matches_onnxruntime(pointwise_graph(7, 8, 8), tmp_path, layout="NCHW8c")
