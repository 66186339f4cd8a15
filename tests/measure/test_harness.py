"""The measurement harness (act_lora_fast.measure.harness): settings checks."""
import pytest

from act_lora_fast.measure import harness
from act_lora_fast.measure.harness import BenchSettings


def test_bench_settings_default_is_not_replaced_by_falsy_settings():
    # an empty dict used to be taken for "no settings" and silently replaced by the defaults
    with pytest.raises(TypeError, match="settings must be a BenchSettings"):
        harness.check_settings({})
    assert isinstance(harness.check_settings(None), BenchSettings)
