"""Optimizers: AdamW, or Muon for the hidden matrices with AdamW for everything else.

    build_optimizer(model, "adamw", lr=1e-3, ...)  ->  torch.optim.AdamW (two groups: decay / no decay)
    build_optimizer(model, "muon", lr=1e-3, ...)   ->  MuonWithAdamW

Muon (torch.optim.Muon) orthogonalises the momentum of a 2-D weight matrix with a few Newton-Schulz
iterations. It is meant for the hidden matrices only: the attention and dense feed-forward
projections. The embedding, the output head, the norms, the MoE router and the stacked (3-D) expert
weights stay on AdamW. Muon runs with `adjust_lr_fn="match_rms_adamw"` (Moonshot's scaling, update RMS
like AdamW's), so one learning rate and one schedule serve both optimizers: the trainer sets
`group["lr"]` on every group, and both follow.

MuonWithAdamW behaves like one torch optimizer towards the trainer and the checkpoint code:
`param_groups` lists the groups of both, and `state_dict()` has torch's layout (per-parameter state
keyed by the parameter's position over all groups), so training/checkpoint.py saves and restores it
exactly like AdamW's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

OPTIMIZERS = ("adamw", "muon")


def muon_available() -> bool:
    """torch.optim.Muon arrived in torch 2.9."""
    return hasattr(torch.optim, "Muon")


def fused_adamw_supported(model: nn.Module) -> bool:
    """torch (>= 2.4) has fused AdamW kernels for floating-point parameters on CPU and CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: "hidden" (2-D matrices inside the blocks except the router: Muon's),
    "decay" (other matrices: router, expert stacks, an untied output head) and "no_decay" (the
    embedding, a tied head, norms). Each parameter appears once, in model.parameters() order."""
    embedding = model.tok_emb.weight
    hidden_ids = {
        id(p)
        for name, p in model.named_parameters()
        if p.dim() == 2 and name.startswith("blocks.") and ".router." not in name
    }
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "decay": [], "no_decay": []}
    for p in model.parameters():  # de-duplicated: a tied embedding appears once
        if not p.requires_grad:
            continue
        if id(p) in hidden_ids:
            groups["hidden"].append(p)
        elif p.dim() < 2 or p is embedding:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    return groups


class MuonWithAdamW:
    """torch.optim.Muon on the hidden matrices, torch.optim.AdamW on the rest, seen as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.optimizers = [muon, adamw]
        # the groups themselves (not copies), so that setting group["lr"] reaches both optimizers
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """torch's layout over both optimizers: state by parameter position, then all groups."""
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            for g in sd["param_groups"]:
                groups.append({**g, "params": [offset + i for i in g["params"]]})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(groups)} parameter groups, this Muon+AdamW optimizer "
                f"{len(self.param_groups)}: was the checkpoint written with another --optimizer?"
            )
        start, offset = 0, 0
        for opt in self.optimizers:
            mine = groups[start : start + len(opt.param_groups)]
            n = sum(len(g["params"]) for g in mine)
            sub_groups = []
            for current, saved in zip(opt.param_groups, mine, strict=True):
                # JSON turns tuples (betas, ns_coefficients) into lists: give them their type back
                fixed = {k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}
                fixed["params"] = [i - offset for i in saved["params"]]
                sub_groups.append(fixed)
            sub_state = {
                int(i) - offset: s for i, s in state_dict["state"].items() if offset <= int(i) < offset + n
            }
            opt.load_state_dict({"state": sub_state, "param_groups": sub_groups})
            start += len(opt.param_groups)
            offset += n
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
    muon_momentum: float = 0.95,
    extra_groups: list[dict] | None = None,
) -> torch.optim.Optimizer | MuonWithAdamW:
    """The trainer's optimizer. Weight decay applies to matrices, never to the embedding or norms.

    fused: AdamW's fused kernel. None (the default) uses it wherever torch has one for the parameters'
    device (CPU and CUDA), else torch's default. On a CPU it makes the AdamW update ~3.5x faster than
    torch's default there, a per-tensor loop (~2% of a step at 14M parameters: README.md). A
    checkpoint restores the kernel it was written with (torch loads `fused` with the param groups),
    so resuming a run made before fused was the default continues it bit-exactly.

    extra_groups: AdamW groups for parameters outside `model` (a classification head), each with its
    "weight_decay" and an "lr_scale" that the training loop multiplies the learning rate by.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if fused is None:
        fused = fused_adamw_supported(model)
    adamw_args = {"lr": lr, "betas": tuple(betas), "eps": eps}
    if fused:
        adamw_args["fused"] = True
    extra = [g for g in (extra_groups or []) if g["params"]]
    if name == "adamw":  # the same two groups, in the same order, as checkpoints before Muon existed
        return torch.optim.AdamW([*model.configure_param_groups(weight_decay), *extra], **adamw_args)
    groups = split_params(model)
    if not muon_available():
        raise ValueError(
            f"--optimizer muon needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}"
        )
    if not groups["hidden"]:
        raise ValueError("--optimizer muon: the model has no 2-D hidden matrices")
    muon = torch.optim.Muon(
        groups["hidden"],
        lr=lr,
        weight_decay=weight_decay,
        momentum=muon_momentum,
        adjust_lr_fn="match_rms_adamw",
    )
    adamw = torch.optim.AdamW(
        [*_groups([(groups["decay"], weight_decay), (groups["no_decay"], 0.0)]), *extra], **adamw_args
    )
    return MuonWithAdamW(muon, adamw)


def _groups(pairs: Iterable[tuple[list[nn.Parameter], float]]) -> list[dict]:
    """AdamW parameter groups; empty ones are dropped (torch refuses them)."""
    return [{"params": params, "weight_decay": wd} for params, wd in pairs if params]
