"""The compute dtype is a fixed rule per device (not a timing probe), overridable for every run at once."""

import pytest
import torch

from revena_lib.training import device


@pytest.fixture
def fresh_dtype_cache():
    device._autocast_dtype.cache_clear()
    yield
    device._autocast_dtype.cache_clear()


def test_cpu_trains_in_fp32_unless_asked(monkeypatch, fresh_dtype_cache):
    monkeypatch.delenv("REVENA_DTYPE", raising=False)
    assert device.autocast_dtype("cpu") is None and device.dtype_name(device.autocast_dtype("cpu")) == "fp32"
    device._autocast_dtype.cache_clear()
    monkeypatch.setenv("REVENA_DTYPE", "bf16")
    assert device.autocast_dtype("cpu") == torch.bfloat16
    device._autocast_dtype.cache_clear()
    monkeypatch.setenv("REVENA_DTYPE", "fp8")
    with pytest.raises(device.DeviceError, match="REVENA_DTYPE='fp8'"):
        device.autocast_dtype("cpu")
