"""The *PO method registry and its hyperparameters: one entry per method, nothing else to edit to add one.

Each entry names its TRL trainer and config (as lazy import strings, so this module never imports
torch or trl), the hyperparameters it takes, how they map onto TRL config fields, its data format,
what reference model it needs, and a default search space from the literature.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from sweep.errors import UserError


@dataclass(frozen=True)
class Hyperparameter:
    """One tunable knob, with the same name for every method that takes it.

    `abbreviation` names it in trial ids, `label` on report axes; `integer` knobs are sampled as integers.
    """

    name: str
    help: str
    abbreviation: str
    label: str
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = False
    high_inclusive: bool = True
    integer: bool = False
    log: bool = True

    def check(self, value: float) -> str | None:
        """Return why `value` is out of range, or None when it is valid."""
        if self.integer and float(value) != int(value):
            return f"{self.name} must be a whole number, got {value}"
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            sign = ">=" if self.low_inclusive else ">"
            return f"{self.name} must be {sign} {self.low:g}, got {value:g}"
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            sign = "<=" if self.high_inclusive else "<"
            return f"{self.name} must be {sign} {self.high:g}, got {value:g}"
        return None


HYPERPARAMETERS: Mapping[str, Hyperparameter] = MappingProxyType(
    {
        h.name: h
        for h in (
            Hyperparameter(
                "beta", "strength of the implicit KL penalty (IPO's tau, ORPO's lambda)", "b", "β (beta)", 0.0
            ),
            Hyperparameter(
                "gamma",
                "SimPO target reward margin (absolute)",
                "g",
                "γ (gamma, target reward margin)",
                0.0,
                low_inclusive=True,
            ),
            Hyperparameter(
                "gamma_beta_ratio",
                "SimPO margin as gamma/beta",
                "gbr",
                "γ/β (gamma_beta_ratio)",
                0.0,
                low_inclusive=True,
            ),
            Hyperparameter("learning_rate", "optimizer peak learning rate", "lr", "learning rate", 0.0, 1.0),
            Hyperparameter(
                "alpha",
                "TR mixup weight: every tau steps ref <- alpha*policy + (1-alpha)*ref (1.0: hard copy)",
                "a",
                "α (reference mix-in, alpha)",
                0.0,
                1.0,
            ),
            Hyperparameter(
                "tau",
                "TR update interval: the reference is updated (alpha mixup) every tau optimizer steps",
                "t",
                "τ (reference sync every τ steps)",
                1.0,
                low_inclusive=True,
                integer=True,
            ),
            Hyperparameter(
                "label_smoothing",
                "cDPO label noise epsilon",
                "ls",
                "ε (label smoothing)",
                0.0,
                0.5,
                low_inclusive=True,
                high_inclusive=False,
                log=False,
            ),
            Hyperparameter(
                "ld_alpha",
                "LD-DPO weight of tokens past the shared length",
                "lda",
                "LD-DPO α (weight past the shared length)",
                0.0,
                1.0,
                low_inclusive=True,
                log=False,
            ),
        )
    }
)


def _direct(name: str, field_name: str | None = None) -> Callable[[dict], dict]:
    """Map a hyperparameter straight onto one TRL field (of the same name by default)."""
    return lambda params: {field_name or name: params[name]}


def _simpo_gamma(params: dict) -> dict:
    """SimPO's TRL margin is absolute; the SimPO authors tune gamma/beta."""
    if "gamma_beta_ratio" in params:
        return {"simpo_gamma": params["gamma_beta_ratio"] * params["beta"]}
    return {"simpo_gamma": params["gamma"]}


def _conservative(params: dict) -> dict:
    """cDPO, -(1-e)logsig(bD) - e logsig(-bD), from TRL's own losses: 2(1-e)*sigmoid - (1-2e)*robust.

    TRL 1.16's sigmoid loss ignores label_smoothing; its robust (rDPO) loss is
    ((1-e)S - eF)/(1-2e) with S = -logsig(bD), F = -logsig(-bD), so the weighted sum is exactly cDPO.
    """
    epsilon = params["label_smoothing"]
    return {
        "loss_type": ["sigmoid", "robust"],
        "loss_weights": [2 * (1 - epsilon), -(1 - 2 * epsilon)],
        "label_smoothing": epsilon,
    }


def _trust_region(params: dict) -> dict:
    """TR-* as published and in TRL: every tau steps ref <- alpha*policy + (1-alpha)*ref (alpha 1: a copy)."""
    return {
        "sync_ref_model": True,
        "ref_model_mixup_alpha": params["alpha"],
        "ref_model_sync_steps": int(params["tau"]),
    }


MAPPERS: Mapping[str, Callable[[dict], dict]] = MappingProxyType(
    {
        "beta": _direct("beta"),
        "learning_rate": _direct("learning_rate"),
        "label_smoothing": _conservative,
        "ld_alpha": _direct("ld_alpha"),
        "gamma": _simpo_gamma,
        "gamma_beta_ratio": _simpo_gamma,
        "alpha": _trust_region,
        "tau": _trust_region,
    }
)


@dataclass(frozen=True)
class Method:
    """A registry entry: how to train one *PO method with TRL."""

    name: str
    summary: str
    trainer: str
    config: str
    defaults: Mapping[str, float]
    space: Mapping[str, tuple[float, ...]]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    data: Literal["paired", "unpaired"] = "paired"
    reference: Literal["fixed", "moving", "none"] = "fixed"
    exclusive: tuple[str, ...] = ()

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The hyperparameters this method takes, in display order."""
        return tuple(self.defaults)

    def trl_fields(self, params: Mapping[str, float]) -> dict[str, Any]:
        """TRL config fields for one trial's hyperparameters (missing ones take the method's default)."""
        full = self.complete(params)
        fields: dict[str, Any] = dict(self.fixed)
        for name in full:
            fields.update(MAPPERS[name](full))
        return fields

    def complete(self, params: Mapping[str, float]) -> dict[str, float]:
        """`params` plus the default of every hyperparameter not given (respecting exclusive groups)."""
        full = dict(params)
        given_group = [name for name in self.exclusive if name in full]
        for name, value in self.defaults.items():
            in_group = name in self.exclusive
            if name not in full and not (in_group and given_group):
                full[name] = value
                if in_group:
                    given_group.append(name)
        return full


_DPO = ("trl:DPOTrainer", "trl:DPOConfig")
_CPO = ("trl.experimental.cpo:CPOTrainer", "trl.experimental.cpo:CPOConfig")
_KTO = ("trl:KTOTrainer", "trl:KTOConfig")
_LR = (3e-7, 5e-7, 1e-6)
_TR = {"alpha": (0.6, 1.0), "tau": (64, 128, 256, 512)}
"""TR-* defaults: TRL's (alpha 0.6, tau 512); the space crosses soft (0.6) and hard (1.0) updates with the
paper's tau values."""


REGISTRY: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            Method(
                "dpo",
                "Direct Preference Optimization (Rafailov et al. 2023)",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7},
                space={"beta": (0.01, 0.05, 0.1, 0.5), "learning_rate": _LR},
                fixed={"loss_type": ["sigmoid"]},
            ),
            Method(
                "ipo",
                "Identity Preference Optimization (Azar et al. 2023); beta is IPO's tau",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7},
                space={"beta": (0.01, 0.1, 0.5, 1.0), "learning_rate": _LR},
                fixed={"loss_type": ["ipo"]},
            ),
            Method(
                "ln-dpo",
                "Length-normalized DPO (Ahrabian et al. 2024)",
                *_DPO,
                defaults={"beta": 1.0, "learning_rate": 5e-7},
                space={"beta": (0.5, 1.0, 2.0, 5.0), "learning_rate": _LR},
                fixed={"loss_type": ["sigmoid_norm"]},
            ),
            Method(
                "cdpo",
                "Conservative DPO: DPO with label smoothing (Mitchell 2023)",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7, "label_smoothing": 0.1},
                space={"beta": (0.05, 0.1, 0.5), "learning_rate": _LR, "label_smoothing": (0.1, 0.2, 0.3)},
                fixed={"loss_type": ["sigmoid"]},
            ),
            Method(
                "hinge",
                "SLiC-HF hinge loss on the DPO log-ratio (Zhao et al. 2023)",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7},
                space={"beta": (0.01, 0.1, 0.5, 1.0), "learning_rate": _LR},
                fixed={"loss_type": ["hinge"]},
            ),
            Method(
                "ld-dpo",
                "Length-desensitized DPO (Liu et al. 2024)",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7, "ld_alpha": 0.5},
                space={"beta": (0.05, 0.1, 0.5), "learning_rate": _LR, "ld_alpha": (0.3, 0.5, 0.7)},
                fixed={"loss_type": ["sigmoid"]},
            ),
            Method(
                "tr-dpo",
                "Trust-region DPO: the reference follows the policy (Gorbatovski et al. 2024)",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7, "alpha": 0.6, "tau": 512},
                space={"beta": (0.05, 0.1), "learning_rate": _LR, **_TR},
                fixed={"loss_type": ["sigmoid"]},
                reference="moving",
            ),
            Method(
                "tr-ipo",
                "Trust-region IPO (Gorbatovski et al. 2024)",
                *_DPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7, "alpha": 0.6, "tau": 512},
                space={"beta": (0.1, 0.5), "learning_rate": _LR, **_TR},
                fixed={"loss_type": ["ipo"]},
                reference="moving",
            ),
            Method(
                "simpo",
                "Simple Preference Optimization, reference-free (Meng et al. 2024)",
                *_CPO,
                defaults={"beta": 2.0, "learning_rate": 5e-7, "gamma_beta_ratio": 0.5, "gamma": 1.0},
                space={"beta": (2.0, 2.5, 10.0), "learning_rate": _LR, "gamma_beta_ratio": (0.3, 0.5, 1.0)},
                fixed={"loss_type": "simpo", "cpo_alpha": 0.0},
                reference="none",
                exclusive=("gamma_beta_ratio", "gamma"),
            ),
            Method(
                "cpo",
                "Contrastive Preference Optimization (Xu et al. 2024)",
                *_CPO,
                defaults={"beta": 0.1, "learning_rate": 5e-7},
                space={"beta": (0.05, 0.1, 0.5), "learning_rate": _LR},
                fixed={"loss_type": "sigmoid"},
                reference="none",
            ),
            Method(
                "orpo",
                "Odds-Ratio Preference Optimization (Hong et al. 2024); beta is lambda",
                "trl.experimental.orpo:ORPOTrainer",
                "trl.experimental.orpo:ORPOConfig",
                defaults={"beta": 0.1, "learning_rate": 5e-7},
                space={"beta": (0.05, 0.1, 0.25, 0.5), "learning_rate": _LR},
                reference="none",
            ),
            Method(
                "kto",
                "Kahneman-Tversky Optimization on unpaired feedback (Ethayarajh et al. 2024)",
                *_KTO,
                defaults={"beta": 0.1, "learning_rate": 5e-7},
                space={"beta": (0.05, 0.1, 0.5), "learning_rate": _LR},
                data="unpaired",
            ),
            Method(
                "tr-kto",
                "Trust-region KTO (Gorbatovski et al. 2024)",
                *_KTO,
                defaults={"beta": 0.1, "learning_rate": 5e-7, "alpha": 0.6, "tau": 512},
                space={"beta": (0.1,), "learning_rate": _LR, **_TR},
                data="unpaired",
                reference="moving",
            ),
        )
    }
)


def method_trl_fields() -> frozenset[str]:
    """Every TRL config field a registry method sets, from its hyperparameters or as a fixed setting."""
    found: set[str] = set()
    for method in REGISTRY.values():
        grouped = method.exclusive
        for choice in grouped or (None,):
            params = {name: value for name, value in method.defaults.items() if name not in grouped}
            if choice is not None:
                params[choice] = method.defaults[choice]
            found |= set(method.trl_fields(params))
    return frozenset(found)


def get_method(name: str) -> Method:
    """The registry entry for `name`, or a UserError that suggests the closest names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}{did_you_mean(name, REGISTRY)}") from None


def did_you_mean(name: str, choices: Any) -> str:
    """A ' (did you mean ...?)' suffix with the closest choices, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
