"""slidemil.registry: one duplicate-name rule, a clear unknown-name error, build by signature."""

from __future__ import annotations

import pytest

from slidemil.registry import Registry


class Radius:
    def __init__(self, radius: int = 1, p: float = 0.5) -> None:
        self.radius, self.p = radius, p


class Anything:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


def test_build_passes_the_offered_values_the_constructor_names():
    reg: Registry[type] = Registry("pair sampler")
    reg.register("r")(Radius)
    built = reg.build("r", offered={"radius": 3, "epochs": 10})
    assert (built.radius, built.p) == (3, 0.5)
    assert reg.build("r", offered={"radius": 3}, radius=2).radius == 2  # the caller's kwargs win
    with pytest.raises(TypeError, match=r"unknown params \['radus'\]; accepted: \['p', 'radius'\]"):
        reg.build("r", radus=2)


def test_a_constructor_with_kwargs_takes_any_keyword_but_is_offered_none():
    reg: Registry[type] = Registry("thing")
    reg.register("any")(Anything)
    assert reg.build("any", offered={"radius": 3}, t=1).kwargs == {"t": 1}


def test_unknown_names_list_the_registered_ones():
    reg: Registry[type] = Registry("MIL model")
    reg.register("r")(Radius)
    with pytest.raises(KeyError, match=r"unknown MIL model 'x'; choose one of \['r'\]"):
        reg["x"]
    assert "x" not in reg and reg.get("x") is None


def test_a_taken_name_raises_and_the_same_class_again_replaces():
    reg: Registry[type] = Registry("objective")
    reg.register("r")(Radius)
    reg.register("r")(Radius)  # its module imported anew
    with pytest.raises(KeyError, match=r"objective 'r' is registered twice: .*Radius and .*Anything"):
        reg.register("r")(Anything)
    assert reg["r"] is Radius


def test_the_live_registries_share_the_rule():
    from slidemil.encoders import ENCODERS, register_encoder
    from slidemil.mil.models import MIL_MODELS, register_mil
    from slidemil.ssl.losses import OBJECTIVES, register_objective
    from slidemil.ssl.samplers import PAIR_SAMPLERS, register_sampler

    for reg, register, taken in ((OBJECTIVES, register_objective, "simclr"),
                                 (PAIR_SAMPLERS, register_sampler, "spatial"),
                                 (MIL_MODELS, register_mil, "abmil"), (ENCODERS, register_encoder, "resnet18")):
        with pytest.raises(KeyError, match=f"'{taken}' is registered twice"):
            register(taken)(Anything)
        assert isinstance(reg, Registry)
