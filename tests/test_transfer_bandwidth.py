import pytest

from transfer.bandwidth import (ENV_VAR, FALLBACK_BANDWIDTH, BandwidthError, format_bandwidth,
                                parse_bandwidth, resolve_link_bandwidth)


@pytest.mark.parametrize("text,bps", [
    ("1Gbit", 125e6), ("1 Gbit/s", 125e6), ("1Gbps", 125e6), ("1Gb/s", 125e6), ("10Gbit", 1.25e9),
    ("100Mbps", 12.5e6), ("125MB/s", 125e6), ("125 MB", 125e6), ("1GiB/s", 2**30), ("512KiB/s", 512 * 1024),
    ("2.5e3 MB/s", 2.5e9), ("125000000", 125e6), (125e6, 125e6), (1000, 1000.0),
])
def test_parse_units(text, bps):
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["", "fast", "1G", "-1Gbit", "0Gbit", "1 Gbitz", "Gbit", 0, -5, float("inf"), True, None])
def test_parse_rejects_with_examples(bad):
    with pytest.raises(BandwidthError) as e:
        parse_bandwidth(bad, what="link_bandwidth")
    assert "link_bandwidth" in str(e.value) and "1Gbit" in str(e.value)


def test_precedence_explicit_env_measured_fallback():
    env = {ENV_VAR: "10Gbit"}
    assert resolve_link_bandwidth("1Gbit", env, measured=5e9).source == "explicit"
    r = resolve_link_bandwidth(None, env, measured=5e9)
    assert (r.source, r.bytes_per_s) == ("env", 1.25e9)
    r = resolve_link_bandwidth(None, {}, measured=5e9)
    assert (r.source, r.bytes_per_s) == ("measured", 5e9)
    r = resolve_link_bandwidth(None, {ENV_VAR: "  "}, measured=None)
    assert (r.source, r.bytes_per_s) == ("fallback", FALLBACK_BANDWIDTH)


def test_bad_env_names_the_variable():
    with pytest.raises(BandwidthError, match=ENV_VAR):
        resolve_link_bandwidth(None, {ENV_VAR: "lots"})


def test_format():
    assert format_bandwidth(125e6) == "1 Gbit/s"
    assert format_bandwidth(951e6 / 8) == "951 Mbit/s"
