"""The one-byte codec: bounds, unbiasedness, determinism, strict decoding."""

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol import ProtocolError, codec
from seedswarm.protocol.hashing import mix64

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
clips = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=64), clips, st.integers(0, 2**64 - 1))
def test_one_byte_each_and_error_bounded_by_the_record_scale(values, clip, seed0):
    seeds = [mix64(seed0 + i) for i in range(len(values))]
    codes, exp = codec.encode(values, seeds, clip)
    assert len(codes) == len(values)
    assert 0 <= exp <= codec.MAX_SCALE_EXP
    scale = math.ldexp(clip, -exp)
    peak = max(abs(v) for v in values)
    assert peak <= scale or exp == 0                       # the scale covers the record ...
    assert exp == codec.MAX_SCALE_EXP or exp == 0 or scale < 2 * peak  # ... tightly
    for v, g in zip(values, codec.decode(codes, exp, clip)):
        assert abs(g) <= clip * (1 + 1e-12)
        clipped = max(-clip, min(clip, v))
        assert abs(g - clipped) <= scale / codec.LEVELS * (1 + 1e-9)


@given(st.lists(finite, min_size=1, max_size=8), clips, st.integers(0, 2**64 - 1))
def test_encoding_is_a_pure_function_of_values_and_seeds(values, clip, seed0):
    seeds = [mix64(seed0 ^ i) for i in range(len(values))]
    assert codec.encode(values, seeds, clip) == codec.encode(list(values), list(seeds), clip)


@pytest.mark.parametrize("g", [0.3, -1.7, 2.0 / 3.0, 5.55, -63.9])
def test_stochastic_rounding_is_unbiased(g):
    # One value per record with a fixed scale partner so the scale is the same every time.
    decoded = []
    for seed in range(20000):
        codes, exp = codec.encode([g, 64.0], [mix64(seed), 0], 64.0)
        decoded.append(codec.decode(codes, exp, 64.0)[0])
    step = 64.0 / codec.LEVELS
    assert set(decoded) <= {math.floor(g / step) * step, math.ceil(g / step) * step} | {round(g / step) * step}
    # standard error of the mean is below step/2/sqrt(20000) ~ 0.0018
    assert abs(statistics.fmean(decoded) - g) < 0.01


def test_deterministic_rounding_would_be_biased_but_ours_is_not():
    # 0.3 * 127 / 64 = 0.595...: nearest rounding always gives 1 level (0.504), a bias of +68%.
    decoded = [codec.decode(*codec.encode([0.3, 64.0], [mix64(s), 0], 64.0), 64.0)[0] for s in range(5000)]
    assert 0.29 < statistics.fmean(decoded) < 0.31


def test_values_beyond_clip_are_clipped_and_small_records_use_a_fine_scale():
    codes, exp = codec.encode([1e9, -1e9], [1, 2], 8.0)
    assert exp == 0 and codec.decode(codes, exp, 8.0) == [8.0, -8.0]
    codes, exp = codec.encode([1e-3], [1], 8.0)
    assert math.ldexp(8.0, -exp) < 2e-3  # 1e-3 is represented to within 1.6e-5, not rounded to 0


def test_bad_inputs():
    with pytest.raises(ValueError):
        codec.encode([float("nan")], [0], 1.0)
    with pytest.raises(ValueError):
        codec.encode([1.0], [0, 1], 1.0)
    with pytest.raises(ProtocolError):
        codec.decode(b"\x80", 0, 1.0)
    with pytest.raises(ProtocolError):
        codec.decode(b"\x01", codec.MAX_SCALE_EXP + 1, 1.0)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_every_byte_but_0x80_decodes_within_clip(data):
    if 0x80 in data:
        with pytest.raises(ProtocolError):
            codec.decode(data, 3, 5.0)
    else:
        assert all(abs(v) <= 5.0 for v in codec.decode(data, 0, 5.0))
