"""Analyses of fine-tuned models against their base: what changed, where, and what it costs.

- `drift`: how far the weights, the outputs and the hidden states moved (whole model, per module type).
- `layers`: the same per transformer layer, in-domain vs cross-task, and where FT and FTICL differ most.
- `attention`: how much attention the answer position pays to in-context examples at test time.
- `interpolate`: WiSE-FT weight interpolation between base and tuned, and the α trade-off it offers.
- `study_analyses`: a study's layer profiles and attention shares, read back from its run directories.

Each analysis takes plain inputs (model dirs or loaded models, tasks, a data dir, probe settings) and returns
a JSON-serialisable dict; it runs in fp32 and gives the same numbers on a rerun.
"""

from ftgen.analysis.attention import analyze_attention, attention_shares, write_attention_report
from ftgen.analysis.common import ModelCache, model_dir_of, run_info
from ftgen.analysis.drift import (
    analyze_drift,
    compact_drift,
    linear_cka,
    output_divergence,
    probe_set,
    weight_drift,
    write_drift_report,
)
from ftgen.analysis.interpolate import best_alphas, interpolate_model
from ftgen.analysis.layers import analyze_layers, compare_methods, layer_profile, write_layers_report

__all__ = [
    "ModelCache",
    "analyze_attention",
    "analyze_drift",
    "analyze_layers",
    "attention_shares",
    "best_alphas",
    "compact_drift",
    "compare_methods",
    "interpolate_model",
    "layer_profile",
    "linear_cka",
    "model_dir_of",
    "output_divergence",
    "probe_set",
    "run_info",
    "weight_drift",
    "write_attention_report",
    "write_drift_report",
    "write_layers_report",
]
