"""PyTorch side of mobilec: the MobileNetV3 family, their statistics, torchvision weights, ONNX export.

Knows PyTorch and ONNX, nothing of TVM."""

from mobilec.frontends.export import ExportConfig, ExportResult, export_onnx
from mobilec.frontends.registry import DEFAULT_MODEL, MODELS, ModelSpec, UnknownModelError, create_model, get_spec
from mobilec.frontends.stats import ModelStats, count

__all__ = [
    "DEFAULT_MODEL", "MODELS", "ModelSpec", "ModelStats", "UnknownModelError", "ExportConfig", "ExportResult",
    "count", "create_model", "export_onnx", "get_spec", "export_model", "model_table",
]


def export_model(name: str, path, config: ExportConfig | None = None, weights: str | None = None) -> ExportResult:
    """Export a registered model by name (its default input size unless ``config`` says otherwise)."""
    spec = get_spec(name)
    cfg = config or ExportConfig(input_size=spec.input_size)
    return export_onnx(create_model(name, weights), path, cfg)


def model_table() -> list[dict]:
    """One row per registered model: parameters and multiply-adds at its default input size,
    with the paper's figures where the paper gives them."""
    rows = []
    for spec in MODELS.values():
        st = count(spec.build(), spec.input_size)
        rows.append(dict(name=spec.name, task=spec.task, input_size=spec.input_size, params_m=st.params / 1e6,
                         madds_m=st.madds / 1e6, paper_params_m=spec.paper_params_m,
                         paper_madds_m=spec.paper_madds_m))
    return rows
