"""hypothesis over gradcheck's spec table: every registered layer type's backward
agrees with jax.vjp and finite differences.

Profile "default" (the README's test command and CI): 2 examples per type, drawn anew
on every run (not derandomized), so runs add up to coverage; with 3 the default suite
took 18.3 minutes on the 2-core CI machine, 20 being the line. ``-m slow``: 60 each."""
import pytest
from hypothesis import HealthCheck, given, settings

import jcaffe
from gradcheck import strategies

settings.register_profile("default", max_examples=2, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

TYPES = [t for t in jcaffe.layer_type_list() if t != "Python"]


def test_every_registered_type_has_a_spec():
    missing = sorted(set(TYPES) - set(strategies.SPECS))
    assert not missing, "layer types without a gradcheck strategy: %s" % missing


def _check(case):
    report = strategies.check_case(case)
    assert report.ok, "%s\n%s" % (case, report)


@pytest.mark.parametrize("type_name", TYPES)
def test_backward_matches_vjp_and_finite_differences(type_name):
    given(strategies.layer_cases(type_name))(_check)()


@pytest.mark.slow
@pytest.mark.parametrize("type_name", TYPES)
def test_backward_many_examples(type_name):
    settings(max_examples=60, deadline=None)(given(strategies.layer_cases(type_name))(_check))()


def test_user_strategies():
    @given(strategies.layer_params("ReLU"), strategies.bottoms([(2, 3)]))
    def run(snippet, xs):
        assert snippet.startswith('type: "ReLU"') and xs[0].shape == (2, 3)
    run()
