"""Print the parameter count of every model preset next to the paper's figure (Sriram et al., 2022).

    python -m graph_parallel.param_counts
"""
from .models import MODELS, build_model, count_parameters

# figures quoted by the paper / OC20 for the presets that have one
PAPER = {("dimenetpp", "base"): "1.8M (OC20 DimeNet++)", ("dimenetpp", "xl"): "~240M (DimeNet++-XL)",
         ("gemnet_dt", "base"): "~32M (OC20 GemNet-dT)", ("gemnet_t", "xl"): "~300M (GemNet-XL)",
         ("gemnet_dt", "xl"): "~300M (GemNet-XL)"}


def main() -> None:
    print(f"{'model':10s} {'preset':6s} {'parameters':>14s}  paper")
    for name, (_, presets) in MODELS.items():
        for preset in presets:
            n = count_parameters(build_model(name, preset))
            print(f"{name:10s} {preset:6s} {n:14,d}  {PAPER.get((name, preset), '-')}", flush=True)


if __name__ == "__main__":
    main()
