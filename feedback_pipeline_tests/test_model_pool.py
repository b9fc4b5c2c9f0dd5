"""The model pool without weights: a fake registry and loader show fallbacks, swaps and retries."""

import pytest

from feedback_pipeline.serving.models import ModelPool, NoModelAvailable
from feedback_pipeline.serving.router import ModelRef

CHAMPION, ARM, BASE = ModelRef("m", alias="champion"), ModelRef("m", version="7"), ModelRef.base()


class FakeRegistry:
    base_model_path = "/base"

    def __init__(self):
        self.aliases = {"champion": "1"}
        self.broken = {"7"}

    def resolve(self, ref):
        return "0" if ref.is_base else ref.version or self.aliases.get(ref.alias)

    def files(self, name, version):
        if version in self.broken:
            raise FileNotFoundError(f"{name}/{version} has no adapter")
        return "/base", f"/adapters/{version}"


class FakeModel:
    def __init__(self, name, version, base, adapter):
        self.registered_model, self.version, self.adapter = name, version, adapter


def test_fallback_swap_and_vanished_alias():
    registry = FakeRegistry()
    pool = ModelPool(registry, poll_s=0.0, loader=FakeModel)
    ref, model = pool.serve((ARM, CHAMPION, BASE))  # the arm's version does not load: the champion answers
    assert (ref, model.version) == (CHAMPION, "1")
    held = model
    registry.aliases["champion"] = "2"
    pool.refresh()
    assert pool.serve((CHAMPION,))[1].version == "2" and held.version == "1"  # a holder keeps its model
    assert pool.swaps == [(CHAMPION, "1", "2")]
    registry.broken.clear()
    assert pool.serve((ARM, CHAMPION))[0] == ARM  # retried once poll_s has passed
    del registry.aliases["champion"]
    pool.refresh()
    assert pool.serve((CHAMPION, BASE))[0] == BASE  # no champion any more: the base model answers
    with pytest.raises(NoModelAvailable):
        ModelPool(FakeRegistry(), loader=lambda *a: (_ for _ in ()).throw(OSError("disk"))).serve((CHAMPION, BASE))


def test_a_moved_alias_that_does_not_load_keeps_the_old_version():
    registry = FakeRegistry()
    pool = ModelPool(registry, poll_s=0.0, loader=FakeModel)
    pool.serve((CHAMPION,))
    registry.aliases["champion"] = "7"  # broken
    pool.refresh()
    assert pool.serve((CHAMPION,))[1].version == "1" and pool.swaps == []
