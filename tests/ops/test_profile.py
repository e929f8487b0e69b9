"""Rehearsal profiles: the built-in ramp, TOML files, and the bounds every profile keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from stocksync.ops.profile import BUILT_IN, MAX_RATE, load_profile


def test_the_built_in_peak_ramps_from_1x_to_10x() -> None:
    peak = load_profile("peak")
    assert peak is BUILT_IN["peak"]
    assert peak.multiplier(0, 60) == 1.0
    assert peak.multiplier(30, 60) == 5.5
    assert peak.multiplier(60, 60) == peak.multiplier(90, 60) == 10.0
    b = peak.baseline
    assert min(b.stock, b.orders, b.returns, b.single, b.batch, b.holds) > 0


def test_a_file_sets_what_it_names_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "black-friday.toml"
    path.write_text(
        "ramp_to = 3\n[baseline]\nsingle = 100\n[slo]\noversold = 2\napi_p99_seconds = 0.01\n"
    )
    profile = load_profile(str(path))
    assert profile.name == "black-friday"
    assert profile.ramp_to == 3 and profile.baseline.single == 100 and profile.baseline.stock == 10
    assert profile.slo.oversold == 2 and profile.slo.api_p99_seconds == 0.01
    assert profile.slo.dead_letters == 0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[baseline]\nstokc = 5\n", "unknown field `stokc`"),
        ("duration_seconds = 7200\n", "<= 3600"),
        ("ramp_to = 100\n[baseline]\nsingle = 100\n", f"over {MAX_RATE:g}/s"),
        ("skus = 0\n", ">= 1"),
        ("[slo]\nerror_ratio = 2\n", "<= 1"),
        ("ramp_to = \n", "not valid TOML"),
    ],
)
def test_a_bad_profile_says_what_is_wrong(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="profile") as caught:
        load_profile(str(path))
    assert words in str(caught.value)


def test_an_unknown_name_lists_the_built_in_ones() -> None:
    with pytest.raises(ValueError, match=r"neither built in \(peak\) nor a file"):
        load_profile("no-such-profile")
